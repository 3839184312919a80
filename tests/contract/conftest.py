"""Backends under contract: every Store and every Source the engine may be given.

A new backend adds one entry to ``STORES`` or ``SOURCES``; every scenario in this folder then
runs against it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tcia_mirror.sources.base import Source
from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.sources.nbia.source import NbiaSource
from tcia_mirror.store.base import Store
from tcia_mirror.store.sqlite import SqliteStore

StoreOpener = Callable[..., Awaitable[Store]]
SourceMaker = Callable[[ArchiveClient], Source]

STORES: dict[str, StoreOpener] = {"sqlite": SqliteStore.open}
SOURCES: dict[str, SourceMaker] = {"nbia": NbiaSource}


@pytest.fixture(params=sorted(STORES))
def open_store(request: pytest.FixtureRequest) -> StoreOpener:
    return STORES[request.param]


@pytest.fixture(params=sorted(SOURCES))
def make_source(request: pytest.FixtureRequest) -> SourceMaker:
    return SOURCES[request.param]


@pytest.fixture
def mirror_dir(tmp_path: Path) -> Path:
    return tmp_path / "mirror"
