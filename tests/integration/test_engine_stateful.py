"""A hypothesis state machine over the mirror engine and the simulator (issue 5).

Random interleavings of: downloads while the archive drops connections and truncates ZIPs,
runs cancelled part-way (after N bytes), the window of a crash between a file's rename and its
checkpoint, resumes, the archive releasing a new patient (then sync), and files tampered with on
disk (then verify and repair). After every step:

* every file under its final name is complete and byte-identical to the archive's;
* every instance the store calls done is on disk at the recorded path with the recorded size,
  and a series the store calls complete has all its instances done;
* no temp file is left once a run has ended; the store passes ``PRAGMA integrity_check``.

At the end the faults stop and the mirror must converge to the archive exactly.

The archive and the engine run in one event loop in a blocking portal's thread; each rule does
its async work through the portal. ``TCIA_STATEFUL_EXAMPLES=N`` runs more (random) examples.
"""

from __future__ import annotations

import datetime
import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from reliability_kit import (
    Committed,
    assert_final_files_correct,
    assert_store_agrees_with_disk,
    final_dicom_files,
    part_files,
    read_store,
    truth_by_sop,
)
from tcia_mirror.engine.mirror import DownloadOptions, Mirror, RunReport
from tcia_mirror.progress import NullProgress
from tcia_mirror.selection import Selection
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.sources.nbia.profiles import load_profile
from tcia_mirror.store.sqlite import StateStore
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults, Simulator

T = TypeVar("T")
EXAMPLES = int(os.environ.get("TCIA_STATEFUL_EXAMPLES", "0"))
STEPS = int(os.environ.get("TCIA_STATEFUL_STEPS", "6"))
RATES = st.sampled_from([0.0, 0.25, 0.5])
PICK = st.integers(0, 2**16)
_ids = itertools.count()


