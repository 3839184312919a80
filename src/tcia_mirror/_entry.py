"""The console script: a Ctrl-C guard around everything, the imports included (a Ctrl-C
during the imports is held until they are done, then ends the command).

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
    # A Ctrl-C during the imports is held until they are done: raised inside an arbitrary
    # import (a class body, a __set_name__) it can surface as another error, or leave the
    # interpreter to die of the signal. The imports take well under a second.
    held: list[int] = []
    previous = None
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # e.g. started with nohup
            previous = signal.signal(signal.SIGINT, lambda signum, _frame: held.append(signum))
    except (ValueError, OSError):  # not the main thread
        pass
    try:
        try:
            from tcia_mirror.cli.main import run  # noqa: PLC0415 - the point: inside the guard
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if held:
            raise KeyboardInterrupt
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
