"""The archive client: one aiohttp session per run, every endpoint of the profile.

``ArchiveClient`` speaks any dialect described by a :class:`~tcia_mirror.sources.nbia.profiles.Profile`.
Query endpoints return records whatever format the server answered in; image endpoints are
streamed (see :meth:`ArchiveClient.open_stream`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urljoin

import aiohttp

from tcia_mirror import __version__
from tcia_mirror.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    RateLimitedError,
    RemoteError,
    ServerError,
    UnreachableError,
    redact,
)
from tcia_mirror.sources.http import (
    RETRY_STATUSES,
    AdaptiveLimiter,
    Failed,
    Response,
    Sleep,
    Transport,
    parse_retry_after,
    real_sleep,
    retrying,
    retrying_open,
)
from tcia_mirror.sources.nbia.auth import TokenManager, resolve_token_url
from tcia_mirror.sources.nbia.clientconfig import ClientConfig
from tcia_mirror.sources.nbia.convert import (
    patient_from_row,
    series_from_row,
    series_size_from_rows,
    study_from_row,
    values_from_rows,
)
from tcia_mirror.sources.nbia.formats import parse_rows
from tcia_mirror.sources.nbia.models import Patient, Series, SeriesSize, Study
from tcia_mirror.sources.nbia.profiles import EndpointSpec
from tcia_mirror.sources.proxy import PROXY_REFUSED, through, via


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    content_type: str | None
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _server_message(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("errorMessage", "error_description", "message", "error"):
            if data.get(key):
                text = str(data[key])
                break
    if text.lower().startswith("<"):
        text = ""  # an HTML error page says nothing useful in one line
    line = text.splitlines()[0] if text else ""
    return line[:200]


def error_for_status(
    status: int,
    body: bytes,
    endpoint: str,
    *,
    auth: str = "none",
    retry_after: float | None = None,
    secrets: tuple[str | None, ...] = (),
) -> RemoteError:
    """The one place where HTTP statuses become typed errors."""
    msg = _server_message(body)
    said = f": {msg}" if msg else ""
    err: RemoteError
    if status in (401, 403):
        hint = {
            "api_key": "check --api-key (or TCIA_API_KEY)",
            "oauth": "check --user/--password (or TCIA_USER/TCIA_PASSWORD)",
        }.get(auth, "this API profile sends no credentials; try another --api")
        err = AuthError(f"{endpoint}: the archive refused access ({status}{said}); {hint}")
    elif status == 400:
        err = BadRequestError(f"{endpoint}: the archive rejected the request (400{said})")
    elif status == 407:
        err = AuthError(f"{endpoint}: {PROXY_REFUSED}")
    elif status == 404:
        err = NotFoundError(
            f"{endpoint}: not found on the archive (404{said}); check --api and --base-url"
        )
    elif status == 429:
        err = RateLimitedError(
            f"{endpoint}: the archive is rate limiting us (429) and kept doing so; "
            "try again later or lower --concurrency",
            retry_after=retry_after,
        )
    elif status >= 500:
        err = ServerError(
            f"{endpoint}: the archive failed (HTTP {status}{said}); it may be down, try again later"
        )
    else:
        err = RemoteError(f"{endpoint}: unexpected HTTP {status}{said}")
    err.status = status
    err.args = (redact(str(err), secrets),)
    return err


USER_AGENT = f"tcia-mirror/{__version__}"


class ArchiveClient:
    """Async client for one archive dialect. Use as ``async with ArchiveClient(cfg) as c:``."""

    def __init__(
        self,
        config: ClientConfig | None = None,
        *,
        sleep: Sleep = real_sleep,
        rng: random.Random | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.config = config or ClientConfig()
        self.profile = self.config.profile
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._session = session
        self._own_session = session is None
        self.limiter = AdaptiveLimiter(self.config.max_connections)
        self.retries = 0  # retried requests (all causes)
        self._tokens: TokenManager | None = None
        if self.profile.auth == "oauth":
            self._tokens = TokenManager(
                resolve_token_url(
                    self.config.root, self.config.token_url or self.profile.token_url
                ),
                self.config.credentials,
                client_id=self.profile.client_id,
                guest_user=self.profile.guest_user,
                proxy=self.config.proxy,
            )

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> ArchiveClient:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(
                total=None,
                connect=self.config.connect_timeout,
                sock_read=self.config.read_timeout,
            )
            connector = aiohttp.TCPConnector(limit=0)  # the limiter bounds requests, not the pool
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                raise_for_status=False,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None if self._own_session else self._session

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ArchiveClient used outside 'async with'")
        return self._session

    def secrets(self) -> tuple[str | None, ...]:
        proxies = self.config.proxy.secrets()
        if self._tokens is not None:
            return (*self._tokens.secrets(), *proxies)
        return (*self.config.credentials.secrets(), *proxies)

    def set_concurrency(self, n: int) -> None:
        """Change how many requests may run at once (e.g. wide for planning, then transfers)."""
        self.limiter.set_limit(n)

    @property
    def concurrency(self) -> int:
        """Requests allowed at once right now (lowered while the archive throttles us)."""
        return self.limiter.current

    @property
    def throttled(self) -> int:
        """429 answers seen."""
        return self.limiter.throttled

    # -- request machinery -------------------------------------------------------------------
    def url_for(self, spec: EndpointSpec, *, metadata: bool = False) -> str:
        url = urljoin(self.config.root, spec.path)
        return url + "/metadata" if metadata else url

    async def _auth(self, params: dict[str, str]) -> dict[str, str]:
        if self.profile.auth == "api_key":
            key = self.config.credentials.api_key
            if key:
                if self.profile.api_key_in == "query":
                    params[self.profile.api_key_name] = key
                    return {}
                return {self.profile.api_key_name: key}
            return {}
        if self._tokens is not None:
            return await self._tokens.header(self.session)
        return {}

    def open(
        self,
        endpoint: str,
        params: Mapping[str, str] | None = None,
        *,
        metadata: bool = False,
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """Open a response with status 2xx, retrying what may pass; the body is left to the caller.

        The retry policy is the shared layer's (:func:`~tcia_mirror.sources.http.retrying_open`):
        connection errors, 5xx and 429 are retried (``Retry-After`` honoured, 429 lowering
        concurrency); here, an OAuth token is refreshed once on 401 and the request asked again
        at once. Errors are mapped by :func:`error_for_status`.
        """
        return self._open(endpoint, params, metadata, None)

    def open_via(
        self, transport: Transport, endpoint: str, params: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[Response]:
        """:meth:`open`, the request sent by ``transport`` (a ZIP worker) with this client's
        URL, credentials, timeouts, connection slot and retry policy."""
        return self._open(endpoint, params, False, transport)

    async def _send(
        self, transport: Transport | None, url: str, query: dict[str, str], headers: dict[str, str]
    ) -> Any:
        proxy = self.config.proxy.for_url(url)
        if transport is None:
            return await self.session.get(url, params=query, **via(proxy, url, headers))
        return await transport.get(
            url,
            params=query,
            headers={"User-Agent": USER_AGENT, **headers},
            connect_timeout=self.config.connect_timeout,
            read_timeout=self.config.read_timeout,
            proxy=proxy,
        )

    @asynccontextmanager
    async def _open(
        self,
        endpoint: str,
        params: Mapping[str, str] | None,
        metadata: bool,
        transport: Transport | None,
    ) -> AsyncIterator[Any]:
        spec = self.profile.endpoint(endpoint)
        wire = spec.wire_params(dict(params or {}))
        url = self.url_for(spec, metadata=metadata)
        reauthed = False

        async def attempt() -> Any:
            nonlocal reauthed
            while True:
                query = dict(wire)
                try:
                    headers = await self._auth(query)
                except (ServerError, RateLimitedError, UnreachableError) as exc:
                    return Failed(exc)  # the token endpoint had a hiccup: retry like any request
                try:
                    resp = await self._send(transport, url, query, headers)
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                    return Failed(
                        UnreachableError(
                            f"{spec.name}: the archive at {self.config.root} did not answer "
                            f"({type(exc).__name__}){through(self.config.proxy.for_url(url))}; "
                            "check --base-url and your network"
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
                wait_hint = parse_retry_after(resp.headers.get("Retry-After"))
                if resp.status == 401 and self._tokens is not None and not reauthed:
                    reauthed = True
                    self._tokens.invalidate()
                    continue  # not a retry: the same try with a fresh token
                failure = error_for_status(
                    resp.status,
                    body,
                    spec.name,
                    auth=self.profile.auth,
                    retry_after=wait_hint,
                    secrets=self.secrets(),
                )
                return Failed(
                    failure,
                    retry=resp.status in RETRY_STATUSES,
                    retry_after=wait_hint,
                    throttle=resp.status == 429,
                )

        async with retrying_open(
            attempt,
            _release,
            policy=self.config.retry,
            limiter=self.limiter,
            sleep=self._sleep,
            rng=self._rng,
            on_retry=self._counted,
        ) as resp:
            yield resp

    def _counted(self, _failed: Failed) -> None:
        self.retries += 1

    async def raw(
        self,
        endpoint: str,
        params: Mapping[str, str] | None = None,
        *,
        fmt: str | None = None,
        metadata: bool = False,
    ) -> RawResponse:
        """Any endpoint, any parameters, any format; the body as the archive sent it."""
        query = dict(params or {})
        if fmt is not None:
            query["format"] = fmt

        async def attempt() -> RawResponse | Failed:
            try:
                async with self.open(endpoint, query, metadata=metadata) as resp:
                    body = await resp.read()
                    return RawResponse(resp.status, resp.headers.get("Content-Type"), body)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
                return Failed(
                    UnreachableError(
                        f"{endpoint}: the connection kept breaking while reading the answer"
                    )
                )

        return await retrying(
            attempt,
            policy=self.config.retry,
            sleep=self._sleep,
            rng=self._rng,
            on_retry=self._counted,
        )

    async def rows(
        self, endpoint: str, params: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """A query endpoint's rows, parsed from whatever format came back (JSON asked for)."""
        spec = self.profile.endpoint(endpoint)
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        fmt = "json" if len(spec.formats) > 1 else None
        resp = await self.raw(spec.name, clean, fmt=fmt)
        if resp.status == 204:
            return []
        return parse_rows(resp.body, resp.content_type)

    # -- typed endpoints ---------------------------------------------------------------------
    async def collections(self) -> list[str]:
        return values_from_rows(await self.rows("getCollectionValues"), "Collection")

    async def modalities(
        self, collection: str | None = None, body_part: str | None = None
    ) -> list[str]:
        rows = await self.rows(
            "getModalityValues", _p(Collection=collection, BodyPartExamined=body_part)
        )
        return values_from_rows(rows, "Modality")

    async def body_parts(
        self, collection: str | None = None, modality: str | None = None
    ) -> list[str]:
        rows = await self.rows("getBodyPartValues", _p(Collection=collection, Modality=modality))
        return values_from_rows(rows, "BodyPartExamined")

    async def manufacturers(
        self,
        collection: str | None = None,
        modality: str | None = None,
        body_part: str | None = None,
    ) -> list[str]:
        rows = await self.rows(
            "getManufacturerValues",
            _p(Collection=collection, Modality=modality, BodyPartExamined=body_part),
        )
        return values_from_rows(rows, "Manufacturer")

    async def patients(self, collection: str | None = None) -> list[Patient]:
        return _keep(
            patient_from_row(r) for r in await self.rows("getPatient", _p(Collection=collection))
        )

    async def patients_by_modality(self, collection: str, modality: str) -> list[Patient]:
        rows = await self.rows("PatientsByModality", _p(Collection=collection, Modality=modality))
        return _keep(patient_from_row(r) for r in rows)

    async def patient_studies(
        self,
        collection: str | None = None,
        patient_id: str | None = None,
        study_uid: str | None = None,
    ) -> list[Study]:
        rows = await self.rows(
            "getPatientStudy",
            _p(Collection=collection, PatientID=patient_id, StudyInstanceUID=study_uid),
        )
        return _keep(study_from_row(r) for r in rows)

    async def series(
        self,
        collection: str | None = None,
        *,
        patient_id: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        modality: str | None = None,
        body_part: str | None = None,
        manufacturer: str | None = None,
        manufacturer_model: str | None = None,
    ) -> list[Series]:
        rows = await self.rows(
            "getSeries",
            _p(
                Collection=collection,
                PatientID=patient_id,
                StudyInstanceUID=study_uid,
                SeriesInstanceUID=series_uid,
                Modality=modality,
                BodyPartExamined=body_part,
                Manufacturer=manufacturer,
                ManufacturerModelName=manufacturer_model,
            ),
        )
        return _keep(series_from_row(r) for r in rows)

    async def series_size(self, series_uid: str) -> SeriesSize:
        rows = await self.rows("getSeriesSize", _p(SeriesInstanceUID=series_uid))
        return series_size_from_rows(rows)

    async def sop_instance_uids(self, series_uid: str) -> list[str]:
        rows = await self.rows("getSOPInstanceUIDs", _p(SeriesInstanceUID=series_uid))
        return values_from_rows(rows, "SOPInstanceUID", "sop_instance_uid")

    def _date(self, endpoint: str, since: date) -> str:
        spec = self.profile.endpoint(endpoint)
        return since.strftime(self.profile.date_format_for(spec))

    async def new_patients(self, collection: str, since: date) -> list[Patient]:
        rows = await self.rows(
            "NewPatientsInCollection",
            _p(Collection=collection, Date=self._date("NewPatientsInCollection", since)),
        )
        return _keep(patient_from_row(r) for r in rows)

    async def new_studies(
        self, collection: str, since: date, patient_id: str | None = None
    ) -> list[Study]:
        rows = await self.rows(
            "NewStudiesInPatientCollection",
            _p(
                Collection=collection,
                PatientID=patient_id,
                Date=self._date("NewStudiesInPatientCollection", since),
            ),
        )
        return _keep(study_from_row(r) for r in rows)

    async def shared_list(self, name: str) -> list[Series]:
        return _keep(series_from_row(r) for r in await self.rows("ContentsByName", _p(name=name)))

    async def image_md5(self, sop_uid: str) -> str | None:
        """The MD5 the archive states for one instance, where the profile offers it.

        Read liberally: the first 32 hex digits of the answer (plain text, JSON, CSV). An
        answer without one, or a 400/404, is no statement (None)."""
        name = self.profile.image_md5_endpoint
        if not name or not self.profile.has(name):
            return None
        try:
            resp = await self.raw(name, {"SOPInstanceUID": sop_uid})
        except (BadRequestError, NotFoundError):
            return None
        found = _MD5_RE.search(resp.body.decode("utf-8", errors="replace"))
        return found.group(0).lower() if found else None

    def image_request(self, series_uid: str, *, md5: bool = True) -> tuple[str, dict[str, str]]:
        """The endpoint and parameters that fetch a whole series as a ZIP (with MD5s if offered)."""
        if md5 and self.profile.md5_endpoint and self.profile.has(self.profile.md5_endpoint):
            return self.profile.md5_endpoint, {
                "SeriesInstanceUID": series_uid,
                **self.profile.md5_params,
            }
        return "getImage", {"SeriesInstanceUID": series_uid}

    def single_image_request(self, series_uid: str, sop_uid: str) -> tuple[str, dict[str, str]]:
        return "getSingleImage", {"SeriesInstanceUID": series_uid, "SOPInstanceUID": sop_uid}


_MD5_RE = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{32}(?![0-9a-fA-F])")


def _p(**params: str | None) -> dict[str, str]:
    return {k: v for k, v in params.items() if v is not None and v != ""}


def _keep(items: Any) -> list[Any]:
    return [i for i in items if i is not None]


def _release(resp: Response) -> None:
    resp.release()
