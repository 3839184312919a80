"""Shared test helpers: a simulator on an ephemeral loopback port and mirror comparisons."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Generic, TypeVar

from tcia_mirror.engine.workerhttp import Pool, Request
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.sources.nbia.profiles import load_profile
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults, Simulator

T = TypeVar("T")


@asynccontextmanager
async def running_sim(
    preset: str = "test", *, faults: Faults | None = None, seed: int = 0, **kw: object
) -> AsyncIterator[Simulator]:
    sim = Simulator(Dataset(DatasetSpec.preset(preset, seed=seed)), faults=faults, **kw)  # type: ignore[arg-type]
    async with sim:
        yield sim


def config_for(sim: Simulator, profile: str = "nbia-v4", **kw: object) -> ClientConfig:
    return ClientConfig(
        profile=load_profile(profile),
        base_url=sim.base_url(profile),
        retry=RetryPolicy(attempts=6, base=0.01, cap=0.05, jitter=0.0, max_retry_after=0.05),
        **kw,  # type: ignore[arg-type]
    )


def dicom_files(root: Path) -> dict[str, bytes]:
    """SOP file name -> bytes for every committed .dcm under root (temp files excluded)."""
    return {
        p.name: p.read_bytes()
        for p in root.rglob("*.dcm")
        if ".tcia-mirror" not in p.parts and not p.name.startswith(".")
    }


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.dcm"))
    }


def ground_truth_files(sim: Simulator, series: list[str] | None = None) -> dict[str, bytes]:
    truth = sim.dataset.ground_truth()
    out: dict[str, bytes] = {}
    for suid, sops in truth.items():
        if series is not None and suid not in series:
            continue
        for sop, data in sops.items():
            out[f"{sop}.dcm"] = data
    return out


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.part")]


class InThread(Generic[T]):
    """An async context manager entered on its own event loop in a background thread, for
    blocking callers (the CLI as a subprocess, the library's blocking helpers)."""

    def __init__(self, cm: AbstractAsyncContextManager[T]) -> None:
        self._cm = cm
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._value: T | None = None

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def run() -> None:
            self._stop = asyncio.Event()
            async with self._cm as value:
                self._value = value
                self._ready.set()
                await self._stop.wait()

        loop.run_until_complete(run())
        loop.close()

    def __enter__(self) -> T:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError(f"{type(self._cm).__name__} did not start")
        assert self._value is not None
        return self._value

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


def SimInThread(  # noqa: N802 - reads as the class it was
    preset: str = "test", faults: Faults | None = None, **kw: object
) -> InThread[Simulator]:
    """A simulator on its own event loop in a background thread (for blocking callers)."""
    return InThread(Simulator(Dataset(DatasetSpec.preset(preset)), faults=faults, **kw))  # type: ignore[arg-type]


def pool_get(req: Request) -> tuple[int, bytes]:
    """A ZIP worker's blocking GET (``workerhttp.Pool``, a fresh pool): status and body."""
    answer = Pool().open(req, [])
    try:
        return answer.resp.status, answer.resp.read()
    finally:
        answer.conn.close()
