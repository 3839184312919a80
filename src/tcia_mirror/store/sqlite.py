"""The checkpoint store, single owner of a mirror's progress: ``DIR/.tcia-mirror/state.sqlite``.

One SQLite file (WAL, ``synchronous=NORMAL``, schema version in ``PRAGMA user_version``) with
three tables::

    meta(key, value)                              free-form run settings (layout, API profile ...)
    series(id, uid, ..., status, attempts, error, rel_dir,
           done_count, done_bytes, instance_count)  one row per planned series
    instance(series_id, sop_uid, done, rel_path, size, md5)   one row per known SOP instance

``done_count``/``done_bytes``/``instance_count`` are counters kept on the series row and
recomputed from that series' instances inside the same transaction that changes them, so
:meth:`StateStore.summary` and :meth:`StateStore.remaining` read only the series table (fast for
millions of instances). Every change is a short transaction; record a file as done only after
it is durable on disk (:meth:`StateStore.commit_instances`).

Status of a series: ``pending`` (nothing or not yet verified), ``partial`` (some instances done),
``complete``, ``failed``. The store moves ``pending``->``partial`` when instances are committed,
and ``complete``->``partial``/``pending`` when a done instance is withdrawn; everything else is
the engine's decision (:meth:`StateStore.set_series_status`).

The connection may be used from worker threads (calls are serialised by a lock). A process
working on a mirror holds :meth:`StateStore.lock`.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import anyio

from tcia_mirror.errors import DiskError, MirrorLockedError, StateError
from tcia_mirror.store.base import (
    STATE_DIR,
    STATUSES,
    Committed,
    InstanceState,
    SeriesPlan,
    SeriesState,
)
from tcia_mirror.store.serial import SerialCalls

__all__ = [
    "STATUSES",
    "InstanceState",
    "SeriesPlan",
    "SeriesState",
    "SqliteStore",
    "StateStore",
]

T = TypeVar("T")

SCHEMA_VERSION = 2
STATE_FILE = "state.sqlite"
LOCK_FILE = "lock"
_APPLICATION_ID = 0x54434D31  # "TCM1": marks the file as ours
_BATCH = 5000  # rows per executemany batch inside one transaction
_PLAN_TX_ROWS = 50_000  # record_plan commits after about this many instance rows

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    collection TEXT,
    patient_id TEXT,
    study_uid TEXT,
    expected_count INTEGER,
    expected_bytes INTEGER,
    fields TEXT NOT NULL DEFAULT '{{}}',
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN {STATUSES!r}),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    rel_dir TEXT,
    done_count INTEGER NOT NULL DEFAULT 0,
    done_bytes INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    updated REAL,
    source TEXT NOT NULL DEFAULT 'nbia'
);
CREATE INDEX IF NOT EXISTS series_status ON series(status);
CREATE TABLE IF NOT EXISTS instance (
    series_id INTEGER NOT NULL REFERENCES series(id),
    sop_uid TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    rel_path TEXT,
    size INTEGER,
    md5 TEXT,
    expected_size INTEGER,
    expected_md5 TEXT,
    md5_source TEXT,
    PRIMARY KEY (series_id, sop_uid)
) WITHOUT ROWID;
"""

# Schema 1 -> 2: the source of each series; the size and MD5 the source stated per instance.
_MIGRATE_1_2 = """
ALTER TABLE series ADD COLUMN source TEXT NOT NULL DEFAULT 'nbia';
ALTER TABLE instance ADD COLUMN expected_size INTEGER;
ALTER TABLE instance ADD COLUMN expected_md5 TEXT;
ALTER TABLE instance ADD COLUMN md5_source TEXT;
PRAGMA user_version=2;
"""

