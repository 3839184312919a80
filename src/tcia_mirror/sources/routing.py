"""A source made of sources: each series goes to the one that planned it.

The plan is the union of each source's part of the selection (NBIA's collection, shared lists
and series UIDs; IDC's bucket folders). Units and opens are routed by the series' instance
keys: bucket objects are keyed ``s3://<bucket>/<key>``, NBIA instances by their SOP UID. The
engine sees one :class:`~tcia_mirror.sources.base.Source` and never asks which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import FetchUnit, Mode, PlanResult, SeriesView, Source
from tcia_mirror.sources.http import Transport
from tcia_mirror.sources.idc.source import IdcSource
from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.sources.nbia.source import NbiaSource
from tcia_mirror.store.base import SeriesState

__all__ = ["RoutingSource", "default_source"]

_BUCKET_KEY = "s3://"


class RoutingSource:
    """NBIA series to ``nbia``, bucket series to ``idc``."""

    name = "nbia+idc"

    def __init__(self, nbia: Source, idc: Source) -> None:
        self.nbia = nbia
        self.idc = idc

    def _for_key(self, key: str | None) -> Source:
        return self.idc if key is not None and key.startswith(_BUCKET_KEY) else self.nbia

    def _for_view(self, series: SeriesView) -> Source:
        return self._for_key(next(iter(series.expected), None))

    async def plan(
        self,
        selection: Selection,
        *,
        concurrency: int,
        known: Mapping[str, SeriesState],
        on_message: Callable[[str], None] | None = None,
    ) -> PlanResult:
        parts: list[PlanResult] = []
        archive = replace(selection, bucket_series=())
        if not archive.is_empty():
            parts.append(
                await self.nbia.plan(
                    archive, concurrency=concurrency, known=known, on_message=on_message
                )
            )
        if selection.bucket_series:
            parts.append(
                await self.idc.plan(
                    Selection(bucket_series=selection.bucket_series),
                    concurrency=concurrency,
                    known=known,
                    on_message=on_message,
                )
            )
        return PlanResult(
            series=[p for r in parts for p in r.series],
            missing=[m for r in parts for m in r.missing],
            reused=sum(r.reused for r in parts),
            requests=sum(r.requests for r in parts),
        )

    def units(self, series: SeriesView, mode: Mode) -> list[FetchUnit]:
        return self._for_view(series).units(series, mode)

    def open(
        self, unit: FetchUnit, *, md5: bool, transport: Transport | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[Any]]:
        return self._for_key(unit.key).open(unit, md5=md5, transport=transport)

    def states_md5(self, unit: FetchUnit, *, md5: bool) -> str | None:
        return self._for_key(unit.key).states_md5(unit, md5=md5)

    async def object_md5(self, unit: FetchUnit) -> tuple[str, str] | None:
        return await self._for_key(unit.key).object_md5(unit)

    def retryable(self, exc: BaseException) -> bool:
        return self.nbia.retryable(exc)


def default_source(client: ArchiveClient) -> Source:
    """The engine's source: the archive, and IDC buckets over the same HTTP session."""
    idc = IdcSource(
        lambda: client.session,
        endpoint=getattr(client.config, "s3_endpoint", None),
        proxy=client.config.proxy,
        retry=client.config.retry,
        max_connections=client.config.max_connections,
        sleep=client._sleep,  # noqa: SLF001 - the run's injectable sleep
    )
    return RoutingSource(NbiaSource(client), idc)
