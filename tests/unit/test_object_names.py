"""A bucket object is named by its header's SOP UID, so two objects can claim one file name. The
check that refuses the second runs in a worker thread while the event loop records other files
of the series: it must look the name up, never walk the series' committed files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tcia_mirror.engine.pipeline import Fetcher, SeriesWork
from tcia_mirror.fs.atomic import AtomicWriter
from tcia_mirror.fs.layout import instance_filename
from tcia_mirror.progress import NullProgress
from tcia_mirror.testing.simulator import Dataset, DatasetSpec
from tcia_mirror.testing.simulator.s3 import S3Simulator


class _CommitsWhileWalked(dict[str, tuple[str, int, str | None]]):
    """A series' committed files, into which the event loop records another file while a
    worker thread walks them (what a commit landing mid-walk does to a dict)."""

    def items(self) -> Any:
        it = iter(super().items())

        def walk() -> Iterator[tuple[str, tuple[str, int, str | None]]]:
            for n, kv in enumerate(it):
                if n == 0:
                    self[f"bucket/late-{len(self)}.dcm"] = ("late/x.dcm", 1, None)
                yield kv

        return walk()


def _one_object(tmp_path: Path) -> tuple[str, str, bytes]:
    s3 = S3Simulator(Dataset(DatasetSpec.preset("test")))
    uid = next(iter(s3.folders))
    key, body = sorted(s3.folder_bytes(uid).items())[0]
    return uid, key, body


def _check(tmp_path: Path, work: SeriesWork, key: str, body: bytes) -> Any:
    fetcher = Fetcher(None, None, tmp_path, NullProgress())  # type: ignore[arg-type]
    writer = AtomicWriter(tmp_path / work.rel_dir / "object.dcm", fsync=False)
    writer.write(body)
    return fetcher._check(writer, work, "0" * 32, len(body), None, body[:16384], None, key)


def _work(uid: str) -> SeriesWork:
    return SeriesWork(uid, None, uid, frozenset(), None, None)


def test_the_name_check_does_not_walk_the_committed_files(tmp_path: Path) -> None:
    uid, key, body = _one_object(tmp_path)
    work = _work(uid)
    work.done = _CommitsWhileWalked()
    work.mark_done("bucket/other.dcm", f"{uid}/another-file.dcm", 10, None)
    committed = _check(tmp_path, work, key, body)
    assert committed is not None and committed.sop == key
    assert not work.problems


def test_an_object_is_refused_the_name_of_a_file_an_earlier_run_committed(
    tmp_path: Path,
) -> None:
    uid, key, body = _one_object(tmp_path)
    work = _work(uid)
    from tcia_mirror.fs.dicomio import ids_from_head  # noqa: PLC0415

    ids = ids_from_head(body[:16384])
    assert ids is not None and ids.sop_uid is not None
    name = f"{uid}/{instance_filename(ids.sop_uid)}"
    work.mark_done("bucket/the-first-copy.dcm", name, len(body), None)  # loaded from the store
    assert _check(tmp_path, work, key, body) is None
    assert [p.kind for p in work.problems] == ["duplicate_sop"]
    work.problems.clear()
    work.forget("bucket/the-first-copy.dcm")  # its file was found damaged and removed
    committed = _check(tmp_path, work, key, body)
    assert committed is not None and committed.rel_path == name and not work.problems


def test_large_objects_go_to_a_worker_small_or_unknown_ones_stay() -> None:
    from tcia_mirror.engine.pipeline import OBJECT_WORKER_MIN_MEAN, _objects_worth_a_worker

    def series(count: int | None, mean: int | None) -> SeriesWork:
        total = None if count is None or mean is None else count * mean
        return SeriesWork("1.2", None, "1.2", frozenset(), count, total)

    assert _objects_worth_a_worker(series(10, OBJECT_WORKER_MIN_MEAN))
    assert _objects_worth_a_worker(series(10, 8 << 20))
    assert not _objects_worth_a_worker(series(10, 512 * 1024))  # CT-sized: the loop
    assert not _objects_worth_a_worker(series(None, None))  # sizes unknown: the loop
    assert not _objects_worth_a_worker(series(0, 8 << 20))


def test_an_object_sent_again_from_its_first_byte_starts_over(tmp_path: Path) -> None:
    """A worker's object body: a cut keeps what came; a server that then sends the whole
    object again (it ignored Range) starts it over, so the file is the object, once."""
    import hashlib  # noqa: PLC0415

    from tcia_mirror.engine.zipentries import ObjectState  # noqa: PLC0415

    def make_writer(dest: Path) -> AtomicWriter:
        return AtomicWriter(dest, fsync=False, token="0badc0de")

    body = bytes(range(256)) * 1000
    state = ObjectState(tmp_path / "s" / "object.dcm", make_writer)
    buf = bytearray(body[:70_000])
    state.feed(memoryview(buf))  # a reused read buffer: written before the next read
    buf[:] = b"\0" * len(buf)
    assert state.received == 70_000 and not state.complete
    state.restart()
    state.feed(body[:100_000])
    state.feed(memoryview(bytearray(body[100_000:])))
    state.reader.close()
    (entry,) = state.complete
    assert entry.size == state.received == len(body)
    assert entry.digest.hexdigest() == hashlib.md5(body).hexdigest()
    assert entry.writer is not None
    temp = entry.writer.release()
    assert temp.read_bytes() == body
    assert [p.name for p in temp.parent.iterdir()] == [temp.name]  # the first try is gone
