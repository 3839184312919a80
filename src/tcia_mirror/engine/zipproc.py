"""Where a series ZIP's bytes are worked: on the event loop (:class:`LocalZip`) or in ZIP worker
processes (:class:`ZipWorkers`, :class:`RemoteZip`; see :mod:`tcia_mirror.engine.zipworker`).

Inflating, CRC-32 and MD5 are most of a ZIP's cost. In the event loop's process they share one
GIL with the loop: measured on 2 cores, worker threads made it slower, not faster (each return
from zlib or hashlib waits for the GIL behind the busy loop). A worker process has a GIL of its
own. The loop only moves the raw bytes to it through a pipe and gets back, per chunk, the
entries it completed as temp files with their size, MD5 and first header bytes; the checks,
renames and records stay in the parent (:class:`~tcia_mirror.engine.pipeline.Fetcher`).

Both decoders answer the same calls: ``feed(chunk) -> Fed`` (complete entries are appended to
``complete``), ``close()`` at the end of the stream (raises unless the archive was whole),
``discard() -> bytes dropped`` when the stream stopped early, ``received`` and ``rejected``.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import itertools
import math
import os
import pickle
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

import anyio
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from tcia_mirror.engine.zipentries import Fed, ZipEntry, ZipState
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
from tcia_mirror.errors import BodyCut, DataError, DiskError, TciaMirrorError, TransferError
from tcia_mirror.fs.atomic import AtomicWriter, host_tag
from tcia_mirror.sources.nbia.zipstream import ZipLimits
from tcia_mirror.sources.proxy import Proxy

__all__ = ["LocalZip", "RemoteZip", "ZipWorkers"]

_GONE = "the ZIP worker process ended unexpectedly"
# replies that do not end a stream (``cut``: an object's body broke off, what came is kept)
_ASIDE = frozenset({"fed", "status", "unreachable", "cut"})
FRAME = 256 * 1024  # bytes of a ZIP sent to a worker at once (the last frame may be smaller)
_STOP_WAIT = 10.0  # seconds a worker gets to clean up and exit before it is killed


class LocalZip:
    """A ZIP's byte work on the event loop (``--zip-workers 0``, and tests that inject faults
    into file writes)."""

    def __init__(self, zs: ZipState) -> None:
        self.zs = zs
        self.complete = zs.complete
        self.rejected = zs.rejected

    @property
    def received(self) -> int:
        return self.zs.received

    async def feed(self, chunk: bytes) -> Fed:
        return self.zs.feed(chunk)

    async def close(self) -> Fed:
        self.zs.reader.close()
        return Fed()

    async def discard(self) -> int:
        return self.zs.discard()


class _Md5:
    __slots__ = ("_hex",)

    def __init__(self, hexdigest: str) -> None:
        self._hex = hexdigest

    def hexdigest(self) -> str:
        return self._hex


def _raise(kind: str, message: str) -> None:
    cls: type[TciaMirrorError] = {"DiskError": DiskError, "DataError": DataError}.get(
        kind, TransferError
    )
    raise cls(message)


@dataclass(eq=False)
class _Leftovers:
    """The temp files a ZIP stream's worker wrote into its series folder: every name ends in
    ``suffix`` (the stream's own); those ``handed`` over belong to the Fetcher."""

    folder: Path
    suffix: str
    handed: set[str] = field(default_factory=set)

    def remove(self) -> None:
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            if name.endswith(self.suffix) and name not in self.handed:
                with contextlib.suppress(OSError):
                    os.unlink(self.folder / name)


@dataclass(eq=False)
class _Worker:
    proc: Process
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    streams: dict[int, MemoryObjectSendStream[tuple[Any, ...]]] = field(default_factory=dict)
    alive: bool = True

    async def send(self, kind: int, sid: int, payload: bytes = b"") -> None:
        if not self.alive:
            raise TransferError(_GONE)
        assert self.proc.stdin is not None
        frame = TO_WORKER.pack(kind, sid, len(payload)) + payload
        # frames of many streams share the pipe: one at a time, and never cut by a cancel
        # (half a frame would garble every frame after it; the worker always reads on)
        with anyio.CancelScope(shield=True):
            async with self.lock:
                try:
                    await self.proc.stdin.send(frame)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                    self.alive = False
                    raise TransferError(_GONE) from exc


class WorkerResponse:
    """The status and headers of a request a ZIP worker made (and the body of an error)."""

    __slots__ = ("status", "headers", "_body")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = _Headers(headers)
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        """Nothing to give back here: the worker owns the connection."""


class _Headers(dict[str, str]):
    """Response headers; ``get`` ignores case, as HTTP does."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__((k.lower(), v) for k, v in headers.items())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


class RemoteZip:
    """One ZIP stream worked in a worker process."""

    def __init__(
        self,
        worker: _Worker,
        sid: int,
        replies: MemoryObjectReceiveStream[tuple[Any, ...]],
        fsync: bool,
        root: Path,
        leftovers: _Leftovers,
    ) -> None:
        self._w, self._sid, self._replies = worker, sid, replies
        self._leftovers = leftovers
        self._fsync, self._root = fsync, root
        self.complete: list[ZipEntry] = []
        self.rejected: list[str] = []
        self.received = 0
        self._gathered: list[bytes] = []  # chunks not sent yet (see feed)
        self._size = 0
        self._ended = False  # the worker sent this stream's last reply
        self._gone = False  # ... or died before it could
        # DICOM bytes of entries the worker handed over or refused (CRC): the rest of what
        # it received is in an entry it had not finished when the stream stopped
        self._settled = 0

    async def _reply(self) -> tuple[Any, ...]:
        try:
            msg = await self._replies.receive()
        except anyio.EndOfStream:
            msg = ("error", "TransferError", _GONE, 0)
        if msg[0] not in _ASIDE:
            self._ended = True
            self._gone = msg[0] == "error" and msg[2] == _GONE
        return msg

    def _take(self, msg: tuple[Any, ...]) -> Fed:
        _, received, finished, rejected, crc_bad, license_, md5_list, _err = msg
        self.received = received
        for name, temp, size, md5, head, crc_stated in finished:
            self._leftovers.handed.add(os.path.basename(temp))
            path = Path(temp)  # once: a Path's parse costs more than the rest of this loop
            e = ZipEntry(name, path)
            e.writer = AtomicWriter.written(path, path, fsync=self._fsync, mirror_dir=self._root)
            e.size, e.head, e.digest = size, head, _Md5(md5)  # type: ignore[assignment]
            e.crc_stated = crc_stated
            self.complete.append(e)
        self.rejected += rejected
        self._settled += sum(e[2] for e in finished) + sum(size for _n, size in crc_bad)
        return Fed(crc_bad=crc_bad, license=license_, md5_list=md5_list)

    async def feed(self, chunk: bytes) -> Fed:
        """Small chunks (a slow link) are gathered into frames of ``FRAME`` bytes: one round
        trip to the worker per frame, not per chunk."""
        self._gathered.append(chunk)
        self._size += len(chunk)
        if self._size < FRAME:
            return Fed()
        return await self._send_gathered()

    async def _send_gathered(self) -> Fed:
        data = self._gathered[0] if len(self._gathered) == 1 else b"".join(self._gathered)
        self._gathered, self._size = [], 0
        await self._w.send(DATA, self._sid, data)
        msg = await self._reply()
        if msg[0] != "fed":
            _raise(msg[1], msg[2])
        fed = self._take(msg)
        if msg[-1] is not None:  # the worker stopped this stream: its terminal reply follows
            await self._reply()
            _raise(*msg[-1])
        return fed

    async def close(self) -> Fed:
        """The stream's end: its last frame, then the worker checks the archive was whole.
        Returns what the last frame completed (nothing when the worker fetched the stream
        itself: it ended already)."""
        if self._ended:
            return Fed()
        fed = await self._send_gathered() if self._gathered else Fed()
        await self._w.send(END, self._sid)
        msg = await self._reply()
        if msg[0] == "error":
            _raise(msg[1], msg[2])
        return fed

    # -- the worker makes the request: this stream is the source's transport ----------------
    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        proxy: Proxy | None = None,
    ) -> WorkerResponse:
        """Have the worker send a GET; returns once its status and headers came. After a 2xx
        the worker works the body itself (:meth:`body`). Raises ``ConnectionError`` when the
        server could not be reached (the caller's retry policy decides)."""
        if self._ended:
            raise TransferError(_GONE if self._gone else "the stream ended")
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        req = Request(
            url,
            dict(headers or {}),
            connect_timeout,
            read_timeout,
            proxy.url if proxy else None,
            proxy.authorization if proxy else None,
        )
        await self._w.send(FETCH, self._sid, pickle.dumps(dataclasses.astuple(req)))
        msg = await self._reply()
        if msg[0] == "status":
            return WorkerResponse(msg[1], msg[2], msg[3])
        if msg[0] == "unreachable":  # the worker's exception, by name where it is a builtin
            kind: Any = getattr(builtins, msg[1], None)
            if not (isinstance(kind, type) and issubclass(kind, ConnectionError | TimeoutError)):
                kind = ConnectionError
            raise kind(msg[1])
        _raise(msg[1], msg[2])
        raise AssertionError("unreachable")

    async def body(self, _resp: WorkerResponse, what: str) -> AsyncIterator[Fed]:
        """What the worker's reads of a 2xx body completed, until the archive was whole.
        Entries complete when the body broke are yielded before the error is raised."""
        while True:
            msg = await self._reply()
            if msg[0] == "done":
                return
            if msg[0] == "cut":  # an object stream: the worker kept what came
                self.received = msg[3]
                raise BodyCut(f"{what}: {msg[2]}")
            if msg[0] != "fed":
                _raise(msg[1], f"{what}: {msg[2]}" if msg[1] == "TransferError" else msg[2])
            fed = self._take(msg)
            err = msg[-1]
            yield fed
            if err is not None:  # the worker stopped this stream: its terminal reply follows
                await self._reply()
                _raise(err[0], f"{what}: {err[1]}" if err[0] == "TransferError" else err[1])

    async def discard(self) -> int:
        """Stop the stream (the worker removes its unfinished entry) and remove the temp files
        of complete entries never handed on. Returns their DICOM bytes."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_STOP_WAIT):
            if not self._ended:
                try:
                    await self._w.send(ABORT, self._sid)
                except TransferError:
                    pass
                while not self._ended:
                    msg = await self._reply()
                    if msg[0] == "fed":
                        self._take(msg)
        left, self.complete[:] = list(self.complete), []
        for e in left:
            e.discard()
        if self._gone:  # a worker that died removed nothing: what it left is ours to remove
            await anyio.to_thread.run_sync(self._leftovers.remove)
        self._replies.close()
        return self.received - self._settled + sum(e.size for e in left)


class ZipWorkers:
    """Up to ``count`` ZIP worker processes, started when the first ZIP needs one and stopped
    when the run's fetching ends (``async with``). Each worker takes many ZIP streams at once;
    a new stream goes to the least busy."""

    def __init__(self, count: int, *, root: Path, fsync: bool, limits: ZipLimits) -> None:
        self.count = max(1, count)
        self._root, self._fsync, self._limits = root, fsync, limits
        self._workers: list[_Worker] = []
        self._tg: TaskGroup | None = None
        self._spawn_lock = anyio.Lock()
        self._ids = itertools.count(1)
        self._owner = f"{os.getpid()}@{host_tag()}"

    async def __aenter__(self) -> ZipWorkers:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        with anyio.CancelScope(shield=True):
            for w in self._workers:
                await _stop(w)
        assert self._tg is not None
        return await self._tg.__aexit__(exc_type, exc, tb)

    async def stream(
        self, series_dir: Path, *, md5_stated: bool = False, object_name: str | None = None
    ) -> RemoteZip:
        """A stream of a series ZIP in the least busy worker. ``md5_stated``: the archive
        states each image's MD5 (the caller checks it), so the worker spares their CRC-32.
        ``object_name``: the stream is one object's body (not a ZIP), written to a temp file
        for ``series_dir / object_name``; a cut body is kept for a continuation."""
        w = await self._pick()
        sid = next(self._ids)
        send, receive = anyio.create_memory_object_stream[tuple[Any, ...]](math.inf)
        w.streams[sid] = send
        limits = dataclasses.astuple(self._limits)
        token = secrets.token_hex(4)  # in the name of every temp file of this stream
        args = (
            str(series_dir),
            str(self._root),
            self._fsync,
            self._owner,
            token,
            limits,
            md5_stated,
            object_name,
        )
        await w.send(OPEN, sid, pickle.dumps(args))
        leftovers = _Leftovers(series_dir, f".{self._owner}.{token}.part")
        return RemoteZip(w, sid, receive, self._fsync, self._root, leftovers)

    async def _pick(self) -> _Worker:
        async with self._spawn_lock:
            self._workers = [w for w in self._workers if w.alive]
            idle = [w for w in self._workers if not w.streams]
            if idle or len(self._workers) >= self.count:
                return min(idle or self._workers, key=lambda w: len(w.streams))
            w = _Worker(await _spawn())
            self._workers.append(w)
            assert self._tg is not None
            self._tg.start_soon(_read_replies, w)
            return w


# where this package is imported from: the worker imports the same one
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


async def _spawn() -> Process:
    package_parent = _PACKAGE_PARENT
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "tcia_mirror.engine.zipworker"]
    try:
        return await anyio.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env
        )
    except OSError as exc:
        raise TransferError(f"cannot start a ZIP worker process: {exc}") from exc


async def _read_replies(w: _Worker) -> None:
    """Hand each reply to its stream; when the worker ends, every open stream learns it.

    Shielded: a cancelled run still needs the replies to its aborts (the worker removes its
    files); this ends when the worker exits (its input is closed by :func:`_stop`)."""
    try:
        with anyio.CancelScope(shield=True):
            await _dispatch(w)
    except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass
    finally:
        w.alive = False
        for q in w.streams.values():
            try:
                q.send_nowait(("error", "TransferError", _GONE, 0))
            except anyio.BrokenResourceError:
                pass  # its reader left
            q.close()
        w.streams.clear()


async def _dispatch(w: _Worker) -> None:
    assert w.proc.stdout is not None
    inp = BufferedByteReceiveStream(w.proc.stdout)
    while True:
        sid, length = FROM_WORKER.unpack(await inp.receive_exactly(FROM_WORKER.size))
        msg = pickle.loads(await inp.receive_exactly(length))
        q = w.streams.get(sid)
        if q is None:
            continue
        try:
            q.send_nowait(msg)
        except anyio.BrokenResourceError:
            pass  # the stream gave up waiting (see RemoteZip.discard)
        if msg[0] not in _ASIDE:
            del w.streams[sid]
            q.close()


async def _stop(w: _Worker) -> None:
    """Close the worker's input (it removes what it had not handed over, then exits)."""
    if w.proc.stdin is not None:
        try:
            await w.proc.stdin.aclose()
        except (anyio.BrokenResourceError, OSError):
            pass
    with anyio.move_on_after(_STOP_WAIT):
        await w.proc.wait()
        return
    w.proc.kill()
    await w.proc.wait()
