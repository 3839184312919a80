"""A ZIP worker process: the byte work of series ZIPs (inflate, CRC-32, MD5, writes, fsync) away
from the event loop's process, so it runs on another core without sharing a GIL with it.

Run as ``python -m tcia_mirror.engine.zipworker``; :mod:`tcia_mirror.engine.zipproc` starts it
and speaks to it over its standard input and output. The parent feeds the raw bytes of many
ZIP streams at once; the worker answers each chunk with what it completed: entries written to
temp files in their series folder (closed, and fsynced when asked), each with its size, MD5 and
the first bytes of its header. The parent checks them and renames them into place: a temp file
handed over is the parent's; the worker never publishes anything.

Frames to the worker: ``<B kind><I stream><I length>`` and ``length`` bytes (a pickled tuple for
``OPEN``, raw ZIP bytes for ``DATA``, nothing for ``END`` and ``ABORT``). Frames from it:
``<I stream><I length>`` and a pickled reply. Each stream ends with exactly one of ``done``,
``error`` or ``aborted``. When its input ends (the parent exited, even by ``kill -9``), the worker
removes the temp files of entries it had not handed over, and exits.
"""

from __future__ import annotations

import pickle
import signal
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tcia_mirror.engine.zipentries import Fed, ZipState
from tcia_mirror.errors import DataError, DiskError
from tcia_mirror.fs.atomic import AtomicWriter
from tcia_mirror.sources.nbia.zipstream import ZipLimits, ZipStreamReader

__all__ = ["ABORT", "DATA", "END", "OPEN", "TO_WORKER", "FROM_WORKER", "main"]

TO_WORKER = struct.Struct("<BII")
FROM_WORKER = struct.Struct("<II")
OPEN, DATA, END, ABORT = 1, 2, 3, 4
_PIPE_SIZE = 1 << 20  # a larger pipe: fewer wake-ups per MB (Linux; best effort)


@dataclass(slots=True)
class _Stream:
    zs: ZipState
    fsync: bool
    sent_received: int = 0
    rejected_sent: int = 0


def _open(args: tuple[Any, ...]) -> _Stream:
    series_dir, root, fsync, owner, token, limits = args
    mirror = Path(root)

    def make_writer(dest: Path) -> AtomicWriter:
        # the parent fsyncs each file in its thread pool (many at once), not this process
        return AtomicWriter(dest, fsync=False, mirror_dir=mirror, owner=owner, token=token)

    reader = ZipStreamReader(ZipLimits(*limits))
    # every entry is written as it comes: no entry is held in this process's memory
    return _Stream(ZipState(reader, Path(series_dir), make_writer, buffer_max=0), fsync)


def _hand_over(st: _Stream) -> list[tuple[str, str, int, str, bytes]]:
    """Write out, sync and release every complete entry; the parent owns their temp files."""
    out: list[tuple[str, str, int, str, bytes]] = []
    zs = st.zs
    while zs.complete:
        e = zs.complete[0]
        if e.writer is None:
            e.writer = zs.make_writer(e.temp_dest)
            e.flush_chunks()
        temp = e.writer.release()
        zs.complete.pop(0)
        out.append((e.name, str(temp), e.size, e.digest.hexdigest(), bytes(e.head)))
    return out


def _fed(st: _Stream, fed: Fed | None, error: BaseException | None) -> tuple[Any, ...]:
    """``("fed", DICOM bytes received so far, entries handed over, unsafe names refused,
    CRC failures, LICENSE, md5hashes.csv, error or None)``."""
    zs = st.zs
    err = None if error is None else _describe(error)
    try:
        finished = _hand_over(st)
    except (DiskError, OSError) as exc:  # the disk refused while handing over: say so
        finished, err = [], err or _describe(exc)
    rejected = zs.rejected[st.rejected_sent :]
    st.rejected_sent = len(zs.rejected)
    fed = fed or Fed()
    return ("fed", zs.received, finished, rejected, fed.crc_bad, fed.license, fed.md5_list, err)


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, DiskError | DataError):
        return (type(exc).__name__, str(exc))
    if isinstance(exc, OSError):
        return ("DiskError", f"cannot write: {exc.strerror or exc}")
    return ("TransferError", f"ZIP worker: {type(exc).__name__}: {exc}")


def _serve(inp: BinaryIO, out: BinaryIO) -> None:
    streams: dict[int, _Stream] = {}

    def reply(sid: int, msg: tuple[Any, ...]) -> None:
        body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        out.write(FROM_WORKER.pack(sid, len(body)) + body)
        out.flush()

    def drop(sid: int) -> int:
        st = streams.pop(sid, None)
        return 0 if st is None else st.zs.discard()

    try:
        while True:
            head = inp.read(TO_WORKER.size)
            if len(head) < TO_WORKER.size:
                return  # the parent is gone or done
            kind, sid, length = TO_WORKER.unpack(head)
            payload = inp.read(length) if length else b""
            if len(payload) < length:
                return
            if kind == OPEN:
                streams[sid] = _open(pickle.loads(payload))
                continue
            st = streams.get(sid)
            if st is None:
                continue  # a stream that already ended (an error was sent)
            if kind == DATA:
                error: BaseException | None = None
                fed = None
                try:
                    fed = st.zs.feed(payload)
                except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
                    error = exc
                msg = _fed(st, fed, error)
                reply(sid, msg)
                if msg[-1] is not None:
                    reply(sid, ("error", *msg[-1], drop(sid)))
            elif kind == END:
                try:
                    st.zs.reader.close()
                except Exception as exc:  # noqa: BLE001
                    reply(sid, ("error", *_describe(exc), drop(sid)))
                else:
                    drop(sid)
                    reply(sid, ("done",))
            elif kind == ABORT:
                reply(sid, ("aborted", drop(sid)))
    finally:
        for sid in list(streams):
            drop(sid)


def main() -> None:
    inp = sys.stdin.buffer
    out = sys.stdout.buffer
    try:
        import fcntl

        for f in (inp, out):
            fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)  # Linux only
    except (ImportError, AttributeError, OSError):
        pass
    # Ctrl-C reaches the whole process group: the parent stops this worker (it aborts its
    # streams, then closes the input), so the worker waits for that instead of dying mid-reply
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve(inp, out)
    except BrokenPipeError:
        pass  # the parent is gone: what was not handed over is removed already
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback; the parent retries
        print(f"tcia-mirror: ZIP worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
