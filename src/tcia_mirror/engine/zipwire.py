"""The frames between the event loop's process and a ZIP worker: what both sides import, and
nothing else (the main process never loads the worker's HTTP stack).

To a worker: ``<B kind><I stream><I length>`` and ``length`` bytes. From it: ``<I stream><I
length>`` and a pickled reply. See :mod:`tcia_mirror.engine.zipworker` for the conversation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["ABORT", "DATA", "END", "FETCH", "FROM_WORKER", "OPEN", "TO_WORKER", "Request"]

TO_WORKER = struct.Struct("<BII")
FROM_WORKER = struct.Struct("<II")
OPEN, DATA, END, ABORT, FETCH = 1, 2, 3, 4, 5


@dataclass(frozen=True, slots=True)
class Request:
    """A GET as the parent built it (a ``FETCH`` frame): the whole URL (query included) and
    every header; the worker adds nothing. ``proxy``: the ``http://host:port`` of the HTTP
    proxy to send it through (the parent chose it), ``proxy_auth`` the value of its
    ``Proxy-Authorization`` header (a secret: sent to the proxy only)."""

    url: str
    headers: dict[str, str]
    connect_timeout: float | None
    read_timeout: float | None
    proxy: str | None = None
    proxy_auth: str | None = field(default=None, repr=False)
