"""The console script: a Ctrl-C guard around everything, the imports included (a Ctrl-C
during the imports is held until they are done, then ends the command).

Importing the CLI pulls in aiohttp, anyio and pydicom (a few hundred milliseconds); a Ctrl-C in
that time used to print a long traceback. This module imports nothing heavy itself, so the guard
is in place before any of that starts. It must stay that way: standard library only.
"""

from __future__ import annotations

import gc
import signal
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_INTERRUPTED = 130  # as cli.EXIT_INTERRUPTED

# glibc's malloc: buffers up to this size come from the heap, not a fresh mmap each
_MMAP_THRESHOLD = 4 << 20
# ... and the heap keeps up to this much free memory at its top instead of returning it
_TRIM_THRESHOLD = 64 << 20


def tune_malloc() -> bool:
    """Stop glibc from returning the heap's top to the kernel after every body.

    A download allocates and frees buffers of 256 KiB to a few MiB for every object. glibc's
    default (a threshold that adapts to the sizes freed) kept giving that memory back and
    faulting it in again: 130,000-210,000 minor page faults for 2,000 objects of 0.5 MB, about
    14,000 with these settings, and less system time (benchmarks/README.md). A user's own
    ``MALLOC_*_THRESHOLD_`` settings win; elsewhere than glibc this does nothing.
    """
    import os  # noqa: PLC0415

    if sys.platform != "linux" or any(
        k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
    ):
        return False
    try:
        import ctypes  # noqa: PLC0415

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, ImportError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, _MMAP_THRESHOLD)) and bool(
        mallopt(m_trim_threshold, _TRIM_THRESHOLD)
    )


# commands that never talk to the archive: they start without its HTTP stack (aiohttp)
_OFFLINE = frozenset({"status", "--version", "-V", "--help", "-h"})


def _import_what_the_command_needs(args: list[str]) -> None:
    """The command's modules, imported inside the guard: the CLI imports the engine and the
    HTTP stack lazily, so that ``status`` and ``--version`` start fast, and a Ctrl-C inside
    an import must not happen after the guard is gone."""
    import tcia_mirror.cli.commands  # noqa: F401, PLC0415 - the engine

    if not _OFFLINE.intersection(args[:1]) and not {"--help", "-h"}.intersection(args):
        import tcia_mirror.sources.routing  # noqa: F401, PLC0415 - the sources: aiohttp


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
    tune_malloc()
    try:
        try:
            from tcia_mirror.cli.main import run  # noqa: PLC0415 - the point: inside the guard

            _import_what_the_command_needs(sys.argv[1:] if argv is None else list(argv))
            # what the imports made lives as long as the process: the collector's full passes
            # need not walk it again (measured: a download's main process spent ~5 % in them)
            gc.freeze()
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
