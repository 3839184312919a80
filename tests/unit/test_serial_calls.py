"""SerialCalls: calls never overlap and run in order, calls made during a batch share the next
thread hop, one call's error is its own, and a caller cancelled while queued leaves its call
unrun without stalling the others."""

from __future__ import annotations

import threading

import anyio
import pytest

from tcia_mirror.store.serial import SerialCalls

pytestmark = pytest.mark.anyio


class Probe:
    """Blocking calls that record their order and whether two ever overlapped."""

    def __init__(self) -> None:
        self.order: list[int] = []
        self.running = 0
        self.overlapped = False
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()

    def call(self, i: int, fail: bool = False) -> int:
        with self.lock:
            self.running += 1
            self.overlapped |= self.running > 1
        try:
            self.gate.wait(5)
            self.order.append(i)
            if fail:
                raise OSError(28, f"call {i} failed")
            return i * 10
        finally:
            with self.lock:
                self.running -= 1


async def test_calls_made_during_a_batch_run_in_order_in_one_more_hop() -> None:
    calls, probe = SerialCalls(), Probe()
    results: dict[int, int] = {}

    async def caller(i: int) -> None:
        results[i] = await calls.run(lambda: probe.call(i))

    probe.gate.clear()  # the first call is slow: the others queue behind it
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, 0)
        await anyio.sleep(0.02)
        for i in range(1, 9):
            tg.start_soon(caller, i)
            await anyio.sleep(0.001)  # queued in this order
        await anyio.sleep(0.05)
        probe.gate.set()
    assert results == {i: i * 10 for i in range(9)}
    assert probe.order == list(range(9))
    assert not probe.overlapped
    assert calls.batches == 2  # one hop for the first call, one for the eight queued behind it


async def test_an_idle_store_pays_one_hop_a_call() -> None:
    calls, probe = SerialCalls(), Probe()
    for i in range(3):
        assert await calls.run(lambda i=i: probe.call(i)) == i * 10  # type: ignore[misc]
    assert calls.batches == 3 and probe.order == [0, 1, 2]


async def test_one_calls_error_is_raised_in_its_caller_only() -> None:
    calls, probe = SerialCalls(), Probe()
    outcome: dict[int, object] = {}

    async def caller(i: int) -> None:
        try:
            outcome[i] = await calls.run(lambda: probe.call(i, fail=i == 2))
        except OSError as exc:
            outcome[i] = exc

    probe.gate.clear()
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, 0)
        await anyio.sleep(0.02)
        for i in range(1, 5):
            tg.start_soon(caller, i)
        await anyio.sleep(0.05)
        probe.gate.set()
    assert isinstance(outcome[2], OSError) and "call 2" in str(outcome[2])
    assert {i: outcome[i] for i in (0, 1, 3, 4)} == {0: 0, 1: 10, 3: 30, 4: 40}
    assert sorted(probe.order) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("cancelled", "when"), [(1, "queued"), (2, "queued"), (1, "handed")])
async def test_a_caller_cancelled_in_the_queue_leaves_its_call_unrun(
    cancelled: int, when: str
) -> None:
    """Call 1 is the next driver when the first batch ends; cancelling it while it waits, or
    just as it is handed the driving, or cancelling call 2 (a plain waiter), must neither run
    its call nor leave the others waiting forever."""
    calls, probe = SerialCalls(), Probe()
    results: dict[int, int] = {}
    scopes: dict[int, anyio.CancelScope] = {}
    if when == "handed":
        hand_on = calls._hand_on

        def cancel_as_handed() -> None:
            if calls._queue and not calls._queue[0].wake.is_set():
                scopes[cancelled].cancel()  # delivered before it resumes to drive
            hand_on()

        calls._hand_on = cancel_as_handed  # type: ignore[method-assign]

    async def caller(i: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[i] = scope
            results[i] = await calls.run(lambda: probe.call(i))

    probe.gate.clear()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, 0)
            await anyio.sleep(0.02)
            for i in (1, 2, 3):
                tg.start_soon(caller, i)
                await anyio.sleep(0.001)
            await anyio.sleep(0.02)
            if when == "queued":
                scopes[cancelled].cancel()
            await anyio.sleep(0.02)
            probe.gate.set()
    assert cancelled not in probe.order and cancelled not in results
    assert probe.order == [i for i in range(4) if i != cancelled]
    assert results == {i: i * 10 for i in range(4) if i != cancelled}
