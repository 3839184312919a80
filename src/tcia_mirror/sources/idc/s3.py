"""Anonymous, path-style S3 requests (``<endpoint>/<bucket>/<key>``): ListObjectsV2, ranged GET.

Every request goes through the shared retry layer (:func:`tcia_mirror.sources.http.retrying`):
503 ``SlowDown``, other 5xx and 429 are retried with backoff (``Retry-After`` honoured) and a
``SlowDown`` or 429 halves the requests allowed at once, as for the NBIA archive.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote

import aiohttp

from tcia_mirror.errors import (
    AuthError,
    BadRequestError,
    DataError,
    NotFoundError,
    RateLimitedError,
    RemoteError,
    ServerError,
    UnreachableError,
)
from tcia_mirror.sources.http import (
    RETRY_STATUSES,
    AdaptiveLimiter,
    Failed,
    Response,
    RetryPolicy,
    Sleep,
    Transport,
    parse_retry_after,
    real_sleep,
    retrying,
)
from tcia_mirror.sources.proxy import PROXY_REFUSED, ProxyChoice, through, via

__all__ = ["ObjectInfo", "S3Client", "s3_error", "split_etag"]

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
LIST_PAGE = 1000  # what we ask for; the server may answer with fewer per page


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str  # without quotes


def split_etag(etag: str | None) -> str | None:
    """The MD5 in an ETag when it is one (32 hex digits, no ``-N`` multipart suffix), else None."""
    if not etag:
        return None
    e = etag.strip().strip('"').lower()
    if len(e) == 32 and all(c in "0123456789abcdef" for c in e):
        return e
    return None


def s3_error(
    status: int, body: bytes, what: str, retry_after: float | None = None
) -> RemoteError | DataError:
    """The one place where an S3 answer's status becomes a typed error."""
    if status == 412:  # If-Match failed: the data is not the data planned
        return DataError(f"{what}: the object changed since it was planned (412); run sync")
    code = message = ""
    try:
        root = ET.fromstring(body)
        code = (root.findtext("Code") or "").strip()
        message = (root.findtext("Message") or "").strip()
    except ET.ParseError:
        pass
    said = f" {code}" + (f": {message}" if message else "") if code else ""
    err: RemoteError
    if status in (401, 403):
        err = AuthError(
            f"{what}: the bucket refused anonymous access ({status}{said}); "
            "check the bucket name and --s3-endpoint"
        )
    elif status == 404:
        err = NotFoundError(f"{what}: not in the bucket (404{said}); check the manifest")
    elif status == 407:
        err = AuthError(f"{what}: {PROXY_REFUSED}")
    elif status == 429 or code == "SlowDown":
        err = RateLimitedError(
            f"{what}: the bucket is throttling us ({status}{said}) and kept doing so; "
            "try again later or lower --concurrency",
            retry_after=retry_after,
        )
    elif status >= 500:
        err = ServerError(f"{what}: the bucket failed (HTTP {status}{said}); try again later")
    elif status == 400:
        err = BadRequestError(f"{what}: the bucket rejected the request (400{said})")
    else:
        err = RemoteError(f"{what}: unexpected HTTP {status}{said}")
    err.status = status
    return err


