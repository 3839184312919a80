"""Shared machinery of the reliability suite and the soak: a simulator in its own thread, the
kill -9 / resume cycle, and inspections of a mirror (store snapshot, files, temp files).

Used by ``tests/system/test_crash_resume.py`` (fast, part of ``make test``) and ``tests/soak.py``
(``make soak``). Nothing here talks to the internet: the archive is the simulator on loopback.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tcia_mirror.fs.dicomio import read_ids
from tcia_mirror.sources.base import SeriesView
from tcia_mirror.sources.nbia.source import choose_units
from tcia_mirror.testing.simulator import Dataset, Faults, Simulator

T = TypeVar("T")
STATE = Path(".tcia-mirror") / "state.sqlite"
ZIP_ENDPOINTS = ("getImage", "getImageWithMD5Hash")


class SimThread:
    """A :class:`Simulator` serving from a background thread with its own event loop.

    Subprocesses (the CLI) talk to it over loopback. :meth:`call` runs a function in the
    simulator's loop thread, so reading its counters or changing its dataset never races.
    """

    def __init__(self, dataset: Dataset, **sim_kw: Any) -> None:
        self.sim = Simulator(dataset, **sim_kw)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="simulator", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def run() -> None:
            self._stop = asyncio.Event()
            async with self.sim:
                self._ready.set()
                await self._stop.wait()
            # handlers still sleeping (latency faults, clients that were killed): cancel them
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            loop.run_until_complete(run())
        finally:
            loop.close()

    def __enter__(self) -> SimThread:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the simulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the simulator's thread; its result (or exception) here."""
        assert self._loop is not None
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return fut.result(15)

    def base_url(self, profile: str = "nbia-v4") -> str:
        return self.sim.base_url(profile)

    def image_requests(self) -> dict[tuple[str, str, str | None], int]:
        return self.call(lambda: dict(self.sim.image_requests))

    def faults_injected(self) -> dict[str, int]:
        return self.call(lambda: dict(self.sim.faults_injected))

    def max_images_in_flight(self) -> int:
        """The most image requests the simulator answered at once since it started."""
        return self.call(lambda: self.sim.max_images_in_flight)

    def set_faults(self, faults: Faults) -> None:
        def swap() -> None:
            self.sim.faults = faults

        self.call(swap)


# -- inspecting a mirror ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Committed:
    series: str
    sop: str
    rel_path: str
    size: int
    md5: str | None


@dataclass(frozen=True, slots=True)
class StoreSnapshot:
    integrity: str
    committed: dict[str, Committed]  # SOP UID -> row (done instances only)
    series: dict[str, dict[str, Any]]  # series UID -> status, expected_count/bytes, counters