# Recompute one series' counters from its instances.
_RECOUNT_ONE = """
UPDATE series SET instance_count = a.n, done_count = a.d, done_bytes = a.b
FROM (SELECT count(*) AS n, coalesce(sum(done), 0) AS d,
             coalesce(sum(CASE WHEN done THEN size ELSE 0 END), 0) AS b
      FROM instance WHERE series_id = :id) AS a
WHERE series.id = :id
"""
# pending -> partial once something is done; complete -> partial/pending if something was lost.
_RESTATUS_ONE = """
UPDATE series SET status = CASE
    WHEN status = 'pending' AND done_count > 0 THEN 'partial'
    WHEN status = 'complete' AND done_count < instance_count
         THEN CASE WHEN done_count > 0 THEN 'partial' ELSE 'pending' END
    WHEN status = 'partial' AND done_count = 0 THEN 'pending'
    ELSE status END
WHERE id = :id
"""
_SERIES_COLUMNS = (
    "uid, collection, patient_id, study_uid, expected_count, expected_bytes, fields, status, "
    "attempts, error, rel_dir, done_count, done_bytes, instance_count, source"
)


def _corrupt_message(path: Path, exc: BaseException) -> str:
    return (
        f"the mirror state {path} is damaged ({exc}); rename or delete it and run the same "
        "`tcia-mirror download ... --out DIR` again to rebuild the plan (files already on disk "
        "are kept)"
    )


