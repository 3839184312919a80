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

``FETCH`` (a pickled :class:`~tcia_mirror.engine.zipwire.Request`): the worker makes the
request itself, on a thread of the stream's own, and the ZIP's bytes never pass through the
parent. It answers ``("status", code, headers, error body)`` or ``("unreachable", why)``
first; after a 2xx, ``fed`` replies come unasked, then the stream's last reply. A ``fed``
reply goes when ``REPORT_ENTRIES`` entries completed, ``REPORT`` bytes came or ``REPORT_EVERY``
seconds passed since the last one (and at once for LICENSE, the MD5 list, a CRC failure or an
unsafe name): each reply costs the parent a wake-up, so they carry several entries on a fast
link and still keep a slow link's progress moving. A stream answered with an error status stays
open for the parent's next try.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from tcia_mirror.engine.workerhttp import (
    CHUNK,
    ERROR_BODY,
    Answer,
    HTTPConnection,
    HTTPException,
    IncompleteRead,
    Pool,
    shut,
)
from tcia_mirror.engine.zipentries import Fed, ObjectState, ZipState, is_dicom_entry
from tcia_mirror.engine.zipwire import (
    ABORT,
    DATA,
    END,
    FETCH,
    FROM_WORKER,
    OPEN,
    TO_WORKER,
    Request,
)
from tcia_mirror.errors import DataError, DiskError, TransferError
from tcia_mirror.fs.atomic import AtomicWriter
from tcia_mirror.sources.nbia.zipstream import ZipLimits, ZipStreamReader

__all__ = ["ABORT", "DATA", "END", "FETCH", "OPEN", "TO_WORKER", "FROM_WORKER", "main"]

_PIPE_SIZE = 1 << 20  # a larger pipe: fewer wake-ups per MB (Linux; best effort)
REPORT = 4 << 20  # a fetching stream reports its bytes at least this often ...
REPORT_EVERY = 0.25  # ... or this many seconds (progress on a slow link)
REPORT_ENTRIES = 4  # complete entries handed over at once (measured: 1 cost 6 % more CPU)
_STOP_WAIT = 5.0  # seconds the fetch threads get to finish when the worker stops


@dataclass(slots=True)
class _Stream:
    zs: ZipState | ObjectState
    fsync: bool
    sent_received: int = 0
    said_at: float = field(default_factory=time.monotonic)  # the last fed reply
    rejected_sent: int = 0
    # a stream that fetches: its thread and the parent's abort meet under this lock
    lock: threading.Lock = field(default_factory=threading.Lock)
    aborted: bool = False
    conns: list[HTTPConnection] = field(default_factory=list)


def _open(args: tuple[Any, ...]) -> _Stream:
    series_dir, root, fsync, owner, token, limits, md5_stated, *rest = args
    object_name = rest[0] if rest else None  # one object's body, not a ZIP
    mirror = Path(root)

    def make_writer(dest: Path) -> AtomicWriter:
        # the parent fsyncs each file in its thread pool (many at once), not this process
        return AtomicWriter(dest, fsync=False, mirror_dir=mirror, owner=owner, token=token)

    if object_name is not None:
        return _Stream(ObjectState(Path(series_dir) / object_name, make_writer), fsync)

    # where the archive states each image's MD5, the parent checks it: no CRC-32 for them
    reader = ZipStreamReader(ZipLimits(*limits), skip_crc=is_dicom_entry if md5_stated else None)
    # every entry is written as it comes: no entry is held in this process's memory
    return _Stream(ZipState(reader, Path(series_dir), make_writer, buffer_max=0), fsync)


def _hand_over(st: _Stream) -> list[tuple[str, str, int, str, bytes, int | None]]:
    """Write out, sync and release every complete entry; the parent owns their temp files."""
    out: list[tuple[str, str, int, str, bytes, int | None]] = []
    zs = st.zs
    while zs.complete:
        e = zs.complete[0]
        if e.writer is None:
            e.writer = zs.make_writer(e.temp_dest)
            e.flush_chunks()
        temp = e.writer.release()
        zs.complete.pop(0)
        out.append((e.name, str(temp), e.size, e.digest.hexdigest(), bytes(e.head), e.crc_stated))
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
    st.sent_received = zs.received
    st.said_at = time.monotonic()
    return ("fed", zs.received, finished, rejected, fed.crc_bad, fed.license, fed.md5_list, err)


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, DiskError | DataError | TransferError):
        return (type(exc).__name__, str(exc))
    if isinstance(exc, OSError):
        return ("DiskError", f"cannot write: {exc.strerror or exc}")
    return ("TransferError", f"ZIP worker: {type(exc).__name__}: {exc}")