async def no_wait(_seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


class CancelAfter(NullProgress):
    def __init__(self, after: int, scope: anyio.CancelScope) -> None:
        self.after, self.scope, self.seen = after, scope, 0

    def on_bytes(self, n: int) -> None:
        self.seen += n
        if self.seen >= self.after:
            self.scope.cancel()


class MirrorMachine(RuleBasedStateMachine):
    portal: BlockingPortal
    base: Path

    def __init__(self) -> None:
        super().__init__()
        self.faults = Faults(seed=next(_ids))
        # one collection, 3 patients, two series each, 2-6 instances: small but varied
        spec = DatasetSpec(
            collections=("SIM-LUNG-CT",), patients=(3,), instances_per_series=(2, 6), seed=1
        )
        self.ds = Dataset(spec)
        self.sim = Simulator(self.ds, faults=self.faults)
        self.call(self.sim.start)
        self.root = self.base / f"mirror-{next(_ids)}"
        self.selection = Selection(collection="SIM-LUNG-CT")
        self.started = False
        self.run_ended = True  # no run in progress, none left temp files behind

    # -- plumbing ------------------------------------------------------------------------------
    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal.call(fn, *args)

    def mirror(self, progress: Any = None) -> Mirror:
        cfg = ClientConfig(
            profile=load_profile("nbia-v4"),
            base_url=self.sim.base_url("nbia-v4"),
            retry=RetryPolicy(attempts=4, base=0.0, cap=0.0, jitter=0.0, max_retry_after=0.0),
        )
        return Mirror(self.root, cfg, progress=progress, sleep=no_wait)

    def series_uids(self) -> list[str]:
        return [s.series_uid for s in self.ds.series]

    def check_report(self, report: RunReport) -> None:
        """Whatever was not finished is named; a run that says ok finished everything."""
        snap = read_store(self.root)
        for uid, row in snap.series.items():
            if row["status"] != "complete" and any(s["series"] == uid for s in report.series):
                assert uid in report.failed, f"series {uid} unfinished but not named"
        if report.ok:
            assert all(row["status"] == "complete" for row in snap.series.values())

    def run(self, what: Callable[[Mirror], Awaitable[RunReport]]) -> RunReport:
        self.run_ended = False
        report = self.call(what, self.mirror())
        self.run_ended = True
        self.started = True
        self.check_report(report)
        return report

    def teardown(self) -> None:
        try:
            if self.started:
                self.faults.drop_rate = self.faults.truncate_rate = 0.0
                report = self.call(lambda m: m.sync(), self.mirror())
                if not report.ok:
                    report = self.call(lambda m: m.resume(), self.mirror())
                assert report.ok, report.summary()
                truth = truth_by_sop(self.ds)
                assert set(final_dicom_files(self.root)) == set(truth)
                assert_final_files_correct(self.root, truth)
                verdict = self.call(lambda: Mirror(self.root).verify())
                assert verdict.ok, verdict.problems
                self.check()
        finally:
            self.call(self.sim.stop)

    # -- rules ---------------------------------------------------------------------------------
    @initialize()
    def nothing_yet(self) -> None:
        assert not self.root.exists()

    @rule(drop=RATES, truncate=RATES, mode=st.sampled_from(["zip", "single"]))
    def download_with_faults(self, drop: float, truncate: float, mode: str) -> None:
        self.faults.drop_rate, self.faults.truncate_rate = drop, truncate
        try:
            self.run(lambda m: m.download(self.selection, DownloadOptions(mode=mode)))  # type: ignore[arg-type]
        finally:
            self.faults.drop_rate = self.faults.truncate_rate = 0.0

    @rule(after=st.integers(1, 30_000), drop=RATES, mode=st.sampled_from(["zip", "single"]))
    def cancel_part_way(self, after: int, drop: float, mode: str) -> None:
        async def cancelled() -> bool:
            with anyio.CancelScope() as scope:
                m = self.mirror(progress=CancelAfter(after, scope))
                await m.download(self.selection, DownloadOptions(mode=mode))  # type: ignore[arg-type]
            return scope.cancelled_caught

        self.faults.drop_rate = drop
        self.run_ended = False
        try:
            self.call(cancelled)
        finally:
            self.faults.drop_rate = 0.0
        self.run_ended = True
        self.started = self.started or (self.root / ".tcia-mirror").exists()

    @precondition(lambda self: self.started)
    @rule()
    def resume(self) -> None:
        self.run(lambda m: m.resume())

    @rule(n_series=st.integers(1, 2))
    def archive_adds_a_patient(self, n_series: int) -> None:
        today = datetime.date.today()
        self.call(self._add, n_series, today)

    async def _add(self, n_series: int, released: datetime.date) -> None:
        self.ds.add_patient("SIM-LUNG-CT", released=released, n_series=n_series)

    @precondition(lambda self: self.started)
    @rule(since=st.booleans())
    def sync(self, since: bool) -> None:
        day = datetime.date.today() - datetime.timedelta(days=1) if since else None
        self.run(lambda m: m.sync(since=day))

    def committed(self) -> list[Committed]:
        return sorted(read_store(self.root).committed.values(), key=lambda c: c.sop)

    # Which files the runs committed depends on timing, so rules draw plain numbers (the same
    # shape whatever happened) and map them onto the files there are now.
    @precondition(lambda self: self.started and bool(read_store(self.root).committed))
    @rule(pick=PICK)
    def crash_between_rename_and_checkpoint(self, pick: int) -> None:
        """What a kill -9 can leave: a whole file whose commit was never recorded, and a temp
        file of the dead process."""
        committed = self.committed()
        c = committed[pick % len(committed)]
        with StateStore.open(self.root, create=False) as store, store.lock():
            store.uncommit_instances(c.series, [c.sop])
        path = self.root / c.rel_path
        (path.parent / f".{path.name}.999999.deadbeef.part").write_bytes(b"half a file")
        self.run_ended = False  # temp files allowed until the next run

    @precondition(lambda self: self.started and bool(read_store(self.root).committed))
    @rule(picks=st.lists(PICK, min_size=1, max_size=3),
          how=st.sampled_from(["delete", "truncate", "flip", "swap"]))  # fmt: skip
    def tamper_then_verify(self, picks: list[int], how: str) -> None:
        committed = self.committed()
        victims = list({c.sop: c for c in (committed[p % len(committed)] for p in picks)}.values())
        paths = [self.root / c.rel_path for c in victims]
        if how == "swap" and len(paths) < 2:
            how = "flip"
        if how == "delete":
            for p in paths:
                p.unlink()
        elif how == "truncate":
            for p in paths:
                p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        elif how == "flip":
            for p in paths:
                raw = bytearray(p.read_bytes())
                raw[-1] ^= 0xFF
                p.write_bytes(bytes(raw))
        else:
            blobs = [p.read_bytes() for p in paths]
            for p, blob in zip(paths, blobs[1:] + blobs[:1], strict=True):
                p.write_bytes(blob)
        verdict = self.call(lambda: Mirror(self.root).verify())
        named = {p.get("sop") for p in verdict.problems}
        assert not verdict.ok and {c.sop for c in victims} <= named, (how, verdict.problems)
        # the damaged files are forgotten by the store, so the repair fetches exactly them
        assert not {c.sop for c in victims} & set(read_store(self.root).committed)
        self.run(lambda m: m.resume())
        truth = truth_by_sop(self.ds)
        for c, p in zip(victims, paths, strict=True):
            assert p.read_bytes() == truth[c.sop], f"{p} not repaired after {how}"

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def check(self) -> None:
        truth = truth_by_sop(self.ds)
        assert_final_files_correct(self.root, truth)
        if not (self.root / ".tcia-mirror" / "state.sqlite").exists():
            return
        snap = read_store(self.root)
        assert snap.integrity == "ok"
        assert_store_agrees_with_disk(self.root, snap, truth)
        for uid, row in snap.series.items():
            if row["status"] == "complete":
                assert row["done_count"] == row["instance_count"] == row["expected_count"], uid
        if self.run_ended:
            assert part_files(self.root) == []


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as p:
        yield p


def test_engine_state_machine(portal: BlockingPortal, tmp_path: Path) -> None:
    MirrorMachine.portal = portal
    MirrorMachine.base = tmp_path
    run_state_machine_as_test(
        MirrorMachine,
        settings=settings(
            max_examples=EXAMPLES or 12,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=not EXAMPLES,  # CI: the same examples every time; soak: fresh ones
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            print_blob=True,
        ),
    )
