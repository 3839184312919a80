"""Scheduling: typed jobs and the queue the engine's workers take them from."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import anyio

from tcia_mirror.engine.pipeline import SeriesWork
from tcia_mirror.sources.base import FetchUnit
from tcia_mirror.sources.http import RetryPolicy

__all__ = ["WRONG_CONTENT_TRIES", "GiveUpBudget", "Job", "JobQueue"]

# tries in a row, without a file committed, that the archive answered in full with content that
# failed the checks (wrong series or instance, not DICOM, MD5 or CRC mismatch): such an archive
# is not flaky but wrong, and retrying it until --give-up-after would only fetch the same again
WRONG_CONTENT_TRIES = 3


@dataclass(frozen=True, slots=True)
class Job:
    """One fetch unit of one series' work."""

    work: SeriesWork
    unit: FetchUnit


class JobQueue:
    """Jobs from a lazy generator plus follow-ups; ``get`` returns None when all work is done."""

    def __init__(self, jobs: AsyncGenerator[Job]) -> None:
        self._gen = jobs
        self._pull = anyio.Lock()  # one worker at a time advances the generator
        self._extra: deque[Job] = deque()
        self.in_flight = 0
        self._changed = anyio.Event()

    async def get(self) -> Job | None:
        while True:
            job = self._extra.popleft() if self._extra else None
            if job is None:
                async with self._pull:
                    job = await anext(self._gen, None)
            if job is not None:
                self.in_flight += 1
                return job
            if self.in_flight == 0:
                return None
            await self._changed.wait()

    def done(self, follow_ups: list[Job]) -> None:
        self._extra.extend(follow_ups)
        self.in_flight -= 1
        self._changed.set()
        self._changed = anyio.Event()

    def later(self) -> None:
        """Follow-ups will come (after a wait) through one more ``done``: workers keep waiting."""
        self.in_flight += 1

    async def aclose(self) -> None:
        """Close the generator (a run that stopped early leaves it part-way)."""
        await self._gen.aclose()


class GiveUpBudget:
    """The retry policy of series (``--give-up-after``).

    A series is tried again, with capped exponential backoff between its tries, until
    ``give_up_after`` seconds pass without a file of it committed; each committed file restarts
    its budget. A series the archive refused (400/404) is not tried again, nor one answered
    ``WRONG_CONTENT_TRIES`` times in full with content that failed the checks.
    """

    def __init__(
        self, give_up_after: float, policy: RetryPolicy, clock: Callable[[], float]
    ) -> None:
        self.give_up_after = give_up_after
        self.policy = policy
        self.clock = clock
        self.jitter = random.Random()
        self.since: dict[str, float] = {}  # series -> start of its budget (first try, progress)
        self.failed_try: set[str] = set()  # series with a failed try in the round under way
        self.refused: set[str] = set()  # the archive refused: retrying cannot help
        self.round_start: dict[str, int] = {}  # series -> files done when its round began
        self.problems_at: dict[str, int] = {}  # series -> its problems when its round began
        self.wrong: dict[str, int] = {}  # series -> rounds with wrong content, no progress

    def begin(self, w: SeriesWork) -> None:
        """A series enters the run."""
        self.round_start[w.uid] = len(w.done)

    def start(self, w: SeriesWork) -> None:
        """A try of the series starts (its budget starts with its first)."""
        self.since.setdefault(w.uid, self.clock())
        self.problems_at.setdefault(w.uid, len(w.problems))

    def end_round(self, w: SeriesWork) -> float | None:
        """Every try of the round is over: seconds to wait before the next round (0: at once),
        or None when the series is finished, done or given up (the reason is in its notes)."""
        if len(w.done) > self.round_start[w.uid]:  # progress
            w.stalls, self.since[w.uid], self.wrong[w.uid] = 0, self.clock(), 0
        else:
            w.stalls += 1
            if len(w.problems) > self.problems_at[w.uid]:  # the checks refused what came
                self.wrong[w.uid] = self.wrong.get(w.uid, 0) + 1
        self.round_start[w.uid] = len(w.done)
        self.problems_at[w.uid] = len(w.problems)
        failed = w.uid in self.failed_try
        self.failed_try.discard(w.uid)
        more = bool(w.missing()) if w.expected else failed
        if not more or w.uid in self.refused:
            return None
        if (why := self._give_up(w)) is not None:
            w.notes.append(why)
            return None
        if not w.stalls:
            return 0.0
        left = self.give_up_after - (self.clock() - self.since[w.uid])
        return max(1e-6, min(self.policy.backoff(w.stalls, self.jitter), left))

    def _give_up(self, w: SeriesWork) -> str | None:
        waited = self.clock() - self.since[w.uid]
        last = w.notes[-1] if w.notes else "no error"
        if waited >= self.give_up_after:
            return (
                f"given up after {waited:.0f} s and {w.stalls} tries without a file "
                f"committed (--give-up-after {self.give_up_after:g}); last: {last}"
            )
        if self.wrong.get(w.uid, 0) >= WRONG_CONTENT_TRIES:
            return (
                f"given up after {WRONG_CONTENT_TRIES} tries answered in full with content "
                f"that failed the checks, without a file committed; last: {last}"
            )
        return None
