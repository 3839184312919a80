"""The Source seam: where a series' files come from, and how they are asked for.

A source does four things for the engine, and nothing else:

1. :meth:`Source.plan` turns its part of a selection into series plans, with the expected
   items and checks (count, bytes, MD5 where known);
2. :meth:`Source.units` names the fetch units for a series: a pure function of the series'
   state (tests import it);
3. :meth:`Source.open` opens a unit as an async byte stream, the transport's errors translated
   into :mod:`tcia_mirror.errors` (a body cut mid-way is a :class:`~tcia_mirror.errors.TransferError`);
4. :meth:`Source.retryable` says which failures are worth another try.

A unit is an ``archive`` (a ZIP of a series' files, entries checked one by one) or an
``object`` (one file). The engine never asks which source it has; a new source is a new module
that implements this protocol and passes ``tests/contract``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tcia_mirror.selection import Selection
from tcia_mirror.store.base import SeriesPlan, SeriesState

if TYPE_CHECKING:
    from tcia_mirror.sources.http import Transport

__all__ = ["FetchUnit", "Mode", "PlanResult", "SeriesView", "Source", "UnitKind"]

Mode = Literal["zip", "single"]  # the user's preference: whole-series archives or one by one
UnitKind = Literal["archive", "object"]


@dataclass(frozen=True, slots=True)
class FetchUnit:
    """One request's worth of a series: its archive, or one object (``key``: its source key).

    ``sop``: the SOP Instance UID the object must hold; None when it is known only once
    fetched (a bucket object): the file is then named by its own header and recorded by key.
    """

    series_uid: str
    kind: UnitKind
    key: str | None = None
    sop: str | None = None


@dataclass(frozen=True, slots=True)
class SeriesView:
    """What choosing units needs to know of a series (a snapshot, never mutated)."""

    uid: str
    expected: frozenset[str]  # source keys the plan knows (may be empty)
    done: frozenset[str]  # keys committed
    expected_count: int | None
    expected_bytes: int | None
    archive_tries: int  # archive fetches started, this run and earlier (killed) runs
    archive_untrusted: bool  # an archive of this series held entries we refuse

    @property
    def missing(self) -> list[str]:
        return sorted(self.expected - self.done)


@dataclass(frozen=True, slots=True)
class PlanResult:
    series: list[SeriesPlan]
    missing: list[str] = field(default_factory=list)  # explicit UIDs the archive does not know
    reused: int = 0  # series taken unchanged from the store (sync)
    requests: int = 0  # planning requests made

    @property
    def total_instances(self) -> int:
        return sum(p.expected_count or len(p.sop_uids) for p in self.series)

    @property
    def total_bytes(self) -> int:
        return sum(p.expected_bytes or 0 for p in self.series)


class Source(Protocol):
    """A place series come from (the NBIA REST API today; see ``tests/contract``)."""

    name: str

    async def plan(
        self,
        selection: Selection,
        *,
        concurrency: int,
        known: Mapping[str, SeriesState],
        on_message: Callable[[str], None] | None = None,
    ) -> PlanResult: ...

    def units(self, series: SeriesView, mode: Mode) -> list[FetchUnit]: ...

    def open(
        self, unit: FetchUnit, *, md5: bool, transport: Transport | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        """The unit's bytes, streamed; raises a :class:`~tcia_mirror.errors.TciaMirrorError`.

        ``transport``: for an ``archive`` unit, who sends the source's request and works its
        body (the engine's ZIP workers); what is streamed is then ``transport.body(...)``."""
        ...

    def states_md5(self, unit: FetchUnit, *, md5: bool) -> str | None:
        """Where the MD5s this unit's stream states for its files come from (an archive's
        ``md5hashes.csv``), or None when it states none."""
        ...

    async def object_md5(self, unit: FetchUnit) -> tuple[str, str] | None:
        """The MD5 the source states for one object, asked for separately, and where it
        came from (e.g. ``getMD5HashForImage``); None when the source offers none."""
        ...

    def retryable(self, exc: BaseException) -> bool: ...
