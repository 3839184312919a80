"""ZIP worker processes (issue 9): a ZIP's byte work in another process gives the same mirror as
on the event loop, and a worker that dies, a run that is cancelled or a parent that is killed
leave no temp file behind and lose nothing committed."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_reliability import dataset, make_zip, series_entries

from helpers import config_for, dicom_files, ground_truth_files, running_sim
from tcia_mirror.engine import pipeline, zipproc
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.engine.pipeline import Fetcher, SeriesWork
from tcia_mirror.engine.run import zip_worker_count
from tcia_mirror.engine.zipproc import ZipWorkers
from tcia_mirror.engine.zipworker import DATA, OPEN, TO_WORKER
from tcia_mirror.errors import DiskError, TransferError
from tcia_mirror.fs.atomic import disk_error
from tcia_mirror.progress import NullProgress
from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import FetchUnit
from tcia_mirror.sources.nbia.zipstream import ZipLimits
from tcia_mirror.store.base import SeriesPlan
from tcia_mirror.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


def _parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


def _mirror_files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in root.rglob("*.dcm")
    }


@pytest.mark.parametrize("profile", ["nbia-v4", "nbia-v1"])
async def test_worker_processes_and_the_event_loop_make_the_same_mirror(
    tmp_path: Path, profile: str
) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        mirrors = {}
        for procs in (0, 2):
            root = tmp_path / f"w{procs}"
            report = await Mirror(root, config_for(sim, profile)).download(
                Selection(collection=coll), DownloadOptions(zip_workers=procs)
            )
            assert report.ok, report.problems
            mirrors[procs] = _mirror_files(root)
            assert not _parts(root)
    assert mirrors[0] and mirrors[0] == mirrors[2]


class _TwoHalves:
    """A Source whose ZIP comes in two chunks; ``between`` runs after the first."""

    def __init__(self, body: bytes, between: Callable[[], None]) -> None:
        self.body, self.between = body, between

    def states_md5(self, unit: FetchUnit, *, md5: bool) -> str | None:
        return None

    @asynccontextmanager
    async def open(  # bytes: the transport is not taken
        self, unit: FetchUnit, *, md5: bool, transport: object = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async def body() -> AsyncIterator[bytes]:
            half = len(self.body) // 2
            yield self.body[:half]
            await anyio.sleep(0.2)  # the first half's entries are handed over meanwhile
            self.between()
            yield self.body[half:]

        yield body()


async def test_a_worker_that_dies_mid_zip_costs_a_retry_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    ds = dataset()
    uid = ds.series[1].series_uid
    entries = series_entries(ds, uid)
    body = make_zip(entries)
    store = await SqliteStore.open(tmp_path, create=True)
    async with store, ZipWorkers(1, root=tmp_path, fsync=True, limits=ZipLimits()) as zw:
        await store.record_plan([SeriesPlan(uid, "C", "P", "1.2", len(entries), None)])
        work = SeriesWork(uid, "C", "C/P/S", frozenset(), len(entries), None)

        def kill() -> None:
            for w in zw._workers:  # the test reaches in: there is no other way to kill one
                w.proc.kill()

        fetcher = Fetcher(
            _TwoHalves(body, kill), store, tmp_path, NullProgress(),  # type: ignore[arg-type]
            zip_workers=zw,
        )  # fmt: skip
        with pytest.raises(TransferError, match="ZIP worker process ended"):
            await fetcher.fetch_zip(work, FetchUnit(uid, "archive"))
        first = dict(work.done)
        assert len(first) < len(entries)  # what was complete before the kill may count
        assert not _parts(tmp_path)
        # the retry gets a new worker and finishes the series
        fetcher.source = _TwoHalves(body, lambda: None)  # type: ignore[assignment]
        await fetcher.fetch_zip(work, FetchUnit(uid, "archive"))
        assert len(work.done) == len(entries)
        assert {k: v for k, v in work.done.items() if k in first} == first
        assert fetcher.bytes_received == sum(len(d) for _n, d in entries)
    assert not _parts(tmp_path)
    on_disk = {hashlib.md5(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*.dcm")}
    assert on_disk == {hashlib.md5(d).hexdigest() for _n, d in entries}


class _CancelAfter(NullProgress):
    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope

    def on_bytes(self, n: int) -> None:
        self.scope.cancel()


async def test_a_cancelled_run_leaves_no_temp_file_of_its_workers(tmp_path: Path) -> None:
    """Regression: the workers' reply readers were cancelled with the run, so the aborts of
    its ZIPs went unanswered and the entries the workers had written stayed behind."""
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        for n in range(3):
            root = tmp_path / str(n)
            with anyio.CancelScope() as scope:
                m = Mirror(root, config_for(sim, "nbia-v4"), progress=_CancelAfter(scope))
                await m.download(Selection(collection=coll), DownloadOptions(zip_workers=2))
            assert scope.cancelled_caught
            assert not _parts(root)


def test_a_worker_whose_parent_is_gone_removes_what_it_had_not_handed_over(
    tmp_path: Path,
) -> None:
    """The parent killed (-9): the worker's input ends, it removes its unfinished entry's temp
    file and exits."""
    big = os.urandom(3 * 2**20)  # streamed to a temp file as it comes
    body = make_zip([("00000001.dcm", big)])
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcia_mirror.engine.zipworker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    args = (str(tmp_path), str(tmp_path), True, "1@host", "0123abcd", (2**30, 200.0, 1000), False)
    opened = pickle.dumps(args)
    proc.stdin.write(TO_WORKER.pack(OPEN, 1, len(opened)) + opened)
    piece = body[: len(body) * 2 // 3]  # inside the entry
    proc.stdin.write(TO_WORKER.pack(DATA, 1, len(piece)) + piece)
    proc.stdin.flush()
    proc.stdout.read(8)  # its reply: the chunk was worked
    assert len(_parts(tmp_path)) == 1  # the entry's temp file, named for the parent
    assert _parts(tmp_path)[0].name.split(".")[-3] == "1@host"
    proc.stdin.close()
    assert proc.wait(timeout=20) == 0
    proc.stdout.close()
    assert not _parts(tmp_path)


@pytest.mark.parametrize(
    ("opts", "spawned"),
    [
        (DownloadOptions(), min(2, os.cpu_count() or 1)),
        (DownloadOptions(zip_workers=1), 1),
        (DownloadOptions(zip_workers=0), 0),
        (DownloadOptions(mode="single"), 0),
    ],
)
async def test_how_many_worker_processes_a_run_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, opts: DownloadOptions, spawned: int
) -> None:
    """README: by default one per core, at most 2 (started as ZIPs need them); none with
    ``--zip-workers 0`` or in single mode."""
    started: list[object] = []
    real = zipproc._spawn

    async def counting() -> object:
        proc = await real()
        started.append(proc)
        return proc

    monkeypatch.setattr(zipproc, "_spawn", counting)
    assert zip_worker_count(opts) == spawned
    async with running_sim() as sim:
        s = sim.dataset.series  # more series than workers, fetched at once
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(series=tuple(x.series_uid for x in s[:4])), opts
        )
        assert report.ok, report.problems
    assert len(started) == spawned


async def test_a_series_of_tiny_instances_stays_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-file work dominates tiny instances: measured, a worker made 3,000 files of 1 KB
    slower (benchmarks/README.md, scenario 3). The test dataset's instances are 16x16."""
    monkeypatch.setattr(pipeline, "ZIP_WORKER_MIN_MEAN", 64 * 1024)
    started: list[object] = []
    real = zipproc._spawn

    async def counting() -> object:
        started.append(await real())
        return started[-1]

    monkeypatch.setattr(zipproc, "_spawn", counting)
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        report = await Mirror(tmp_path, config_for(sim)).download(Selection(collection=coll))
        assert report.ok, report.problems
    assert started == []
    assert _mirror_files(tmp_path)


