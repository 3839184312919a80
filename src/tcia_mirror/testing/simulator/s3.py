"""The simulator's dataset served as an S3-compatible public bucket, as IDC serves TCIA data.

::

    async with S3Simulator(dataset, faults=Faults(drop_rate=0.2)) as s3:
        s3.write_manifest(tmp / "SIM-LUNG-CT-idc_v20-aws.s5cmd", style="doi")
        endpoint = s3.endpoint               # http://127.0.0.1:PORT (path-style)

Routes (path-style, anonymous)::

    GET  /<bucket>?list-type=2&prefix=<uuid>/[&max-keys=N][&continuation-token=T]
    GET  /<bucket>/<key>            Range: bytes=a-b | a- | -n  -> 206 with Content-Range
    HEAD /<bucket>/<key>

Each series is one folder ``<uuid>/`` (a uuid5 of its SeriesInstanceUID), each instance one
object ``<uuid>/<uuid5 of its SOP UID>.dcm``: the dataset's file with TCIA's ``CTP`` private
block naming the collection, as IDC's copies carry. ETags are the MD5 of the body, except every
``multipart_every``-th object, which gets a multipart-style ``"<hex>-3"``. Faults (see
:class:`~.faults.Faults`; endpoint names ``ListObjectsV2``, ``GetObject``, ``HeadObject``):
``latency``, ``bandwidth``, ``error_rate`` (503 ``SlowDown`` or 500/502), ``rate_limit_rate``
(503 ``SlowDown`` with ``Retry-After``), ``drop_rate`` (body cut, connection closed) and
``truncate_rate`` (body ends early, connection closed).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import io
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import pydicom
from aiohttp import web

from tcia_mirror.sources.idc.manifest import BucketRef, Style, render_s5cmd

from .dataset import Dataset
from .faults import Faults
from .server import _Body

__all__ = ["S3Object", "S3Simulator", "folder_uuid", "with_ctp_collection"]

_NS = uuid.UUID("6f1d4e8a-3c1b-4b7e-9a55-1e0c2d3b4a59")
_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
_MODIFIED = "2024-01-01T00:00:00.000Z"  # ISO 8601 in listings
_MODIFIED_HTTP = "Mon, 01 Jan 2024 00:00:00 GMT"  # RFC 7231 in headers (SDKs refuse ISO there)


def folder_uuid(series_uid: str) -> str:
    return str(uuid.uuid5(_NS, f"series:{series_uid}"))


def with_ctp_collection(data: bytes, collection: str) -> bytes:
    """The file with TCIA's private block (0013,0010) = ``CTP``, (0013,1010) = collection."""
    ds = pydicom.dcmread(io.BytesIO(data))
    block = ds.private_block(0x0013, "CTP", create=True)
    block.add_new(0x10, "LO", collection)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass(slots=True)
class S3Object:
    key: str
    body: bytes
    etag: str  # quoted, as S3 sends it
    path: Path | None = None  # the body in a file, served with sendfile (see ``files``)


def _error(status: int, code: str, message: str) -> web.Response:
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    )
    return web.Response(status=status, body=xml.encode(), content_type="application/xml")


