"""The shared retry layer (sources/http.py) and both sources on it: one policy, one limiter."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
import pytest
from aiohttp import web

from tcia_mirror.errors import AuthError, ServerError
from tcia_mirror.sources.http import (
    AdaptiveLimiter,
    Failed,
    RetryPolicy,
    retrying,
    retrying_open,
)
from tcia_mirror.sources.idc.source import IdcSource
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.client import ArchiveClient, ClientConfig
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


POLICY = RetryPolicy(attempts=4, base=0.5, cap=4.0, jitter=0.0)


async def test_retrying_waits_retry_after_then_backoff_and_throttles() -> None:
    sleep = FakeSleep()
    limiter = AdaptiveLimiter(8, clock=lambda: 100.0)
    script: list[int | Failed] = [
        Failed(ServerError("a"), retry_after=7.0, throttle=True),
        Failed(ServerError("b")),
        5,
    ]

    async def attempt() -> int | Failed:
        return script.pop(0)

    assert await retrying(attempt, policy=POLICY, limiter=limiter, sleep=sleep) == 5
    assert sleep.waits == [7.0, 1.0]
    assert limiter.current == 4 and limiter.throttled == 1


async def test_retrying_gives_up_and_refuses_what_cannot_pass() -> None:
    sleep = FakeSleep()
    tries = 0

    async def attempt() -> int | Failed:
        nonlocal tries
        tries += 1
        return Failed(AuthError("no"), retry=False)

    with pytest.raises(AuthError):
        await retrying(attempt, policy=POLICY, sleep=sleep)
    assert tries == 1 and sleep.waits == []


async def test_retrying_open_holds_the_slot_while_the_body_is_read() -> None:
    limiter = AdaptiveLimiter(1)
    released: list[str] = []
    order: list[str] = []

    async def attempt() -> str:
        return "resp"

    async def reader(name: str, hold: anyio.Event | None) -> None:
        async with retrying_open(
            attempt, released.append, policy=POLICY, limiter=limiter, sleep=FakeSleep()
        ) as resp:
            order.append(f"{name} in")
            if hold is not None:
                await hold.wait()
            order.append(f"{name} out")
            assert resp == "resp"

    hold = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(reader, "a", hold)
        await anyio.sleep(0.01)
        tg.start_soon(reader, "b", None)
        await anyio.sleep(0.01)
        assert order == ["a in"]  # b waits for a's slot: the body counts against concurrency
        hold.set()
    assert order == ["a in", "a out", "b in", "b out"] and released == ["resp", "resp"]


async def test_retrying_open_does_not_retry_errors_of_the_block() -> None:
    tries = 0

    async def attempt() -> str:
        nonlocal tries
        tries += 1
        return "resp"

    with pytest.raises(ValueError):
        async with retrying_open(attempt, lambda r: None, policy=POLICY, sleep=FakeSleep()):
            raise ValueError("the caller's own")
    assert tries == 1


def test_both_sources_use_the_shared_limiter() -> None:
    client = ArchiveClient(ClientConfig(max_connections=6))
    assert isinstance(client.limiter, AdaptiveLimiter) and client.concurrency == 6
    client.limiter.throttle()
    assert client.concurrency == 3 and client.throttled == 1
    idc = IdcSource(lambda: None, max_connections=6)  # type: ignore[arg-type,return-value]
    assert isinstance(idc.s3.limiter, AdaptiveLimiter)


async def test_401_refreshes_the_token_once_without_a_retry_or_a_wait() -> None:
    sleep = FakeSleep()
    token = '{"access_token":"tok-1","expires_in":3600,"token_type":"Bearer"}'
    script = [ok_json(token), status(401, "expired"), ok_json(token), ok_json()]
    async with scripted(script) as (url, seen):
        cfg = ClientConfig(
            profile=load_profile("nbia-v2"),
            base_url=url,
            retry=POLICY,
            credentials=Credentials(user="u", password="p"),
        )
        async with ArchiveClient(cfg, sleep=sleep, rng=random.Random(1)) as client:
            assert await client.collections() == ["A"]
            assert client.retries == 0
    assert sleep.waits == [] and len(seen) == 4


async def test_a_second_401_is_an_auth_error_at_once() -> None:
    sleep = FakeSleep()
    token = '{"access_token":"tok-1","expires_in":3600,"token_type":"Bearer"}'
    script = [ok_json(token), status(401, "no"), ok_json(token), status(401, "no")]
    async with scripted(script) as (url, seen):
        cfg = ClientConfig(
            profile=load_profile("nbia-v2"),
            base_url=url,
            retry=POLICY,
            credentials=Credentials(user="u", password="p"),
        )
        async with ArchiveClient(cfg, sleep=sleep) as client:
            with pytest.raises(AuthError):
                await client.collections()
    assert sleep.waits == [] and len(seen) == 4