class StateStore:
    """Checkpoint store of one mirror folder. Open with :meth:`open`; close or use ``with``."""

    def __init__(self, mirror_dir: Path, conn: sqlite3.Connection) -> None:
        self.mirror_dir = mirror_dir
        self.path = mirror_dir / STATE_DIR / STATE_FILE
        self._conn = conn
        self._mutex = threading.RLock()

    # --- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def open(cls, mirror_dir: Path, *, create: bool = True) -> StateStore:
        mirror_dir = Path(mirror_dir)
        state_dir = mirror_dir / STATE_DIR
        path = state_dir / STATE_FILE
        if not path.exists():
            if not create:
                raise StateError(
                    f"{mirror_dir} is not a tcia-mirror mirror (no {STATE_DIR}/{STATE_FILE}); "
                    f"start one with `tcia-mirror download ... --out {mirror_dir}`"
                )
            try:
                state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _disk_error(exc, state_dir) from exc
        if not os.access(state_dir, os.W_OK):
            raise DiskError(
                f"cannot write to {state_dir}: fix its permissions or choose another --out"
            )
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
        except sqlite3.Error as exc:
            raise StateError(_corrupt_message(path, exc)) from exc
        try:
            cls._init_schema(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(mirror_dir, conn)

    @staticmethod
    def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{path} was written by a newer tcia-mirror (schema {version}, this one "
                    f"knows {SCHEMA_VERSION}); upgrade tcia-mirror"
                )
            if version and app_id != _APPLICATION_ID:
                raise StateError(
                    f"{path} is an SQLite file of another program; move it away and run "
                    "`tcia-mirror download ... --out DIR` again"
                )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA temp_store=MEMORY")
            if version == 0:  # new file (IF NOT EXISTS: a concurrent creator is harmless)
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{_SCHEMA}\nPRAGMA application_id={_APPLICATION_ID};\n"
                    f"PRAGMA user_version={SCHEMA_VERSION};\nCOMMIT;"
                )
            elif version == 1:  # a mirror of an earlier tcia-mirror: add what v2 records
                conn.executescript(f"BEGIN IMMEDIATE;\n{_MIGRATE_1_2}\nCOMMIT;")
        except sqlite3.DatabaseError as exc:
            raise _sqlite_error(exc, path) from exc

    def close(self) -> None:
        with self._mutex:
            self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the mirror exclusively (``flock`` on ``.tcia-mirror/lock``, pid written inside)."""
        lock_path = self.mirror_dir / STATE_DIR / LOCK_FILE
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _disk_error(exc, lock_path) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
                pid = holder if holder.isdigit() else "unknown"
                raise MirrorLockedError(
                    f"another tcia-mirror process (pid {pid}) is working on {self.mirror_dir}; "
                    "wait for it to finish or stop it"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- plumbing -----------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            try:
                yield self._conn
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError):
                    raise  # our bug, not the file's
                raise _sqlite_error(exc, self.path) from exc

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One write transaction on the raw connection, for bulk loaders (tests, benchmarks)."""
        return self._write()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; rolled back on any error."""
        with self._read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _series_id(self, conn: sqlite3.Connection, uid: str) -> int:
        row = conn.execute("SELECT id FROM series WHERE uid = ?", (uid,)).fetchone()
        if row is None:
            raise StateError(f"series {uid} is not in the plan of {self.mirror_dir}")
        return int(row[0])

    @staticmethod
    def _refresh(conn: sqlite3.Connection, series_id: int, *, restatus: bool = True) -> None:
        conn.execute(_RECOUNT_ONE, {"id": series_id})
        if restatus:
            conn.execute(_RESTATUS_ONE, {"id": series_id})

    # --- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # --- plan ---------------------------------------------------------------------------------

    def record_plan(self, plans: Iterable[SeriesPlan]) -> None:
        """Upsert planned series and their known SOP instances (in short transactions).

        A known series keeps its status and done instances, unless the archive now announces a
        different ``expected_count``/``expected_bytes`` (or new instances appear in a complete
        series): then it goes back to ``pending`` and ``error`` notes the change. New SOP UIDs
        are added; existing instance rows are left untouched.
        """
        batch: list[SeriesPlan] = []
        rows = 0
        for plan in plans:
            batch.append(plan)
            rows += 1 + len(plan.sop_uids)
            if rows >= _PLAN_TX_ROWS:
                self._record_batch(batch)
                batch, rows = [], 0
        if batch:
            self._record_batch(batch)

    def _record_batch(self, plans: list[SeriesPlan]) -> None:
        now = time.time()
        with self._write() as conn:
            for plan in plans:
                fields_json = json.dumps(dict(plan.fields), sort_keys=True, default=str)
                row = conn.execute(
                    "SELECT id, expected_count, expected_bytes, status FROM series WHERE uid = ?",
                    (plan.uid,),
                ).fetchone()
                if row is None:
                    cur = conn.execute(
                        "INSERT INTO series(uid, collection, patient_id, study_uid, "
                        "expected_count, expected_bytes, fields, updated, source) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            plan.uid,
                            plan.collection,
                            plan.patient_id,
                            plan.study_uid,
                            plan.expected_count,
                            plan.expected_bytes,
                            fields_json,
                            now,
                            plan.source,
                        ),
                    )
                    series_id = int(cur.lastrowid or 0)
                    if plan.sop_uids:
                        _insert_instances(conn, series_id, plan.sop_uids)
                        _set_expected(conn, series_id, plan)
                        self._refresh(conn, series_id, restatus=False)
                    continue
                series_id, old_count, old_bytes, status = row
                changes = []
                if _changed(old_count, plan.expected_count):
                    changes.append(f"expected_count {old_count} -> {plan.expected_count}")
                if _changed(old_bytes, plan.expected_bytes):
                    changes.append(f"expected_bytes {old_bytes} -> {plan.expected_bytes}")
                conn.execute(
                    "UPDATE series SET collection = coalesce(?, collection), "
                    "patient_id = coalesce(?, patient_id), study_uid = coalesce(?, study_uid), "
                    "expected_count = coalesce(?, expected_count), "
                    "expected_bytes = coalesce(?, expected_bytes), "
                    "fields = CASE WHEN ? = '{}' THEN fields ELSE ? END, updated = ? "
                    "WHERE id = ?",
                    (
                        plan.collection,
                        plan.patient_id,
                        plan.study_uid,
                        plan.expected_count,
                        plan.expected_bytes,
                        fields_json,
                        fields_json,
                        now,
                        series_id,
                    ),
                )
                if plan.sop_uids:
                    added = _insert_instances(conn, series_id, plan.sop_uids)
                    _set_expected(conn, series_id, plan)
                    self._refresh(conn, series_id, restatus=False)
                    if added and status == "complete":
                        changes.append(f"{added} new instances")
                if changes:
                    note = "archive changed since the last plan: " + ", ".join(changes)
                    conn.execute(
                        "UPDATE series SET status = 'pending', error = ? WHERE id = ?",
                        (note, series_id),
                    )

    def set_instances(self, series_uid: str, sop_uids: Iterable[str]) -> None:
        """Make the series' instance list ``sop_uids``: new UIDs are added, not-done UIDs that
        are absent are dropped; done instances always stay (their files exist)."""
        wanted = list(dict.fromkeys(sop_uids))
        with self._write() as conn:
            series_id = self._series_id(conn, series_uid)
            _insert_instances(conn, series_id, wanted)
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS _keep (sop_uid TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM _keep")
            for i in range(0, len(wanted), _BATCH):
                conn.executemany(
                    "INSERT OR IGNORE INTO _keep VALUES (?)", ((s,) for s in wanted[i : i + _BATCH])
                )
            conn.execute(
                "DELETE FROM instance WHERE series_id = ? AND NOT done "
                "AND sop_uid NOT IN (SELECT sop_uid FROM _keep)",
                (series_id,),
            )
            conn.execute("DELETE FROM _keep")
            self._refresh(conn, series_id)

    # --- progress -----------------------------------------------------------------------------

    def commit_instances(
        self, series_uid: str, items: Iterable[tuple[str, str, int, str | None]]
    ) -> None:
        """Mark ``(sop_uid, rel_path, size, md5)`` done in one transaction.

        Call only after the files are durable. Unknown SOP UIDs are inserted as done.
        """
        rows = list({sop: (sop, rel, size, md5) for sop, rel, size, md5 in items}.values())
        with self._write() as conn:
            series_id = self._series_id(conn, series_uid)
            # counters move by the delta of these rows (a full recount is O(series) per commit)
            before: dict[str, tuple[int, int]] = {}
            for i in range(0, len(rows), 500):
                part = [r[0] for r in rows[i : i + 500]]
                marks = ", ".join("?" * len(part))
                for sop, done, size in conn.execute(
                    f"SELECT sop_uid, done, size FROM instance WHERE series_id = ? "
                    f"AND sop_uid IN ({marks})",
                    (series_id, *part),
                ):
                    before[sop] = (int(done), int(size or 0) if done else 0)
            conn.executemany(
                "INSERT INTO instance(series_id, sop_uid, done, rel_path, size, md5) "
                "VALUES (?, ?, 1, ?, ?, ?) ON CONFLICT(series_id, sop_uid) DO UPDATE SET "
                "done = 1, rel_path = excluded.rel_path, size = excluded.size, "
                "md5 = excluded.md5",
                ((series_id, sop, rel, size, md5) for sop, rel, size, md5 in rows),
            )
            added = sum(1 for r in rows if r[0] not in before)
            newly = sum(1 for r in rows if not before.get(r[0], (0, 0))[0])
            dbytes = sum(int(r[2] or 0) - before.get(r[0], (0, 0))[1] for r in rows)
            conn.execute(
                "UPDATE series SET instance_count = instance_count + ?, "
                "done_count = done_count + ?, done_bytes = done_bytes + ? WHERE id = ?",
                (added, newly, dbytes, series_id),
            )
            conn.execute(_RESTATUS_ONE, {"id": series_id})

    def set_expected_md5(self, series_uid: str, md5s: Mapping[str, str], source: str) -> None:
        """Record the MD5s the source stated (instances not yet known are added)."""
        rows = [(k, v.lower()) for k, v in md5s.items()]
        with self._write() as conn:
            series_id = self._series_id(conn, series_uid)
            added = _insert_instances(conn, series_id, (k for k, _ in rows))
            conn.executemany(
                "UPDATE instance SET expected_md5 = ?, md5_source = ? "
                "WHERE series_id = ? AND sop_uid = ?",
                ((v, source, series_id, k) for k, v in rows),
            )
            if added:
                self._refresh(conn, series_id)

    def uncommit_instances(
        self, series_uid: str, sop_uids: Iterable[str], *, md5: Mapping[str, str] | None = None
    ) -> None:
        """The verifier found these files gone or damaged: fetch them again.

        The size and MD5 recorded stay, as what is known of the instance (a different file
        under its name is never adopted on resume). ``md5`` gives the right MD5 of some of them
        (the archive's, when the file had another): it replaces the recorded one, whose size is
        then forgotten.
        """
        sops = list(sop_uids)
        right = md5 or {}
        with self._write() as conn:
            series_id = self._series_id(conn, series_uid)
            conn.executemany(
                "UPDATE instance SET done = 0, md5 = coalesce(?1, md5), "
                "size = CASE WHEN ?1 IS NULL THEN size END "
                "WHERE series_id = ?2 AND sop_uid = ?3",
                ((right.get(sop), series_id, sop) for sop in sops),
            )
            self._refresh(conn, series_id)

    def set_series_status(
        self,
        uid: str,
        status: str,
        *,
        error: str | None = None,
        attempt: bool = False,
        rel_dir: str | None = None,
    ) -> None:
        """Set the status (and error text, which ``None`` clears); ``attempt`` counts a try."""
        if status not in STATUSES:
            raise ValueError(f"unknown series status {status!r}; expected one of {STATUSES}")
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE series SET status = ?, error = ?, attempts = attempts + ?, "
                "rel_dir = coalesce(?, rel_dir), updated = ? WHERE uid = ?",
                (status, error, 1 if attempt else 0, rel_dir, time.time(), uid),
            )
            if cur.rowcount == 0:
                raise StateError(f"series {uid} is not in the plan of {self.mirror_dir}")

    def count_attempt(self, uid: str) -> None:
        """One more archive try of the series; its status and error are kept."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE series SET attempts = attempts + 1, updated = ? WHERE uid = ?",
                (time.time(), uid),
            )
            if cur.rowcount == 0:
                raise StateError(f"series {uid} is not in the plan of {self.mirror_dir}")

    def recount(self) -> None:
        """Rebuild every series' counters from the instance table (repair / after migration)."""
        with self._write() as conn:
            conn.execute("UPDATE series SET instance_count = 0, done_count = 0, done_bytes = 0")
            conn.execute(
                "UPDATE series SET instance_count = a.n, done_count = a.d, done_bytes = a.b "
                "FROM (SELECT series_id, count(*) AS n, coalesce(sum(done), 0) AS d, "
                "coalesce(sum(CASE WHEN done THEN size ELSE 0 END), 0) AS b "
                "FROM instance GROUP BY series_id) AS a WHERE series.id = a.series_id"
            )

    # --- queries ------------------------------------------------------------------------------

    def series(self, statuses: Collection[str] | None = None) -> list[SeriesState]:
        """Series rows in plan order, optionally only those with one of ``statuses``."""
        sql = f"SELECT {_SERIES_COLUMNS} FROM series"
        args: tuple[str, ...] = ()
        if statuses is not None:
            args = tuple(statuses)
            if not args:
                return []
            sql += f" WHERE status IN ({', '.join('?' * len(args))})"
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY id", args).fetchall()
        return [_series_state(r) for r in rows]

    def get_series(self, uid: str) -> SeriesState | None:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_SERIES_COLUMNS} FROM series WHERE uid = ?", (uid,)
            ).fetchone()
        return None if row is None else _series_state(row)

    def instances(self, series_uid: str) -> list[InstanceState]:
        return self._instances(series_uid, done_only=False)

    def done_instances(self, series_uid: str) -> dict[str, InstanceState]:
        return {i.sop_uid: i for i in self._instances(series_uid, done_only=True)}

    def _instances(self, series_uid: str, *, done_only: bool) -> list[InstanceState]:
        sql = (
            "SELECT i.sop_uid, i.done, i.rel_path, i.size, i.md5, i.expected_size, "
            "i.expected_md5, i.md5_source FROM instance AS i "
            "JOIN series AS s ON s.id = i.series_id WHERE s.uid = ?"
        )
        if done_only:
            sql += " AND i.done"
        with self._read() as conn:
            rows = conn.execute(sql, (series_uid,)).fetchall()
        return [
            InstanceState(series_uid, sop, bool(d), rel, size, md5, esize, emd5, msrc)
            for sop, d, rel, size, md5, esize, emd5, msrc in rows
        ]

    def summary(self) -> dict[str, dict[str, int]]:
        """Totals for status displays, from the series counters (one aggregate query)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT count(*), "
                "coalesce(sum(status = 'complete'), 0), "
                "coalesce(sum(status = 'failed'), 0), "
                "coalesce(sum(status IN ('pending', 'partial')), 0), "
                "coalesce(sum(max(coalesce(expected_count, 0), instance_count)), 0), "
                "coalesce(sum(done_count), 0), "
                "coalesce(sum(max(coalesce(expected_bytes, 0), done_bytes)), 0), "
                "coalesce(sum(done_bytes), 0) "
                "FROM series"
            ).fetchone()
            checked = conn.execute(
                "SELECT count(*) FROM instance WHERE done AND expected_md5 IS NOT NULL"
            ).fetchone()[0]
        n, complete, failed, pending, inst_total, inst_done, bytes_total, bytes_done = map(int, row)
        return {
            "series": {"total": n, "complete": complete, "failed": failed, "pending": pending},
            "instances": {
                "total": inst_total,
                "complete": inst_done,
                # complete ones whose MD5 the archive stated; the rest carry only ours
                "archive_md5": int(checked),
                "local_md5": inst_done - int(checked),
            },
            "bytes": {"total": bytes_total, "complete": bytes_done},
        }

    def remaining(self) -> list[tuple[str, int]]:
        """(series uid, instances still to fetch) for every series not complete, in plan order.

        The count is ``max(expected_count, known instances) - done``; 0 when nothing is known.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT uid, max(max(coalesce(expected_count, 0), instance_count) - done_count, 0) "
                "FROM series WHERE status != 'complete' ORDER BY id"
            ).fetchall()
        return [(str(uid), int(n)) for uid, n in rows]


