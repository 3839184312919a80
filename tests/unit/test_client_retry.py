"""Client retry, error mapping and secrets, against a tiny scripted aiohttp server (no simulator)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from tcia_mirror.errors import (
    AuthError,
    BadRequestError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    UnreachableError,
)
from tcia_mirror.sources.http import RetryPolicy, parse_retry_after
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.client import ArchiveClient, ClientConfig, error_for_status
from tcia_mirror.sources.nbia.profiles import load_profile

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def scripted(
    responses: list[Callable[[web.Request], web.StreamResponse]],
) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """Serve the given handlers in order, one per request, for any path."""
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        make = responses[min(len(seen) - 1, len(responses) - 1)]
        return make(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/nbia-api/services/v4", seen
    finally:
        await runner.cleanup()


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def ok_json(body: str = '[{"Collection":"A"}]') -> Callable[[web.Request], web.Response]:
    return lambda r: web.Response(body=body.encode(), content_type="application/json")


def status(
    code: int, body: str = "", headers: dict[str, str] | None = None
) -> Callable[[web.Request], web.Response]:
    return lambda r: web.Response(status=code, text=body, headers=headers)


def client_for(url: str, sleep: FakeSleep, **kw: object) -> ArchiveClient:
    cfg = ClientConfig(
        profile=load_profile("nbia-v4"),
        base_url=url,
        retry=RetryPolicy(attempts=4, base=0.5, cap=4.0, jitter=0.0),
        **kw,  # type: ignore[arg-type]
    )
    return ArchiveClient(cfg, sleep=sleep, rng=random.Random(1))


async def test_retry_after_is_honoured_exactly() -> None:
    sleep = FakeSleep()
    script = [
        status(429, "slow down", {"Retry-After": "7"}),
        status(503, "busy"),
        status(502, "bad gateway", {"Retry-After": "2"}),
        ok_json(),
    ]
    async with scripted(script) as (url, seen), client_for(url, sleep) as client:
        assert await client.collections() == ["A"]
    assert sleep.waits == [7.0, 1.0, 2.0]  # Retry-After, then backoff 0.5*2**1, then Retry-After
    assert len(seen) == 4
    assert client.throttled == 1


async def test_gives_up_after_attempts_with_typed_error() -> None:
    sleep = FakeSleep()
    async with scripted([status(500, "Server was not able to process your request")]) as (
        url,
        seen,
    ):
        async with client_for(url, sleep) as client:
            with pytest.raises(ServerError, match="HTTP 500"):
                await client.collections()
    assert len(seen) == 4
    assert sleep.waits == [0.5, 1.0, 2.0]


async def test_429_lowers_concurrency_then_recovers() -> None:
    sleep = FakeSleep()
    script = [status(429, "", {"Retry-After": "1"})] + [ok_json()] * 40
    async with scripted(script) as (url, _seen):
        async with client_for(url, sleep, max_connections=8) as client:
            await client.collections()
            assert client.concurrency == 4
            for _ in range(32):
                await client.collections()
            assert client.concurrency == 8


@pytest.mark.parametrize(
    ("code", "exc"),
    [(400, BadRequestError), (401, AuthError), (403, AuthError), (404, NotFoundError)],
)
async def test_non_retryable_statuses_fail_at_once(code: int, exc: type[Exception]) -> None:
    sleep = FakeSleep()
    async with scripted(
        [status(code, "A parameter, Collection is required for this API call.")]
    ) as (url, seen):
        async with client_for(url, sleep) as client:
            with pytest.raises(exc):
                await client.collections()
    assert len(seen) == 1 and sleep.waits == []


async def test_unreachable_is_retried_then_reported() -> None:
    sleep = FakeSleep()
    async with client_for("http://127.0.0.1:9/nbia-api/services/v4", sleep) as client:
        with pytest.raises(UnreachableError, match="did not answer"):
            await client.collections()
    assert len(sleep.waits) == 3


async def test_empty_body_is_no_rows() -> None:
    async with scripted([status(200, "")]) as (url, _), client_for(url, FakeSleep()) as client:
        assert await client.series("NOPE") == []


async def test_api_key_header_and_query_never_in_errors() -> None:
    key = "s3cr3t-key-value"
    prof = load_profile("tcia-v3")
    for where in ("header", "query"):
        import dataclasses

        p = dataclasses.replace(prof, api_key_in=where)
        sleep = FakeSleep()
        echo = status(401, f'{{"errorMessage":"bad key {key}"}}')
        async with scripted([echo]) as (url, seen):
            cfg = ClientConfig(profile=p, base_url=url, credentials=Credentials(api_key=key))
            async with ArchiveClient(cfg, sleep=sleep) as client:
                with pytest.raises(AuthError) as info:
                    await client.collections()
        assert key not in str(info.value) and "***" in str(info.value)
        req = seen[0]
        if where == "header":
            assert req.headers["api_key"] == key
        else:
            assert req.query["api_key"] == key
        assert req.path.endswith("/TCIA/query/getCollectionValues")
        assert req.query["format"] == "json"
    assert key not in repr(Credentials(api_key=key, password=key))


def test_error_for_status_messages_are_one_line() -> None:
    err = error_for_status(
        400, b"Invalid query parameter: 'x'.\nAllowed parameters are: [a]", "getSeries"
    )
    assert isinstance(err, BadRequestError)
    assert "\n" not in str(err) and "Invalid query parameter" in str(err)
    assert isinstance(error_for_status(429, b"", "getImage", retry_after=3.0), RateLimitedError)


def test_parse_retry_after() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("5", now) == 5.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now) == 30.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None) is None
    assert RetryPolicy(cap=4, jitter=0).backoff(10) == 4


async def test_token_endpoint_hiccup_is_retried_not_fatal() -> None:
    sleep = FakeSleep()
    token = '{"access_token":"tok-123456","expires_in":"soon","token_type":"Bearer"}'
    script = [status(502, "bad gateway"), ok_json(token), ok_json()]
    async with scripted(script) as (url, seen):
        cfg = ClientConfig(
            profile=load_profile("nbia-v2"),
            base_url=url,
            retry=RetryPolicy(attempts=4, base=0.5, jitter=0.0),
            credentials=Credentials(user="u", password="p"),
        )
        async with ArchiveClient(cfg, sleep=sleep) as client:
            assert await client.collections() == ["A"]
            assert "tok-123456" not in repr(client._tokens._token)  # type: ignore[union-attr]
    assert [r.path for r in seen] == [
        "/nbia-api/oauth/token",
        "/nbia-api/oauth/token",
        "/nbia-api/services/v4/getCollectionValues",
    ]
    assert seen[2].headers["Authorization"] == "Bearer tok-123456"
    assert sleep.waits == [0.5]