def _spy_groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group of ZIP entries handed to a thread to be finished."""
    sizes: list[int] = []
    real = anyio.to_thread.run_sync

    async def spy(func: Callable[..., object], *args: Any, **kw: Any) -> object:
        if getattr(func, "__name__", "") == "finalize_group":
            sizes.append(len(args[0]))
        return await real(func, *args, **kw)

    monkeypatch.setattr(pipeline.anyio.to_thread, "run_sync", spy)
    return sizes


@pytest.mark.parametrize(("procs", "in_flight"), [(0, 8), (2, 8), (0, 2), (2, 2)])
async def test_zip_entries_are_finished_several_to_a_thread_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, procs: int, in_flight: int
) -> None:
    """Each task and thread hop cost the event loop's process about 0.3 ms: the entries a
    chunk (or a worker's reply) completed are finished in groups, on the loop and from a
    worker alike, and every entry is still finished once. With few entries allowed in flight
    (2), taking them waits for slots: groups stay within the bound."""
    monkeypatch.setattr(pipeline, "ZIP_WORKER_MIN_MEAN", 0)  # the test's instances are tiny
    monkeypatch.setattr(pipeline, "_PIPELINE", in_flight)
    sizes = _spy_groups(monkeypatch)
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        uids = [s.series_uid for s in sim.dataset.series if s.collection == coll]
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(collection=coll), DownloadOptions(zip_workers=procs)
        )
        assert report.ok, report.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim, uids)
    assert sum(sizes) == report.files_committed  # each entry finished once
    assert max(sizes) > 1, sizes  # several to a hop
    assert max(sizes) <= min(in_flight, pipeline._GROUP)  # noqa: SLF001


async def test_an_entry_that_fails_in_a_group_loses_none_of_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk error on the first entry of a group: the run stops with it, the group's other
    entries are still finished and committed, no temp file is left, and resume completes the
    mirror and keeps what was committed."""
    sizes = _spy_groups(monkeypatch)
    real = Fetcher._finalize_entry  # noqa: SLF001
    calls = 0

    def failing(self: Fetcher, entry: object, *args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first entry of the first group
            raise disk_error(OSError(28, "No space left on device"), "the first entry")
        return real(self, entry, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Fetcher, "_finalize_entry", failing)
    async with running_sim() as sim:
        uid = sim.dataset.series[0].series_uid
        cfg = config_for(sim)
        # no MD5 list: each entry is committed as it is finished, not kept for the list
        opts = DownloadOptions(zip_workers=0, concurrency=1, md5=False)
        with pytest.raises(DiskError, match="disk full while writing the first entry"):
            await Mirror(tmp_path, cfg).download(Selection(series=(uid,)), opts)
        assert sizes and sizes[0] >= 2, sizes  # the failure was inside a group, not alone
        assert not _parts(tmp_path)
        kept = dicom_files(tmp_path)
        assert len(kept) >= sizes[0] - 1  # the group's others were finished and committed
        monkeypatch.setattr(Fetcher, "_finalize_entry", real)
        second = await Mirror(tmp_path, cfg).resume(replace(opts, zip_workers=0))
        assert second.ok, second.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim, [uid])
    assert {n: dicom_files(tmp_path)[n] for n in kept} == kept
    assert not _parts(tmp_path)
