"""The mirror engine: plan -> bounded async fetch -> checkpoints -> verify, with reports.

:class:`Mirror` is the library face of every CLI command (plan, download, resume, verify,
status, sync). It never imports the CLI or tqdm; progress goes to a :class:`Progress` sink.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio

from tcia_mirror.engine.reports import (
    RunReport,
    VerifyReport,
    human,
    now,
    stamp,
    write_json,
    write_metadata_csv,
    write_run_report,
)
from tcia_mirror.engine.run import IDLE_LOOK, DownloadOptions, SeriesRunner, one_line
from tcia_mirror.engine.verifier import check_series
from tcia_mirror.errors import (
    DiskError,
    InputError,
    RateLimitedError,
    ServerError,
    StateError,
    one_error,
)
from tcia_mirror.fs.atomic import cleanup_temp_files
from tcia_mirror.fs.layout import Layout
from tcia_mirror.progress import NullProgress, Progress
from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import PlanResult, Source
from tcia_mirror.sources.http import RetryPolicy, Sleep, real_sleep
from tcia_mirror.sources.nbia.clientconfig import ClientConfig
from tcia_mirror.store.base import STATE_DIR, SeriesState, Store
from tcia_mirror.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from tcia_mirror.sources.nbia.client import ArchiveClient

T = TypeVar("T")
PLAN_CONCURRENCY = 32  # planning requests at once (at least; 2 x --concurrency when larger)
META_FIELDS = ("selection", "layout", "api", "base_url", "s3_endpoint", "last_sync")
MAX_CONNECTIONS_TOTAL = 16  # the default budget of archive connections across all workers


def _default_source(client: ArchiveClient) -> Source:
    """The archive's series and IDC buckets' (imported here: commands that do not talk to the
    archive, such as ``status``, start without aiohttp)."""
    from tcia_mirror.sources.routing import default_source  # noqa: PLC0415

    return default_source(client)


class Mirror:
    """A local mirror folder and the archive it follows.

    ``config`` may be None for commands that do not talk to the archive (status, verify).
    ``after_rename`` is a fault seam for tests: called with each file right after it is renamed
    into place and before the store records it (the window a kill -9 can hit).
    """

    def __init__(
        self,
        out: str | Path,
        config: ClientConfig | None = None,
        *,
        progress: Progress | None = None,
        sleep: Sleep = real_sleep,
        clock: Callable[[], float] = time.monotonic,
        after_rename: Callable[[Path], None] | None = None,
        open_store: Callable[..., Awaitable[Store]] = SqliteStore.open,
        make_source: Callable[[ArchiveClient], Source] | None = None,
        opener: Callable[..., BinaryIO] = open,
    ) -> None:
        self.root = Path(out)
        self.config = config
        self.progress: Progress = progress or NullProgress()
        self._sleep = sleep
        self._clock = clock  # measures --give-up-after; tests inject a fake one with ``sleep``
        self._after_rename = after_rename  # test seam: see Fetcher
        self._open_store_with = open_store  # the Store backend (tests/contract)
        self._make_source = make_source or _default_source  # the Source backend (tests/contract)
        self._opener = opener  # how temp files are opened (tests inject ENOSPC, EROFS)
        # this process's name on leases and connection slots (temp files carry host and pid too)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"

    # -- the folder and its store ------------------------------------------------------------
    async def _open_store(self, *, create: bool) -> Store:
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--out {self.root} exists and is not a folder")
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DiskError(
                    f"cannot create the mirror folder {self.root}: {exc.strerror}"
                ) from None
        return await self._open_store_with(self.root, create=create)

    @staticmethod
    def exists(out: str | Path) -> bool:
        """Whether ``out`` holds a mirror (a plan was started there)."""
        return (Path(out) / STATE_DIR).is_dir()

    async def recorded(self) -> dict[str, str | None]:
        """What the mirror recorded (selection, layout, api, base_url, last_sync); no secrets."""
        store = await self._open_store(create=False)
        async with store:
            return {k: await store.get_meta(k) for k in META_FIELDS}

    def _client(self, concurrency: int) -> ArchiveClient:
        if self.config is None:
            raise InputError("this command needs the archive: give --api / --base-url")
        from tcia_mirror.sources.nbia.client import ArchiveClient  # noqa: PLC0415 - see _default_source

        cfg = replace(self.config, max_connections=max(1, concurrency))
        return ArchiveClient(cfg, sleep=self._sleep)

    def _runner(self) -> SeriesRunner:
        return SeriesRunner(
            root=self.root,
            progress=self.progress,
            owner=self.owner,
            policy=self.config.retry if self.config is not None else RetryPolicy(),
            sleep=self._sleep,
            clock=self._clock,
            after_rename=self._after_rename,
            opener=self._opener,
        )

    async def _layout(self, store: Store, wanted: str | None) -> Layout:
        recorded = await store.get_meta("layout")
        if wanted and recorded and wanted != recorded and await store.series():
            raise InputError(
                f"this mirror uses layout {recorded!r}; a different --layout needs another --out"
            )
        spec = wanted or recorded or "default"
        layout = Layout.parse(spec)
        await store.set_meta("layout", spec)
        return layout

    async def _record_connection(self, store: Store, selection: Selection | None = None) -> None:
        if self.config is not None:
            await store.set_meta("api", self.config.profile.name)
            if self.config.base_url:  # a password in the URL is never stored
                await store.set_meta("base_url", _without_password(self.config.base_url))
            if self.config.s3_endpoint:  # buckets are anonymous: the endpoint is no secret
                await store.set_meta("s3_endpoint", _without_password(self.config.s3_endpoint))
            elif (
                selection is not None
                and (named := selection.s3_endpoint())
                and not await store.get_meta("s3_endpoint")
            ):  # the endpoint a manifest's header named, recorded as if given by flag
                await store.set_meta("s3_endpoint", _without_password(named))

    # -- plan --------------------------------------------------------------------------------
    async def _plan_into(
        self,
        store: Store,
        source: Source,
        selection: Selection,
        layout: Layout,
        concurrency: int,
    ) -> PlanResult:
        known = {s.uid: s for s in await store.series()}
        self.progress.on_message(f"planning {selection.describe()}")
        plan = await source.plan(
            selection, concurrency=concurrency, known=known, on_message=self.progress.on_message
        )
        await store.record_plan(plan.series)
        for p in plan.series:
            state = await store.get_series(p.uid)
            if state is not None and state.rel_dir is None:
                await store.set_series_status(
                    p.uid, state.status, error=state.error, rel_dir=str(layout.series_dir(p.fields))
                )
        await store.set_meta("selection", selection.to_json())
        # last: a run killed before this point left a partial plan, which resume redoes
        await store.set_meta("planned", selection.to_json())
        return plan

    async def plan(
        self,
        selection: Selection,
        *,
        concurrency: int = 8,
        layout: str | None = None,
        max_connections_total: int | None = None,
    ) -> PlanResult:
        """Expand the selection and record the plan; fetch nothing."""
        store = await self._open_store(create=True)
        async with store, store.lock():
            await self._refuse_while_workers_run(store, "plan")
            recorded = await store.get_meta("selection")
            if recorded:
                selection = Selection.from_json(recorded).union(selection)
            lay = await self._layout(store, layout)
            await self._record_budget(store, max_connections_total)
            await self._record_connection(store, selection)
            async with self._client(concurrency) as client:
                return await self._plan_into(
                    store, self._make_source(client), selection, lay, concurrency
                )

    # -- download / resume / sync ------------------------------------------------------------
    async def download(
        self, selection: Selection | None = None, options: DownloadOptions | None = None
    ) -> RunReport:
        """Plan (new selection) or pick up the recorded plan (resume), then fetch what is missing."""
        return await self._run("download" if selection else "resume", selection, options)

    async def resume(self, options: DownloadOptions | None = None) -> RunReport:
        return await self._run("resume", None, options)

    async def work(self, options: DownloadOptions | None = None) -> RunReport:
        """Work the recorded plan as one of many workers: lease series, fetch, commit, release;
        return when nothing is left to lease and no other worker holds a live lease."""
        return await self._run("work", None, options)

    async def _refuse_while_workers_run(self, store: Store, command: str) -> None:
        """A shared plan (PostgreSQL) is not re-planned or verified under running workers: a
        re-plan can add instances to a series a worker holds (which it would then mark complete
        without them), and verify would check, and forget, files a worker is writing. The
        SQLite file lock already keeps them apart (``live_leases`` is 0 there)."""
        if n := await store.live_leases(self.owner):
            raise StateError(
                f"{n} series are leased by running workers; `{command}` waits until they have "
                "finished or stopped (a stopped worker gives its series back; a killed one's "
                "expire after --lease seconds); `tcia-mirror status` shows them as workers"
            )

    async def _record_budget(self, store: Store, total: int | None) -> None:
        if total is not None and total < 1:
            raise InputError("--max-connections-total must be at least 1")
        if total is not None or await store.get_meta("max_connections_total") is None:
            await store.set_meta("max_connections_total", str(total or MAX_CONNECTIONS_TOTAL))

    @asynccontextmanager
    async def _working(self, store: Store, opts: DownloadOptions) -> AsyncIterator[int]:
        """Hold connection slots of the shared budget (waiting while others hold them all),
        heartbeat them and this worker's leases every lease/3 s; yields how many are held
        (0: nothing is left to do)."""
        total = int(await store.get_meta("max_connections_total") or MAX_CONNECTIONS_TOTAL)
        while not (
            slots := await store.acquire_slots(self.owner, opts.concurrency, opts.lease, total)
        ):
            summary = await store.summary()
            if not summary["series"]["pending"] and not await store.live_leases(self.owner):
                break
            self.progress.on_message(
                f"all {total} connections of the budget are held by other workers; waiting"
            )
            await anyio.sleep(min(opts.lease / 3, IDLE_LOOK))

        async def beat() -> None:
            while True:
                await anyio.sleep(opts.lease / 3)
                await store.heartbeat(self.owner, opts.lease)

        try:
            async with one_error(), anyio.create_task_group() as tg:
                tg.start_soon(beat)
                try:
                    yield slots
                finally:
                    tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await store.release_slots(self.owner)

    async def sync(
        self,
        since: date | None = None,
        options: DownloadOptions | None = None,
        *,
        selection: Selection | None = None,
    ) -> RunReport:
        """Bring the mirror up to date with its recorded selection: new and changed series.

        ``selection``: a newer manifest. Its bucket series replace the recorded ones (other
        selectors are added); series the plan no longer lists are reported and kept."""
        return await self._run("sync", selection, options, since=since)

    async def _run(
        self,
        command: str,
        selection: Selection | None,
        options: DownloadOptions | None,
        *,
        since: date | None = None,
    ) -> RunReport:
        opts = options or DownloadOptions()
        if opts.concurrency < 1:
            raise InputError("--concurrency must be at least 1")
        if not opts.give_up_after >= 0:
            raise InputError("--give-up-after must be 0 or more seconds")
        t0 = time.monotonic()
        store = await self._open_store(create=command == "download")
        async with store, store.lock():
            cleanup_temp_files(self.root)
            recorded = await store.get_meta("selection")
            if selection is None:
                if not recorded:
                    raise StateError(
                        f"{self.root} has no recorded selection; start with `tcia-mirror download`"
                    )
                selection = Selection.from_json(recorded)
            elif recorded:
                base = Selection.from_json(recorded)
                if command == "sync" and selection.bucket_series:
                    base = replace(base, bucket_series=())  # a newer manifest replaces the old
                selection = base.union(selection)
            report = RunReport(command, str(self.root), selection.describe(), now())
            report.dry_run = opts.dry_run
            layout = await self._layout(store, opts.layout)
            await self._record_connection(store, selection)
            if command == "work" and not await store.get_meta("planned"):
                raise StateError(
                    f"{self.root} has no finished plan; record one with `tcia-mirror plan`"
                )
            if command != "work":
                await self._record_budget(store, opts.max_connections_total)
            async with (
                self._working(store, opts) as slots,
                self._client(max(1, slots)) as client,
            ):
                source = self._make_source(client)
                if command == "download" and selection.to_json() != recorded:
                    old = Selection.from_json(recorded) if recorded else None
                    if selection.collection and (old is None or not old.collection):
                        name = selection.collection
                        await self._patiently(
                            lambda: self._check_collection(client, name), opts, client
                        )
                    # recorded before planning, so a run killed while planning can be resumed
                    await store.set_meta("selection", selection.to_json())
                planned = await store.get_meta("planned") == selection.to_json()
                if command == "work":
                    pass  # a worker never plans
                elif command != "resume" or not planned or not await store.series():
                    if command == "sync" and since is None and await store.get_meta("last_sync"):
                        since = date.fromisoformat(str(await store.get_meta("last_sync")))
                    if command == "sync" and since is not None and selection.collection:
                        new = await client.new_patients(selection.collection, since)
                        self.progress.on_message(
                            f"the archive lists {len(new)} patient(s) new in "
                            f"{selection.collection} since {since.isoformat()}"
                        )
                    sel = selection
                    plan = await self._patiently(
                        lambda: self._plan_into(store, source, sel, layout, opts.concurrency),
                        opts,
                        client,
                    )
                    report.missing = plan.missing + _unmatched(selection, plan)
                    if command == "sync":  # kept, with their files; reported
                        listed = {p.uid for p in plan.series}
                        report.no_longer_listed = [
                            _series_name(s) for s in await store.series() if s.uid not in listed
                        ]
                states = await store.series()
                report.planned_series = len(states)
                report.planned_instances = sum(s.expected_count or 0 for s in states)
                report.planned_bytes = sum(s.expected_bytes or 0 for s in states)
                todo = [s for s in states if s.status != "complete"]
                need = sum(max(0, (s.expected_bytes or 0) - s.done_bytes) for s in todo)
                self._check_space(need, opts)
                if not opts.dry_run and slots:
                    runner = self._runner()
                    await runner.run(store, source, replace(opts, concurrency=slots), report)
                report.retries = client.retries
                report.throttled = client.throttled
                secrets = client.secrets()
            if command == "sync" and not opts.dry_run:
                await store.set_meta("last_sync", date.today().isoformat())
            report.status = await store.summary()
            report.finished = now()
            report.seconds = time.monotonic() - t0
            if not opts.dry_run:
                write_metadata_csv(self.root, await store.series())
                write_run_report(self.root, report, secrets)
        return report

    async def _patiently(
        self, step: Callable[[], Awaitable[T]], opts: DownloadOptions, client: ArchiveClient
    ) -> T:
        """A planning step on a flaky archive: when a request failed every try the client gave it
        (5xx, 429), the step is taken again after a backoff, until ``give_up_after`` seconds
        have passed since it began. Other errors stop the run at once."""
        began = self._clock()
        tries = 0
        while True:
            try:
                return await step()
            except (ServerError, RateLimitedError) as exc:
                tries += 1
                left = opts.give_up_after - (self._clock() - began)
                if left <= 0:
                    raise
                delay = min(client.config.retry.backoff(tries), left)
                self.progress.on_message(f"{one_line(exc)}; trying again in {delay:.1f} s")
                await self._sleep(delay)

    async def _check_collection(self, client: ArchiveClient, name: str) -> None:
        """A misspelt collection is bad input, found before anything is recorded."""
        if not client.profile.has("getCollectionValues"):
            return
        known = await client.collections()
        if known and name.lower() not in {k.lower() for k in known}:
            listed = ", ".join(sorted(known)[:10]) + (" ..." if len(known) > 10 else "")
            raise InputError(
                f"collection {name!r} is not on the archive (it has: {listed}); check the name "
                "with `tcia-mirror query getCollectionValues`"
            )

    def _check_space(self, need: int, opts: DownloadOptions) -> None:
        if not opts.check_space or need <= 0:
            return
        free = shutil.disk_usage(self.root).free
        margin = 64 * 2**20
        if need + margin > free:
            raise DiskError(
                f"the download needs {human(need)} but only {human(free)} is free in "
                f"{self.root}; free some space or choose another --out"
            )

    # -- verify / status ---------------------------------------------------------------------
    async def verify(
        self, *, deep: bool = True, concurrency: int = 4, remote: bool = False
    ) -> VerifyReport:
        """Re-check what is on disk now; damaged files are forgotten so resume fetches them.

        ``remote``: also ask the archive again (getSeriesSize, getSOPInstanceUIDs) and report
        every series it changed since the plan as ``archive_changed``. Those leave local state
        as it is (``sync`` fetches the change); an archive error stops verify before any change.
        """
        from tcia_mirror.sources.nbia.archive_check import archive_changes  # noqa: PLC0415

        store = await self._open_store(create=False)
        async with store, store.lock():
            await self._refuse_while_workers_run(store, "verify")
            states = await store.series()
            changed: list[dict[str, Any]] = []
            if remote:
                async with self._client(PLAN_CONCURRENCY) as client:
                    changed = await archive_changes(
                        client, states, store.instances, concurrency=PLAN_CONCURRENCY
                    )
            checks = []
            limiter = anyio.CapacityLimiter(max(1, concurrency))
            results: dict[str, Any] = {}

            async def one(s: SeriesState) -> None:
                async with limiter:  # one series' instance list in memory per worker
                    insts = await store.instances(s.uid)
                    results[s.uid] = await anyio.to_thread.run_sync(
                        lambda: check_series(self.root, s, insts, deep=deep)
                    )

            async with one_error(), anyio.create_task_group() as tg:
                for s in states:
                    tg.start_soon(one, s)
            problems: list[dict[str, Any]] = []
            for s in states:
                chk = results[s.uid]
                checks.append(chk)
                problems.extend(p.to_dict() for p in chk.problems)
                if chk.damaged:
                    await store.uncommit_instances(s.uid, chk.damaged)
                status = (
                    "complete"
                    if not chk.problems
                    else ("pending" if s.status == "complete" else s.status)
                )
                if status != s.status:
                    await store.set_series_status(
                        s.uid, status, error=None if status == "complete" else "verify"
                    )
            problems.extend(changed)
            report = VerifyReport(ok=not problems, series_checked=len(states), problems=problems)
            write_json(self.root, f"verify-{stamp()}.json", report.to_dict())
            return report

    async def failed_series(self) -> list[str]:
        """The series of the plan whose last outcome is failed."""
        store = await self._open_store(create=False)
        async with store:
            return [s.uid for s in await store.series() if s.status == "failed"]

    async def status(self) -> dict[str, Any]:
        """The store's summary, and under ``sources`` the series of each source (``nbia``,
        ``idc:<bucket>``) by status."""
        store = await self._open_store(create=False)
        async with store:
            summary: dict[str, Any] = dict(await store.summary())
            sources: dict[str, dict[str, int]] = {}
            for s in await store.series():
                counts = sources.setdefault(
                    s.source, {"total": 0, "complete": 0, "failed": 0, "pending": 0}
                )
                counts["total"] += 1
                counts[s.status if s.status in counts else "pending"] += 1
            summary["sources"] = dict(sorted(sources.items()))
            return summary


def _unmatched(selection: Selection, plan: PlanResult) -> list[str]:
    """Parts of the selection that matched no series: reported, never a silent empty mirror."""
    if selection.collection:
        name = selection.collection.lower()
        if not any((p.collection or "").lower() == name for p in plan.series):
            return [f"{selection.describe().split('; ')[0]}: no series match"]
    if not plan.series and selection.shared_lists:
        return [f"shared list {n}: no series" for n in selection.shared_lists]
    return []


def _series_name(s: SeriesState) -> str:
    """A series as reports name it: its UID, and the bucket folder it came from, if any."""
    folder = s.fields.get("BucketFolder")
    return f"{s.uid} ({folder})" if folder else s.uid


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))
