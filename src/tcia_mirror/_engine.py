"""The mirror engine: plan -> bounded async fetch -> checkpoints -> verify, with reports.

:class:`Mirror` is the library face of every CLI command (plan, download, resume, verify,
status, sync). It never imports the CLI or tqdm; progress goes to a :class:`Progress` sink.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import aiohttp
import anyio

from ._atomic import AtomicWriter, cleanup_temp_files
from ._client import ArchiveClient, ClientConfig
from ._errors import (
    AuthError,
    BadRequestError,
    DataError,
    DiskError,
    InputError,
    NotFoundError,
    RemoteError,
    StateError,
    UnreachableError,
    one_error,
    redact,
)
from ._fetcher import Fetcher, SeriesWork
from ._layout import Layout
from ._planner import PlanResult, make_plan
from ._progress import NullProgress, Progress
from ._retry import Sleep, real_sleep
from ._selection import Selection
from ._store import STATE_DIR, SeriesState, StateStore
from ._verifier import check_series

Mode = Literal["zip", "single"]
PER_REQUEST_COST = 64 * 1024  # bytes a request "costs" in latency, when choosing single vs ZIP
PLAN_CONCURRENCY = 32  # planning requests at once (at least; 2 x --concurrency when larger)
META_FIELDS = ("selection", "layout", "api", "base_url", "last_sync")


@dataclass(frozen=True, slots=True)
class DownloadOptions:
    mode: Mode = "zip"
    concurrency: int = 8
    layout: str | None = None  # None: the mirror's recorded layout, else "default"
    dry_run: bool = False
    md5: bool = True  # use the profile's MD5-carrying image endpoint when it has one
    fsync: bool = True
    max_stalls: int = 4  # rounds without progress before a series is given up (per run)
    check_space: bool = True


@dataclass(slots=True)
class RunReport:
    command: str
    out: str
    selection: str
    started: str
    finished: str = ""
    series: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    planned_series: int = 0
    planned_instances: int = 0
    planned_bytes: int = 0
    bytes_received: int = 0
    files_committed: int = 0
    retries: int = 0
    throttled: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [s["series"] for s in self.series if s["outcome"] != "complete"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing and not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        st = self.status
        ser, inst, byt = st.get("series", {}), st.get("instances", {}), st.get("bytes", {})
        line = (
            f"{self.command}: {ser.get('complete', 0)}/{ser.get('total', 0)} series complete, "
            f"{inst.get('complete', 0)}/{inst.get('total', 0)} instances, "
            f"{_human(byt.get('complete', 0))} of {_human(byt.get('total', 0))}; "
            f"this run fetched {self.files_committed} files ({_human(self.bytes_received)}) "
            f"in {self.seconds:.1f} s"
        )
        if self.failed:
            line += f"; INCOMPLETE: {', '.join(self.failed[:5])}"
            if len(self.failed) > 5:
                line += f" and {len(self.failed) - 5} more"
        if self.missing:
            line += f"; not on the archive: {', '.join(self.missing[:5])}"
        return line


@dataclass(slots=True)
class VerifyReport:
    ok: bool
    series_checked: int
    problems: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "series_checked": self.series_checked, "problems": self.problems}


def _human(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _JobQueue:
    """Jobs from a lazy generator plus follow-ups; ``get`` returns None when all work is done."""

    def __init__(self, jobs: Iterator[tuple[Any, ...]]) -> None:
        self._gen = jobs
        self._extra: deque[tuple[Any, ...]] = deque()
        self.in_flight = 0
        self._changed = anyio.Event()

    async def get(self) -> tuple[Any, ...] | None:
        while True:
            job = self._extra.popleft() if self._extra else next(self._gen, None)
            if job is not None:
                self.in_flight += 1
                return job
            if self.in_flight == 0:
                return None
            await self._changed.wait()

    def done(self, follow_ups: list[tuple[Any, ...]]) -> None:
        self._extra.extend(follow_ups)
        self.in_flight -= 1
        self._changed.set()
        self._changed = anyio.Event()


class Mirror:
    """A local mirror folder and the archive it follows.

    ``config`` may be None for commands that do not talk to the archive (status, verify).
    """

    def __init__(
        self,
        out: str | Path,
        config: ClientConfig | None = None,
        *,
        progress: Progress | None = None,
        sleep: Sleep = real_sleep,
    ) -> None:
        self.root = Path(out)
        self.config = config
        self.progress: Progress = progress or NullProgress()
        self._sleep = sleep

    # -- the folder and its store ------------------------------------------------------------
    def _open_store(self, *, create: bool) -> StateStore:
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--out {self.root} exists and is not a folder")
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DiskError(
                    f"cannot create the mirror folder {self.root}: {exc.strerror}"
                ) from None
        return StateStore.open(self.root, create=create)

    def recorded(self) -> dict[str, str | None]:
        """What the mirror recorded (selection, layout, api, base_url, last_sync); no secrets."""
        with self._open_store(create=False) as store:
            return {k: store.get_meta(k) for k in META_FIELDS}

    def _client(self, concurrency: int) -> ArchiveClient:
        if self.config is None:
            raise InputError("this command needs the archive: give --api / --base-url")
        cfg = replace(self.config, max_connections=max(1, concurrency))
        return ArchiveClient(cfg, sleep=self._sleep)

    def _layout(self, store: StateStore, wanted: str | None) -> Layout:
        recorded = store.get_meta("layout")
        if wanted and recorded and wanted != recorded and store.series():
            raise InputError(
                f"this mirror uses layout {recorded!r}; a different --layout needs another --out"
            )
        spec = wanted or recorded or "default"
        layout = Layout.parse(spec)
        store.set_meta("layout", spec)
        return layout

    def _record_connection(self, store: StateStore) -> None:
        if self.config is not None:
            store.set_meta("api", self.config.profile.name)
            if self.config.base_url:
                store.set_meta("base_url", self.config.base_url)

    # -- plan --------------------------------------------------------------------------------
    async def _plan_into(
        self,
        store: StateStore,
        client: ArchiveClient,
        selection: Selection,
        layout: Layout,
        concurrency: int,
    ) -> PlanResult:
        known = {s.uid: s for s in store.series()}
        self.progress.on_message(f"planning {selection.describe()}")
        # planning requests are small: let more of them run at once than transfers
        wide = max(PLAN_CONCURRENCY, concurrency * 2)
        client.set_concurrency(wide)
        try:
            plan = await make_plan(
                client,
                selection,
                concurrency=wide,
                known=known,
                on_message=self.progress.on_message,
            )
        finally:
            client.set_concurrency(concurrency)
        store.record_plan(plan.series)
        for p in plan.series:
            state = store.get_series(p.uid)
            if state is not None and state.rel_dir is None:
                store.set_series_status(
                    p.uid, state.status, error=state.error, rel_dir=str(layout.series_dir(p.fields))
                )
        store.set_meta("selection", selection.to_json())
        # last: a run killed before this point left a partial plan, which resume redoes
        store.set_meta("planned", selection.to_json())
        return plan

    async def plan(
        self, selection: Selection, *, concurrency: int = 8, layout: str | None = None
    ) -> PlanResult:
        """Expand the selection and record the plan; fetch nothing."""
        store = self._open_store(create=True)
        with store, store.lock():
            recorded = store.get_meta("selection")
            if recorded:
                selection = Selection.from_json(recorded).union(selection)
            lay = self._layout(store, layout)
            self._record_connection(store)
            async with self._client(concurrency) as client:
                return await self._plan_into(store, client, selection, lay, concurrency)

    # -- download / resume / sync ------------------------------------------------------------
    async def download(
        self, selection: Selection | None = None, options: DownloadOptions | None = None
    ) -> RunReport:
        """Plan (new selection) or pick up the recorded plan (resume), then fetch what is missing."""
        return await self._run("download" if selection else "resume", selection, options)

    async def resume(self, options: DownloadOptions | None = None) -> RunReport:
        return await self._run("resume", None, options)

    async def sync(
        self, since: date | None = None, options: DownloadOptions | None = None
    ) -> RunReport:
        """Bring the mirror up to date with its recorded selection: new and changed series."""
        return await self._run("sync", None, options, since=since)

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
        t0 = time.monotonic()
        store = self._open_store(create=command == "download")
        with store, store.lock():
            cleanup_temp_files(self.root)
            recorded = store.get_meta("selection")
            if selection is None:
                if not recorded:
                    raise StateError(
                        f"{self.root} has no recorded selection; start with `tcia-mirror download`"
                    )
                selection = Selection.from_json(recorded)
            elif recorded:
                selection = Selection.from_json(recorded).union(selection)
            report = RunReport(command, str(self.root), selection.describe(), _now())
            report.dry_run = opts.dry_run
            layout = self._layout(store, opts.layout)
            self._record_connection(store)
            async with self._client(opts.concurrency) as client:
                if command == "download" and selection.to_json() != recorded:
                    old = Selection.from_json(recorded) if recorded else None
                    if selection.collection and (old is None or not old.collection):
                        await self._check_collection(client, selection.collection)
                    # recorded before planning, so a run killed while planning can be resumed
                    store.set_meta("selection", selection.to_json())
                planned = store.get_meta("planned") == selection.to_json()
                if command != "resume" or not planned or not store.series():
                    if command == "sync" and since is None and store.get_meta("last_sync"):
                        since = date.fromisoformat(str(store.get_meta("last_sync")))
                    if command == "sync" and since is not None and selection.collection:
                        new = await client.new_patients(selection.collection, since)
                        self.progress.on_message(
                            f"the archive lists {len(new)} patient(s) new in "
                            f"{selection.collection} since {since.isoformat()}"
                        )
                    plan = await self._plan_into(store, client, selection, layout, opts.concurrency)
                    report.missing = plan.missing + _unmatched(selection, plan)
                states = store.series()
                report.planned_series = len(states)
                report.planned_instances = sum(s.expected_count or 0 for s in states)
                report.planned_bytes = sum(s.expected_bytes or 0 for s in states)
                todo = [s for s in states if s.status != "complete"]
                need = sum(max(0, (s.expected_bytes or 0) - s.done_bytes) for s in todo)
                self._check_space(need, opts)
                if not opts.dry_run:
                    await self._fetch(store, client, todo, opts, report)
                report.retries = client.retries
                report.throttled = client.throttled
                secrets = client.secrets()
            if command == "sync" and not opts.dry_run:
                store.set_meta("last_sync", date.today().isoformat())
            report.status = store.summary()
            report.finished = _now()
            report.seconds = time.monotonic() - t0
            if not opts.dry_run:
                self._write_metadata_csv(store)
                self._write_report(report, secrets)
        return report

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
                f"the download needs {_human(need)} but only {_human(free)} is free in "
                f"{self.root}; free some space or choose another --out"
            )

    def _work_for(self, store: StateStore, s: SeriesState) -> SeriesWork:
        insts = store.instances(s.uid)
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
                w.done[i.sop_uid] = (i.rel_path, i.size or 0, i.md5)
        return w

    def _jobs_for(self, w: SeriesWork, mode: Mode) -> list[tuple[Any, ...]]:
        missing = w.missing()
        if w.expected and not missing:
            return []
        single = mode == "single" and bool(w.expected)
        if w.zip_untrusted and w.expected:
            single = True  # its ZIP had entries we refuse: the same ZIP again would not help
        elif mode == "zip" and w.done and missing and w.expected_bytes:
            n = max(1, w.expected_count or len(w.expected))
            est = w.expected_bytes * len(missing) / n + PER_REQUEST_COST * len(missing)
            # a series whose ZIP broke off twice (runs killed, links dropping) is not given
            # a third whole ZIP: its missing instances come one by one
            single = est < w.expected_bytes or w.attempts + w.earlier_attempts >= 2
        jobs: list[tuple[Any, ...]] = (
            [("single", w, sop) for sop in missing] if single else [("zip", w)]
        )
        w.outstanding += len(jobs)
        return jobs

    async def _fetch(
        self,
        store: StateStore,
        client: ArchiveClient,
        todo: list[SeriesState],
        opts: DownloadOptions,
        report: RunReport,
    ) -> None:
        fetcher = Fetcher(client, store, self.root, self.progress, md5=opts.md5, fsync=opts.fsync)
        summary = store.summary()
        self.progress.on_start(
            series_total=summary["series"]["total"],
            series_done=summary["series"]["complete"],
            bytes_total=summary["bytes"]["total"],
            bytes_done=summary["bytes"]["complete"],
        )
        works: dict[str, SeriesWork] = {}
        round_start: dict[str, int] = {}

        def initial() -> Iterator[tuple[Any, ...]]:
            for s in todo:
                w = self._work_for(store, s)
                works[w.uid] = w
                round_start[w.uid] = len(w.done)
                jobs = self._jobs_for(w, opts.mode)
                if not jobs:
                    self._finalize(store, w, report)
                yield from jobs

        queue = _JobQueue(initial())

        async def run_job(job: tuple[Any, ...]) -> list[tuple[Any, ...]]:
            w: SeriesWork = job[1]
            try:
                if w.stalls and job[0] == "zip":
                    await self._sleep(client.config.retry.backoff(w.stalls))
                if job[0] == "zip":
                    w.attempts += 1
                    state = store.get_series(w.uid)  # count the try before it can be killed
                    if state is not None:
                        store.set_series_status(
                            w.uid, state.status, error=state.error, attempt=True
                        )
                    await fetcher.fetch_zip(w)
                else:
                    await fetcher.fetch_single(w, job[2])  # a refusal is recorded on w
            except (AuthError, UnreachableError, DiskError):
                raise  # the run cannot go on: stop, keep what is committed
            except (BadRequestError, NotFoundError) as exc:
                w.problem("archive_refused", found=str(exc))
                w.stalls = opts.max_stalls  # retrying will not help
            except DataError as exc:
                w.notes.append(_one_line(exc))
                if job[0] == "zip":
                    w.zip_untrusted = True  # a broken or hostile ZIP: finish with single images
            except (RemoteError, aiohttp.ClientError, TimeoutError) as exc:
                w.notes.append(_one_line(exc))
            w.outstanding -= 1
            if w.outstanding > 0:
                return []
            # the round for this series is over: progress made? more to do?
            if len(w.done) > round_start[w.uid]:
                w.stalls = 0
            else:
                w.stalls += 1
            round_start[w.uid] = len(w.done)
            if w.missing() and w.stalls < opts.max_stalls:
                return self._jobs_for(w, opts.mode)
            if not w.expected and w.stalls and w.stalls < opts.max_stalls and w.notes:
                return self._jobs_for(w, opts.mode)
            self._finalize(store, w, report)
            return []

        async def worker() -> None:
            while (job := await queue.get()) is not None:
                follow: list[tuple[Any, ...]] = []
                try:
                    follow = await run_job(job)
                finally:
                    queue.done(follow)

        try:
            async with one_error(), anyio.create_task_group() as tg:
                for _ in range(opts.concurrency):
                    tg.start_soon(worker)
        finally:
            report.bytes_received += fetcher.bytes_received
            report.files_committed += fetcher.files_committed

    def _finalize(self, store: StateStore, w: SeriesWork, report: RunReport) -> None:
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
        elif w.expected_count is not None and found != w.expected_count:
            w.problem("object_count", expected=w.expected_count, found=found)
        if not missing and w.expected_bytes is not None and found_bytes != w.expected_bytes:
            w.problem("total_bytes", expected=w.expected_bytes, found=found_bytes)
        problems = list(w.problems)
        outcome = "failed" if problems else "complete"
        error = "; ".join(sorted({p["kind"] for p in problems})) or None
        store.set_series_status(w.uid, outcome, error=error)
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
                "outcome": outcome,
                "problems": problems,
                "notes": w.notes[-5:],
            }
        )
        report.problems.extend(problems)
        self.progress.on_series(w.uid, outcome)

    # -- verify / status ---------------------------------------------------------------------
    async def verify(self, *, deep: bool = True, concurrency: int = 4) -> VerifyReport:
        """Re-check what is on disk now; damaged files are forgotten so resume fetches them."""
        store = self._open_store(create=False)
        with store, store.lock():
            states = store.series()
            checks = []
            limiter = anyio.CapacityLimiter(max(1, concurrency))
            results: dict[str, Any] = {}

            async def one(s: SeriesState) -> None:
                # the instance list is read in the thread too: one series in memory per worker
                results[s.uid] = await anyio.to_thread.run_sync(
                    lambda: check_series(self.root, s, store.instances(s.uid), deep=deep),
                    limiter=limiter,
                )

            async with one_error(), anyio.create_task_group() as tg:
                for s in states:
                    tg.start_soon(one, s)
            problems: list[dict[str, Any]] = []
            for s in states:
                chk = results[s.uid]
                checks.append(chk)
                problems.extend(chk.problems)
                if chk.damaged:
                    store.uncommit_instances(s.uid, chk.damaged)
                status = (
                    "complete"
                    if not chk.problems
                    else ("pending" if s.status == "complete" else s.status)
                )
                if status != s.status:
                    store.set_series_status(
                        s.uid, status, error=None if status == "complete" else "verify"
                    )
            report = VerifyReport(ok=not problems, series_checked=len(states), problems=problems)
            self._write_json(f"verify-{_stamp()}.json", report.to_dict())
            return report

    def status(self) -> dict[str, Any]:
        with self._open_store(create=False) as store:
            return store.summary()

    # -- outputs -----------------------------------------------------------------------------
    def _write_json(
        self, name: str, data: dict[str, Any], secrets: tuple[str | None, ...] = ()
    ) -> None:
        folder = self.root / STATE_DIR / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        # server messages quoted in a report may echo a key or token: never write them
        body = redact(json.dumps(data, indent=2, default=str), secrets).encode()
        with AtomicWriter(folder / name, fsync=False) as w:
            w.write(body)
            w.commit()

    def _write_report(self, report: RunReport, secrets: tuple[str | None, ...]) -> None:
        data = report.to_dict()
        self._write_json(f"{report.command}-{_stamp()}.json", data, secrets)
        self._write_json("last-run.json", data, secrets)

    def _write_metadata_csv(self, store: StateStore) -> None:
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(
            [
                "SeriesInstanceUID",
                "Collection",
                "PatientID",
                "StudyInstanceUID",
                "Modality",
                "SeriesDescription",
                "ExpectedCount",
                "FoundCount",
                "ExpectedBytes",
                "FoundBytes",
                "Status",
                "Path",
            ]
        )
        for s in store.series():
            out.writerow(
                [
                    s.uid,
                    s.collection or "",
                    s.patient_id or "",
                    s.study_uid or "",
                    s.fields.get("Modality", ""),
                    s.fields.get("SeriesDescription", ""),
                    "" if s.expected_count is None else s.expected_count,
                    s.done_count,
                    "" if s.expected_bytes is None else s.expected_bytes,
                    s.done_bytes,
                    s.status,
                    s.rel_dir or "",
                ]
            )
        with AtomicWriter(self.root / "metadata.csv", fsync=False) as w:
            w.write(buf.getvalue().encode("utf-8"))
            w.commit()


def _unmatched(selection: Selection, plan: PlanResult) -> list[str]:
    """Parts of the selection that matched no series: reported, never a silent empty mirror."""
    if selection.collection:
        name = selection.collection.lower()
        if not any((p.collection or "").lower() == name for p in plan.series):
            return [f"{selection.describe().split('; ')[0]}: no series match"]
    if not plan.series and selection.shared_lists:
        return [f"shared list {n}: no series" for n in selection.shared_lists]
    return []


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
