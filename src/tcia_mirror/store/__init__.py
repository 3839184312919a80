"""store: the checkpoint store seam (:mod:`.base`) and its backends, chosen by :func:`open_store`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from tcia_mirror.errors import InputError
from tcia_mirror.store.base import STATE_DIR, Store

__all__ = ["opener", "open_store"]

_POSTGRES = ("postgresql://", "postgres://")


def opener(state: str | None) -> Callable[..., Awaitable[Store]]:
    """The ``open_store(mirror_dir, create=)`` of a ``--state`` value: ``None`` is the mirror's
    own SQLite file (``DIR/.tcia-mirror/state.sqlite``), ``postgresql://...`` a database."""
    if not state:
        from tcia_mirror.store.sqlite import SqliteStore  # noqa: PLC0415

        return SqliteStore.open
    if state.startswith(_POSTGRES):
        from tcia_mirror.store.postgres import PostgresStore  # noqa: PLC0415

        return PostgresStore.opener(state)
    raise InputError(
        "--state must be a postgresql://USER@HOST:PORT/DB URL (or left out for "
        f"DIR/{STATE_DIR}/state.sqlite)"
    )


async def open_store(state: str | None, mirror_dir: Path, *, create: bool = True) -> Store:
    """Open the store ``state`` names for the mirror at ``mirror_dir``."""
    return await opener(state)(Path(mirror_dir), create=create)