class S3Simulator:
    """A public bucket of ``dataset`` on a loopback port (see the module docstring).

    ``page_size`` caps every ListObjectsV2 page below ``max-keys`` (S3 caps at 1000; a small
    one proves a client follows continuation tokens). ``requests`` records every request as
    ``(method, key or "?list", Range header or None)``. ``files``: a folder to keep each body
    in a file of its own, served with ``sendfile`` (no copy through Python) whenever no
    bandwidth cap or body fault applies to the answer: benchmarks use it so that the bucket is
    not the bottleneck.
    """

    def __init__(
        self,
        dataset: Dataset | None = None,
        *,
        bucket: str = "idc-open-data",
        faults: Faults | None = None,
        page_size: int = 1000,
        multipart_every: int = 4,
        ctp: bool = True,
        files: Path | None = None,
    ) -> None:
        self.bucket = bucket
        self._files = files
        self.faults = faults if faults is not None else Faults()
        self.page_size = max(1, page_size)
        self.objects: dict[str, S3Object] = {}
        self.folders: dict[str, str] = {}  # SeriesInstanceUID -> folder uuid
        self.requests: list[tuple[str, str, str | None]] = []
        self.faults_injected: collections.Counter[str] = collections.Counter()
        self._multipart_every = multipart_every
        self._runner: web.AppRunner | None = None
        self._port = 0
        if dataset is not None:
            for s in dataset.series:
                folder = folder_uuid(s.series_uid)
                self.folders[s.series_uid] = folder
                for inst in s.instances:
                    data = dataset.instance_bytes(s.series_uid, inst.sop_uid)
                    if ctp:
                        data = with_ctp_collection(data, s.collection)
                    name = uuid.uuid5(_NS, f"sop:{inst.sop_uid}")
                    self.put(f"{folder}/{name}.dcm", data)

    # -------------------------------------------------------------- content
    def put(self, key: str, body: bytes, *, multipart: bool | None = None) -> S3Object:
        if multipart is None:
            multipart = self._multipart_every > 0 and len(self.objects) % self._multipart_every == (
                self._multipart_every - 1
            )
        md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if multipart:
            etag = f'"{hashlib.md5(md5.encode(), usedforsecurity=False).hexdigest()}-3"'
        else:
            etag = f'"{md5}"'
        obj = S3Object(key, body, etag)
        if self._files is not None:
            obj.path = self._files / f"{hashlib.sha1(key.encode()).hexdigest()}.obj"
            obj.path.parent.mkdir(parents=True, exist_ok=True)
            obj.path.write_bytes(body)
        self.objects[key] = obj
        return obj

    def refs(self, series_uids: Iterable[str] | None = None) -> list[BucketRef]:
        uids = list(self.folders) if series_uids is None else list(series_uids)
        return [BucketRef(self.bucket, self.folders[u]) for u in uids]

    def write_manifest(
        self,
        path: Path,
        *,
        style: Style = "portal",
        series_uids: Iterable[str] | None = None,
        endpoint: str | None = None,
    ) -> Path:
        """A ``.s5cmd`` manifest of the given series (all by default) in one real format;
        ``legacy`` lists every object of them on its own line."""
        refs = self.refs(series_uids)
        if style == "legacy":
            prefixes = tuple(r.prefix for r in refs)
            refs = [
                BucketRef(self.bucket, k, "object")
                for k in sorted(self.objects)
                if k.startswith(prefixes)
            ]
        path.write_text(render_s5cmd(refs, style, endpoint=endpoint), encoding="utf-8")
        return path

    def folder_bytes(self, series_uid: str) -> dict[str, bytes]:
        """Object key -> body of one series folder (for byte-identical checks)."""
        prefix = self.folders[series_uid] + "/"
        return {k: o.body for k, o in self.objects.items() if k.startswith(prefix)}

    # -------------------------------------------------------------- server
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/{bucket}", self._list, allow_head=False)
        app.router.add_head("/{bucket}", self._head_bucket)
        app.router.add_get("/{bucket}/{key:.+}", self._object)  # HEAD too
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self.endpoint

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> S3Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @staticmethod
    def _op(request: web.Request) -> str:
        if "key" not in request.match_info:
            return "ListObjectsV2"
        return "HeadObject" if request.method == "HEAD" else "GetObject"

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:  # type: ignore[no-untyped-def]
        op = self._op(request)
        key = request.match_info.get("key", "?list")
        self.requests.append((request.method, key, request.headers.get("Range")))
        f = self.faults
        if f.applies(op):
            if f.latency > 0:
                await asyncio.sleep(f.latency)
            status = f.burst_status()
            if status is None and f.roll(f.rate_limit_rate):
                self.faults_injected["slowdown"] += 1
                resp = _error(503, "SlowDown", "Please reduce your request rate.")
                resp.headers["Retry-After"] = f.retry_after_header()
                return resp
            if status is not None or (status := f.server_error()) is not None:
                self.faults_injected["5xx"] += 1
                if status == 503:
                    return _error(503, "SlowDown", "Please reduce your request rate.")
                return _error(status, "InternalError", "We encountered an internal error.")
        try:
            return await handler(request)
        except ConnectionResetError:
            return web.Response(status=499)

    async def _head_bucket(self, request: web.Request) -> web.StreamResponse:
        """HeadBucket: SDKs (s5cmd) ask it for the bucket's region before anything else."""
        if request.match_info["bucket"] != self.bucket:
            return web.Response(status=404)
        return web.Response(status=200, headers={"x-amz-bucket-region": "us-east-1"})

    async def _list(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["bucket"] != self.bucket:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist")
        q = request.query
        if q.get("list-type") != "2":
            return _error(400, "InvalidArgument", "only ListObjectsV2 (list-type=2) is served")
        prefix = q.get("prefix", "")
        try:
            max_keys = min(1000, int(q.get("max-keys", "1000")))
        except ValueError:
            return _error(400, "InvalidArgument", "max-keys must be a number")
        after = q.get("start-after", "")
        token = q.get("continuation-token")
        if token:
            try:
                after = base64.urlsafe_b64decode(token.encode()).decode()
            except ValueError:
                return _error(400, "InvalidArgument", "The continuation token is not valid")
        keys = sorted(k for k in self.objects if k.startswith(prefix) and k > after)
        page = keys[: min(max_keys, self.page_size)]
        truncated = len(keys) > len(page)
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<ListBucketResult xmlns="{_XMLNS}">',
            f"<Name>{escape(self.bucket)}</Name><Prefix>{escape(prefix)}</Prefix>",
            f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>",
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        if token:
            parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if truncated:
            nxt = base64.urlsafe_b64encode(page[-1].encode()).decode()
            parts.append(f"<NextContinuationToken>{nxt}</NextContinuationToken>")
        for k in page:
            o = self.objects[k]
            etag = escape(o.etag, {'"': "&quot;"})
            parts.append(
                f"<Contents><Key>{escape(k)}</Key><LastModified>{_MODIFIED}</LastModified>"
                f"<ETag>{etag}</ETag><Size>{len(o.body)}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        parts.append("</ListBucketResult>")
        return web.Response(body="".join(parts).encode(), content_type="application/xml")

    async def _object(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["bucket"] != self.bucket:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist")
        obj = self.objects.get(request.match_info["key"])
        if obj is None:
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        size = len(obj.body)
        headers = {"ETag": obj.etag, "Accept-Ranges": "bytes", "Last-Modified": _MODIFIED_HTTP}
        start, end = 0, size - 1
        status = 200
        rng = request.headers.get("Range")
        if rng:
            parsed = _parse_range(rng, size)
            if parsed is None:
                return _error(416, "InvalidRange", "The requested range is not satisfiable")
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if request.method == "HEAD":
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = end - start + 1
            resp.content_type = "application/dicom"
            await resp.prepare(request)
            return resp
        count = end - start + 1
        f = self.faults
        cut = None
        if f.applies("GetObject") and count > 1:
            if f.roll(f.drop_rate):
                self.faults_injected["drop"] += 1
                cut = max(1, int(count * f.fraction()))
            elif f.roll(f.truncate_rate):
                self.faults_injected["truncate"] += 1
                cut = max(1, int(count * f.fraction()))
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_type = "application/dicom"
        resp.content_length = count
        await resp.prepare(request)
        if obj.path is not None and cut is None and not f.bandwidth:
            await self._sendfile(request, obj.path, start, count)
            await resp.write_eof()
            return resp
        data = obj.body[start : end + 1]
        body = _Body(resp, f.bandwidth)
        await body.write(data if cut is None else data[:cut])
        if cut is not None:
            if request.transport is not None:
                request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    @staticmethod
    async def _sendfile(request: web.Request, path: Path, start: int, count: int) -> None:
        """The kernel copies the file to the socket (the headers were sent by prepare)."""
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("Connection lost")
        with path.open("rb") as fobj:
            await asyncio.get_running_loop().sendfile(transport, fobj, start, count)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``a-`` / ``-n`` -> inclusive (start, end); None when unsatisfiable."""
    unit, _, spec = header.strip().partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                return None
            return max(0, size - n), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)
