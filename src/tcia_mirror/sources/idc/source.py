"""Series in IDC public buckets as a :class:`~tcia_mirror.sources.base.Source`.

A selection's ``bucket_series`` (lines of ``.s5cmd`` manifests) are planned by listing each
folder (ListObjectsV2) and reading the head of its first object: its DICOM header names the
series, study, patient and collection, so a series lands where the same series mirrored from
NBIA would. Every object is an ``object`` unit keyed ``s3://<bucket>/<key>``; its SOP UID is
known only once fetched (``FetchUnit.sop`` is None) and names the file.

:meth:`IdcSource.open` streams one GET; a body that breaks mid-object is continued with a
``Range: bytes=<yielded>-`` request (``If-Match`` its ETag, so bytes of two versions are never
mixed), never started over: the pipeline hashes the bytes as they pass, so its MD5 covers the
whole file.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import random
import warnings
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio

from tcia_mirror.errors import (
    BodyCut,
    DataError,
    InputError,
    RemoteError,
    TransferError,
    one_error,
)
from tcia_mirror.fs.dicomio import CHARSETS, head_texts
from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import FetchUnit, Mode, PlanResult, SeriesView
from tcia_mirror.sources.http import AdaptiveLimiter, RetryPolicy, Sleep, Transport, real_sleep
from tcia_mirror.sources.idc.manifest import BucketRef, endpoint_for
from tcia_mirror.sources.idc.s3 import ObjectInfo, S3Client, split_etag
from tcia_mirror.sources.proxy import ProxyChoice

if TYPE_CHECKING:
    import pydicom
from tcia_mirror.store.base import SeriesPlan, SeriesState

__all__ = ["HEAD_BYTES", "IdcSource", "collection_of", "object_key", "split_key"]

CHUNK = 256 * 1024
HEAD_BYTES = 64 * 1024  # bytes of a series' first object read to learn its identity
PLAN_CONCURRENCY = 32
UNKNOWN_COLLECTION = "unknown-collection"
_FIELDS = {  # the header's fields kept per series, by tag
    "PatientID": 0x00100020,
    "PatientName": 0x00100010,
    "StudyInstanceUID": 0x0020000D,
    "StudyDate": 0x00080020,
    "StudyDescription": 0x00081030,
    "StudyID": 0x00200010,
    "SeriesInstanceUID": 0x0020000E,
    "SeriesNumber": 0x00200011,
    "SeriesDescription": 0x0008103E,
    "Modality": 0x00080060,
    "BodyPartExamined": 0x00180015,
    "Manufacturer": 0x00080070,
}
_FIELD_TAGS = frozenset(_FIELDS.values())
_PRIVATE_GROUP = 0x0013  # TCIA's CTP block, whose (0013,xx10) is the "Project Name"


def object_key(bucket: str, key: str) -> str:
    """The store's key of a bucket object: ``s3://<bucket>/<key>``."""
    return f"s3://{bucket}/{key}"


def split_key(key: str) -> tuple[str, str]:
    if not key.startswith("s3://") or "/" not in key[5:]:
        raise InputError(f"{key!r} is not an s3://<bucket>/<key> object key")
    bucket, _, rest = key[5:].partition("/")
    return bucket, rest


def collection_of(ds: pydicom.Dataset) -> str | None:
    """TCIA's "Project Name": (0013,xx10) in the private block whose creator is ``CTP``."""
    import pydicom  # noqa: PLC0415 (imported when first needed: see IdcSource.plan)

    codec = CHARSETS.get(str(ds.get("SpecificCharacterSet", "")).strip(), "utf_8")
    for elem in ds.group_dataset(0x0013):
        if elem.tag.element < 0x0100 and _text(elem.value, codec) == "CTP":
            tag = pydicom.tag.Tag(0x0013, (elem.tag.element << 8) | 0x10)
            if tag in ds:
                return _text(ds[tag].value, codec) or None
    return None


def _text(value: object, codec: str) -> str:
    """An element's value as text (a private element read as UN comes as bytes: decoded in
    the data set's character set)."""
    if isinstance(value, bytes):
        value = value.decode(codec, errors="replace")
    return str(value).strip(" \x00")


async def _import_soon(module: str) -> None:
    await anyio.to_thread.run_sync(importlib.import_module, module)


def _read_head(head: bytes) -> pydicom.Dataset | None:
    import pydicom  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, force=False)
    except Exception:  # a head cut mid-element, or not DICOM: the caller reads more or refuses
        return None


