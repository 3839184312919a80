"""The one HTTP retry layer both sources share (the NBIA archive client, the S3 client).

Capped exponential backoff with jitter, ``Retry-After`` honoured, and adaptive concurrency: a
throttle signal (429, S3 ``SlowDown``) halves the requests allowed at once. A source says what
one try came to (a value, or :class:`Failed`); :func:`retrying` and :func:`retrying_open` decide
whether and when to try again.

The clock, the sleep and the random source are injectable so tests assert exact schedules
without waiting.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, TypeVar

import anyio

from tcia_mirror.sources.proxy import Proxy

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Response(Protocol):
    """What a source reads of an HTTP answer before its body (aiohttp's ``ClientResponse``
    is one)."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def release(self) -> None: ...


class Transport(Protocol):
    """Who sends a request and works its body, in place of a source's own session: the
    engine's ZIP workers (:class:`~tcia_mirror.engine.zipproc.RemoteZip`) fetch a series ZIP
    in the process that inflates and writes it. The source still builds the request and
    decides on retries (:func:`retrying_open`); ``get`` raises ``ConnectionError`` when the
    server could not be reached.

    ``received``: the body's bytes the transport worked so far. An object's body that broke
    off raises :class:`~tcia_mirror.errors.BodyCut` from ``body``; the transport keeps what
    came, and a ``Range`` request from ``received`` continues it. ``proxy``: the HTTP proxy
    the source chose for the URL (:mod:`tcia_mirror.sources.proxy`), or None."""

    received: int

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        proxy: Proxy | None = None,
    ) -> Response: ...

    def body(self, resp: Any, what: str) -> AsyncIterator[Any]:
        """What the transport made of a 2xx body (raises TransferError if it broke off)."""
        ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry a request that failed for a reason that may pass."""

    attempts: int = 6  # total tries of one request, first included
    base: float = 0.5  # first backoff, seconds
    cap: float = 30.0  # longest backoff, seconds
    jitter: float = 0.25  # +- fraction of the backoff drawn at random
    max_retry_after: float = 300.0  # longest Retry-After we accept to wait

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Wait before retry number ``retry`` (1-based) when the server said nothing."""
        delay = min(self.cap, self.base * (2 ** min(retry - 1, 64)))  # no overflow, ever
        if self.jitter and rng is not None:
            delay *= 1 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, delay)

    def wait(
        self, retry: int, retry_after: float | None, rng: random.Random | None = None
    ) -> float:
        """The wait before a retry: the server's Retry-After when given (capped), else backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return self.backoff(retry, rng)


NO_RETRY = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date. Junk gives None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (when - now).total_seconds())


async def real_sleep(seconds: float) -> None:
    await anyio.sleep(seconds)


class AdaptiveLimiter:
    """Requests at once: halved on a throttle signal (429, S3 ``SlowDown``) at most once a
    second, raised by one after 8 successes in a row, never above the configured limit."""

    def __init__(self, limit: int, clock: Callable[[], float] | None = None) -> None:
        import time  # noqa: PLC0415

        self.limit = max(1, limit)
        self.limiter = anyio.CapacityLimiter(self.limit)
        self._clock = clock or time.monotonic
        self._ok_streak = 0
        self._throttled_at = -1e9
        self.throttled = 0

    @property
    def current(self) -> int:
        """Requests allowed at once right now (lowered while the server throttles us)."""
        return int(self.limiter.total_tokens)

    def set_limit(self, n: int) -> None:
        self.limit = max(1, n)
        self._ok_streak = 0
        self.limiter.total_tokens = self.limit

    def throttle(self) -> None:
        self.throttled += 1
        self._ok_streak = 0
        now = self._clock()
        if now - self._throttled_at >= 1.0:
            self._throttled_at = now
            self.limiter.total_tokens = max(1, int(self.limiter.total_tokens) // 2)

    def succeeded(self) -> None:
        if int(self.limiter.total_tokens) < self.limit:
            self._ok_streak += 1
            if self._ok_streak >= 8:
                self._ok_streak = 0
                self.limiter.total_tokens = int(self.limiter.total_tokens) + 1


@dataclass(frozen=True, slots=True)
class Failed:
    """What one try of a request came to, for :func:`retrying`: the error to raise if no try
    is left, whether another try may help, the server's ``Retry-After`` and whether it was a
    throttle signal."""

    error: Exception
    retry: bool = True
    retry_after: float | None = None
    throttle: bool = False


class _Tries:
    """The tries of one request: after a failed one, throttle, give up or wait."""

    def __init__(
        self,
        policy: RetryPolicy,
        limiter: AdaptiveLimiter | None,
        sleep: Sleep,
        rng: random.Random | None,
        on_retry: Callable[[Failed], None] | None,
    ) -> None:
        self.policy = policy
        self.limiter = limiter
        self.sleep = sleep
        self.rng = rng
        self.on_retry = on_retry
        self.retry = 0

    def slot(self) -> AbstractAsyncContextManager[object]:
        return self.limiter.limiter if self.limiter is not None else nullcontext()

    def succeeded(self) -> None:
        if self.limiter is not None:
            self.limiter.succeeded()

    async def failed(self, result: Failed) -> None:
        """Raise ``result.error`` when no try is left or another cannot help, else wait."""
        if result.throttle and self.limiter is not None:
            self.limiter.throttle()
        self.retry += 1
        if not result.retry or self.retry >= self.policy.attempts:
            raise result.error
        if self.on_retry is not None:
            self.on_retry(result)
        await self.sleep(self.policy.wait(self.retry, result.retry_after, self.rng))


async def retrying(
    attempt: Callable[[], Awaitable[T | Failed]],
    *,
    policy: RetryPolicy,
    limiter: AdaptiveLimiter | None = None,
    sleep: Sleep = real_sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[Failed], None] | None = None,
) -> T:
    """The one retry loop: call ``attempt`` (under ``limiter``) until it returns a value, or a
    :class:`Failed` that may not be retried, or ``policy.attempts`` tries are spent. Waits
    ``policy.wait`` between tries (``Retry-After`` honoured); a throttle halves the limiter."""
    tries = _Tries(policy, limiter, sleep, rng, on_retry)
    while True:
        async with tries.slot():
            result = await attempt()
        if not isinstance(result, Failed):
            tries.succeeded()
            return result
        await tries.failed(result)


@asynccontextmanager
async def retrying_open(
    attempt: Callable[[], Awaitable[T | Failed]],
    release: Callable[[T], object],
    *,
    policy: RetryPolicy,
    limiter: AdaptiveLimiter | None = None,
    sleep: Sleep = real_sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[Failed], None] | None = None,
) -> AsyncIterator[T]:
    """:func:`retrying` for a response whose body the caller streams: the limiter's slot is
    held until the caller's block ends (a body being read counts against concurrency), then
    ``release`` is called on the response. Errors raised in the block are not retried."""
    tries = _Tries(policy, limiter, sleep, rng, on_retry)
    while True:
        async with tries.slot():
            result = await attempt()
            if not isinstance(result, Failed):
                tries.succeeded()
                try:
                    yield result
                finally:
                    release(result)
                return
        await tries.failed(result)