class S3Client:
    """Requests to public buckets over one aiohttp session (owned by the caller)."""

    def __init__(
        self,
        session: Callable[[], aiohttp.ClientSession],
        *,
        retry: RetryPolicy | None = None,
        limiter: AdaptiveLimiter | None = None,
        sleep: Sleep = real_sleep,
        rng: random.Random | None = None,
        proxy: ProxyChoice | None = None,
    ) -> None:
        self._session = session
        self._proxy = proxy or ProxyChoice()
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or AdaptiveLimiter(16)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.retries = 0
        self.requests = 0

    @staticmethod
    def url(endpoint: str, bucket: str, key: str = "") -> str:
        base = f"{endpoint.rstrip('/')}/{quote(bucket, safe='')}"
        return f"{base}/{quote(key, safe='/')}" if key else base

    def _counted(self, _f: Failed) -> None:
        self.retries += 1

    @staticmethod
    def _object_headers(start: int, end: int | None, if_match: str | None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        if if_match:
            headers["If-Match"] = f'"{if_match}"'
        return headers

    async def open(
        self,
        endpoint: str,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        end: int | None = None,
        if_match: str | None = None,
    ) -> aiohttp.ClientResponse:
        """A 2xx response for a GET of ``key`` from byte ``start`` (the caller releases it)."""
        headers = self._object_headers(start, end, if_match)
        resp = await self._request(
            self.url(endpoint, bucket, key), headers, {}, f"s3://{bucket}/{key}"
        )
        return cast("aiohttp.ClientResponse", resp)

    async def open_via(
        self,
        transport: Transport,
        endpoint: str,
        bucket: str,
        key: str,
        *,
        start: int = 0,
        if_match: str | None = None,
    ) -> Response:
        """:meth:`open`, the request sent by ``transport`` (a ZIP worker, which then works the
        body itself), with this client's timeouts and retry policy."""
        headers = self._object_headers(start, None, if_match)
        url = self.url(endpoint, bucket, key)
        return await self._request(url, headers, {}, f"s3://{bucket}/{key}", transport)

    async def _request(
        self,
        url: str,
        headers: dict[str, str],
        params: dict[str, str],
        what: str,
        transport: Transport | None = None,
    ) -> Response:
        proxy = self._proxy.for_url(url)

        async def send() -> Response:
            session = self._session()
            if transport is None:
                return await session.get(url, params=params, **via(proxy, url, headers))
            timeout = session.timeout
            return await transport.get(
                url,
                params=params,
                headers=headers,
                connect_timeout=timeout.connect,
                read_timeout=timeout.sock_read,
                proxy=proxy,
            )

        async def attempt() -> Response | Failed:
            self.requests += 1
            try:
                resp = await send()
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                return Failed(
                    UnreachableError(
                        f"{what}: the bucket endpoint did not answer ({type(exc).__name__})"
                        f"{through(proxy)}; check --s3-endpoint and your network"
                    )
                )
            if resp.status < 300:
                return resp
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            finally:
                resp.release()
            wait = parse_retry_after(resp.headers.get("Retry-After"))
            err = s3_error(resp.status, body, what, wait)
            return Failed(
                err,
                retry=resp.status in RETRY_STATUSES,
                retry_after=wait,
                throttle=isinstance(err, RateLimitedError),
            )

        return await retrying(
            attempt,
            policy=self.retry,
            limiter=self.limiter,
            sleep=self._sleep,
            rng=self._rng,
            on_retry=self._counted,
        )

    async def read(self, endpoint: str, bucket: str, key: str, *, end: int) -> bytes:
        """The first ``end + 1`` bytes of an object (fewer when it is shorter); a body cut
        short is asked for again (small reads: planning's header reads)."""

        async def attempt() -> bytes | Failed:
            resp = await self.open(endpoint, bucket, key, end=end)
            try:
                return await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                what = f"s3://{bucket}/{key}: the connection kept breaking ({type(exc).__name__})"
                return Failed(UnreachableError(what))
            finally:
                resp.release()

        return await retrying(
            attempt, policy=self.retry, sleep=self._sleep, rng=self._rng, on_retry=self._counted
        )

    async def list(self, endpoint: str, bucket: str, prefix: str) -> list[ObjectInfo]:
        """Every object under ``prefix`` (ListObjectsV2, following continuation tokens)."""
        out: list[ObjectInfo] = []
        token: str | None = None
        what = f"s3://{bucket}/{prefix}"
        while True:
            params = {"list-type": "2", "prefix": prefix, "max-keys": str(LIST_PAGE)}
            if token:
                params["continuation-token"] = token
            resp = await self._request(self.url(endpoint, bucket), {}, params, what)
            try:
                body = await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise UnreachableError(f"{what}: the listing broke off ({exc})") from None
            finally:
                resp.release()
            try:
                root = ET.fromstring(body)
            except ET.ParseError:
                raise RemoteError(f"{what}: the bucket's listing is not XML") from None
            for c in root.iter(f"{_NS}Contents"):
                key = c.findtext(f"{_NS}Key") or ""
                size = int(c.findtext(f"{_NS}Size") or "0")
                etag = (c.findtext(f"{_NS}ETag") or "").strip().strip('"')
                out.append(ObjectInfo(key, size, etag))
            truncated = (root.findtext(f"{_NS}IsTruncated") or "").strip().lower() == "true"
            token = root.findtext(f"{_NS}NextContinuationToken")
            if not truncated:
                return out
            if not token:
                raise RemoteError(f"{what}: a truncated listing without a continuation token")
