"""Fault injection settings for the simulator. Every fault is off by default.

None of these are documented behaviours of the real archive (api-notes §8-9); they are what a
client meets on a bad day: slow or flaky nginx, rate limiting, dropped or short bodies, HTML
error pages with status 200, hostile ZIP entry names and sizes that disagree with the data.
Decisions draw from a private RNG seeded by ``seed``, so a run is reproducible for a given
request order. The object is mutable: tests switch faults on and off while the server runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["IMAGE_ENDPOINTS", "ZIP_ENDPOINTS", "Faults"]

ZIP_ENDPOINTS = frozenset({"getImage", "getImageWithMD5Hash"})
IMAGE_ENDPOINTS = ZIP_ENDPOINTS | {"getSingleImage"}


@dataclass
class Faults:
    """Faults applied by :class:`~tcia_mirror.testing.simulator.Simulator`.

    ``latency``: seconds added before every answer. ``bandwidth``: bytes/s cap per response
    body (streamed in chunks with sleeps). ``error_rate``: fraction of requests answered with a
    status from ``error_statuses`` (500/502/503) and an nginx text/plain body; with
    ``error_burst`` N > 1 they come in bursts: once a 5xx is rolled, the next N-1 requests get the
    same status too (bursts start less often, so ``error_rate`` stays the long-run fraction).
    ``rate_limit_rate``: fraction answered 429 with ``Retry-After``
    (``retry_after`` seconds, rendered ``"%g"``: ``1`` or ``0.25``). ``drop_rate``: fraction of
    image responses (getImage, getImageWithMD5Hash, getSingleImage) whose TCP connection is
    aborted mid-body. ``truncate_rate``: fraction of ZIP responses that stop mid-entry but end
    cleanly (chunked terminator sent, no central directory). ``html_error_rate``: fraction of ZIP
    requests answered 200 ``text/html`` error page. ``hostile``: every ZIP names its first DICOM
    entries ``../evil.dcm``, ``/abs/evil.dcm``, ``a/../../x.dcm``, ``..\\win-evil.dcm``;
    ``hostile_series`` does the same for the listed series only. ``size_mismatch_series``:
    getSeriesSize and getSeries report 1000 bytes and 1 object more than these series hold.
    ``endpoints``: restrict every fault to these endpoint names (None: all endpoints).
    """

    latency: float = 0.0
    bandwidth: float | None = None
    error_rate: float = 0.0
    error_burst: int = 1
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limit_rate: float = 0.0
    retry_after: float = 1.0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    html_error_rate: float = 0.0
    hostile: bool = False
    hostile_series: frozenset[str] = frozenset()
    size_mismatch_series: frozenset[str] = frozenset()
    endpoints: frozenset[str] | None = None
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _burst_left: int = field(default=0, init=False, repr=False, compare=False)
    _burst_status: int = field(default=500, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"tcia-mirror-sim-faults:{self.seed}")

    def applies(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints

    def roll(self, rate: float) -> bool:
        """True with probability ``rate`` (never draws when the rate is 0, always true at 1)."""
        if rate <= 0.0:
            return False
        return rate >= 1.0 or self._rng.random() < rate

    def burst_status(self) -> int | None:
        """The 5xx status owed to this request by a burst under way, else None (no draw)."""
        if self._burst_left <= 0:
            return None
        self._burst_left -= 1
        return self._burst_status

    def server_error(self) -> int | None:
        """Roll for a 5xx that starts a burst of ``error_burst``; its status, or None."""
        n = max(1, self.error_burst)
        rate = self.error_rate
        if n > 1 and 0.0 < rate < 1.0:
            rate /= n - (n - 1) * rate  # a burst of n per start: the long-run fraction stays
        if not self.roll(rate):
            return None
        self._burst_status = self.choice(self.error_statuses)
        self._burst_left = n - 1
        return self._burst_status

    def choice(self, options: tuple[int, ...]) -> int:
        return self._rng.choice(options)

    def fraction(self, low: float = 0.1, high: float = 0.9) -> float:
        return self._rng.uniform(low, high)

    def randint(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def is_hostile(self, series_uid: str) -> bool:
        return self.hostile or series_uid in self.hostile_series

    def retry_after_header(self) -> str:
        return f"{self.retry_after:g}"
