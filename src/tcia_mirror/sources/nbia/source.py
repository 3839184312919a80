"""The NBIA REST API as a :class:`~tcia_mirror.sources.base.Source`.

Series ZIPs (``getImage``, or the profile's MD5-carrying variant) are the ``archive`` units,
``getSingleImage`` the ``object`` ones; :func:`choose_units` decides between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from tcia_mirror.errors import DataError, RemoteError, TransferError
from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import FetchUnit, Mode, PlanResult, SeriesView
from tcia_mirror.sources.http import Transport
from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.sources.nbia.planner import make_plan
from tcia_mirror.store.base import SeriesState

__all__ = ["CHUNK", "PER_REQUEST_COST", "NbiaSource", "choose_units"]

CHUNK = 256 * 1024  # bytes per read of a response body
PLAN_CONCURRENCY = 32  # planning requests at once (at least; 2 x transfers when larger)
PER_REQUEST_COST = 64 * 1024  # bytes a request "costs" in latency, when choosing single vs ZIP


def choose_units(series: SeriesView, mode: Mode) -> list[FetchUnit]:
    """The ZIP-or-single decision: what to ask the archive for next, for one series.

    Nothing when every expected instance is done. Single images when the user asked for them,
    when the series' ZIP held entries we refuse (the same ZIP again would not help), when the
    series' ZIP already broke off twice (runs killed, links dropping; even if nothing of it was
    committed), or when the missing part is cheaper one by one (estimated at
    ``PER_REQUEST_COST`` per request). Else its ZIP.
    """
    missing = series.missing
    if series.expected and not missing:
        return []
    single = mode == "single" and bool(series.expected)
    if series.archive_untrusted and series.expected:
        single = True
    elif mode == "zip" and missing and series.archive_tries >= 2:
        # its ZIP broke off twice (runs killed, links dropping): a ZIP commits its files only
        # once its MD5 list, the last entry, arrived, so a third one might never get there
        single = True
    elif mode == "zip" and series.done and missing and series.expected_bytes:
        n = max(1, series.expected_count or len(series.expected))
        est = series.expected_bytes * len(missing) / n + PER_REQUEST_COST * len(missing)
        single = est < series.expected_bytes
    if single:
        return [FetchUnit(series.uid, "object", sop, sop=sop) for sop in missing]
    return [FetchUnit(series.uid, "archive")]


class NbiaSource:
    """Series from an NBIA/TCIA archive, through one :class:`ArchiveClient`."""

    name = "nbia"

    def __init__(self, client: ArchiveClient) -> None:
        self.client = client

    async def plan(
        self,
        selection: Selection,
        *,
        concurrency: int,
        known: Mapping[str, SeriesState],
        on_message: Callable[[str], None] | None = None,
    ) -> PlanResult:
        # planning requests are small: let more of them run at once than transfers
        wide = max(PLAN_CONCURRENCY, concurrency * 2)
        self.client.set_concurrency(wide)
        try:
            return await make_plan(
                self.client, selection, concurrency=wide, known=known, on_message=on_message
            )
        finally:
            self.client.set_concurrency(concurrency)

    def units(self, series: SeriesView, mode: Mode) -> list[FetchUnit]:
        return choose_units(series, mode)

    @asynccontextmanager
    async def open(
        self, unit: FetchUnit, *, md5: bool, transport: Transport | None = None
    ) -> AsyncIterator[AsyncIterator[Any]]:
        if unit.kind == "archive":
            endpoint, params = self.client.image_request(unit.series_uid, md5=md5)
        else:
            assert unit.key is not None
            endpoint, params = self.client.single_image_request(unit.series_uid, unit.key)
        if transport is not None:
            async with self.client.open_via(transport, endpoint, params) as answer:
                yield transport.body(answer, endpoint)
            return
        async with self.client.open(endpoint, params) as resp:
            yield _body(resp, endpoint)

    def states_md5(self, unit: FetchUnit, *, md5: bool) -> str | None:
        if unit.kind != "archive" or not md5:
            return None
        endpoint, _params = self.client.image_request(unit.series_uid, md5=True)
        return "md5hashes.csv" if endpoint == self.client.profile.md5_endpoint else None

    async def object_md5(self, unit: FetchUnit) -> tuple[str, str] | None:
        if unit.kind != "object" or unit.key is None:
            return None
        answer = await self.client.image_md5(unit.key)
        return None if answer is None else (answer, answer_source(self.client))

    def retryable(self, exc: BaseException) -> bool:
        """Data that failed checks, transfers cut short, and archive errors worth retrying."""
        if isinstance(exc, DataError | TransferError):
            return True
        return isinstance(exc, RemoteError) and exc.status not in (400, 401, 403, 404, 407)


def answer_source(client: ArchiveClient) -> str:
    """The per-image MD5 endpoint of the client's profile (its name is the MD5's source)."""
    return client.profile.image_md5_endpoint or "getMD5HashForImage"


async def _body(resp: aiohttp.ClientResponse, endpoint: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(CHUNK):
            yield chunk
    except (aiohttp.ClientError, TimeoutError) as exc:
        text = str(exc).strip().splitlines()
        raise TransferError(
            f"{endpoint}: {type(exc).__name__}: {text[0] if text else 'the transfer broke off'}"
        ) from exc
