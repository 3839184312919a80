"""The byte work of one series ZIP: entries received chunk by chunk (inflate, CRC, MD5, the
writes of large entries), small entries kept for a write in one go. Entry names are never
used as paths (:func:`~tcia_mirror.sources.nbia.zipstream.safe_entry_name`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tcia_mirror.errors import DataError
from tcia_mirror.fs.atomic import AtomicWriter
from tcia_mirror.sources.nbia.zipstream import (
    EntryData,
    EntryEnd,
    EntryStart,
    ZipStreamReader,
    safe_entry_name,
)

__all__ = [
    "HEAD",
    "Fed",
    "ObjectState",
    "ZipEntry",
    "ZipState",
    "entry_kind",
    "is_dicom_entry",
]

_SMALL_CAP = 16 * 2**20  # LICENSE / md5hashes.csv are small; refuse more
_BUFFER_MAX = 1 << 20  # a DICOM entry up to this size is kept in memory, written in one go
HEAD = 16 * 1024  # bytes of each file kept for the fast header check


def entry_kind(name: str) -> str:
    """What an entry of a series ZIP holds, by its name: ``license``, ``md5`` (the archive's
    MD5 list), ``dicom``, or ``rejected`` (a name that is unsafe to report or use)."""
    base = safe_entry_name(name)
    if base is None:
        return "rejected"
    if base.upper() == "LICENSE":
        return "license"
    if base.lower() == "md5hashes.csv":
        return "md5"
    return "dicom"


def is_dicom_entry(name: str) -> bool:
    """The ``skip_crc`` of a ZIP whose MD5 list the caller checks: DICOM entries are checked
    against it (or, when it leaves one out, against their stated CRC-32 on disk); LICENSE and
    the list itself keep their CRC-32."""
    return entry_kind(name) == "dicom"


class ZipEntry:
    """One DICOM entry of a ZIP being received: in memory while small, else streamed to disk."""

    __slots__ = (
        "name", "temp_dest", "chunks", "buffered", "writer", "digest", "head", "size", "crc_stated",
    )  # fmt: skip

    def __init__(self, name: str, temp_dest: Path) -> None:
        self.name = name
        self.temp_dest = temp_dest
        # a small entry's pieces as they came (no copy into one buffer; written as they are)
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.writer: AtomicWriter | None = None
        self.digest = hashlib.md5(usedforsecurity=False)
        self.head = bytearray()
        self.size = 0
        # the CRC-32 the archive stated, when it was not checked as the entry came (its MD5 is)
        self.crc_stated: int | None = None

    def add(
        self,
        data: bytes | memoryview,
        make_writer: Callable[[Path], AtomicWriter],
        buffer_max: int = _BUFFER_MAX,
    ) -> None:
        self.digest.update(data)
        self.size += len(data)
        if len(self.head) < HEAD:
            self.head += data[: HEAD - len(self.head)]
        if self.writer is None and self.buffered + len(data) <= buffer_max:
            self.chunks.append(bytes(data))  # no copy of bytes; kept, so never a view
            self.buffered += len(data)
            return
        if self.writer is None:
            self.writer = make_writer(self.temp_dest)
            self.flush_chunks()
        self.writer.write(data)

    def flush_chunks(self) -> None:
        """Write the buffered pieces to the temp file (opened already)."""
        assert self.writer is not None
        for piece in self.chunks:
            self.writer.write(piece)
        self.chunks = []
        self.buffered = 0

    def discard(self) -> None:
        """Drop the temp file, if any (a no-op after commit)."""
        if self.writer is not None:
            self.writer.abort()
        self.chunks = []
        self.buffered = 0


@dataclass(slots=True)
class Fed:
    """What one chunk of a ZIP stream gave: entries to finalise and small entries' bodies."""

    crc_bad: list[tuple[str, int]] = field(default_factory=list)  # (entry name, its bytes)
    license: bytes | None = None
    md5_list: bytes | None = None


