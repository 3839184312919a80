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
