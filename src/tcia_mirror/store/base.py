"""The Store seam: what the engine asks of a checkpoint store, and the records it exchanges.

The store is the single owner of a mirror's progress. Every method is async: a backend that
blocks (SQLite) runs its work in a worker thread, one that does not (PostgreSQL) awaits its
driver. The engine uses only the methods of :class:`Store`; a new backend is one new module
that implements them and passes ``tests/contract``.

Status of a series: ``pending`` (nothing or not yet verified), ``partial`` (some instances
done), ``complete``, ``failed``. The store moves ``pending``->``partial`` when instances are
committed and ``complete``->``partial``/``pending`` when a done instance is withdrawn;
everything else is the engine's decision (:meth:`Store.set_series_status`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "STATE_DIR",
    "MD5_SOURCES",
    "STATUSES",
    "Committed",
    "InstanceState",
    "SeriesPlan",
    "SeriesState",
    "Status",
    "Store",
]

Status = Literal["pending", "partial", "complete", "failed"]
# where an instance's expected MD5 came from: the ZIP's md5hashes.csv, the per-image endpoint
# (getMD5HashForImage), an object's plain ETag; "local" in reports when the source gave none
MD5_SOURCES = ("md5hashes.csv", "getMD5HashForImage", "etag")
STATUSES: tuple[Status, ...] = ("pending", "partial", "complete", "failed")
STATE_DIR = ".tcia-mirror"  # the mirror's own folder: state, lock, reports

# (source key: today the SOP Instance UID, path relative to the mirror, size, MD5)
Committed = tuple[str, str, int, str | None]


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    """What the planner learned about one series (immutable input to :meth:`record_plan`)."""

    uid: str
    collection: str | None
    patient_id: str | None
    study_uid: str | None
    expected_count: int | None
    expected_bytes: int | None
    fields: Mapping[str, object] = field(default_factory=dict)  # layout/metadata.csv fields
    sop_uids: tuple[str, ...] = ()  # instance keys (SOP UIDs for NBIA); may be empty until known
    source: str = "nbia"  # which source serves the series (its tag: "nbia", "idc:<bucket>")
    expected_sizes: Mapping[str, int] = field(default_factory=dict)  # key -> bytes, where known
    expected_md5: Mapping[str, str] = field(default_factory=dict)  # key -> the source's MD5
    md5_source: str | None = None  # where expected_md5 came from (e.g. "etag")


@dataclass(frozen=True, slots=True)
class SeriesState:
    """A row of the series table."""

    uid: str
    collection: str | None
    patient_id: str | None
    study_uid: str | None
    expected_count: int | None
    expected_bytes: int | None
    fields: dict[str, Any]
    status: str
    attempts: int
    error: str | None
    rel_dir: str | None
    done_count: int
    done_bytes: int
    instance_count: int  # known SOP instance UIDs
    source: str = "nbia"


@dataclass(slots=True)
class InstanceState:
    series_uid: str
    sop_uid: str
    done: bool
    rel_path: str | None
    size: int | None
    md5: str | None  # MD5 of the committed file, computed by us
    expected_size: int | None = None
    expected_md5: str | None = None  # the MD5 the source stated for the instance
    md5_source: str | None = None  # where expected_md5 came from (MD5_SOURCES)


class Store(Protocol):
    """The checkpoint store as the engine sees it (SQLite today; see ``tests/contract``)."""

    def lock(self) -> AbstractAsyncContextManager[None]:
        """Hold the plan for this process (SQLite: a file lock; PostgreSQL: nothing, series are
        held by :meth:`claim`'s leases)."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...

    async def record_plan(self, plans: Sequence[SeriesPlan]) -> None:
        """Upsert planned series and their known instances; done instances always stay."""
        ...

    async def series(self) -> list[SeriesState]:
        """Every planned series, in plan order."""
        ...

    async def get_series(self, uid: str) -> SeriesState | None: ...

    async def instances(self, series_uid: str) -> list[InstanceState]: ...

    async def commit_instances(self, series_uid: str, items: Iterable[Committed]) -> None:
        """Record files as done, in one transaction. Call only once the files are durable."""
        ...

    async def set_expected_md5(self, series_uid: str, md5s: Mapping[str, str], source: str) -> None:
        """Record the MD5s the source stated for instances (kept across runs)."""
        ...

    async def uncommit_instances(
        self, series_uid: str, keys: Iterable[str], *, md5: Mapping[str, str] | None = None
    ) -> None:
        """Forget done files (gone or damaged) so the next run fetches them again."""
        ...

    async def set_series_status(
        self,
        uid: str,
        status: Status | str,
        *,
        error: str | None = None,
        attempt: bool = False,
        rel_dir: str | None = None,
    ) -> None: ...

    async def count_attempt(self, uid: str) -> None:
        """Count one more archive try of the series (before it is made, so a kill mid-try
        still counts it); its status and error stay as they are."""
        ...

    async def summary(self) -> dict[str, dict[str, int]]:
        """Totals for status displays: series, instances and bytes, complete and total."""
        ...

    # -- leases: how workers share a plan (SQLite: one process holds it all under lock()) ----

    async def claim(self, owner: str, limit: int, lease: float) -> list[SeriesState]:
        """Lease unfinished series to ``owner`` for ``lease`` seconds (renewed by
        :meth:`heartbeat`); series whose lease ran out are taken over. SQLite hands out every
        unfinished series on the first call and none after."""
        ...

    async def heartbeat(self, owner: str, lease: float) -> None:
        """Extend ``owner``'s leases and connection slots by ``lease`` seconds from now."""
        ...

    async def release(self, uid: str) -> None:
        """Give back the lease of a series whose outcome is recorded."""
        ...

    async def live_leases(self, owner: str) -> int:
        """How many series other owners hold under a lease that has not run out."""
        ...

    async def acquire_slots(self, owner: str, want: int, lease: float, total: int) -> int:
        """Take up to ``want`` of the archive's ``total`` connection slots shared by all
        workers; how many ``owner`` holds now (SQLite, one process: ``want``)."""
        ...

    async def release_slots(self, owner: str) -> None: ...
