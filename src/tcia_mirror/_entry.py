"""The console script: a Ctrl-C guard around everything, the imports included.

Importing the CLI pulls in aiohttp, anyio and pydicom (a few hundred milliseconds); a Ctrl-C in
that time used to print a long traceback. This module imports nothing heavy itself, so the guard
is in place before any of that starts. It must stay that way: standard library only.
"""

from __future__ import annotations

import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_INTERRUPTED = 130  # as cli.EXIT_INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from tcia_mirror.cli.main import run  # noqa: PLC0415 - the point: imported inside the guard

        return run(argv)
    except KeyboardInterrupt:
        try:
            print("tcia-mirror: interrupted", file=sys.stderr)
        except (KeyboardInterrupt, OSError):
            pass
        return EXIT_INTERRUPTED
    finally:
        # the work is over: a Ctrl-C while the interpreter shuts down (module teardown, thread
        # joins) would print a traceback no code of ours can catch
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except (ValueError, OSError):  # not the main thread
            pass
