"""Ask the archive again: has it changed a series since the plan was recorded?

``verify --remote`` calls getSeriesSize and (where the profile has it) getSOPInstanceUIDs for
every series of the mirror, the same client calls the planner makes, and compares the answers
with the plan. A series whose count, bytes or SOP Instance UIDs differ is an ``archive_changed``
problem; fetching the change is ``sync``'s job, so local state is left as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.sources.nbia.models import SeriesSize
from tcia_mirror.sources.nbia.planner import bounded_gather
from tcia_mirror.store.base import InstanceState, SeriesState

ARCHIVE_CHANGED = "archive_changed"


def compare_series(
    state: SeriesState,
    size: SeriesSize | None,
    remote_sops: Sequence[str] | None,
    local_sops: set[str],
) -> dict[str, Any] | None:
    """The ``archive_changed`` problem for one series, or None when the archive agrees.

    ``size`` None: not asked; ``remote_sops`` None: not asked (the profile lacks the endpoint).
    An answer the archive leaves empty is no evidence, except that an empty size *and* an
    empty SOP list together mean the series is no longer on the archive.
    """
    expected: dict[str, Any] = {}
    found: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if (
        size is not None
        and size.object_count is None
        and size.total_bytes is None
        and remote_sops is not None
        and not remote_sops
    ):
        return {
            "series": state.uid,
            "kind": ARCHIVE_CHANGED,
            "expected": {"count": state.expected_count, "bytes": state.expected_bytes},
            "found": None,
            "detail": "no longer on the archive",
        }
    if size is not None:
        if (
            size.object_count is not None
            and state.expected_count is not None
            and size.object_count != state.expected_count
        ):
            expected["count"], found["count"] = state.expected_count, size.object_count
        if (
            size.total_bytes is not None
            and state.expected_bytes is not None
            and size.total_bytes != state.expected_bytes
        ):
            expected["bytes"], found["bytes"] = state.expected_bytes, size.total_bytes
    if remote_sops and local_sops:
        remote = set(remote_sops)
        added, removed = len(remote - local_sops), len(local_sops - remote)
        if added or removed:
            expected["sop_uids"], found["sop_uids"] = len(local_sops), len(remote)
            extra = {"sop_added": added, "sop_removed": removed}
    if not found:
        return None
    return {
        "series": state.uid,
        "kind": ARCHIVE_CHANGED,
        "expected": expected,
        "found": found,
        **extra,
    }


async def archive_changes(
    client: ArchiveClient,
    states: Sequence[SeriesState],
    instances: Callable[[str], Awaitable[list[InstanceState]]],
    *,
    concurrency: int = 16,
) -> list[dict[str, Any]]:
    """One ``archive_changed`` problem per changed series, in plan order.

    At most ``concurrency`` series are asked at once (each asks its questions one after the
    other). Remote errors propagate: a check that could not be made is not a passed check.
    """
    with_size = client.profile.has("getSeriesSize")
    with_sops = client.profile.has("getSOPInstanceUIDs")

    async def one(s: SeriesState) -> dict[str, Any] | None:
        size = await client.series_size(s.uid) if with_size else None
        remote_sops = await client.sop_instance_uids(s.uid) if with_sops else None
        local: set[str] = set()
        if remote_sops:
            rows = await instances(s.uid)
            local = {i.sop_uid for i in rows}
        return compare_series(s, size, remote_sops, local)

    factories: list[Callable[[], Awaitable[dict[str, Any] | None]]] = [
        functools.partial(one, s) for s in states
    ]
    results = await bounded_gather(factories, max(1, concurrency))
    return [r for r in results if r is not None]