class ZipState:
    """The byte work of one ZIP stream, chunk by chunk on the event loop: inflate, CRC, MD5
    and the writes of large entries (complete entries are finished in worker threads). Entry
    names are never used as paths."""

    def __init__(
        self,
        reader: ZipStreamReader,
        series_dir: Path,
        make_writer: Callable[[Path], AtomicWriter],
        buffer_max: int = _BUFFER_MAX,
    ) -> None:
        """``buffer_max``: an entry up to this size is kept in memory until complete (0: each
        is written as it comes, e.g. in a ZIP worker, which writes every entry anyway)."""
        self.reader = reader
        self.buffer_max = buffer_max
        self.series_dir = series_dir
        self.make_writer = make_writer
        self.kind = ""
        self.name = ""
        self.entry: ZipEntry | None = None
        # complete entries, CRC right, not yet handed to a finisher: whoever stops the stream
        # discards what is left here (a large entry has a temp file on disk)
        self.complete: list[ZipEntry] = []
        self.received = 0  # DICOM bytes received, counted before a write can fail
        self.small = bytearray()
        self.rejected: list[str] = []

    def feed(self, chunk: bytes) -> Fed:
        out = Fed()
        for ev in self.reader.feed(chunk):
            if isinstance(ev, EntryData):
                if self.kind == "dicom":
                    assert self.entry is not None
                    self.received += len(ev.data)
                    self.entry.add(ev.data, self.make_writer, self.buffer_max)
                elif self.kind in ("license", "md5"):
                    self.small += ev.data
                    if len(self.small) > _SMALL_CAP:
                        raise DataError(f"ZIP entry {self.name!r} is implausibly large")
            elif isinstance(ev, EntryStart):
                self._start(ev)
            elif isinstance(ev, EntryEnd):
                self._end(ev, out)
        return out

    def discard(self) -> int:
        """Drop every entry not handed on (the stream stopped); returns their DICOM bytes."""
        left = [*self.complete, *([self.entry] if self.entry is not None else [])]
        self.complete, self.entry = [], None
        for e in left:
            e.discard()
        return sum(e.size for e in left)

    def _start(self, ev: EntryStart) -> None:
        self.name = ev.name
        self.small.clear()
        self.kind = entry_kind(ev.name)
        if self.kind == "rejected":
            self.rejected.append(ev.name)
        elif self.kind == "dicom":
            self.entry = ZipEntry(ev.name, self.series_dir / f"entry-{ev.index:08d}.dcm")

    def _end(self, ev: EntryEnd, out: Fed) -> None:
        if self.kind == "dicom":
            assert self.entry is not None
            e, self.entry = self.entry, None
            if ev.crc_ok:
                e.crc_stated = ev.crc_stated
                self.complete.append(e)
            else:
                e.discard()
                out.crc_bad.append((self.name, e.size))
        elif self.kind == "license" and ev.crc_ok:
            out.license = bytes(self.small)
        elif self.kind == "md5" and ev.crc_ok:
            out.md5_list = bytes(self.small)
        self.kind = ""


class _BodyEnd:
    """``reader.close()`` of an object stream: the body ended, the object is complete."""

    __slots__ = ("_state",)

    def __init__(self, state: ObjectState) -> None:
        self._state = state

    def close(self) -> None:
        self._state.finish()


class ObjectState:
    """The byte work of one object's body (a bucket object, a single image) in a ZIP worker:
    written to its temp file and hashed as it comes, complete when the body ends. It answers
    the worker as :class:`ZipState` does. A body cut short keeps what came, so a continuation
    (``Range``) appends to it; a whole body sent again (a server that ignored ``Range``)
    starts it over (:meth:`restart`)."""

    def __init__(self, dest: Path, make_writer: Callable[[Path], AtomicWriter]) -> None:
        self.dest = dest
        self.make_writer = make_writer
        self.entry: ZipEntry | None = ZipEntry(dest.name, dest)
        self.complete: list[ZipEntry] = []
        self.received = 0
        self.rejected: list[str] = []
        self.reader = _BodyEnd(self)

    def feed(self, chunk: bytes | memoryview) -> Fed:
        """``chunk`` is written and hashed before this returns (the caller may reuse it)."""
        if self.entry is None:
            raise DataError(f"{self.dest.name}: bytes after the end of the object")
        self.received += len(chunk)
        self.entry.add(chunk, self.make_writer, 0)
        return Fed()

    def finish(self) -> None:
        if self.entry is not None:
            e, self.entry = self.entry, None
            self.complete.append(e)

    def restart(self) -> None:
        """The object's bytes come again from its first."""
        if self.entry is not None:
            self.entry.discard()
        self.entry = ZipEntry(self.dest.name, self.dest)
        self.received = 0

    def discard(self) -> int:
        """Drop the object's temp file unless handed on; returns its bytes."""
        left = [*self.complete, *([self.entry] if self.entry is not None else [])]
        self.complete, self.entry = [], None
        for e in left:
            e.discard()
        return sum(e.size for e in left)
