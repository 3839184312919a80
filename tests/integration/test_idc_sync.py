"""IDC buckets: sync with a newer manifest, sources in status and metadata.csv, verify naming,
duplicate SOP UIDs in one folder, and folders empty or missing in the bucket."""

from __future__ import annotations

import csv
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tcia_mirror.engine import pipeline, zipproc
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.selection import build_selection
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.store.sqlite import SqliteStore
from tcia_mirror.testing.simulator import Dataset, DatasetSpec
from tcia_mirror.testing.simulator.s3 import S3Simulator

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, jitter=0.0, max_retry_after=0.05)


@asynccontextmanager
async def bucket(**kw: object) -> AsyncIterator[S3Simulator]:
    async with S3Simulator(Dataset(DatasetSpec.preset("test")), **kw) as s3:  # type: ignore[arg-type]
        yield s3


def config(s3: S3Simulator) -> ClientConfig:
    return ClientConfig(base_url="http://127.0.0.1:9/unused", s3_endpoint=s3.endpoint, retry=FAST)


def files(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every DICOM file of the mirror: its bytes, inode and mtime (untouched means all equal)."""
    out = {}
    for p in root.rglob("*.dcm"):
        if ".tcia-mirror" not in p.parts:
            st = p.stat()
            out[str(p.relative_to(root))] = (p.read_bytes(), st.st_ino, st.st_mtime_ns)
    return out


async def test_sync_with_a_newer_manifest(tmp_path: Path) -> None:
    async with bucket() as s3:
        uids = list(s3.folders)
        first, kept, new = uids[0], uids[1:-1], uids[-1]
        old = s3.write_manifest(tmp_path / "old.s5cmd", series_uids=[first, *kept])
        newer = s3.write_manifest(tmp_path / "new.s5cmd", series_uids=[*kept, new])
        out = tmp_path / "out"
        mirror = Mirror(out, config(s3))
        assert (await mirror.download(build_selection(manifests=[str(old)]))).ok
        before = files(out)
        s3.requests.clear()

        report = await mirror.sync(selection=build_selection(manifests=[str(newer)]))

        assert report.ok, report.problems
        # the new series was fetched; the unchanged ones' objects were neither GET nor HEAD
        objects = [(m, k) for m, k, _r in s3.requests if k != "?list"]
        assert objects and all(k.startswith(s3.folders[new] + "/") for _m, k in objects), objects
        assert {k for _m, k in objects} == set(s3.folder_bytes(new))
        after = files(out)
        assert {k: v for k, v in after.items() if k in before} == before  # same files, untouched
        assert len(after) == len(before) + len(s3.folder_bytes(new))
        # the series the newer manifest no longer lists: reported, and kept with its files
        gone = f"{first} (s3://{s3.bucket}/{s3.folders[first]}/)"
        assert report.no_longer_listed == [gone]
        assert "no longer listed (kept): " + gone in report.summary()
        assert report.to_dict()["no_longer_listed"] == [gone]
        assert any(first in k for k in after)
        assert (await mirror.status())["series"]["total"] == len(uids)
        # the recorded selection is the newer manifest's: a second sync fetches nothing
        s3.requests.clear()
        again = await mirror.sync()
        assert again.ok and again.no_longer_listed == [gone]
        assert all(k == "?list" for _m, k, _r in s3.requests)


async def test_status_metadata_and_verify_name_the_source(tmp_path: Path) -> None:
    async with bucket() as s3:
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        out = tmp_path / "out"
        mirror = Mirror(out, config(s3))
        assert (await mirror.download(build_selection(manifests=[str(manifest)]))).ok
        n = len(s3.folders)
        status = await mirror.status()
        assert status["sources"] == {
            f"idc:{s3.bucket}": {"total": n, "complete": n, "failed": 0, "pending": 0}
        }
        with (out / "metadata.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert {r["Source"] for r in rows} == {f"idc:{s3.bucket}"} and len(rows) == n
        # a damaged file: the problem names the SeriesInstanceUID and, beside it, the folder
        victim = sorted(p for p in out.rglob("*.dcm") if ".tcia-mirror" not in p.parts)[0]
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
        series_uid = victim.parent.name
        report = await mirror.verify()
        assert not report.ok
        assert report.problems and all(
            p["series"] == series_uid
            and p["bucket_folder"] == f"s3://{s3.bucket}/{s3.folders[series_uid]}/"
            for p in report.problems
        ), report.problems


async def test_two_objects_with_one_sop_uid_are_a_duplicate_sop(tmp_path: Path) -> None:
    async with bucket(multipart_every=0) as s3:
        uid = next(iter(s3.folders))
        folder = s3.folders[uid]
        key, body = sorted(s3.folder_bytes(uid).items())[0]
        s3.put(f"{folder}/zz-copy-of-{uuid.uuid4()}.dcm", body)  # same SOP UID, another key
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        out = tmp_path / "out"
        report = await Mirror(out, config(s3)).download(
            build_selection(manifests=[str(manifest)]), DownloadOptions(give_up_after=0)
        )
        assert not report.ok and report.exit_code == 1
        dup = [p for p in report.problems if p["kind"] == "duplicate_sop"]
        assert dup and all(p["series"] == uid for p in dup), report.problems
        assert report.failed == [uid]
        # one file under the SOP's name, holding the bytes the bucket holds for it
        named = [p for p in out.rglob("*.dcm") if p.parent.name == uid]
        assert len(named) == len(s3.folder_bytes(uid)) - 1
        assert body in {p.read_bytes() for p in named}
        # the other series are complete
        store = await SqliteStore.open(out, create=False)
        async with store:
            states = {s.uid: s.status for s in await store.series()}
        assert {u for u, st in states.items() if st != "complete"} == {uid}


@pytest.mark.parametrize("how", ["missing", "empty"])
async def test_a_folder_empty_or_missing_in_the_bucket_is_named(tmp_path: Path, how: str) -> None:
    async with bucket() as s3:
        lost = next(iter(s3.folders))
        folder = s3.folders[lost]
        if how == "empty":
            for key in list(s3.objects):
                if key.startswith(folder + "/"):
                    del s3.objects[key]
        else:
            s3.folders["1.2.3.999"] = str(uuid.uuid4())  # listed in the manifest, not in the bucket
            folder = s3.folders["1.2.3.999"]
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        report = await Mirror(tmp_path / "out", config(s3)).download(
            build_selection(manifests=[str(manifest)])
        )
        assert report.exit_code == 1
        assert report.missing == [f"s3://{s3.bucket}/{folder}/: empty or missing in the bucket"]
        assert folder in report.summary()
        assert report.status["series"]["complete"] == report.status["series"]["total"] > 0


class _Crash(BaseException):
    """A kill: raised from the rename seam, it skips every handler but ``finally``."""


@pytest.mark.parametrize("tamper", [False, True])
async def test_a_file_renamed_before_a_kill_is_adopted(tmp_path: Path, tamper: bool) -> None:
    async with bucket(multipart_every=0) as s3:  # plain-MD5 ETags: each file's MD5 is listed
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        renamed: list[Path] = []

        def crash_after_four(path: Path) -> None:
            renamed.append(path)
            if len(renamed) == 4:
                raise _Crash

        out = tmp_path / "out"
        killed = Mirror(out, config(s3), after_rename=crash_after_four)
        with pytest.raises(BaseException):  # noqa: B017 - the kill, perhaps in a group
            await killed.download(
                build_selection(manifests=[str(manifest)]), DownloadOptions(concurrency=1)
            )
        # the kill hit after the fourth rename (a batch already under way in another worker
        # may still have finished, as it would have before a real kill)
        last = renamed[3]
        assert last.is_file()
        key = next(k for k, o in s3.objects.items() if o.body == last.read_bytes())
        # files are renamed in batches: others of the crashed batch may be in place too
        by_body = {o.body: k for k, o in s3.objects.items()}
        on_disk = {by_body[p.read_bytes()] for p in out.rglob("*.dcm") if p.name[0] != "."}
        if tamper:  # same size, other bytes: the listing's MD5 refuses it
            data = bytearray(last.read_bytes())
            data[-1] ^= 0xFF
            last.write_bytes(bytes(data))
        s3.requests.clear()
        report = await Mirror(out, config(s3)).resume()
        assert report.ok, report.problems
        fetched = {k for m, k, _r in s3.requests if m in ("GET", "HEAD") and k != "?list"}
        assert key in on_disk and len(on_disk) >= 4
        if tamper:
            assert fetched == set(s3.objects) - on_disk | {key}
        else:
            assert fetched == set(s3.objects) - on_disk
            assert report.files_adopted >= 1
        assert last.read_bytes() == s3.objects[key].body
        assert (await Mirror(out).verify()).ok


@pytest.mark.parametrize("large", [False, True])
async def test_objects_go_to_a_worker_by_their_series_mean_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    """A series whose mean object is at least ``OBJECT_WORKER_MIN_MEAN`` has each object
    fetched, written and hashed in a worker process (no byte of it through the event loop);
    a series of smaller ones is worked on the loop. The sizes are the plan's (the listing's)."""
    async with bucket(multipart_every=0) as s3:
        means = [
            sum(map(len, bodies.values())) / len(bodies)
            for bodies in (s3.folder_bytes(uid) for uid in s3.folders)
        ]
        threshold = int(min(means)) if large else int(max(means)) + 1
        monkeypatch.setattr(pipeline, "OBJECT_WORKER_MIN_MEAN", threshold)
        object_streams: list[str] = []
        real_stream = zipproc.ZipWorkers.stream

        async def stream(self: zipproc.ZipWorkers, *a: object, **kw: object) -> object:
            if kw.get("object_name"):
                object_streams.append(str(kw["object_name"]))
            return await real_stream(self, *a, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(zipproc.ZipWorkers, "stream", stream)
        on_loop: list[int] = []
        real_take = pipeline._SingleFile.take

        async def take(self: pipeline._SingleFile, chunk: bytes) -> None:
            on_loop.append(len(chunk))
            await real_take(self, chunk)

        monkeypatch.setattr(pipeline._SingleFile, "take", take)
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        out = tmp_path / "out"
        report = await Mirror(out, config(s3)).download(build_selection(manifests=[str(manifest)]))
        assert report.ok, report.problems
        total = sum(len(o.body) for o in s3.objects.values())
        if large:
            assert len(object_streams) == len(s3.objects) and not on_loop
        else:
            assert not object_streams and sum(on_loop) == total
        got = sorted(b for b, _ino, _mtime in files(out).values())
        assert got == sorted(o.body for o in s3.objects.values())
