"""Scheduling: typed jobs and the queue the engine's workers take them from."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import anyio

from tcia_mirror.engine.pipeline import SeriesWork
from tcia_mirror.sources.base import FetchUnit

__all__ = ["Job", "JobQueue"]


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