def _identity_fast(head: bytes, *, complete: bool = False) -> dict[str, Any] | None:
    """The series' fields and collection from ``head`` without pydicom (see
    :func:`~tcia_mirror.fs.dicomio.head_texts`), as :func:`_identity` gives them; None when
    unsure. ``complete``: ``head`` is the whole object."""
    texts = head_texts(
        head, _FIELD_TAGS, 0x00200012, frozenset({_PRIVATE_GROUP}), complete=complete
    )
    if texts is None:
        return None
    fields: dict[str, Any] = {}
    for name, tag in _FIELDS.items():
        value = texts.get(tag)
        if value is not None and name == "SeriesNumber":
            value = value.strip(" ")  # an IS: pydicom gives it without its padding
        fields[name] = value or None
    collection = None
    for tag, value in sorted(texts.items()):
        element = tag & 0xFFFF
        if tag >> 16 == _PRIVATE_GROUP and element < 0x0100 and value.strip(" ") == "CTP":
            found = texts.get(_PRIVATE_GROUP << 16 | element << 8 | 0x10)
            if found is not None:  # else the next CTP block, as collection_of does
                collection = found.strip(" ")
                break
    fields["Collection"] = collection or None
    return fields


def _identity(ds: pydicom.Dataset) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name in _FIELDS:
        value = ds.get(name)
        fields[name] = None if value is None or str(value) == "" else str(value)
    fields["Collection"] = collection_of(ds)
    return fields


