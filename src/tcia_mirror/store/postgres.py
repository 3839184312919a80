"""The checkpoint store in PostgreSQL: one plan shared by many workers on many hosts.

``--state postgresql://USER@HOST:PORT/DB`` selects it. One database holds one mirror's plan, in
the tables of :file:`postgres.sql` (where every statement this module runs is named). Paths are
stored relative to the mirror, so hosts that mount the shared folder at different places share
one plan.

Where SQLite takes a file lock, PostgreSQL leases: :meth:`PostgresStore.claim` takes series
rows with one ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``
that also takes rows whose lease ran out (its holder stopped heartbeating). Each lease carries
an attempt number, the fencing token: every write about a leased series is made ``WHERE
lease_attempt = <ours>``, so a worker that lost its lease cannot change the counts
(:class:`~tcia_mirror.errors.LeaseLostError`). The archive's connection budget is a ``slot``
table: a worker holds slots while it works, heartbeats them, and a dead worker's slots expire
with its leases.

The password (in the URL or ``PGPASSWORD``) is never printed, logged or stored: every message
goes through :func:`~tcia_mirror.errors.redact`. A lost connection is re-opened (with backoff,
for up to ``reconnect_for`` seconds) and the statement run again; a database that cannot be
reached is :class:`~tcia_mirror.errors.StoreUnreachableError` (exit 3).
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import anyio

from tcia_mirror.errors import LeaseLostError, StateError, StoreUnreachableError, redact
from tcia_mirror.store.base import STATUSES, InstanceState, SeriesPlan, SeriesState

try:
    import psycopg
except ImportError:  # pragma: no cover - the optional extra is missing
    psycopg = None  # type: ignore[assignment]

__all__ = ["SCHEMES", "PostgresStore", "queries"]

T = TypeVar("T")
SCHEMES = ("postgresql://", "postgres://")
SCHEMA_VERSION = 2
_LOCK_KEY = zlib.crc32(b"tcia-mirror schema")  # serialises schema creation and plan loading
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def queries() -> dict[str, str]:
    """The named statements of ``postgres.sql``."""
    text = resources.files("tcia_mirror.store").joinpath("postgres.sql").read_text("utf-8")
    parts = _NAME.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


Q = queries()


def _secrets() -> list[str]:
    pw = os.environ.get("PGPASSWORD")
    return [pw] if pw else []


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return redact(lines[0] if lines else type(exc).__name__, _secrets())


class PostgresStore:
    """The :class:`~tcia_mirror.store.base.Store` in a PostgreSQL database (psycopg 3, async).

    One connection per store, used by one statement or transaction at a time.
    """

    def __init__(
        self, url: str, mirror_dir: Path, conn: Any, *, reconnect_for: float = 60.0
    ) -> None:
        self.url = url
        self.mirror_dir = mirror_dir
        self.where = redact(url, _secrets())  # for messages: never the password
        self.reconnect_for = reconnect_for
        self.round_trips = 0  # statements and transactions sent (the benchmark reads it)
        self._conn = conn
        self._one = anyio.Lock()
        self._leases: dict[str, int] = {}  # series uid -> attempt (the fencing token)
        self._since: datetime | None = None  # the database's clock when this store first claimed

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, url: str, mirror_dir: Path, *, create: bool = True, reconnect_for: float = 60.0
    ) -> PostgresStore:
        conn = await _connect(url)
        store = cls(url, Path(mirror_dir), conn, reconnect_for=reconnect_for)
        try:
            await store._init_schema(create)
        except BaseException:
            await conn.close()
            raise
        return store

    @classmethod
    def opener(cls, url: str, **kw: Any) -> Callable[..., Awaitable[PostgresStore]]:
        """``open_store`` for :class:`~tcia_mirror.engine.mirror.Mirror`: ``(root, create=)``."""

        async def open_store(mirror_dir: Path, *, create: bool = True) -> PostgresStore:
            return await cls.open(url, mirror_dir, create=create, **kw)

        return open_store

    async def _init_schema(self, create: bool) -> None:
        async def init(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                cur = await conn.execute("SELECT to_regclass('meta') IS NOT NULL")
                row = await cur.fetchone()
                if not row[0]:
                    if not create:
                        raise StateError(
                            f"{self.where} holds no tcia-mirror plan; record one with "
                            f"`tcia-mirror plan ... --out DIR --state {self.where}`"
                        )
                    await conn.execute(Q["schema"])
                    await conn.execute(
                        Q["set_meta"], {"key": "schema_version", "value": str(SCHEMA_VERSION)}
                    )
                    return
                cur = await conn.execute(Q["get_meta"], {"key": "schema_version"})
                got = await cur.fetchone()
                version = int(got[0]) if got else 0
                if version > SCHEMA_VERSION:
                    raise StateError(
                        f"{self.where} was written by a newer tcia-mirror (schema {version}, "
                        f"this one knows {SCHEMA_VERSION}); upgrade tcia-mirror"
                    )
                if version < SCHEMA_VERSION:
                    raise StateError(
                        f"{self.where} holds tables of another program or version (schema "
                        f"{version}); use another database"
                    )

        await self._run(init)

    async def aclose(self) -> None:
        """Give back the leases still held (a process that stops, even on an error, leaves its
        series to the others at once; only a killed one leaves them to expire), then close."""
        with anyio.CancelScope(shield=True):
            for uid in list(self._leases):
                try:
                    await self.release(uid)
                except StateError:
                    break  # the database is gone: the leases expire
            async with self._one:
                await self._conn.close()

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """Series are held by leases (:meth:`claim`), not by one lock: this checks the database
        answers and holds nothing, so many workers may work one plan at once."""
        await self._run(lambda conn: conn.execute("SELECT 1"))
        yield

    # --- plumbing -----------------------------------------------------------------------------

    async def _run(self, op: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``op(conn)`` once at a time; on a dropped connection, reconnect and run it again
        (every op is one transaction, and writes are idempotent or fenced)."""
        async with self._one:
            delay = 0.2
            waited = 0.0
            while True:
                if self._conn.closed or self._conn.broken:
                    try:
                        self._conn = await _connect(self.url)
                    except StoreUnreachableError:
                        if waited >= self.reconnect_for:
                            raise
                        await anyio.sleep(delay)
                        waited += delay
                        delay = min(delay * 2, 5.0)
                        continue
                try:
                    self.round_trips += 1
                    return await op(self._conn)
                except psycopg.OperationalError as exc:
                    if not (self._conn.closed or self._conn.broken):
                        raise StateError(f"{self.where}: {_one_line(exc)}") from None
                    if waited >= self.reconnect_for:
                        raise StoreUnreachableError(
                            f"lost the connection to {self.where} ({_one_line(exc)}) and could "
                            f"not get it back in {self.reconnect_for:.0f} s"
                        ) from None
                except psycopg.Error as exc:
                    raise StateError(f"{self.where}: {_one_line(exc)}") from None

    async def _fetchall(self, sql: str, args: Mapping[str, Any] | None = None) -> list[Any]:
        async def op(conn: Any) -> list[Any]:
            cur = await conn.execute(sql, args)
            return list(await cur.fetchall())

        return await self._run(op)

    async def _series_id(self, conn: Any, uid: str) -> int:
        """The series' id; for a series this store leased, only while the lease is still ours."""
        attempt = self._leases.get(uid)
        if attempt is None:
            cur = await conn.execute(Q["series_id"], {"uid": uid})
        else:
            cur = await conn.execute(Q["fence"], {"uid": uid, "attempt": attempt})
        row = await cur.fetchone()
        if row is None:
            if attempt is not None:
                self._leases.pop(uid, None)
                raise LeaseLostError(
                    f"series {uid}: the lease was taken over by another worker (its heartbeat "
                    "stopped for longer than --lease); its writes are left to the new holder"
                )
            raise StateError(f"series {uid} is not in the plan of {self.where}")
        return int(row[0])

    # --- meta ---------------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        rows = await self._fetchall(Q["get_meta"], {"key": key})
        return None if not rows else str(rows[0][0])

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(lambda conn: conn.execute(Q["set_meta"], {"key": key, "value": value}))

    # --- plan ---------------------------------------------------------------------------------

    async def record_plan(self, plans: Sequence[SeriesPlan]) -> None:
        """Upsert planned series and their instances: COPY into staging tables, then a few
        set-based statements, in one transaction (serialised with other planners)."""
        plans = list(plans)
        if not plans:
            return

        async def op(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                await conn.execute(Q["stage"])
                cur = conn.cursor()
                async with cur.copy(Q["copy_series"]) as copy:
                    for i, p in enumerate(plans):
                        fields = json.dumps(dict(p.fields), sort_keys=True, default=str)
                        await copy.write_row(
                            (i, p.uid, p.collection, p.patient_id, p.study_uid,
                             p.expected_count, p.expected_bytes, fields, p.source)
                        )  # fmt: skip
                async with cur.copy(Q["copy_instances"]) as copy:
                    for p in plans:
                        sizes, md5s = p.expected_sizes, p.expected_md5
                        for sop in p.sop_uids:
                            md5 = md5s.get(sop)
                            await copy.write_row(
                                (p.uid, sop, sizes.get(sop), md5,
                                 p.md5_source if md5 is not None else None)
                            )  # fmt: skip
                for name in ("plan_old", "plan_upsert", "plan_instances", "plan_recount",
                             "plan_changes"):  # fmt: skip
                    await conn.execute(Q[name])

        await self._run(op)

    # --- progress -----------------------------------------------------------------------------

    async def commit_instances(
        self, series_uid: str, items: Iterable[tuple[str, str, int, str | None]]
    ) -> None:
        """Mark ``(sop_uid, rel_path, size, md5)`` done in one transaction (fenced by the lease)."""
        rows = list({sop: (sop, rel, size, md5) for sop, rel, size, md5 in items}.values())
        if not rows:
            return

        async def op(conn: Any) -> None:
            async with conn.transaction():
                sid = await self._series_id(conn, series_uid)
                cur = await conn.execute(
                    Q["before_commit"], {"id": sid, "sops": [r[0] for r in rows]}
                )
                before = {
                    sop: (bool(done), int(size or 0) if done else 0)
                    for sop, done, size in await cur.fetchall()
                }
                async with conn.cursor() as c:
                    await c.executemany(
                        Q["commit_instance"],
                        [
                            {"id": sid, "sop": s, "rel": rel, "size": size, "md5": md5}
                            for s, rel, size, md5 in rows
                        ],
                    )
                added = sum(1 for r in rows if r[0] not in before)
                newly = sum(1 for r in rows if not before.get(r[0], (False, 0))[0])
                dbytes = sum(int(r[2] or 0) - before.get(r[0], (False, 0))[1] for r in rows)
                await conn.execute(
                    Q["bump_counters"],
                    {"id": sid, "added": added, "newly": newly, "dbytes": dbytes},
                )
                await conn.execute(Q["restatus_one"], {"id": sid})

        await self._run(op)

    async def set_expected_md5(self, series_uid: str, md5s: Mapping[str, str], source: str) -> None:
        """Record the MD5s the source stated (instances not yet known are added)."""
        rows = [(k, v.lower()) for k, v in md5s.items()]

        async def op(conn: Any) -> None:
            async with conn.transaction():
                sid = await self._series_id(conn, series_uid)
                async with conn.cursor() as c:
                    await c.executemany(
                        Q["insert_instance"], [{"id": sid, "sop": k} for k, _ in rows]
                    )
                    await c.executemany(
                        Q["set_expected_md5"],
                        [{"id": sid, "sop": k, "md5": v, "source": source} for k, v in rows],
                    )
                await conn.execute(Q["recount_one"], {"id": sid})
                await conn.execute(Q["restatus_one"], {"id": sid})

        await self._run(op)

    async def uncommit_instances(
        self, series_uid: str, keys: Iterable[str], *, md5: Mapping[str, str] | None = None
    ) -> None:
        """Forget done files (gone or damaged); see ``StateStore.uncommit_instances``."""
        sops = list(keys)
        right = md5 or {}

        async def op(conn: Any) -> None:
            async with conn.transaction():
                sid = await self._series_id(conn, series_uid)
                async with conn.cursor() as c:
                    await c.executemany(
                        Q["uncommit_instance"],
                        [{"id": sid, "sop": s, "md5": right.get(s)} for s in sops],
                    )
                await conn.execute(Q["recount_one"], {"id": sid})
                await conn.execute(Q["restatus_one"], {"id": sid})

        await self._run(op)

    async def set_series_status(
        self,
        uid: str,
        status: str,
        *,
        error: str | None = None,
        attempt: bool = False,
        rel_dir: str | None = None,
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown series status {status!r}; expected one of {STATUSES}")

        async def op(conn: Any) -> None:
            async with conn.transaction():
                await self._series_id(conn, uid)  # fenced when leased
                await conn.execute(
                    Q["set_status"],
                    {"status": status, "error": error, "attempt": 1 if attempt else 0,
                     "rel_dir": rel_dir, "uid": uid},
                )  # fmt: skip

        await self._run(op)

    async def count_attempt(self, uid: str) -> None:
        async def op(conn: Any) -> None:
            async with conn.transaction():
                await self._series_id(conn, uid)  # fenced when leased
                await conn.execute(Q["count_attempt"], {"uid": uid})

        await self._run(op)

    # --- queries ------------------------------------------------------------------------------

    async def series(self) -> list[SeriesState]:
        return [_series_state(r) for r in await self._fetchall(Q["series_all"])]

    async def get_series(self, uid: str) -> SeriesState | None:
        rows = await self._fetchall(Q["series_one"], {"uid": uid})
        return _series_state(rows[0]) if rows else None

    async def instances(self, series_uid: str) -> list[InstanceState]:
        rows = await self._fetchall(Q["instances"], {"uid": series_uid})
        return [
            InstanceState(series_uid, sop, bool(d), rel, size, md5, esize, emd5, msrc)
            for sop, d, rel, size, md5, esize, emd5, msrc in rows
        ]

    async def summary(self) -> dict[str, dict[str, int]]:
        """Totals from the series counters (one aggregate query); ``leases`` counts live ones."""
        row = (await self._fetchall(Q["summary"]))[0]
        (n, complete, failed, pending, inst_total, inst_done, bytes_total, bytes_done, live,
         checked) = map(int, row)  # fmt: skip
        return {
            "series": {"total": n, "complete": complete, "failed": failed, "pending": pending},
            "instances": {
                "total": inst_total,
                "complete": inst_done,
                # complete ones whose MD5 the archive stated; the rest carry only ours
                "archive_md5": checked,
                "local_md5": inst_done - checked,
            },
            "bytes": {"total": bytes_total, "complete": bytes_done},
            "workers": {"leases": live},
        }

    # --- leases -------------------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, lease: float) -> list[SeriesState]:
        """Lease up to ``limit`` series: pending or partial ones, those whose lease ran out, and
        ones that failed before this store's first claim; also those the database has leased to
        ``owner`` but this store does not hold (a claim whose answer a dropped connection lost)."""

        async def op(conn: Any) -> list[Any]:
            if self._since is None:
                cur = await conn.execute(Q["now"])
                self._since = (await cur.fetchone())[0]
            args = {"owner": owner, "lease": float(lease), "since": self._since, "limit": limit}
            cur = await conn.execute(Q["claim"], {**args, "held": list(self._leases)})
            return list(await cur.fetchall())

        rows = await self._run(op)
        got = []
        for row in sorted(rows, key=lambda r: r[0]):
            self._leases[row[0]] = int(row[-1])
            got.append(_series_state(row[:-1]))
        return got

    async def heartbeat(self, owner: str, lease: float) -> None:
        """Extend this owner's leases and slots by ``lease`` seconds from now."""

        async def op(conn: Any) -> None:
            async with conn.transaction():
                await conn.execute(Q["heartbeat"], {"owner": owner, "lease": float(lease)})
                await conn.execute(Q["heartbeat_slots"], {"owner": owner, "lease": float(lease)})

        await self._run(op)

    async def release(self, uid: str) -> None:
        """Give the series' lease back (after its outcome is recorded). It stays among the
        store's leases until the database has it back, so no claim meanwhile takes it again."""
        attempt = self._leases.get(uid)
        if attempt is not None:
            await self._run(
                lambda conn: conn.execute(Q["release"], {"uid": uid, "attempt": attempt})
            )
            self._leases.pop(uid, None)

    async def live_leases(self, owner: str) -> int:
        """How many series other workers hold under a lease that has not run out."""
        return int((await self._fetchall(Q["live_leases"], {"owner": owner}))[0][0])

    async def acquire_slots(self, owner: str, want: int, lease: float, total: int) -> int:
        """Take up to ``want`` of the ``total`` connection slots (free or expired ones); keep
        those already held. Returns how many this owner holds now."""

        async def op(conn: Any) -> int:
            async with conn.transaction():
                await conn.execute(Q["set_slots"], {"n": total})
                await conn.execute(Q["trim_slots"], {"n": total})
                cur = await conn.execute(
                    Q["acquire_slots"],
                    {"owner": owner, "want": want, "lease": float(lease)},
                )
                return len(await cur.fetchall())

        return await self._run(op)

    async def release_slots(self, owner: str) -> None:
        await self._run(lambda conn: conn.execute(Q["release_slots"], {"owner": owner}))


async def _connect(url: str) -> Any:
    if psycopg is None:
        raise StateError("--state postgresql:// needs psycopg: pip install 'tcia-mirror[postgres]'")
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise StoreUnreachableError(
            f"cannot reach the state database {redact(url, _secrets())}: {_one_line(exc)}"
        ) from None
    except psycopg.Error as exc:  # a malformed URL, an unknown option ...
        raise StateError(
            f"cannot use the state database {redact(url, _secrets())}: {_one_line(exc)}"
        ) from None


def _series_state(row: Sequence[Any]) -> SeriesState:
    (uid, coll, pid, study, ecount, ebytes, fields_json, status, attempts, error, rel_dir,
     done_count, done_bytes, instance_count, source) = row  # fmt: skip
    try:
        fields = json.loads(fields_json) if fields_json else {}
    except ValueError:
        fields = {}  # a damaged record is treated as absent
    return SeriesState(
        uid, coll, pid, study, ecount, ebytes, fields if isinstance(fields, dict) else {},
        status, int(attempts), error, rel_dir, int(done_count), int(done_bytes),
        int(instance_count), source,
    )  # fmt: skip