def _worth_saying(st: _Stream, fed: Fed) -> bool:
    zs = st.zs
    return bool(
        len(zs.complete) >= REPORT_ENTRIES
        or fed.crc_bad
        or fed.license is not None
        or fed.md5_list is not None
        or len(zs.rejected) > st.rejected_sent
        or zs.received - st.sent_received >= REPORT
        or (
            (zs.complete or zs.received > st.sent_received)
            and time.monotonic() - st.said_at >= REPORT_EVERY
        )
    )


def _broke(exc: BaseException) -> TransferError:
    if isinstance(exc, IncompleteRead):
        return TransferError(f"IncompleteRead: the body broke off ({len(exc.partial)} bytes read)")
    text = str(exc).strip().splitlines()
    return TransferError(f"{type(exc).__name__}: {text[0] if text else 'the transfer broke off'}")


class _Server:
    """The streams of one worker: frames from the parent on the main thread, fetches on a
    thread each. ``reply`` may be called from any thread (one lock keeps frames whole)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.streams: dict[int, _Stream] = {}
        self.pool = Pool()
        self._out_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def reply(self, sid: int, msg: tuple[Any, ...]) -> None:
        body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        with self._out_lock:
            self.out.write(FROM_WORKER.pack(sid, len(body)) + body)
            self.out.flush()

    def drop(self, sid: int) -> int:
        st = self.streams.pop(sid, None)
        return 0 if st is None else st.zs.discard()

    def abort(self, sid: int, st: _Stream) -> int:
        """Stop a stream, its fetch too (its socket is shut: a blocked read returns at once)."""
        with st.lock:
            st.aborted = True
            for conn in st.conns:
                shut(conn)
            return self.drop(sid)

    def end_all(self) -> None:
        """Abort every stream, then let the fetch threads finish (an aborted stream's thread
        sends nothing more and returns once its socket is shut)."""
        for sid, st in list(self.streams.items()):
            self.abort(sid, st)
        deadline = time.monotonic() + _STOP_WAIT
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def start_fetch(self, sid: int, st: _Stream, req: Request) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        t = threading.Thread(target=self.fetch, args=(sid, st, req), daemon=True)
        self._threads.append(t)
        t.start()

    def leave(self, code: int) -> NoReturn:
        """Exit without the interpreter's shutdown: it flushes stdout, and aborts the process
        ("could not acquire lock ... at interpreter shutdown") when a daemon thread is inside
        a write. What this worker wrote is flushed here, under the replies' lock."""
        got = self._out_lock.acquire(timeout=_STOP_WAIT)
        for f in (self.out, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        if got:
            self._out_lock.release()
        os._exit(code)

    # -- the parent feeds the bytes ---------------------------------------------------------
    def data(self, sid: int, st: _Stream, payload: bytes) -> None:
        error: BaseException | None = None
        fed = None
        try:
            fed = st.zs.feed(payload)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent
            error = exc
        msg = _fed(st, fed, error)
        self.reply(sid, msg)
        if msg[-1] is not None:
            self.reply(sid, ("error", *msg[-1], self.drop(sid)))

    def end(self, sid: int, st: _Stream) -> None:
        try:
            st.zs.reader.close()
        except Exception as exc:  # noqa: BLE001
            self.reply(sid, ("error", *_describe(exc), self.drop(sid)))
        else:
            self.drop(sid)
            self.reply(sid, ("done",))

    # -- the worker fetches the bytes (a thread per request) ----------------------------------
    def fetch(self, sid: int, st: _Stream, req: Request) -> None:
        """A stream's request, on its own thread. Whatever happens, the parent gets an answer:
        it waits for one (an unexpected failure ends the stream, named by its type only: the
        request's URL and headers may hold credentials)."""
        try:
            self._fetch(sid, st, req)
        except BaseException as exc:  # noqa: BLE001 - the parent must not wait forever
            why = ("TransferError", f"ZIP worker: {type(exc).__name__} while fetching")
            try:
                with st.lock:
                    if not st.aborted and sid in self.streams:
                        st.aborted = True
                        self.reply(sid, ("error", *why, self.drop(sid)))
            except BaseException:  # noqa: BLE001, S110 - the parent is gone: nobody to tell
                pass

    def _fetch(self, sid: int, st: _Stream, req: Request) -> None:
        st.conns.clear()
        try:
            answer = self.pool.open(req, st.conns)
        except (OSError, HTTPException) as exc:
            with st.lock:
                if not st.aborted:
                    self.reply(sid, ("unreachable", type(exc).__name__))
            return
        resp = answer.resp
        if resp.status >= 300:
            try:
                body = resp.read(ERROR_BODY)
            except (OSError, HTTPException):
                body = b""
            answer.conn.close()
            with st.lock:
                st.conns.clear()
                if not st.aborted:  # the stream stays open for the parent's next try
                    self.reply(sid, ("status", resp.status, answer.headers, body))
            return
        with st.lock:
            if st.aborted:
                answer.conn.close()
                return
            if isinstance(st.zs, ObjectState) and resp.status != 206 and st.zs.received:
                st.zs.restart()  # the server sent the whole object, not the rest asked for
            self.reply(sid, ("status", resp.status, answer.headers, b""))
        self._body(sid, st, answer)

    def _body(self, sid: int, st: _Stream, answer: Answer) -> None:
        resp = answer.resp
        # an object's bytes are written and hashed before the next read: they are read into
        # one buffer, reused (``read(n)`` allocates n zeroed bytes a call, then copies them)
        buf = bytearray(CHUNK) if isinstance(st.zs, ObjectState) else None
        view = memoryview(buf) if buf is not None else None
        while True:
            error: BaseException | None = None
            chunk: bytes | memoryview
            try:
                chunk = view[: resp.readinto(view)] if view is not None else resp.read(CHUNK)
            except (OSError, HTTPException) as exc:
                chunk, error = b"", _broke(exc)
            if not chunk and error is None and resp.length:
                error = TransferError(f"the body ended {resp.length} bytes short")
            with st.lock:
                if st.aborted:
                    answer.conn.close()
                    return
                if error is not None and isinstance(st.zs, ObjectState):
                    # an object's cut body: what came stays, for the parent's continuation
                    answer.conn.close()
                    st.conns.clear()
                    self.reply(sid, ("cut", *_describe(error), st.zs.received))
                    return
                fed: Fed | None = None
                if chunk:
                    try:
                        if isinstance(st.zs, ObjectState):
                            fed = st.zs.feed(chunk)
                        else:
                            assert isinstance(chunk, bytes)
                            fed = st.zs.feed(chunk)
                    except Exception as exc:  # noqa: BLE001 - every failure goes to the parent
                        error = exc
                    if error is None:
                        if _worth_saying(st, fed or Fed()):
                            self.reply(sid, _fed(st, fed, None))
                        continue
                if error is None:  # the body's end
                    try:
                        st.zs.reader.close()
                    except Exception as exc:  # noqa: BLE001
                        error = exc
                if error is not None:
                    answer.conn.close()
                    msg = _fed(st, fed, error)
                    self.reply(sid, msg)
                    self.reply(sid, ("error", *(msg[-1] or _describe(error)), self.drop(sid)))
                    return
                msg = _fed(st, fed, None)
                self.reply(sid, msg)
                if msg[-1] is not None:
                    answer.conn.close()
                    self.reply(sid, ("error", *msg[-1], self.drop(sid)))
                    return
                st.conns.clear()
                self.drop(sid)
                self.reply(sid, ("done",))
            self.pool.give_back(answer)
            return


def _serve(inp: BinaryIO, server: _Server) -> None:
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
                server.streams[sid] = _open(pickle.loads(payload))
                continue
            st = server.streams.get(sid)
            if st is None:
                continue  # a stream that already ended (its last reply was sent)
            if kind == DATA:
                server.data(sid, st, payload)
            elif kind == END:
                server.end(sid, st)
            elif kind == FETCH:
                server.start_fetch(sid, st, Request(*pickle.loads(payload)))
            elif kind == ABORT:
                server.reply(sid, ("aborted", server.abort(sid, st)))
    finally:
        server.end_all()


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
    server = _Server(out)
    code = 0
    try:
        _serve(inp, server)
    except BrokenPipeError:
        pass  # the parent is gone: what was not handed over is removed already
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback; the parent retries
        print(f"tcia-mirror: ZIP worker: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 1
    server.leave(code)


if __name__ == "__main__":
    main()