def _listing_digest(objects: list[ObjectInfo]) -> str:
    h = hashlib.sha256()
    for o in sorted(objects, key=lambda o: o.key):
        h.update(f"{o.key}\0{o.size}\0{o.etag}\n".encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _Folder:
    ref: BucketRef
    endpoint: str
    objects: list[ObjectInfo]


def _group(folders: list[_Folder]) -> tuple[dict[tuple[str, str], _Folder], list[str]]:
    """Series by (bucket, folder): legacy file-level lines of one folder make one series. Also
    the lines whose folder is empty or missing in the bucket."""
    groups: dict[tuple[str, str], _Folder] = {}
    missing: list[str] = []
    for f in folders:
        if not f.objects:
            missing.append(f"{f.ref.url}: empty or missing in the bucket")
            continue
        folder = f.ref.path if f.ref.kind == "folder" else f.ref.path.rpartition("/")[0]
        g = groups.get((f.ref.bucket, folder))
        if g is None:
            groups[(f.ref.bucket, folder)] = _Folder(f.ref, f.endpoint, list(f.objects))
        else:
            g.objects.extend(o for o in f.objects if o not in g.objects)
    return groups, missing


class IdcSource:
    """Series from IDC public buckets (anonymous, path-style requests).

    ``endpoint``: overrides every bucket's endpoint (``--s3-endpoint``). ``session``: a callable
    giving the aiohttp session to use (the run's, shared with the archive client).
    """

    name = "idc"

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        *,
        endpoint: str | None = None,
        retry: RetryPolicy | None = None,
        max_connections: int = 16,
        sleep: Sleep = real_sleep,
        rng: random.Random | None = None,
        proxy: ProxyChoice | None = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.s3 = S3Client(
            session,
            retry=retry,
            limiter=AdaptiveLimiter(max_connections),
            sleep=sleep,
            rng=rng or random.Random(),
            proxy=proxy,
        )
        self._endpoints: dict[str, str] = {}  # bucket -> the endpoint a manifest header named
        self._expect: dict[str, ObjectInfo] = {}  # object key -> what the listing said
        self.continuations = 0  # Range requests made to continue a broken body

    # -- endpoints ---------------------------------------------------------------------------
    def endpoint_of(self, bucket: str) -> str:
        found = self.endpoint or self._endpoints.get(bucket) or endpoint_for(bucket)
        if found is None:
            raise InputError(
                f"bucket {bucket!r} is not one of IDC's public buckets; give its --s3-endpoint"
            )
        return found

    # -- plan --------------------------------------------------------------------------------
    async def plan(
        self,
        selection: Selection,
        *,
        concurrency: int,
        known: Mapping[str, SeriesState],
        on_message: Callable[[str], None] | None = None,
    ) -> PlanResult:
        """List every folder, then read one header per series whose listing changed (a series
        whose listing is the one recorded keeps its plan: no GET, no HEAD)."""
        refs = [BucketRef.from_text(t) for t in selection.bucket_series]
        for r in refs:
            if r.endpoint:
                self._endpoints.setdefault(r.bucket, r.endpoint)
        by_folder = {
            str(s.fields.get("BucketFolder")): s
            for s in known.values()
            if s.fields.get("BucketFolder")
        }
        limiter = anyio.CapacityLimiter(max(PLAN_CONCURRENCY, concurrency * 2))
        self.s3.limiter.set_limit(max(PLAN_CONCURRENCY, concurrency * 2))
        groups, missing = _group(await self._list_all(refs, limiter))
        if on_message:
            on_message(f"listed {len(refs)} bucket folder(s); reading one header per series")
        plans: dict[tuple[str, str], SeriesPlan] = {}
        reused = 0

        async def plan_one(gk: tuple[str, str], g: _Folder) -> None:
            nonlocal reused
            url = f"s3://{g.ref.bucket}/{gk[1]}/" if gk[1] else g.ref.url
            digest = _listing_digest(g.objects)
            old = by_folder.get(url)
            if old is not None and old.fields.get("ListingDigest") == digest:
                plans[gk] = self._plan_for(g, url, digest, dict(old.fields), old)  # no GET, no HEAD
                reused += 1
                return
            async with limiter:
                fields = await self._read_identity(g, url)
            plans[gk] = self._plan_for(g, url, digest, fields, None)

        async with one_error(), anyio.create_task_group() as tg:
            for gk, g in groups.items():
                tg.start_soon(plan_one, gk, g)
        for g in groups.values():
            for o in g.objects:
                self._expect[object_key(g.ref.bucket, o.key)] = o
        return PlanResult(
            series=[plans[gk] for gk in groups],
            missing=missing,
            reused=reused,
            requests=self.s3.requests,
        )

    async def _list_all(
        self, refs: list[BucketRef], limiter: anyio.CapacityLimiter
    ) -> list[_Folder]:
        """Each line's listing (an object line: its one object), in the lines' order."""
        folders: list[_Folder | None] = [None] * len(refs)

        async def list_one(i: int, ref: BucketRef) -> None:
            async with limiter:
                endpoint = self.endpoint_of(ref.bucket)
                objects = await self.s3.list(endpoint, ref.bucket, ref.prefix)
                if ref.kind == "object":
                    objects = [o for o in objects if o.key == ref.path]
                folders[i] = _Folder(ref, endpoint, objects)

        async with one_error(), anyio.create_task_group() as tg:
            for i, ref in enumerate(refs):
                tg.start_soon(list_one, i, ref)
        return [f for f in folders if f is not None]

    async def _read_identity(self, g: _Folder, url: str) -> dict[str, Any]:
        """The series' fields and collection, from the head of its first object (the whole
        object when the head is not enough); the fast reader first, else pydicom."""
        first = min(g.objects, key=lambda o: o.key)
        fields = None
        for end in (HEAD_BYTES - 1, first.size - 1):
            head = await self.s3.read(g.endpoint, g.ref.bucket, first.key, end=end)
            fields = _identity_fast(head, complete=end >= first.size - 1)
            if fields is None:  # pydicom decides (imported in a thread: it is slow)
                await _import_soon("pydicom")
                ds = _read_head(head)
                fields = _identity(ds) if ds is not None else None
            if fields is not None or end >= first.size - 1:
                break
        if fields is None or not str(fields.get("SeriesInstanceUID") or "").strip():
            raise DataError(f"{url}: its first object {first.key} is not a DICOM file")
        fields["Collection"] = fields["Collection"] or g.ref.collection or UNKNOWN_COLLECTION
        return fields

    def _plan_for(
        self,
        g: _Folder,
        url: str,
        digest: str,
        fields: dict[str, Any],
        old: SeriesState | None,
    ) -> SeriesPlan:
        fields.update(
            {
                "Source": "idc",
                "Bucket": g.ref.bucket,
                "BucketFolder": url,
                "Endpoint": g.endpoint,
                "ListingDigest": digest,
            }
        )
        objects = sorted(g.objects, key=lambda o: o.key)
        keys = [object_key(g.ref.bucket, o.key) for o in objects]
        plain = {k: m for k, o in zip(keys, objects, strict=True) if (m := split_etag(o.etag))}
        return SeriesPlan(
            uid=str(fields["SeriesInstanceUID"]),
            collection=str(fields["Collection"]),
            patient_id=fields.get("PatientID"),
            study_uid=fields.get("StudyInstanceUID"),
            expected_count=len(objects),
            expected_bytes=sum(o.size for o in objects),
            fields=fields,
            sop_uids=tuple(keys),
            source=f"idc:{g.ref.bucket}",
            expected_sizes={k: o.size for k, o in zip(keys, objects, strict=True)},
            expected_md5=plain,  # a multipart ETag is no MD5: recorded in fields, not compared
            md5_source="etag",
        )

    # -- units and bytes ---------------------------------------------------------------------
    def units(self, series: SeriesView, mode: Mode) -> list[FetchUnit]:
        """One object unit per missing object (an archive of a bucket folder does not exist)."""
        return [FetchUnit(series.uid, "object", key) for key in series.missing]

    async def _expected(self, bucket: str, key: str) -> ObjectInfo | None:
        """What the listing says of an object: planned this run, else the folder is listed."""
        full = object_key(bucket, key)
        if full not in self._expect:
            folder = key.rpartition("/")[0]
            for o in await self.s3.list(
                self.endpoint_of(bucket), bucket, f"{folder}/" if folder else key
            ):
                self._expect.setdefault(object_key(bucket, o.key), o)
        return self._expect.get(full)

    @asynccontextmanager
    async def open(
        self, unit: FetchUnit, *, md5: bool, transport: Transport | None = None
    ) -> AsyncIterator[AsyncIterator[Any]]:
        assert unit.key is not None
        bucket, key = split_key(unit.key)
        endpoint = self.endpoint_of(bucket)
        info = await self._expected(bucket, key)
        if info is None:
            raise DataError(f"{unit.key}: no longer in the bucket's listing; run sync")
        if transport is not None:  # a ZIP worker fetches and writes the body itself
            answer = await self.s3.open_via(
                transport, endpoint, bucket, key, if_match=info.etag or None
            )
            yield self._body_via(transport, answer, endpoint, bucket, key, info)
            return
        resp = await self.s3.open(endpoint, bucket, key, if_match=info.etag or None)
        holder = [resp]
        try:
            yield self._body(holder, endpoint, bucket, key, info)
        finally:
            holder[0].release()

    async def _body(
        self,
        holder: list[aiohttp.ClientResponse],
        endpoint: str,
        bucket: str,
        key: str,
        info: ObjectInfo,
    ) -> AsyncIterator[bytes]:
        """The object's bytes; a cut body continues with a Range request from what was
        yielded. Gives up (TransferError) after ``retry.attempts`` cuts without progress."""
        yielded = 0
        stalled = 0
        skip = 0  # bytes to drop from a continuation the server answered 200 (whole object)
        what = object_key(bucket, key)
        while True:
            resp = holder[0]
            before = yielded
            try:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if skip:
                        drop = min(skip, len(chunk))
                        chunk, skip = chunk[drop:], skip - drop
                        if not chunk:
                            continue
                    yielded += len(chunk)
                    yield chunk
                if yielded == info.size:
                    return
                cause = f"the body ended at {yielded} of {info.size} bytes"
            except (aiohttp.ClientError, TimeoutError) as exc:
                cause = f"{type(exc).__name__} at {yielded} of {info.size} bytes"
            if yielded > info.size:
                raise DataError(f"{what}: more bytes than the listing's {info.size}")
            stalled = 0 if yielded > before else stalled + 1
            if stalled >= self.s3.retry.attempts:
                raise TransferError(f"{what}: the transfer kept breaking off ({cause})")
            resp.release()
            self.continuations += 1
            try:
                nxt = await self.s3.open(
                    endpoint, bucket, key, start=yielded, if_match=info.etag or None
                )
            except RemoteError as exc:
                raise TransferError(f"{what}: {cause}; continuing failed: {exc}") from exc
            holder[0] = nxt
            if nxt.status == 200:
                skip = yielded  # the server ignored Range: drop what we already have

    async def _body_via(
        self,
        transport: Transport,
        answer: Any,
        endpoint: str,
        bucket: str,
        key: str,
        info: ObjectInfo,
    ) -> AsyncIterator[Any]:
        """What ``transport`` made of the object's body (as :meth:`_body`, the bytes stay in
        the transport's process): a cut body continues with a Range request from the bytes
        the transport kept; the object must end at the listing's size."""
        what = object_key(bucket, key)
        stalled = 0
        while True:
            before = transport.received
            try:
                async for item in transport.body(answer, what):
                    yield item
            except BodyCut as exc:
                cause = str(exc)
            else:
                if transport.received == info.size:
                    return
                cause = f"the body ended at {transport.received} of {info.size} bytes"
                if transport.received < info.size:
                    raise TransferError(f"{what}: {cause}")
            if transport.received > info.size:
                raise DataError(f"{what}: more bytes than the listing's {info.size}")
            stalled = 0 if transport.received > before else stalled + 1
            if stalled >= self.s3.retry.attempts:
                raise TransferError(f"{what}: the transfer kept breaking off ({cause})")
            self.continuations += 1
            try:
                answer = await self.s3.open_via(
                    transport,
                    endpoint,
                    bucket,
                    key,
                    start=transport.received,
                    if_match=info.etag or None,
                )
            except RemoteError as exc:
                raise TransferError(f"{what}: {cause}; continuing failed: {exc}") from exc

    def states_md5(self, unit: FetchUnit, *, md5: bool) -> str | None:
        return None  # the listing's ETags are recorded in the plan, not stated by the stream

    async def object_md5(self, unit: FetchUnit) -> tuple[str, str] | None:
        if unit.key is None:
            return None
        bucket, key = split_key(unit.key)
        info = await self._expected(bucket, key)
        plain = split_etag(info.etag) if info is not None else None
        return None if plain is None else (plain, "etag")

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, DataError | TransferError):
            return True
        return isinstance(exc, RemoteError) and exc.status not in (400, 401, 403, 404, 407)
