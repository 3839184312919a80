"""Backends under contract: every Store and every Source the engine may be given.

A new backend adds one entry to ``STORES`` or ``SOURCES``; every scenario in this folder then
runs against it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from pg import Cluster, pg_cluster  # noqa: F401 - the session's PostgreSQL cluster fixture
from tcia_mirror.sources.base import Source
from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.sources.nbia.source import NbiaSource
from tcia_mirror.sources.routing import default_source
from tcia_mirror.store.base import Store
from tcia_mirror.store.postgres import PostgresStore
from tcia_mirror.store.sqlite import SqliteStore

StoreOpener = Callable[..., Awaitable[Store]]
SourceMaker = Callable[[ArchiveClient], Source]


def _postgres(request: pytest.FixtureRequest) -> StoreOpener:
    """A fresh database of the session's cluster for each test (skipped without binaries)."""
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    return PostgresStore.opener(cluster.new_database())


STORES: dict[str, Callable[[pytest.FixtureRequest], StoreOpener]] = {
    "sqlite": lambda request: SqliteStore.open,
    "postgres": _postgres,
}
# "nbia+idc": the engine's default, routing bucket series to IdcSource (the IDC scenarios,
# which need the S3 simulator, are in tests/integration/test_idc_source.py)
SOURCES: dict[str, SourceMaker] = {"nbia": NbiaSource, "nbia+idc": default_source}


@pytest.fixture(params=sorted(STORES))
def open_store(request: pytest.FixtureRequest) -> StoreOpener:
    return STORES[request.param](request)


@pytest.fixture(params=sorted(SOURCES))
def make_source(request: pytest.FixtureRequest) -> SourceMaker:
    return SOURCES[request.param]


@pytest.fixture
def mirror_dir(tmp_path: Path) -> Path:
    return tmp_path / "mirror"
