"""Group commit: files that many workers checked and made durable enter the mirror in batches.

A worker hands in its files (each already fsynced under its temp name) and waits. The first
worker to find no batch under way becomes the leader: it takes everything handed in so far,
publishes it in one worker-thread call (renames, then one fsync per folder) and records it in
the store (one transaction per series). Workers that handed in files meanwhile find them done.
So a busy run pays one folder fsync and one store transaction per batch, not per file, and an
idle one pays what it paid before, with no timer and no added wait.

The order per file stays data fsync -> rename -> folder fsync -> record: a kill between the
rename and the record leaves a renamed, unrecorded file, which the next run adopts
(:mod:`tcia_mirror.engine.adopt`). A batch under way finishes even when its leader is
cancelled (renamed files are recorded); files whose worker is cancelled before a leader took
them are handed back to ``drop`` (their temp files are removed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

__all__ = ["GroupCommitter"]

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Ticket(Generic[T]):
    items: list[T]
    settled: bool = False
    error: BaseException | None = None


class GroupCommitter(Generic[T]):
    """``prepare(items)`` on the loop (what must be stored before any rename), then
    ``publish(items)`` in a worker thread, then ``record(items)`` on the loop; each sees a whole
    batch. ``drop(items)`` discards files never published (their worker left)."""

    def __init__(
        self,
        publish: Callable[[list[T]], None],
        record: Callable[[list[T]], Awaitable[None]],
        drop: Callable[[list[T]], None],
        prepare: Callable[[list[T]], Awaitable[None]] | None = None,
    ) -> None:
        self._prepare = prepare
        self._publish = publish
        self._record = record
        self._drop = drop
        self._queue: list[_Ticket[T]] = []
        self._lock = anyio.Lock()
        self.batches = 0  # batches flushed (for tests and profiles)

    async def commit(self, items: Sequence[T]) -> None:
        """Return once ``items`` are published and recorded; raise what stopped their batch."""
        if not items:
            return
        ticket: _Ticket[T] = _Ticket(list(items))
        self._queue.append(ticket)
        try:
            async with self._lock:
                if not ticket.settled:
                    batch, self._queue = self._queue, []
                    with anyio.CancelScope(shield=True):
                        await self._flush(batch)
        except BaseException:
            if ticket in self._queue:  # no leader took it: it never becomes part of the mirror
                self._queue.remove(ticket)
                self._drop(ticket.items)
            raise
        if ticket.error is not None:
            raise ticket.error

    async def _flush(self, batch: list[_Ticket[T]]) -> None:
        items = [item for t in batch for item in t.items]
        self.batches += 1
        try:
            if self._prepare is not None:
                try:
                    await self._prepare(items)
                except BaseException:
                    self._drop(items)  # nothing of the batch was renamed
                    raise
            await anyio.to_thread.run_sync(self._publish, items)
            await self._record(items)
        except Exception as exc:  # each worker of the batch raises it
            for t in batch:
                t.error = exc
        finally:
            for t in batch:
                t.settled = True