def read_store(root: Path) -> StoreSnapshot:
    """Read the state store as the next process will find it, without touching the original:
    the database and its WAL are copied aside first (opening the original would checkpoint it).
    """
    src = root / STATE
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "state.sqlite"
        shutil.copyfile(src, copy)
        wal = src.with_name(src.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        conn = sqlite3.connect(copy)
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            rows = conn.execute(
                "SELECT s.uid, i.sop_uid, i.rel_path, i.size, i.md5 FROM instance AS i "
                "JOIN series AS s ON s.id = i.series_id WHERE i.done"
            ).fetchall()
            series = {
                uid: {
                    "status": status,
                    "expected_count": ec,
                    "expected_bytes": eb,
                    "instance_count": n,
                    "done_count": d,
                    "done_bytes": b,
                    "attempts": a,
                }
                for uid, status, ec, eb, n, d, b, a in conn.execute(
                    "SELECT uid, status, expected_count, expected_bytes, instance_count, "
                    "done_count, done_bytes, attempts FROM series"
                )
            }
        finally:
            conn.close()
    committed = {sop: Committed(s, sop, rel, size, md5) for s, sop, rel, size, md5 in rows}
    return StoreSnapshot(integrity, committed, series)


def integrity_check(root: Path) -> str:
    conn = sqlite3.connect(root / STATE)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def part_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.part"))


def final_dicom_files(root: Path) -> dict[str, Path]:
    """``<SOP>.dcm`` files under their final names (temp files and the state folder excluded)."""
    out: dict[str, Path] = {}
    for p in root.rglob("*.dcm"):
        if ".tcia-mirror" in p.parts or p.name.startswith("."):
            continue
        assert p.stem not in out, f"two files for one SOP: {out[p.stem]} and {p}"
        out[p.stem] = p
    return out


class LazyTruth(Mapping[str, bytes]):
    """SOP UID -> the archive's file bytes, made on demand (bench-sized data fits in no dict)."""

    def __init__(self, dataset: Dataset, series: list[str] | None = None) -> None:
        self._ds = dataset
        self._where = {
            i.sop_uid: s.series_uid
            for s in dataset.series
            if series is None or s.series_uid in series
            for i in s.instances
        }

    def __getitem__(self, sop: str) -> bytes:
        return self._ds.instance_bytes(self._where[sop], sop)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def truth_by_sop(dataset: Dataset, series: list[str] | None = None) -> Mapping[str, bytes]:
    """SOP UID -> bytes of every instance (of ``series``) as the archive serves it now."""
    return LazyTruth(dataset, series)


def assert_final_files_correct(root: Path, truth: Mapping[str, bytes]) -> int:
    """Every file under its final name is a whole, byte-identical instance. Returns the count."""
    files = final_dicom_files(root)
    for sop, path in files.items():
        assert sop in truth, f"{path} is not an instance of the selection"
        assert path.read_bytes() == truth[sop], f"{path} differs from the archive's file"
    return len(files)


def assert_store_agrees_with_disk(
    root: Path, snap: StoreSnapshot, truth: Mapping[str, bytes]
) -> None:
    """Every instance the store calls done is on disk, whole, at the recorded path and size."""
    for c in snap.committed.values():
        path = root / c.rel_path
        assert path.is_file(), f"the store says {c.sop} is done but {path} is missing"
        data = path.read_bytes()
        assert len(data) == c.size, f"{path}: {len(data)} bytes on disk, store says {c.size}"
        assert data == truth[c.sop], f"{path} is recorded done but differs from the archive"


def prefers_single(n_expected: int, expected_bytes: int, n_missing: int, tries: int) -> bool:
    """The engine's own ZIP-or-single rule (``choose_units``) for a partly fetched series."""
    keys = [f"{i:06d}" for i in range(n_expected)]
    view = SeriesView(
        uid="s",
        expected=frozenset(keys),
        done=frozenset(keys[n_missing:]),
        expected_count=n_expected,
        expected_bytes=expected_bytes,
        archive_tries=tries,
        archive_untrusted=False,
    )
    return all(u.kind == "object" for u in choose_units(view, "zip"))


# -- the kill -9 cycle -----------------------------------------------------------------------


@dataclass
class CrashLog:
    cycles: int = 0
    kills: int = 0
    finished_early: list[int] = field(default_factory=list)  # exit codes of runs not killed
    resumes_to_finish: int = 0
    committed_at_kill: list[int] = field(default_factory=list)
    # SOP -> (getSingleImage count, inode, mtime_ns) when first seen committed
    first_commit: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    # series -> ZIP requests when the engine's rule switched it to single images
    single_from: dict[str, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "tcia_mirror", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCIA_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def startup_seconds() -> float:
    """How long this machine takes to start the command (kill windows are offset by it)."""
    t0 = time.monotonic()
    subprocess.run(cli_argv("--version"), capture_output=True, env=_env(), timeout=60, check=True)
    return time.monotonic() - t0


def run_cli(argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=timeout)


def _single_count(requests: dict[tuple[str, str, str | None], int], series: str, sop: str) -> int:
    return requests.get(("getSingleImage", series, sop), 0)


def _zip_count(requests: dict[tuple[str, str, str | None], int], series: str) -> int:
    return sum(requests.get((e, series, None), 0) for e in ZIP_ENDPOINTS)


def observe(st: SimThread, root: Path, truth: Mapping[str, bytes], log: CrashLog) -> StoreSnapshot:
    """After a process ended (killed or not): check the invariants and record first commits.
    Temp files of a killed run may remain until the next run starts."""
    if not (root / STATE).exists():
        return StoreSnapshot("ok", {}, {})
    snap = read_store(root)
    assert snap.integrity == "ok", snap.integrity
    assert_final_files_correct(root, truth)
    assert_store_agrees_with_disk(root, snap, truth)
    requests = st.image_requests()
    for c in snap.committed.values():
        if c.sop not in log.first_commit:
            s = (root / c.rel_path).stat()
            log.first_commit[c.sop] = (
                _single_count(requests, c.series, c.sop),
                s.st_ino,
                s.st_mtime_ns,
            )
    # a file the kill caught between its rename and its record counts as committed too (the
    # next run adopts it): from now on it must not be fetched again nor rewritten either
    for sop, path in final_dicom_files(root).items():
        ids = read_ids(path) if sop not in log.first_commit else None
        if ids is not None and ids.series_uid is not None:
            s = path.stat()
            log.first_commit[sop] = (
                _single_count(requests, ids.series_uid, sop),
                s.st_ino,
                s.st_mtime_ns,
            )
    for uid, row in snap.series.items():
        n, done = row["expected_count"] or 0, row["done_count"]
        if uid in log.single_from or not done or done >= n or not row["expected_bytes"]:
            continue
        if prefers_single(n, row["expected_bytes"], n - done, row.get("attempts") or 0):
            log.single_from[uid] = _zip_count(requests, uid)
    return snap


def crash_cycles(
    st: SimThread,
    out: Path,
    selection: list[str],
    truth: Mapping[str, bytes],
    *,
    kills: int,
    seed: int,
    window: tuple[float, float],
    extra: tuple[str, ...] = (),
    max_cycles: int | None = None,
    on_cycle: Callable[[int, str], None] | None = None,
) -> CrashLog:
    """Start download/resume subprocesses and SIGKILL each after a seeded random delay until
    ``kills`` kills happened (or ``max_cycles`` runs); check the invariants after every run."""
    rng = random.Random(seed)
    log = CrashLog()
    base = ("--out", str(out), "--no-progress", *extra)
    download = cli_argv("download", *selection, "--base-url", st.base_url(), *base)
    resume = cli_argv("resume", *base)
    limit = max_cycles or kills * 3
    while log.kills < kills and log.cycles < limit:
        started = (out / STATE).exists()
        argv = download if not started or rng.random() < 0.4 else resume
        delay = rng.uniform(*window)
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, env=_env(), text=True
            )
            try:
                rc = proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                rc = None
            err.seek(0)
            log.outputs.append(err.read())
        log.cycles += 1
        if rc is None:
            log.kills += 1
        else:
            assert rc in (0, 1), f"run {log.cycles} exited {rc}: {log.outputs[-1]}"
            log.finished_early.append(rc)
        snap = observe(st, out, truth, log)
        log.committed_at_kill.append(len(snap.committed))
        if on_cycle is not None:
            on_cycle(log.cycles, "killed" if rc is None else f"exit {rc}")
        if rc == 0:
            break  # the mirror is complete: nothing left to kill
    return log


def resume_until_done(
    st: SimThread, out: Path, truth: Mapping[str, bytes], log: CrashLog, *, attempts: int = 8
) -> subprocess.CompletedProcess[str]:
    proc = None
    for _ in range(attempts):
        proc = run_cli(cli_argv("resume", "--out", str(out), "--no-progress"))
        log.resumes_to_finish += 1
        observe(st, out, truth, log)
        if proc.returncode == 0:
            return proc
        assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    raise AssertionError(f"resume never finished: {proc.stdout if proc else ''}")


def assert_no_refetch(st: SimThread, root: Path, log: CrashLog) -> tuple[int, int]:
    """No committed instance was fetched again with getSingleImage nor rewritten on disk, and
    no series went back to a ZIP once the engine's rule preferred single images for it.
    Returns (committed instances checked, series checked)."""
    requests = st.image_requests()
    snap = read_store(root)
    for sop, (singles, ino, mtime) in log.first_commit.items():
        c = snap.committed.get(sop)
        assert c is not None, f"{sop} was committed, then lost"
        assert _single_count(requests, c.series, sop) == singles, f"{sop} fetched again"
        s = (root / c.rel_path).stat()
        assert (s.st_ino, s.st_mtime_ns) == (ino, mtime), f"{c.rel_path} was rewritten"
    for uid, zips in log.single_from.items():
        assert _zip_count(requests, uid) == zips, f"series {uid}: ZIP fetched again"
    return len(log.first_commit), len(log.single_from)


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def walk_files(root: Path) -> Iterator[Path]:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            yield Path(folder, name)
