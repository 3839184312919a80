"""Retry policy: capped exponential backoff with jitter, ``Retry-After`` honoured.

The clock, the sleep and the random source are injectable so tests assert exact schedules
without waiting.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import anyio

Sleep = Callable[[float], Awaitable[None]]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


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
