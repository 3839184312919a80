"""One run over the plan's series: lease, build each series' work, adopt, fetch its units
through the pipeline, retry within the give-up budget, record its outcome.

:class:`~tcia_mirror.engine.mirror.Mirror` builds a :class:`SeriesRunner` for each run; the
runner talks to the Store and Source protocols only.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio
from anyio.abc import TaskGroup

from tcia_mirror.engine.adopt import examine, unrecorded_files
from tcia_mirror.engine.pipeline import Fetcher, SeriesWork
from tcia_mirror.engine.reports import RunReport
from tcia_mirror.engine.scheduler import GiveUpBudget, Job, JobQueue
from tcia_mirror.engine.zipproc import ZipWorkers
from tcia_mirror.errors import (
    AuthError,
    BadRequestError,
    DataError,
    DiskError,
    LeaseLostError,
    NotFoundError,
    RemoteError,
    UnreachableError,
    one_error,
)
from tcia_mirror.fs.atomic import cleanup_taken_over
from tcia_mirror.progress import Progress
from tcia_mirror.records import Outcome, totals_problems
from tcia_mirror.sources.base import Mode, Source
from tcia_mirror.sources.http import RetryPolicy, Sleep
from tcia_mirror.sources.nbia.zipstream import ZipLimits
from tcia_mirror.store.base import SeriesState, Store

__all__ = ["IDLE_LOOK", "DownloadOptions", "SeriesRunner", "one_line"]

IDLE_LOOK = 2.0  # seconds between looks of a worker with nothing to lease while others work
# workers per connection: while one worker's file is synced and committed, another's body
# streams (the Fetcher lets --concurrency bodies stream at once)
WORKERS_PER_CONNECTION = 2
# leased series made ready at once: a series' store reads and folder looks cost a few thread
# hops; one at a time they bounded a run of many small series (400 series of 2 files: the
# workers waited on the next series ~40 ms a job)
PREPARE_AHEAD = 8
ZIP_WORKERS_MAX = 2  # measured on 2 cores (benchmarks/README.md, issue 9)


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    mode: Mode = "zip"
    concurrency: int = 8
    layout: str | None = None  # None: the mirror's recorded layout, else "default"
    dry_run: bool = False
    md5: bool = True  # use the profile's MD5-carrying image endpoint when it has one
    fsync: bool = True
    # a series is retried (capped exponential backoff between tries) until this many seconds
    # pass without one file of it committed; then it is given up for this run
    give_up_after: float = 600.0
    check_space: bool = True
    # a worker's hold on a series (PostgreSQL): renewed every lease/3 s; a series whose holder
    # stopped renewing for this long is taken over by another worker
    lease: float = 60.0
    # the archive's connection budget shared by every worker of the plan (recorded in the plan)
    max_connections_total: int | None = None
    # processes that inflate, hash and write ZIP entries beside the event loop's (0: on the
    # loop; None: one per core, at most ZIP_WORKERS_MAX)
    zip_workers: int | None = None


def zip_worker_count(opts: DownloadOptions) -> int:
    """ZIP worker processes for a run: none in single mode or with ``--zip-workers 0``."""
    if opts.mode != "zip":
        return 0
    if opts.zip_workers is not None:
        return max(0, opts.zip_workers)
    return min(ZIP_WORKERS_MAX, os.cpu_count() or 1)


@dataclass(slots=True)
class SeriesRunner:
    """Fetches the series a store hands out (all of them for SQLite, leases for PostgreSQL)."""

    root: Path
    progress: Progress
    owner: str  # this process's name on leases
    policy: RetryPolicy  # backoff between a series' tries
    sleep: Sleep
    clock: Callable[[], float]
    after_rename: Callable[[Path], None] | None = None  # fault seam (see Fetcher)
    opener: Callable[..., BinaryIO] = open  # how temp files are opened (tests inject ENOSPC)

    async def _work_for(self, store: Store, s: SeriesState) -> SeriesWork:
        insts = await store.instances(s.uid)
        w = SeriesWork(
            uid=s.uid,
            collection=s.collection,
            rel_dir=s.rel_dir or s.uid,
            expected=frozenset(i.sop_uid for i in insts),
            expected_count=s.expected_count,
            expected_bytes=s.expected_bytes,
            earlier_attempts=s.attempts,
        )
        for i in insts:
            if i.done and i.rel_path is not None:
                w.mark_done(i.sop_uid, i.rel_path, i.size or 0, i.md5)
            if i.expected_md5:  # stated by the archive in an earlier run: binds this one too
                w.archive_md5[i.sop_uid] = i.expected_md5
                w.md5_source[i.sop_uid] = i.md5_source or "archive"
        return w

    async def _adopt(self, store: Store, w: SeriesWork, report: RunReport) -> None:
        """Record the files a killed run renamed into place but never recorded (see _adopt).

        One directory listing per series; headers and MD5s are read in a worker thread, only
        for series with candidates (files named like a missing instance). Files that fail the
        checks are left and noted: the refetch of their instance replaces them.
        """
        if w.expected and w.expected <= w.done.keys():
            return  # nothing missing
        names = unrecorded_files(
            self.root,
            w.rel_dir,
            recorded=(rel for rel, _s, _m in w.done.values()),
            missing=(sop for sop in w.expected if sop not in w.done) if w.expected else None,
        )
        if not names:
            return
        known = await store.instances(w.uid)
        found = await anyio.to_thread.run_sync(
            lambda: examine(self.root, w.rel_dir, w.uid, names, known, w.archive_md5)
        )
        if found.adopted:
            await store.commit_instances(w.uid, found.adopted)
            for sop, rel, size, md5 in found.adopted:
                w.mark_done(sop, rel, size, md5)
                self.progress.on_bytes(size)  # in the mirror now: the byte total ends full
            report.files_adopted += len(found.adopted)
            self.progress.on_message(
                f"series {w.uid}: adopted {len(found.adopted)} file(s) renamed into place by "
                "a run that was stopped before recording them"
            )
        if found.refused:
            listed = "; ".join(f"{n}: {why}" for n, why in found.refused[:5])
            more = f" and {len(found.refused) - 5} more" if len(found.refused) > 5 else ""
            w.notes.append(f"not adopted, to be replaced if fetched again: {listed}{more}")

    @staticmethod
    def _jobs_for(source: Source, w: SeriesWork, mode: Mode) -> list[Job]:
        jobs = [Job(w, unit) for unit in source.units(w.view(), mode)]
        w.outstanding += len(jobs)
        return jobs

    async def run(
        self, store: Store, source: Source, opts: DownloadOptions, report: RunReport
    ) -> None:
        """Rounds of leasing and fetching until nothing is left to lease and no other worker
        holds a live lease (a lease that runs out is taken over by the next round)."""
        while True:
            others = await store.live_leases(self.owner)
            if await self._fetch_round(store, source, opts, report):
                continue
            if not others:
                return
            # others still work: look again soon (the last series may end any moment), and
            # at least as often as a stale lease could be taken over
            await anyio.sleep(min(opts.lease / 3, IDLE_LOOK))

    async def _fetch_round(
        self, store: Store, source: Source, opts: DownloadOptions, report: RunReport
    ) -> int:
        """Lease series one at a time as the workers need jobs, fetch them, record each
        outcome and give the lease back; how many series this round leased."""
        first = await store.claim(self.owner, 1, opts.lease)
        if not first:
            return 0
        procs = zip_worker_count(opts)
        zip_workers = (
            ZipWorkers(procs, root=self.root, fsync=opts.fsync, limits=ZipLimits())
            if procs
            else None
        )
        fetcher = Fetcher(
            source,
            store,
            self.root,
            self.progress,
            md5=opts.md5,
            fsync=opts.fsync,
            after_rename=self.after_rename,
            opener=self.opener,
            connections=opts.concurrency,
            zip_workers=zip_workers,
        )
        summary = await store.summary()
        self.progress.on_start(
            series_total=summary["series"]["total"],
            series_done=summary["series"]["complete"],
            bytes_total=summary["bytes"]["total"],
            bytes_done=summary["bytes"]["complete"],
        )
        budget = GiveUpBudget(opts.give_up_after, self.policy, self.clock)
        round_ = _Round(self, store, source, opts, report, fetcher, budget, claimed=len(first))
        try:
            async with zip_workers or nullcontext():
                await round_.run(first)
        finally:
            report.bytes_received += fetcher.bytes_received
            report.files_committed += fetcher.files_committed
        return round_.claimed

    async def _finalize(self, store: Store, w: SeriesWork, report: RunReport) -> None:
        found = len(w.done)
        found_bytes = sum(size for _p, size, _m in w.done.values())
        missing = w.missing()
        if missing:
            w.problem(
                "missing_instances",
                expected=len(w.expected),
                found=found,
                detail=(w.notes[-1] if w.notes else None),
            )
        else:
            w.problems += totals_problems(
                w.uid,
                expected_count=w.expected_count,
                expected_bytes=w.expected_bytes,
                found_count=found,
                found_bytes=found_bytes,
            )
        problems = [p.to_dict() for p in w.problems]
        outcome = Outcome.FAILED if problems else Outcome.COMPLETE
        error = "; ".join(sorted({p.kind for p in w.problems})) or None
        try:
            await store.set_series_status(w.uid, outcome, error=error)
        except LeaseLostError:
            return  # another worker took the series over: its outcome is that worker's
        await store.release(w.uid)
        report.series.append(
            {
                "series": w.uid,
                "collection": w.collection,
                "dir": w.rel_dir,
                "expected_count": w.expected_count,
                "found_count": found,
                "expected_bytes": w.expected_bytes,
                "found_bytes": found_bytes,
                "attempts": w.attempts,
                # instances checked against an MD5 the archive stated, and those with only ours
                "archive_md5": sum(1 for sop in w.done if sop in w.archive_md5),
                "local_md5": sum(1 for sop in w.done if sop not in w.archive_md5),
                "outcome": str(outcome),
                "problems": problems,
                "notes": w.notes[-5:],
            }
        )
        report.problems.extend(problems)
        self.progress.on_series(w.uid, str(outcome))


@dataclass(eq=False)
class _Round:
    """One round of a run: a queue of jobs fed by the series leased as the workers need them,
    ``--concurrency`` x ``WORKERS_PER_CONNECTION`` workers taking them, each series' next tries
    (after a backoff) or its outcome once its jobs are done."""

    runner: SeriesRunner
    store: Store
    source: Source
    opts: DownloadOptions
    report: RunReport
    fetcher: Fetcher
    budget: GiveUpBudget
    claimed: int  # series leased so far
    lost: set[str] = field(default_factory=set)  # series whose lease another worker took over
    queue: JobQueue = field(init=False)
    tg: TaskGroup = field(init=False)

    async def run(self, first: list[SeriesState]) -> None:
        self.queue = JobQueue(self._jobs(first))
        try:
            async with one_error(), anyio.create_task_group() as tg:
                self.tg = tg
                for _ in range(self.opts.concurrency * WORKERS_PER_CONNECTION):
                    tg.start_soon(self._worker)
        finally:
            await self.queue.aclose()

    async def _jobs(self, first: list[SeriesState]) -> AsyncGenerator[Job]:
        """The jobs of each leased series, in plan order; the next series is leased when the
        workers have taken these. Up to ``PREPARE_AHEAD`` leased series are made ready at once
        (in the round's task group: their store reads and folder looks overlap), and a series'
        jobs are handed out as soon as it and those before it are ready."""
        batch = first
        while batch:
            jobs: dict[int, list[Job]] = {}
            ready: dict[int, anyio.Event] = {}
            for i in range(len(batch) + PREPARE_AHEAD):
                if i < len(batch):  # start making series i ready
                    ready[i] = anyio.Event()
                    self.tg.start_soon(self._prepare, batch[i], jobs, i, ready[i])
                if (j := i - PREPARE_AHEAD + 1) >= 0 and j < len(batch):  # hand series j out
                    await ready.pop(j).wait()
                    for job in jobs.pop(j, []):
                        yield job
            batch = await self.store.claim(self.runner.owner, 1, self.opts.lease)
            self.claimed += len(batch)

    async def _prepare(
        self, s: SeriesState, jobs: dict[int, list[Job]], i: int, ready: anyio.Event
    ) -> None:
        """One leased series made ready: its jobs in ``jobs[i]`` (none: it is finished)."""
        runner, store = self.runner, self.store
        try:
            # temp files of a worker that held this series before are no one's now
            folder = runner.root / (s.rel_dir or s.uid)
            await anyio.to_thread.run_sync(cleanup_taken_over, folder)
            w = await runner._work_for(store, s)
            await runner._adopt(store, w, self.report)
            self.budget.begin(w)
            jobs[i] = runner._jobs_for(self.source, w, self.opts.mode)
            if not jobs[i]:
                await runner._finalize(store, w, self.report)
        finally:
            ready.set()  # (a failure stops the round through its task group)

    async def _wake(self, delay: float, jobs: list[Job]) -> None:
        await self.runner.sleep(delay)
        self.queue.done(jobs)

    async def _next_round(self, w: SeriesWork) -> list[Job]:
        """The round of ``w`` is over: its next tries now, after a backoff, or it is done."""
        delay = self.budget.end_round(w)
        if delay is not None and (jobs := self.runner._jobs_for(self.source, w, self.opts.mode)):
            if delay <= 0:
                return jobs  # progress was made: straight on
            self.queue.later()  # the tries are queued once the backoff has passed
            self.tg.start_soon(self._wake, delay, jobs)
            return []
        await self.runner._finalize(self.store, w, self.report)
        return []

    async def _run_job(self, job: Job) -> list[Job]:
        w, budget = job.work, self.budget
        budget.start(w)
        try:
            if job.unit.kind == "archive":
                w.attempts += 1
                await self.store.count_attempt(w.uid)  # counted before a kill can stop it
            await self.fetcher.fetch(w, job.unit)  # a refusal of what came is recorded on w
        except (AuthError, UnreachableError, DiskError):
            raise  # the run cannot go on: stop, keep what is committed
        except LeaseLostError as exc:  # another worker took the series over: leave it
            self.lost.add(w.uid)
            w.notes.append(one_line(exc))
        except (BadRequestError, NotFoundError) as exc:
            w.problem("archive_refused", found=str(exc))
            budget.refused.add(w.uid)  # retrying will not help
        except DataError as exc:
            w.notes.append(one_line(exc))
            budget.failed_try.add(w.uid)
            if job.unit.kind == "archive":
                w.zip_untrusted = True  # a broken or hostile ZIP: finish with single images
        except RemoteError as exc:  # TransferError too: a body cut mid-way
            w.notes.append(one_line(exc))  # the run report's notes: one line per failed try
            budget.failed_try.add(w.uid)
        w.outstanding -= 1
        if w.outstanding > 0:
            return []
        if w.uid in self.lost:
            return []  # its new holder records the outcome
        return await self._next_round(w)

    async def _worker(self) -> None:
        while (job := await self.queue.get()) is not None:
            follow: list[Job] = []
            try:
                follow = await self._run_job(job)
            finally:
                self.queue.done(follow)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
