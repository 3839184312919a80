"""Planner: a selection becomes series, then SOP instance UIDs, with expected counts and bytes.

Planning requests run concurrently (bounded), since a collection can hold tens of thousands of
series. The result is plain data; recording it is the store's job.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio

from tcia_mirror.errors import BadRequestError, NotFoundError, ProtocolError, ServerError, one_error
from tcia_mirror.fs.layout import fields_from_series
from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import PlanResult
from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.sources.nbia.models import Series, SeriesSize
from tcia_mirror.store.base import SeriesPlan, SeriesState

T = TypeVar("T")

# an archive that cannot answer these per-series questions still lets us plan the series
_OPTIONAL = (BadRequestError, NotFoundError, ProtocolError, ServerError)


async def bounded_gather(factories: Sequence[Callable[[], Awaitable[T]]], limit: int) -> list[T]:
    """Run coroutine factories with at most ``limit`` at once; results in input order."""
    results: list[Any] = [None] * len(factories)
    limiter = anyio.CapacityLimiter(max(1, limit))

    async def run(i: int, make: Callable[[], Awaitable[T]]) -> None:
        async with limiter:
            results[i] = await make()

    async with one_error(), anyio.create_task_group() as tg:
        for i, make in enumerate(factories):
            tg.start_soon(run, i, make)
    return results


def series_fields(s: Series) -> dict[str, Any]:
    """The series' fields for layout templates and metadata.csv (unknown ones left out)."""
    fields = {
        **fields_from_series(s),
        "DateReleased": s.date_released,
        "LicenseName": s.license_name,
        "LicenseURI": s.license_uri,
        "ImageCount": s.image_count,
        "FileSize": s.file_size,
    }
    return {k: v for k, v in fields.items() if v is not None}


async def list_series(
    client: ArchiveClient, selection: Selection, *, concurrency: int = 16
) -> tuple[list[Series], list[str], int]:
    """All series of the selection (deduplicated, in order), the explicit UIDs not found, requests."""
    jobs: list[Callable[[], Awaitable[list[Series]]]] = []
    if selection.collection:
        for patient in selection.patients or (None,):

            async def by_collection(p: str | None = patient) -> list[Series]:
                return await client.series(
                    selection.collection,
                    patient_id=p,
                    study_uid=selection.study,
                    modality=selection.modality,
                    body_part=selection.body_part,
                    manufacturer=selection.manufacturer,
                    manufacturer_model=selection.manufacturer_model,
                )

            jobs.append(by_collection)
    for name in selection.shared_lists:

        async def by_list(n: str = name) -> list[Series]:
            return await client.shared_list(n)

        jobs.append(by_list)
    n_listing = len(jobs)
    for uid in selection.series:

        async def by_uid(u: str = uid) -> list[Series]:
            return await client.series(series_uid=u)

        jobs.append(by_uid)
    answers = await bounded_gather(jobs, concurrency)
    seen: dict[str, Series] = {}
    for rows in answers:
        for s in rows:
            seen.setdefault(s.series_instance_uid, s)
    missing = [
        uid for uid, rows in zip(selection.series, answers[n_listing:], strict=True) if not rows
    ]
    return list(seen.values()), missing, len(jobs)


async def make_plan(
    client: ArchiveClient,
    selection: Selection,
    *,
    concurrency: int = 16,
    known: Mapping[str, SeriesState] | None = None,
    on_message: Callable[[str], None] | None = None,
) -> PlanResult:
    """Expand ``selection``. Series in ``known`` whose count and size are unchanged are reused."""
    listed, missing, requests = await list_series(client, selection, concurrency=concurrency)
    if on_message:
        on_message(f"found {len(listed)} series; asking the archive for their sizes and instances")
    known = known or {}
    reused = 0
    todo: list[Series] = []
    plans: dict[str, SeriesPlan] = {}
    for s in listed:
        k = known.get(s.series_instance_uid)
        if (
            k is not None
            and k.instance_count
            and s.image_count is not None
            and s.image_count == k.expected_count
            and (s.file_size is None or s.file_size == k.expected_bytes)
        ):
            plans[k.uid] = SeriesPlan(
                uid=k.uid,
                collection=k.collection,
                patient_id=k.patient_id,
                study_uid=k.study_uid,
                expected_count=k.expected_count,
                expected_bytes=k.expected_bytes,
                fields=k.fields,
            )
            reused += 1
        else:
            todo.append(s)

    async def details(s: Series) -> SeriesPlan:
        out: dict[str, Any] = {}
        async with one_error(), anyio.create_task_group() as tg:

            async def size() -> None:
                try:
                    out["size"] = await client.series_size(s.series_instance_uid)
                except _OPTIONAL as exc:  # getSeries' ImageCount/FileSize stand in
                    out["size"] = SeriesSize(None, None)
                    if on_message:
                        on_message(f"getSeriesSize {s.series_instance_uid}: {exc}")

            async def sops() -> None:
                try:
                    out["sops"] = await client.sop_instance_uids(s.series_instance_uid)
                except _OPTIONAL as exc:  # the ZIP tells which instances there are
                    out["sops"] = []
                    if on_message:
                        on_message(f"getSOPInstanceUIDs {s.series_instance_uid}: {exc}")

            tg.start_soon(size)
            tg.start_soon(sops)
        size_ = out["size"]
        sop_uids: list[str] = list(dict.fromkeys(out["sops"]))
        count = size_.object_count if size_.object_count is not None else s.image_count
        nbytes = size_.total_bytes if size_.total_bytes is not None else s.file_size
        return SeriesPlan(
            uid=s.series_instance_uid,
            collection=s.collection,
            patient_id=s.patient_id,
            study_uid=s.study_instance_uid,
            expected_count=count if count is not None else len(sop_uids),
            expected_bytes=nbytes,
            fields=series_fields(s),
            sop_uids=tuple(sop_uids),
        )

    # each details() makes two requests; halve the fan-out so requests stay within the bound
    factories: list[Callable[[], Awaitable[SeriesPlan]]] = [
        functools.partial(details, s) for s in todo
    ]
    detailed = await bounded_gather(factories, max(1, concurrency // 2))
    for p in detailed:
        plans[p.uid] = p
    ordered = [plans[s.series_instance_uid] for s in listed]
    return PlanResult(
        series=ordered, missing=missing, reused=reused, requests=requests + 2 * len(todo)
    )
