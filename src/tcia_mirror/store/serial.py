"""Blocking calls run one at a time in a worker thread, many to a thread hop.

A store whose calls must not overlap (one SQLite connection) could pass each through a
one-slot limiter to ``anyio.to_thread.run_sync``. Under load that costs more than the calls:
each waits for the previous one's result to come back to the event loop, for the loop to hand
the slot on, and for a thread to take the next. :class:`SerialCalls` queues the calls instead.
The first caller to find no batch under way becomes the driver: it runs everything queued so
far in one worker-thread call, in order, each call as if alone (one call's error is its own
caller's). Calls queued meanwhile wait; when the batch is done, the first of them drives the
next. An idle store pays one thread hop a call, as before.

A caller cancelled while its call waits in the queue leaves it unrun; a batch under way
finishes (its thread cannot be stopped), and its callers get their results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

__all__ = ["SerialCalls"]

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Call:
    fn: Callable[[], Any]
    wake: anyio.Event = field(default_factory=anyio.Event)
    finished: bool = False
    result: Any = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # noqa: BLE001 - raised in its caller's task
            self.error = exc

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


def _run_all(batch: list[_Call]) -> None:
    for call in batch:
        call.run()


class SerialCalls:
    """``await calls.run(fn)``: ``fn()`` in a worker thread, never beside another call."""

    def __init__(self) -> None:
        self._queue: list[_Call] = []
        self._driving = False
        self.batches = 0  # thread hops made (for tests and profiles)

    async def run(self, fn: Callable[[], T]) -> T:
        call = _Call(fn)
        self._queue.append(call)
        if self._driving:
            try:
                await call.wake.wait()
            except BaseException:
                self._leave(call)
                raise
            if call.finished:
                return call.outcome()
        # this caller drives: everything queued now, its own call included
        self._driving = True
        batch, self._queue = self._queue, []
        try:
            with anyio.CancelScope(shield=True):
                self.batches += 1
                await anyio.to_thread.run_sync(_run_all, batch)
        finally:
            for c in batch:
                c.finished = True
                c.wake.set()
            self._hand_on()
        return call.outcome()

    def _hand_on(self) -> None:
        """The batch is done: the first call queued meanwhile drives the next."""
        if self._queue:
            self._queue[0].wake.set()
        else:
            self._driving = False

    def _leave(self, call: _Call) -> None:
        """A waiting caller was cancelled: its call is not run; if it had just been handed
        the driving, the next one gets it."""
        if call.finished:
            return
        if call in self._queue:
            self._queue.remove(call)
        if call.wake.is_set():  # it was to drive the next batch
            self._hand_on()
