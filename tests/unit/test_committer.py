"""Group commit: batches form under load, errors reach every worker of a batch, a worker that
leaves before its batch started takes its files with it."""

from __future__ import annotations

import threading

import anyio
import pytest

from tcia_mirror.engine.committer import GroupCommitter

pytestmark = pytest.mark.anyio


class Log:
    def __init__(self, fail_on: str | None = None) -> None:
        self.published: list[list[str]] = []
        self.recorded: list[list[str]] = []
        self.dropped: list[str] = []
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()

    def publish(self, items: list[str]) -> None:
        self.gate.wait(5)
        if self.fail_on in items:
            raise OSError(28, "No space left on device")
        self.published.append(list(items))

    async def record(self, items: list[str]) -> None:
        self.recorded.append(list(items))

    def drop(self, items: list[str]) -> None:
        self.dropped.extend(items)


async def test_concurrent_workers_share_batches_and_every_file_is_recorded_once() -> None:
    log = Log()
    gc = GroupCommitter(log.publish, log.record, log.drop)
    log.gate.clear()  # the first batch is slow: the others queue behind it

    async def worker(i: int) -> None:
        await gc.commit([f"f{i}"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, 0)
        await anyio.sleep(0.02)  # f0's batch is under way
        for i in range(1, 8):
            tg.start_soon(worker, i)
        await anyio.sleep(0.05)
        log.gate.set()
    flat = [x for b in log.recorded for x in b]
    assert sorted(flat) == sorted(f"f{i}" for i in range(8))
    assert log.published == log.recorded  # recorded only once published, batch by batch
    assert gc.batches == 2 and len(log.recorded[0]) == 1 and len(log.recorded[1]) == 7
    assert not log.dropped


async def test_a_failed_batch_raises_in_every_worker_of_it() -> None:
    log = Log(fail_on="f3")
    gc = GroupCommitter(log.publish, log.record, log.drop)
    log.gate.clear()
    errors: list[str] = []

    async def worker(i: int) -> None:
        try:
            await gc.commit([f"f{i}"])
        except OSError as exc:
            errors.append(f"f{i}: {exc.strerror}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker, 0)
        await anyio.sleep(0.02)  # f0 leads a batch of its own, the rest queue
        for i in range(1, 6):
            tg.start_soon(worker, i)
        await anyio.sleep(0.05)
        log.gate.set()
    assert log.recorded == [["f0"]]
    assert sorted(errors) == [f"f{i}: No space left on device" for i in range(1, 6)]


async def test_a_worker_cancelled_before_its_batch_started_drops_its_files() -> None:
    log = Log()
    gc = GroupCommitter(log.publish, log.record, log.drop)
    log.gate.clear()
    async with anyio.create_task_group() as tg:
        tg.start_soon(gc.commit, ["lead"])
        await anyio.sleep(0.02)
        with anyio.move_on_after(0.05):
            await gc.commit(["late"])  # waits behind the slow batch, then gives up
        log.gate.set()
    assert log.dropped == ["late"]
    assert log.recorded == [["lead"]]


async def test_a_batch_under_way_is_recorded_even_when_its_leader_is_cancelled() -> None:
    log = Log()
    gc = GroupCommitter(log.publish, log.record, log.drop)
    log.gate.clear()
    with anyio.move_on_after(0.05):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gc.commit, ["a"])
            threading.Timer(0.15, log.gate.set).start()  # the batch outlives the cancellation
            await anyio.sleep(1)
    assert log.recorded == [["a"]] and not log.dropped


async def test_prepare_runs_before_any_rename_and_a_failed_prepare_drops_the_batch() -> None:
    log = Log()
    order: list[str] = []

    async def prepare(items: list[str]) -> None:
        order.append(f"prepare {items}")
        if "bad" in items:
            raise OSError(5, "Input/output error")

    def publish(items: list[str]) -> None:
        order.append(f"publish {items}")
        log.publish(items)

    gc = GroupCommitter(publish, log.record, log.drop, prepare)
    await gc.commit(["a"])
    with pytest.raises(OSError, match="Input/output error"):
        await gc.commit(["bad"])
    assert order == ["prepare ['a']", "publish ['a']", "prepare ['bad']"]
    assert log.recorded == [["a"]] and log.dropped == ["bad"]
