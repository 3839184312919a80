"""The archive simulator: an aiohttp server speaking the NBIA REST API (v1, v2, v4), the retired
TCIA v3 API and the OAuth token endpoint, with switchable faults.

Routes (api-notes §1-§5)::

    POST /nbia-api/oauth/token, /nbia-api/services/oauth/token   password | refresh_token grants
    GET  /nbia-api/services/{v1,v2,v4}/<Endpoint>                 v2 needs a Bearer token
    GET  /services/v3/TCIA/query/<Endpoint>[/metadata]            api_key header or query
    GET  /services/v3/SharedList/query/ContentsByName[/metadata]
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from tcia_mirror.sources.nbia.formats import Flavor, render, render_md5_csv

from .auth import TokenStore
from .dataset import ByteLRU, Dataset, DatasetSpec
from .faults import IMAGE_ENDPOINTS, ZIP_ENDPOINTS, Faults
from .queries import Dialect, EndpointSpec, QueryError, describe, endpoint_spec, run_query
from .zipstream import (
    HOSTILE_NAMES,
    ZipEntryData,
    ZipStreamWriter,
    deflate_entry,
    license_text,
    new_file_names,
    sequential_names,
)

__all__ = ["PROFILES", "Simulator", "serve"]

PROFILES = ("tcia-v3", "nbia-v1", "nbia-v2", "nbia-v4")
SERVER_ERROR = "Server was not able to process your request"
_NGINX_REASONS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_HTML_ERROR_PAGE = (
    "<!DOCTYPE html>\n<html><head><title>NBIA - Error</title></head><body>"
    "<h1>We're sorry, an error occurred.</h1><p>The image download service is temporarily "
    "unavailable. Please try again later.</p></body></html>\n"
)
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _text(status: int, text: str, content_type: str = "text/plain") -> web.Response:
    return web.Response(status=status, body=text.encode(), headers={"Content-Type": content_type})


def _json(status: int, payload: object) -> web.Response:
    return _text(status, json.dumps(payload, separators=(",", ":")), "application/json")


class _Body:
    """Writes a response body, paced to ``bandwidth`` bytes/s when set."""

    def __init__(self, resp: web.StreamResponse, bandwidth: float | None) -> None:
        self.resp = resp
        self.bandwidth = bandwidth if bandwidth and bandwidth > 0 else None
        self.sent = 0
        self.gone = False  # the client went away (killed, cancelled): stop quietly
        self._start = time.monotonic()

    async def _put(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            await self.resp.write(data)
        except ConnectionResetError:
            self.gone = True

    async def write(self, data: bytes) -> None:
        if self.bandwidth is None:
            self.sent += len(data)
            await self._put(data)
            return
        step = max(512, min(64 * 1024, int(self.bandwidth / 20)))
        view = memoryview(data)
        for offset in range(0, len(data), step):
            if self.gone:
                return
            piece = bytes(view[offset : offset + step])
            await self._put(piece)
            self.sent += len(piece)
            delay = self._start + self.sent / self.bandwidth - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


class Simulator:
    """An in-process archive serving ``dataset``; see the module docstring for the routes.

    ``stats`` counts requests per endpoint name (``getSeries``, ``getImage``, ``token``,
    ``metadata``, ``logout``, ``unknown``); ``image_requests`` counts image requests per
    ``(endpoint, SeriesInstanceUID, SOPInstanceUID or None)``. Both include faulted requests.
    ``images_in_flight`` is how many image requests are being answered now (from arrival until
    the handler has written the body) and ``max_images_in_flight`` the most at any moment since
    start (or since a test reset it): what a connection budget is checked against.
    ``faults_injected`` counts the faults served, by kind (``429``, ``5xx``, ``html``, ``drop``,
    ``truncate``, ``hostile``, ``unreachable``).
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        faults: Faults | None = None,
        api_key: str = "sim-key",
        users: Mapping[str, str] | None = None,
        token_ttl: float = 7200.0,
        refresh_ttl: float | None = None,
        zip_level: int = 1,
        zip_cache_bytes: int = 256 * 2**20,
    ) -> None:
        self.dataset = dataset
        self.faults = faults if faults is not None else Faults()
        self.api_key = api_key
        users = {"alice": "wonderland"} if users is None else users
        refresh = 2 * token_ttl if refresh_ttl is None else refresh_ttl
        self.tokens = TokenStore(users, token_ttl, refresh)
        self.stats: collections.Counter[str] = collections.Counter()
        self.image_requests: collections.Counter[tuple[str, str, str | None]] = (
            collections.Counter()
        )
        self.faults_injected: collections.Counter[str] = collections.Counter()
        self.images_in_flight = 0
        self.max_images_in_flight = 0
        self.zip_level = zip_level
        self._entries: ByteLRU[tuple[str, str], ZipEntryData] = ByteLRU(
            zip_cache_bytes, lambda entry: len(entry.compressed)
        )
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._host = "127.0.0.1"
        self._port = 0
        self._unreachable_until = 0.0
        self._outage: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        for path in ("/nbia-api/oauth/token", "/nbia-api/services/oauth/token"):
            app.router.add_post(path, self._token)
        app.router.add_get("/nbia-api/logout", self._logout)
        app.router.add_get("/nbia-api/services/{version:v[124]}/{endpoint}", self._nbia)
        app.router.add_get("/services/v3/{resource:TCIA|SharedList}/query/{endpoint}", self._v3)
        app.router.add_get(
            "/services/v3/{resource:TCIA|SharedList}/query/{endpoint}/metadata", self._v3_metadata
        )
        app.on_response_prepare.append(self._server_headers)
        return app

    @property
    def root(self) -> str:
        if self._port == 0:
            raise RuntimeError("the simulator is not started")
        return f"http://{self._host}:{self._port}"

    @property
    def token_url(self) -> str:
        return self.root + "/nbia-api/oauth/token"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: a free port) and return the root URL."""
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()
        self._host = host
        self._port = self._runner.addresses[0][1]
        return self.root

    async def stop(self) -> None:
        if self._outage is not None:
            self._outage.cancel()
            try:
                await self._outage
            except asyncio.CancelledError:
                pass
            self._outage = None
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def base_url(self, profile: str) -> str:
        """``tcia-v3`` -> ``<root>/services/v3``; ``nbia-vN`` -> ``<root>/nbia-api/services/vN``."""
        if profile == "tcia-v3":
            return self.root + "/services/v3"
        if profile in ("nbia-v1", "nbia-v2", "nbia-v4"):
            return f"{self.root}/nbia-api/services/{profile[5:]}"
        raise ValueError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")

    def set_unreachable(self, seconds: float) -> None:
        """Archive down for ``seconds``: the port refuses connections and any request arriving on
        an open keep-alive connection has its connection aborted; then it comes back."""
        self._unreachable_until = time.monotonic() + seconds
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._outage is None and self._site is not None:
            self._outage = loop.create_task(self._take_down(seconds))

    async def _take_down(self, seconds: float) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
        # A later set_unreachable() that extends the outage is honoured by the middleware.
        await asyncio.sleep(max(0.0, self._unreachable_until - time.monotonic()))
        if self._runner is not None:
            self._site = web.TCPSite(self._runner, self._host, self._port)
            await self._site.start()
        self._outage = None

    @staticmethod
    async def _server_headers(request: web.Request, resp: web.StreamResponse) -> None:
        resp.headers["Server"] = "nginx"
        resp.headers.setdefault("Access-Control-Allow-Origin", "*")

    # ------------------------------------------------------------------ middleware
    @staticmethod
    def _endpoint_name(request: web.Request) -> str:
        info = request.match_info
        if info.http_exception is not None:
            return "unknown"
        path = request.path
        if path.endswith("/oauth/token"):
            return "token"
        if path.endswith("/logout"):
            return "logout"
        if path.endswith("/metadata"):
            return "metadata"
        return info.get("endpoint", "unknown")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        name = self._endpoint_name(request)
        self.stats[name] += 1
        if name not in IMAGE_ENDPOINTS:
            return await self._answer(request, handler, name)
        q = request.query
        key = (name, q.get("SeriesInstanceUID", ""), q.get("SOPInstanceUID"))
        self.image_requests[key] += 1
        self.images_in_flight += 1
        self.max_images_in_flight = max(self.max_images_in_flight, self.images_in_flight)
        try:
            return await self._answer(request, handler, name)
        finally:
            self.images_in_flight -= 1

    async def _answer(
        self, request: web.Request, handler: _Handler, name: str
    ) -> web.StreamResponse:
        if time.monotonic() < self._unreachable_until:
            self.faults_injected["unreachable"] += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        f = self.faults
        if f.applies(name):
            if f.latency > 0:
                await asyncio.sleep(f.latency)
            status = f.burst_status()  # a 5xx burst under way answers before anything else
            if status is None and f.roll(f.rate_limit_rate):
                self.faults_injected["429"] += 1
                resp = _text(429, "429 Too Many Requests\n")
                resp.headers["Retry-After"] = f.retry_after_header()
                return resp
            if status is not None or (status := f.server_error()) is not None:
                self.faults_injected["5xx"] += 1
                reason = _NGINX_REASONS.get(status, "Error")
                return _text(status, f"{status} {reason} (simulated by nginx)\n")
            if name in ZIP_ENDPOINTS and f.roll(f.html_error_rate):
                self.faults_injected["html"] += 1
                return _text(200, _HTML_ERROR_PAGE, "text/html;charset=UTF-8")
        try:
            return await handler(request)
        except ConnectionResetError:  # the client went away (killed, cancelled): not our error
            return web.Response(status=499)

    # ------------------------------------------------------------------ auth
    async def _token(self, request: web.Request) -> web.StreamResponse:
        form: dict[str, str] = {k: str(v) for k, v in request.query.items()}
        form |= {k: str(v) for k, v in (await request.post()).items()}
        grant = form.get("grant_type")
        if grant == "password":
            issued = self.tokens.password_grant(form.get("username", ""), form.get("password", ""))
            if issued is None:
                return _json(
                    401, {"error": "invalid_grant", "error_description": "Invalid user credentials"}
                )
        elif grant == "refresh_token":
            issued = self.tokens.refresh_grant(form.get("refresh_token", ""))
            if issued is None:
                return _json(
                    400, {"error": "invalid_grant", "error_description": "Invalid refresh token"}
                )
        elif grant is None:
            return _text(500, SERVER_ERROR)
        else:
            return _json(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"Wrong grant_type {grant}",
                },
            )
        return _json(200, issued)

    def _bearer_error(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            error, text = "unauthorized", "Full authentication is required to access this resource"
        else:
            token = header[7:].strip()
            state = self.tokens.check(token)
            if state == "ok":
                return None
            error = "invalid_token"
            what = "Access token expired" if state == "expired" else "Invalid access token"
            text = f"{what}: {token}"
        resp = _json(401, {"error": error, "error_description": text})
        resp.headers["WWW-Authenticate"] = (
            f'Bearer realm="oauth", error="{error}", error_description="{text}"'
        )
        return resp

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            self.tokens.revoke(header[7:].strip())
        return web.Response(status=200)

    # ------------------------------------------------------------------ NBIA v1/v2/v4
    async def _nbia(self, request: web.Request) -> web.StreamResponse:
        dialect: Dialect = request.match_info["version"]  # type: ignore[assignment]
        name = request.match_info["endpoint"]
        spec = endpoint_spec(dialect, name)
        if spec is None:
            return _text(404, "Not Found", "text/html")
        if dialect == "v2" and (denied := self._bearer_error(request)) is not None:
            return denied
        params = {k: request.query.getone(k) for k in request.query}
        if dialect == "v4":
            for key in params:
                if key not in spec.params:
                    allowed = ", ".join(spec.params)
                    return _text(
                        400,
                        f"Invalid query parameter: '{key}'. Allowed parameters are: [{allowed}]",
                    )
        if any(not params.get(p) for p in spec.required):
            return _text(400, spec.missing, "application/json")
        if spec.kind == "zip":
            return await self._zip_endpoint(request, spec, dialect, params)
        if spec.kind == "dicom":
            return await self._single_image(request, dialect, params)
        if spec.kind == "md5":
            return self._image_md5(params["SOPInstanceUID"])
        return await self._query(request, spec, dialect, params)

    def _image_md5(self, sop_uid: str) -> web.StreamResponse:
        """The instance's MD5 as plain text (the real service's exact shape is not documented;
        clients read the first 32 hex digits)."""
        for (series_uid, sop), _i in self.dataset._sop_index.items():
            if sop == sop_uid:
                data = self.dataset.instance_bytes(series_uid, sop)
                return _text(200, hashlib.md5(data, usedforsecurity=False).hexdigest())
        return _text(404, "Not Found", "text/html")

    async def _query(
        self, request: web.Request, spec: EndpointSpec, dialect: Dialect, params: dict[str, str]
    ) -> web.StreamResponse:
        fmt = "json" if spec.json_only else params.get("format") or "json"
        flavor: Flavor = "tcia-v3" if dialect == "v3" else "nbia"
        try:
            rows, columns = run_query(
                self.dataset, spec.name, params, dialect, self.faults.size_mismatch_series
            )
            if spec.name == "getSeriesMetaData" and not rows:
                return web.Response(status=204)
            body, content_type = render(rows, columns, fmt, flavor=flavor)
        except QueryError as exc:
            if dialect == "v3":
                return _json(exc.status, {"errorMessage": exc.message})
            return _text(exc.status, exc.message, "application/json")
        except ValueError:
            if dialect == "v3":
                return _json(500, {"errorMessage": f"Unsupported format: {fmt}"})
            return _text(500, SERVER_ERROR)
        return await self._send(request, body, content_type)

    async def _send(
        self, request: web.Request, body: bytes, content_type: str, headers: Mapping[str, str] = {}
    ) -> web.StreamResponse:
        f = self.faults
        bandwidth = f.bandwidth if f.applies(self._endpoint_name(request)) else None
        if not bandwidth or not body:
            return web.Response(body=body, headers={"Content-Type": content_type, **headers})
        resp = web.StreamResponse(headers={"Content-Type": content_type, **headers})
        resp.content_length = len(body)
        await resp.prepare(request)
        await _Body(resp, bandwidth).write(body)
        return resp

    # ------------------------------------------------------------------ images
    def _not_public(self, dialect: Dialect, uid: str) -> web.Response:
        if dialect == "v3":
            return _json(
                500, {"errorMessage": "java.lang.IndexOutOfBoundsException: Index: 0, Size: 0"}
            )
        if dialect == "v4":
            text = (
                f"The user has not been granted the access to image with given SeriesInstanceUID,"
                f"{uid}. Please contact System Admin to resolve this issue."
            )
        else:
            text = f"Image with given SeriesInstanceUID,{uid}, is not in public domain."
        return _text(400, text, "application/json")

    async def _entry(self, series_uid: str, sop_uid: str) -> ZipEntryData:
        key = (series_uid, sop_uid)
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        data = self.dataset.instance_bytes(series_uid, sop_uid)
        if len(data) > 64 * 1024:
            entry = await asyncio.to_thread(deflate_entry, data, self.zip_level)
        else:
            entry = deflate_entry(data, self.zip_level)
        self._entries.put(key, entry)
        return entry

    async def warm(self, series_uids: list[str] | None = None) -> None:
        """Build and compress every instance now (benchmarks: serve from cache from the start).
        Bounded by ``zip_cache_bytes``; the bench preset fits in the default budget."""
        wanted = self.dataset.series if series_uids is None else [
            s for uid in series_uids if (s := self.dataset.get_series(uid)) is not None
        ]  # fmt: skip
        for series in wanted:
            for inst in series.instances:
                await self._entry(series.series_uid, inst.sop_uid)

    async def _zip_endpoint(
        self, request: web.Request, spec: EndpointSpec, dialect: Dialect, params: dict[str, str]
    ) -> web.StreamResponse:
        uid = params["SeriesInstanceUID"]
        series = self.dataset.get_series(uid)
        if series is None:
            return self._not_public(dialect, uid)
        md5_only = spec.name == "getImageWithMD5Hash"
        new_names = dialect != "v3" and params.get("NewFileNames", "").lower() == "yes"
        include_md5 = md5_only or (
            dialect == "v4" and params.get("IncludeMD5", "").lower() == "yes"
        )
        if new_names and not md5_only:
            named = [(i.sop_uid, n) for i, n in new_file_names(series.instances)]
        else:
            ordered = sorted(series.instances, key=lambda i: i.instance_number)
            names = sequential_names(len(ordered))
            named = [(i.sop_uid, n) for i, n in zip(ordered, names, strict=True)]
        f = self.faults
        faulty = f.applies(spec.name)
        if faulty and f.is_hostile(uid):
            self.faults_injected["hostile"] += 1
            for index, hostile in enumerate(HOSTILE_NAMES[: len(named)]):
                named[index] = (named[index][0], hostile)
        mode: str | None = None
        if faulty and f.roll(f.drop_rate):
            mode = "drop"
        elif faulty and f.roll(f.truncate_rate):
            mode = "truncate"
        cut_entry = f.randint(0, len(named) - 1) if mode else -1
        if mode:
            self.faults_injected[mode] += 1
        filename = "bindaas-blob-download.zip" if dialect == "v3" else f"{uid}.zip"
        resp = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{filename}"',
            }
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        body = _Body(resp, f.bandwidth if faulty else None)
        writer = ZipStreamWriter(series.released_at)
        if not md5_only:
            for chunk in writer.entry("LICENSE", deflate_entry(license_text(series))):
                await body.write(chunk)
        digests: list[tuple[str, str]] = []
        for index, (sop_uid, entry_name) in enumerate(named):
            entry = await self._entry(uid, sop_uid)
            digests.append((entry_name, entry.md5))
            if index == cut_entry:
                blob = b"".join(writer.entry(entry_name, entry))
                await body.write(blob[: max(1, len(blob) // 2)])
                if mode == "drop" and request.transport is not None:
                    request.transport.close()  # flushes what was written, then FIN: no terminator
                return resp
            for chunk in writer.entry(entry_name, entry):
                await body.write(chunk)
            if body.gone:
                return resp
        if include_md5:
            random.Random(uid).shuffle(digests)  # HashMap order on the real server: arbitrary
            csv_entry = deflate_entry(render_md5_csv(digests))
            for chunk in writer.entry("md5hashes.csv", csv_entry):
                await body.write(chunk)
        await body.write(writer.finish())
        return resp

    async def _single_image(
        self, request: web.Request, dialect: Dialect, params: dict[str, str]
    ) -> web.StreamResponse:
        uid, sop = params["SeriesInstanceUID"], params["SOPInstanceUID"]
        instance = self.dataset.find_instance(uid, sop)
        if instance is None:
            if dialect == "v3":
                return self._not_public(dialect, uid)
            return _text(500, SERVER_ERROR)
        data = self.dataset.instance_bytes(uid, sop)
        filename = f"{instance.instance_number}.dcm" if dialect == "v3" else f"{sop}.dcm"
        headers = {"Content-Disposition": f"attachment; filename={filename}"}
        f = self.faults
        if not (f.applies("getSingleImage") and f.roll(f.drop_rate)):
            return await self._send(request, data, "application/dicom", headers)
        self.faults_injected["drop"] += 1
        resp = web.StreamResponse(headers={"Content-Type": "application/dicom", **headers})
        resp.content_length = len(data)
        await resp.prepare(request)
        await _Body(resp, f.bandwidth).write(data[: int(len(data) * f.fraction())])
        if request.transport is not None:
            request.transport.close()
        return resp

    # ------------------------------------------------------------------ TCIA v3
    def _v3_denied(self, request: web.Request) -> web.Response | None:
        key = request.headers.get("api_key") or request.query.get("api_key")
        if key == self.api_key:
            return None
        message = "Unauthorized access: a valid api_key is required (header or query parameter)"
        return _json(401, {"errorMessage": message})

    def _v3_spec(self, request: web.Request) -> EndpointSpec | None:
        name = request.match_info["endpoint"]
        shared = request.match_info["resource"] == "SharedList"
        if shared != (name == "ContentsByName"):
            return None
        return endpoint_spec("v3", name)

    async def _v3(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._v3_denied(request)) is not None:
            return denied
        spec = self._v3_spec(request)
        if spec is None:
            return _json(404, {"errorMessage": "Resource not found"})
        params = {k: request.query.getone(k) for k in request.query if k != "api_key"}
        if any(not params.get(p) for p in spec.required):
            return _json(400, {"errorMessage": spec.missing})
        if spec.kind == "zip":
            return await self._zip_endpoint(request, spec, "v3", params)
        if spec.kind == "dicom":
            return await self._single_image(request, "v3", params)
        return await self._query(request, spec, "v3", params)

    async def _v3_metadata(self, request: web.Request) -> web.StreamResponse:
        if (denied := self._v3_denied(request)) is not None:
            return denied
        spec = self._v3_spec(request)
        if spec is None:
            return _json(404, {"errorMessage": "Resource not found"})
        return _json(200, describe("v3", spec.name))


async def serve(
    preset: str = "demo",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int = 0,
    faults: Faults | None = None,
    token_ttl: float = 7200.0,
    print_fn: Callable[[str], None] = print,
) -> None:
    """Serve a preset dataset until cancelled, after printing the base URL of every profile."""
    dataset = Dataset(DatasetSpec.preset(preset, seed))  # type: ignore[arg-type]
    sim = Simulator(dataset, faults=faults, token_ttl=token_ttl)
    try:
        await sim.start(host=host, port=port)
        n_instances = sum(len(s.instances) for s in dataset.series)
        print_fn(
            f"tcia-mirror archive simulator: preset {preset!r} (seed {seed}), "
            f"{len(dataset.series)} series, {n_instances} instances, "
            f"{dataset.total_bytes() / 1e6:.1f} MB"
        )
        for profile in PROFILES:
            print_fn(f"{profile:<9}  {sim.base_url(profile)}")
        print_fn(f"token-url  {sim.token_url}")
        print_fn(f"api-key    {sim.api_key}")
        users = ", ".join(f"{u}/{p}" for u, p in sim.tokens.users.items())
        print_fn(f"users      {users} (and nbia_guest with any password)")
        print_fn(f"shared     {', '.join(dataset.shared_lists)}")
        await asyncio.Event().wait()
    finally:
        await sim.stop()