# --- helpers ----------------------------------------------------------------------------------


def _changed(old: int | None, new: int | None) -> bool:
    return old is not None and new is not None and old != new


def _insert_instances(conn: sqlite3.Connection, series_id: int, sop_uids: Iterable[str]) -> int:
    """INSERT OR IGNORE the SOP UIDs; return how many were new."""
    before = conn.total_changes
    conn.executemany(
        "INSERT OR IGNORE INTO instance(series_id, sop_uid) VALUES (?, ?)",
        ((series_id, sop) for sop in sop_uids),
    )
    return conn.total_changes - before


def _set_expected(conn: sqlite3.Connection, series_id: int, plan: SeriesPlan) -> None:
    """The sizes and MD5s the source stated for instances (a listing's Size and ETag)."""
    keys = set(plan.expected_sizes) | set(plan.expected_md5)
    conn.executemany(
        "UPDATE instance SET expected_size = ?, expected_md5 = ?, md5_source = ? "
        "WHERE series_id = ? AND sop_uid = ?",
        (
            (
                plan.expected_sizes.get(k),
                plan.expected_md5.get(k),
                plan.md5_source if k in plan.expected_md5 else None,
                series_id,
                k,
            )
            for k in keys
        ),
    )


def _series_state(row: tuple[Any, ...]) -> SeriesState:
    (uid, coll, pid, study, ecount, ebytes, fields_json, status, attempts, error, rel_dir,
     done_count, done_bytes, instance_count, source) = row  # fmt: skip
    try:
        fields = json.loads(fields_json) if fields_json else {}
    except ValueError:
        fields = {}  # a damaged record is treated as absent
    return SeriesState(
        uid, coll, pid, study, ecount, ebytes, fields if isinstance(fields, dict) else {},
        status, attempts, error, rel_dir, done_count, done_bytes, instance_count, source,
    )  # fmt: skip


