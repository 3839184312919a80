from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiohttp is asyncio-only
    return "asyncio"


@pytest.fixture(autouse=True)
def zips_through_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test datasets' instances are tiny, which a run keeps on the event loop; in-process
    tests send every ZIP to the worker processes instead, so the suite covers that path (the
    CLI tests, in their own processes, keep the real rule and cover the loop's path)."""
    from tcia_mirror.engine import pipeline

    monkeypatch.setattr(pipeline, "ZIP_WORKER_MIN_MEAN", 0)
