"""Shared by the client runners (each runs as its own process, in its own interpreter).

* :func:`loopback_only` makes name resolution refuse anything but the loopback host, so a peer
  whose URL seam we missed fails loudly instead of reaching the real archive.
* :class:`Measured` times the measured section (wall and CPU of this process and its waited-for
  children); imports and start-up are outside it for every tool alike.
* :func:`emit` prints the one ``RESULT {json}`` line the harness reads.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import time
from typing import Any

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def loopback_only() -> None:
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in LOOPBACK:
            raise OSError(f"benchmark guard: refusing to resolve {name!r} (loopback only)")
        return real(host, *args, **kwargs)

    socket.getaddrinfo = guarded  # type: ignore[assignment]


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rss_mb() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        resident = int(fh.read().split()[1])
    return resident * os.sysconf("SC_PAGE_SIZE") / 2**20


class Measured:
    """``with Measured() as m: ...`` then ``m.result()``: wall, cpu and RSS before the work."""

    def __enter__(self) -> Measured:
        self.rss_before = rss_mb()
        self.cpu0 = cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.cpu = cpu_seconds() - self.cpu0

    def result(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu, "rss_before_mb": self.rss_before}


def emit(**data: Any) -> None:
    print("RESULT " + json.dumps(data), flush=True)


def read_uids(path: str) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]