def _sqlite_error(exc: sqlite3.DatabaseError, path: Path) -> StateError | DiskError:
    """One place that turns SQLite failures into our errors."""
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError):
        if "locked" in text or "busy" in text:
            return StateError(
                f"{path} is busy: another process is writing to it; wait for it to finish "
                "and try again"
            )
        if _is_disk_problem(exc):
            return _disk_error_sqlite(exc, path)
    return StateError(_corrupt_message(path, exc))


def _is_disk_problem(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return any(
        s in text for s in ("disk is full", "disk i/o", "readonly", "read-only", "unable to open")
    )


def _disk_error_sqlite(exc: sqlite3.OperationalError, path: Path) -> DiskError:
    if "full" in str(exc).lower():
        return DiskError(
            f"disk full while updating {path}: free space and run "
            f"`tcia-mirror resume --out {path.parent.parent}`"
        )
    return DiskError(f"cannot write {path} ({exc}): check the folder's permissions and free space")


def _disk_error(exc: OSError, path: Path) -> DiskError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskError(f"disk full while creating {path}: free space and try again")
    reason = exc.strerror or str(exc)
    return DiskError(f"cannot create {path} ({reason}): choose another --out or fix permissions")


class SqliteStore:
    """The async face of :class:`StateStore` (the :class:`~tcia_mirror.store.base.Store` seam).

    Each call runs in a worker thread, one at a time, so the event loop never waits on SQLite
    or on the disk under it; calls made while one runs are run together, in order, in one
    thread hop (:class:`~tcia_mirror.store.serial.SerialCalls`).
    """

    def __init__(self, db: StateStore) -> None:
        self.db = db
        self._calls = SerialCalls()
        self._claimed = False  # claim() handed out the plan

    @classmethod
    async def open(cls, mirror_dir: Path, *, create: bool = True) -> SqliteStore:
        db = await anyio.to_thread.run_sync(
            functools.partial(StateStore.open, create=create), mirror_dir
        )
        return cls(db)

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await self._calls.run(functools.partial(fn, *args, **kw))

    @asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        with self.db.lock():  # flock with LOCK_NB: never blocks
            yield

    async def aclose(self) -> None:
        await self._call(self.db.close)

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def get_meta(self, key: str) -> str | None:
        return await self._call(self.db.get_meta, key)

    async def set_meta(self, key: str, value: str) -> None:
        await self._call(self.db.set_meta, key, value)

    async def record_plan(self, plans: Sequence[SeriesPlan]) -> None:
        await self._call(self.db.record_plan, plans)

    async def series(self) -> list[SeriesState]:
        return await self._call(self.db.series)

    async def get_series(self, uid: str) -> SeriesState | None:
        return await self._call(self.db.get_series, uid)

    async def instances(self, series_uid: str) -> list[InstanceState]:
        return await self._call(self.db.instances, series_uid)

    async def commit_instances(self, series_uid: str, items: Iterable[Committed]) -> None:
        await self._call(self.db.commit_instances, series_uid, list(items))

    async def set_expected_md5(self, series_uid: str, md5s: Mapping[str, str], source: str) -> None:
        await self._call(self.db.set_expected_md5, series_uid, dict(md5s), source)

    async def uncommit_instances(
        self, series_uid: str, keys: Iterable[str], *, md5: Mapping[str, str] | None = None
    ) -> None:
        await self._call(self.db.uncommit_instances, series_uid, list(keys), md5=md5)

    async def set_series_status(
        self,
        uid: str,
        status: str,
        *,
        error: str | None = None,
        attempt: bool = False,
        rel_dir: str | None = None,
    ) -> None:
        await self._call(
            self.db.set_series_status, uid, status, error=error, attempt=attempt, rel_dir=rel_dir
        )

    async def count_attempt(self, uid: str) -> None:
        await self._call(self.db.count_attempt, uid)

    async def summary(self) -> dict[str, dict[str, int]]:
        return await self._call(self.db.summary)

    # -- leases: one process holds the whole plan under lock(), so claim hands out everything

    async def claim(self, owner: str, limit: int, lease: float) -> list[SeriesState]:
        """Every series not complete, in plan order, on the first call; nothing after."""
        if self._claimed:
            return []
        self._claimed = True
        return [s for s in await self.series() if s.status != "complete"]

    async def heartbeat(self, owner: str, lease: float) -> None:
        return None

    async def release(self, uid: str) -> None:
        return None

    async def live_leases(self, owner: str) -> int:
        return 0  # no other process works a plan held under the file lock

    async def acquire_slots(self, owner: str, want: int, lease: float, total: int) -> int:
        return want  # one process: --concurrency is its budget

    async def release_slots(self, owner: str) -> None:
        return None
