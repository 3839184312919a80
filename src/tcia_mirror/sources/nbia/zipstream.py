"""Incremental (push) reader for the ZIP archives ``getImage`` streams.

The archive sends a series as a ZIP written by Java's ``ZipOutputStream``: DEFLATED entries whose
sizes are only known after the data (general-purpose flag bit 3, a *data descriptor* follows the
data), no Content-Length, and the connection may break off at any byte. :class:`ZipStreamReader`
parses such a stream front to back as chunks arrive, without ever seeking and without holding more
than one chunk (plus a header) in memory::

    reader = ZipStreamReader()
    async for chunk in response.content.iter_chunked(64 * 1024):
        for event in reader.feed(chunk):
            ...  # EntryStart / EntryData / EntryEnd / ArchiveEnd
    reader.close()  # DataError if the stream stopped before the central directory

Each :class:`EntryEnd` says whether the CRC-32 (and size) matched, so a caller can keep every
entry that was complete when a stream broke off. A caller that checks a stronger digest of some
entries anyway (the MD5 the archive states for each image) can spare their CRC-32: entries it
names with ``skip_crc`` are not CRC-checked where their framing does not need it, and their
:class:`EntryEnd` carries the CRC the archive stated, for the caller to check should no MD5 come. Parsing stops at the central directory; the
local headers already described every entry.

Memory: the reader keeps at most one header or data-descriptor fragment between calls; inflate
runs in 256 KiB output steps, and the bomb check (running totals) caps the output of one
:meth:`ZipStreamReader.feed` call at about ``max(1 MiB, len(chunk) * ZipLimits.max_ratio)``.
Feed chunks of 64-256 KiB.

Entry names come from the server and are never used as paths; :func:`safe_entry_name` exists for
reports and legacy layouts.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol, TypeAlias

from tcia_mirror.errors import DataError

_lib: ModuleType | None = None


def _zlib() -> ModuleType:
    """ISA-L's zlib (python-isal: zlib's API and results; inflate about twice as fast, CRC-32
    faster) where installed, else zlib. Imported at first use: a process that never inflates
    (the main process, when ZIP workers do the byte work) does not load it."""
    global _lib
    if _lib is None:
        lib: ModuleType = zlib
        try:
            from isal import isal_zlib  # noqa: PLC0415

            lib = isal_zlib
        except ImportError:  # pragma: no cover - a platform without its wheels
            pass
        _lib = lib
    return _lib


def crc32(data: bytes, value: int = 0) -> int:
    return int(_zlib().crc32(data, value))


class _Inflater(Protocol):
    eof: bool
    unused_data: bytes
    unconsumed_tail: bytes

    def decompress(self, data: bytes | memoryview, max_length: int = 0, /) -> bytes: ...


__all__ = [
    "ArchiveEnd",
    "EntryData",
    "EntryEnd",
    "EntryStart",
    "ZipEvent",
    "ZipLimits",
    "ZipStreamReader",
    "crc32",
    "safe_entry_name",
]


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """Defences against hostile or broken archives (decompression bombs, endless entry lists)."""

    max_entry_size: int = 4 * 2**30
    max_ratio: float = 200.0
    max_entries: int = 100_000


@dataclass(frozen=True, slots=True)
class EntryStart:
    name: str  # as stored in the archive (decoded); never use it as a path
    index: int  # 0-based position in the archive (getImage: 0 = LICENSE, 1 = 00000001.dcm ...)


@dataclass(frozen=True, slots=True)
class EntryData:
    data: bytes  # never empty


@dataclass(frozen=True, slots=True)
class EntryEnd:
    crc_ok: bool  # False when the CRC-32 or the size disagrees with the header / data descriptor
    size: int  # uncompressed bytes delivered for this entry
    # the CRC-32 the archive stated, when this entry's was not computed (``skip_crc``): crc_ok
    # then speaks for its sizes only. None: the CRC-32 was checked.
    crc_stated: int | None = None


@dataclass(frozen=True, slots=True)
class ArchiveEnd:
    pass


DEFAULT_LIMITS = ZipLimits()

ZipEvent: TypeAlias = EntryStart | EntryData | EntryEnd | ArchiveEnd

# --- format constants -------------------------------------------------------------------------

_LOCAL_SIG = b"PK\x03\x04"
_DD_SIG = b"PK\x07\x08"
# Records that may follow the last entry: central directory header, end of central directory,
# ZIP64 end record / locator, archive extra data, digital signature.
_END_SIGS = frozenset({b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07", b"PK\x06\x08"})
_NEXT_SIGS = _END_SIGS | {_LOCAL_SIG, b"PK\x05\x05"}
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_LOCAL_SIZE = _LOCAL.size
_U32 = 0xFFFFFFFF
_FLAG_ENCRYPTED = 0x0001
_FLAG_DESCRIPTOR = 0x0008
_FLAG_STRONG_ENCRYPTION = 0x0040
_FLAG_UTF8 = 0x0800
_STORED = 0
_DEFLATED = 8
_METHOD_NAMES = {1: "shrink", 6: "implode", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd"}

_OUT_CHUNK = 256 * 1024  # max bytes per inflate call (bounded memory, bomb never allocates)
_IN_CHUNK = 64 * 1024  # max compressed bytes per inflate call (bounds unconsumed_tail copies)
_RATIO_FLOOR = 1 << 20  # the ratio check starts after 1 MiB of output
_SNIFF = 64  # bytes to see before declaring "not a ZIP"
_DD_MAX = 24  # longest data descriptor (signature + CRC + two 64-bit sizes)

# States
_S_START, _S_HEADER, _S_DATA, _S_DESCRIPTOR, _S_DONE, _S_FAILED = range(6)


class ZipStreamReader:
    """Push parser: :meth:`feed` chunks, get events back, :meth:`close` at end of input.

    ``skip_crc(name)``: True for an entry whose CRC-32 the caller does not need (it checks the
    entry's MD5): its CRC is not computed unless its framing needs it (a stored entry of unknown
    size ends where a descriptor's CRC matches)."""

    def __init__(
        self,
        limits: ZipLimits = DEFAULT_LIMITS,
        *,
        skip_crc: Callable[[str], bool] | None = None,
    ) -> None:
        self.limits = limits
        self._skip_crc = skip_crc
        self._crc_on = True  # the current entry's CRC-32 is computed
        self._state = _S_START
        self._buf: bytes = b""  # unparsed input: only ever a header/descriptor fragment between
        self._received = 0  # calls; entry data is consumed as it arrives
        self._error: DataError | None = None
        self.entries_done = 0  # entries for which EntryEnd was emitted
        # current entry
        self._index = -1
        self._name = ""
        self._method = _STORED
        self._descriptor = False
        self._zip64 = False
        self._hdr_crc = 0
        self._hdr_csize = 0
        self._hdr_usize = 0
        self._remaining = 0  # STORED / known-size DEFLATED: compressed bytes still to come
        self._crc = 0
        self._csize = 0  # compressed bytes consumed
        self._usize = 0  # uncompressed bytes produced
        self._inflater: _Inflater | None = None

    # --- public ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the central directory was reached (every entry was seen)."""
        return self._state == _S_DONE

    def feed(self, data: bytes) -> list[ZipEvent]:
        """Parse the next chunk; return the events it completes (possibly none).

        Raises :class:`DataError` for a damaged or hostile archive. When a chunk completes some
        entries and then hits damage, those events are returned first and the error is raised
        by the next :meth:`feed` or :meth:`close` call, so no complete entry is ever lost.
        """
        if self._error is not None:
            raise self._error
        if self._state == _S_DONE:
            return []  # the central directory: nothing we need
        if type(data) is not bytes:
            data = bytes(data)
        self._received += len(data)
        buf = self._buf + data if self._buf else data
        events: list[ZipEvent] = []
        try:
            pos = self._parse(buf, 0, events)
        except Exception as exc:
            if not isinstance(exc, (DataError, zlib.error, _zlib().error)):
                raise
            error = exc if isinstance(exc, DataError) else self._corrupt(exc)
            self._fail(error)
            if events:
                return events  # deliver what completed before the damage; raise on the next call
            raise error from (None if error is exc else exc)
        self._buf = buf[pos:] if pos < len(buf) else b""
        return events

    def close(self) -> None:
        """Signal the end of input; raise :class:`DataError` unless the archive was complete."""
        if self._error is not None:
            raise self._error
        state = self._state
        if state == _S_DONE:
            return
        if state == _S_START:
            if not self._received:
                raise self._fail(DataError("empty response where a ZIP archive was expected"))
            raise self._fail(_not_a_zip(self._buf))
        if state == _S_HEADER:
            if self._index < 0 and not self._buf:
                msg = "ZIP ended before its first entry"
            elif self._index < 0:
                msg = "ZIP ended in the middle of entry 0"
            elif self._buf:
                msg = f"ZIP ended in the middle of entry {self._index + 1}"
            else:
                msg = (
                    f"ZIP ended after entry {self._index} ({self._name!r}), "
                    "before the end of the archive"
                )
            raise self._fail(DataError(msg + "; complete entries were kept"))
        raise self._fail(
            DataError(f"ZIP ended in the middle of {self._describe()}; complete entries were kept")
        )

    # --- parsing ------------------------------------------------------------------------------

    def _parse(self, buf: bytes, pos: int, events: list[ZipEvent]) -> int:
        """Consume as much of ``buf`` as possible; return the first unconsumed offset."""
        end = len(buf)
        while pos < end:
            state = self._state
            if state == _S_DATA:
                if self._method == _STORED:
                    new = self._stored(buf, pos, events)
                    if new == pos and self._state == _S_DATA:
                        return pos  # an unsized stored entry waits for more input
                    pos = new
                else:
                    pos = self._inflate(buf, pos, events)
            elif state == _S_HEADER:
                new = self._header(buf, pos, events)
                if new < 0:
                    return pos
                pos = new
            elif state == _S_DESCRIPTOR:
                new = self._data_descriptor(buf, pos, events)
                if new < 0:
                    return pos
                pos = new
            elif state == _S_START:
                sig = buf[pos : pos + 4]
                if _LOCAL_SIG.startswith(sig) or b"PK\x05\x06".startswith(sig):
                    self._state = _S_HEADER
                elif end - pos >= _SNIFF:
                    raise _not_a_zip(buf[pos:])
                else:
                    return pos
            else:  # _S_DONE
                return end
        return pos

    def _header(self, buf: bytes, pos: int, events: list[ZipEvent]) -> int:
        avail = len(buf) - pos
        if avail < 4:
            sig = buf[pos:]
            if not any(s.startswith(sig) for s in _NEXT_SIGS):
                raise self._bad_structure(buf, pos)
            return -1
        sig = buf[pos : pos + 4]
        if sig in _END_SIGS:
            self._state = _S_DONE
            events.append(ArchiveEnd())
            return len(buf)
        if sig != _LOCAL_SIG:
            raise self._bad_structure(buf, pos)
        if avail < _LOCAL_SIZE:
            return -1
        (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len) = _LOCAL.unpack_from(
            buf, pos
        )
        total = _LOCAL_SIZE + name_len + extra_len
        if avail < total:
            return -1
        index = self._index + 1
        if index >= self.limits.max_entries:
            raise DataError(
                f"ZIP has more than {self.limits.max_entries} entries; refusing to continue"
            )
        raw_name = buf[pos + _LOCAL_SIZE : pos + _LOCAL_SIZE + name_len]
        name = raw_name.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", errors="replace")
        self._index = index
        self._name = name
        where = self._describe()
        if flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
            raise DataError(f"{where} of the ZIP is encrypted; encrypted archives are unsupported")
        if method not in (_STORED, _DEFLATED):
            label = _METHOD_NAMES.get(method, f"method {method}")
            raise DataError(f"{where} of the ZIP uses unsupported compression ({label})")
        extra = buf[pos + _LOCAL_SIZE + name_len : pos + total]
        zip64 = False
        if csize == _U32 or usize == _U32:
            z = _zip64_sizes(extra, usize, csize)
            if z is not None:
                zip64 = True
                usize, csize = z
        elif _find_extra(extra, 0x0001) is not None:
            zip64 = True  # writer announced ZIP64 (descriptor sizes are then 8 bytes)
        descriptor = bool(flags & _FLAG_DESCRIPTOR)
        if method == _STORED and csize != usize:
            raise DataError(
                f"{where} of the ZIP is stored but claims {csize} bytes stored for "
                f"{usize} bytes of content"
            )
        known = not descriptor or bool(csize or usize or crc)  # bit 3 + real header sizes: trust
        if known and usize > self.limits.max_entry_size:
            raise DataError(
                f"{where} of the ZIP declares {usize} bytes, above the limit of "
                f"{self.limits.max_entry_size} bytes"
            )
        self._method = method
        self._descriptor = descriptor
        self._zip64 = zip64
        self._hdr_crc, self._hdr_csize, self._hdr_usize = crc, csize, usize
        self._crc = self._csize = self._usize = 0
        unsized = False
        if method == _STORED:
            # stored + descriptor without sizes (Python's zipfile on a stream): scan for the end
            unsized = descriptor and csize == 0 and usize == 0 and crc == 0
            self._remaining = -1 if unsized else csize
        else:
            self._remaining = csize if not descriptor else -1  # -1: until the deflate stream ends
            self._inflater = _zlib().decompressobj(-15)
        # an unsized stored entry's end is found by its CRC: computed whatever the caller said
        self._crc_on = unsized or self._skip_crc is None or not self._skip_crc(name)
        events.append(EntryStart(name, index))
        self._state = _S_DATA
        pos += total
        if method == _STORED and self._remaining == 0:
            self._end_of_data(events)
        return pos

    def _stored_unsized(self, buf: bytes, pos: int, events: list[ZipEvent]) -> int:
        """A stored entry of unknown size ends at a data descriptor whose CRC-32 and size
        match every byte before it (a false match needs a CRC collision at a signature)."""
        end = len(buf)
        search = pos
        while True:
            j = buf.find(_DD_SIG, search, end)
            if j < 0 or end - j < 16:
                break
            crc = crc32(buf[pos:j], self._crc)
            size = self._usize + (j - pos)
            (d_crc, d_size) = struct.unpack_from("<II", buf, j + 4)
            wide = end - j >= 24 and struct.unpack_from("<Q", buf, j + 8)[0] == size
            if d_crc == crc and (d_size == (size & _U32) or wide):
                self._take_stored(buf[pos:j], events)
                self._remaining = 0
                self._end_of_data(events)
                return j
            search = j + 1
        # no end yet: pass on all but a tail that may hold the start of the descriptor
        stop = j if j >= 0 else max(pos, end - 23)
        self._take_stored(buf[pos:stop], events)
        return stop

    def _take_stored(self, chunk: bytes, events: list[ZipEvent]) -> None:
        if not chunk:
            return
        self._crc = crc32(chunk, self._crc)
        self._usize += len(chunk)
        self._csize += len(chunk)
        if self._usize > self.limits.max_entry_size:
            raise DataError(
                f"{self._describe()} of the ZIP is larger than the limit of "
                f"{self.limits.max_entry_size} bytes"
            )
        events.append(EntryData(chunk))

    def _stored(self, buf: bytes, pos: int, events: list[ZipEvent]) -> int:
        if self._remaining < 0:
            return self._stored_unsized(buf, pos, events)
        take = min(self._remaining, len(buf) - pos)
        # the whole chunk belongs to the entry: no copy
        chunk = buf if pos == 0 and take == len(buf) else buf[pos : pos + take]
        if self._crc_on:
            self._crc = crc32(chunk, self._crc)
        self._usize += take
        self._csize += take
        self._remaining -= take
        events.append(EntryData(chunk))
        if self._remaining == 0:
            self._end_of_data(events)
        return pos + take

    def _inflate(self, buf: bytes, pos: int, events: list[ZipEvent]) -> int:
        inflater = self._inflater
        assert inflater is not None
        limits = self.limits
        end = len(buf) if self._remaining < 0 else min(len(buf), pos + self._remaining)
        view = memoryview(buf)
        crc_on = self._crc_on
        crc = self._crc
        usize = self._usize
        csize = self._csize
        try:
            while True:
                piece = view[pos : min(end, pos + _IN_CHUNK)]
                out = inflater.decompress(piece, _OUT_CHUNK)
                if inflater.eof:
                    used = len(piece) - len(inflater.unused_data)
                else:
                    used = len(piece) - len(inflater.unconsumed_tail)
                pos += used
                csize += used
                if out:
                    usize += len(out)
                    if usize > limits.max_entry_size:
                        raise DataError(
                            f"{self._describe()} of the ZIP inflates beyond the limit of "
                            f"{limits.max_entry_size} bytes; refusing it (decompression bomb?)"
                        )
                    if usize > _RATIO_FLOOR and usize > limits.max_ratio * max(csize, 1):
                        raise DataError(
                            f"{self._describe()} of the ZIP inflates more than "
                            f"{limits.max_ratio:g} times ({csize} -> {usize}+ bytes); "
                            "refusing it (decompression bomb?)"
                        )
                    if crc_on:
                        crc = crc32(out, crc)
                    events.append(EntryData(out))
                if inflater.eof:
                    break
                if pos >= end and len(out) < _OUT_CHUNK:
                    break  # need more input
        finally:
            view.release()
            self._crc, self._usize, self._csize = crc, usize, csize
        if self._remaining >= 0:
            self._remaining = self._hdr_csize - csize
        if inflater.eof:
            self._inflater = None
            if self._remaining > 0:
                raise DataError(
                    f"{self._describe()} of the ZIP: deflate data ended after {csize} of "
                    f"{self._hdr_csize} bytes"
                )
            self._end_of_data(events)
        elif self._remaining == 0:
            raise DataError(
                f"{self._describe()} of the ZIP: deflate data longer than its declared "
                f"{self._hdr_csize} bytes"
            )
        return pos

    def _end_of_data(self, events: list[ZipEvent]) -> None:
        if self._descriptor:
            self._state = _S_DESCRIPTOR
            return
        ok = (
            (not self._crc_on or self._crc == self._hdr_crc)
            and self._usize == self._hdr_usize
            and self._csize == self._hdr_csize
        )
        self._finish_entry(ok, events, None if self._crc_on else self._hdr_crc)

    def _finish_entry(self, ok: bool, events: list[ZipEvent], stated: int | None = None) -> None:
        events.append(EntryEnd(ok, self._usize, stated))
        self.entries_done += 1
        self._state = _S_HEADER

    def _data_descriptor(self, buf: bytes, pos: int, events: list[ZipEvent]) -> int:
        """Match the descriptor against the sizes we counted; return its end or -1 (need more).

        Four layouts exist (with/without the optional signature, 4- or 8-byte sizes; Java writes
        8-byte sizes past 4 GiB even without a ZIP64 extra field). Since we know the actual CRC
        and sizes, each layout is an exact byte pattern; the first one that matches wins unless
        a longer one still could (only possible for empty entries), then the bytes after it must
        be the next record's signature. An entry whose CRC was not computed matches on its
        sizes alone (the deflate stream's own end framed it).
        """
        avail = buf[pos : pos + _DD_MAX + 4]
        n = len(avail)
        crc, csize, usize = self._crc, self._csize, self._usize
        wide = (struct.pack("<QQ", csize, usize), 8)
        narrow = (struct.pack("<II", csize, usize), 4) if csize <= _U32 and usize <= _U32 else None
        layouts = [wide, narrow] if self._zip64 else [narrow, wide]
        # without the CRC computed, a size match is the whole check (crc_ok speaks for sizes)
        for check_crc in (True, False) if self._crc_on else (False,):
            ok = check_crc or not self._crc_on
            matched: list[tuple[int, int]] = []  # (length, signature length)
            pending = False
            for sizes in layouts:
                if sizes is None:
                    continue
                for sig in (_DD_SIG, b""):
                    pattern_crc = struct.pack("<I", crc) if check_crc else None
                    length = len(sig) + 4 + len(sizes[0])
                    state = _match(avail, sig, pattern_crc, sizes[0])
                    if state == "match":
                        matched.append((length, len(sig)))
                    elif state == "prefix":
                        pending = True
            if len(matched) == 1 and not pending:
                return self._descriptor_done(pos, *matched[0], ok, avail, events)
            if matched or pending:
                # ambiguous: prefer a layout followed by a known signature
                for length, sig_len in matched:
                    follow = avail[length : length + 4]
                    if follow in _NEXT_SIGS:
                        return self._descriptor_done(pos, length, sig_len, ok, avail, events)
                if n < _DD_MAX + 4:
                    return -1
                if matched:
                    return self._descriptor_done(pos, *matched[0], ok, avail, events)
        if n < _DD_MAX:
            return -1
        raise DataError(
            f"{self._describe()} of the ZIP: its data descriptor does not match the "
            f"{self._csize} compressed / {self._usize} uncompressed bytes received"
        )

    def _descriptor_done(
        self,
        pos: int,
        length: int,
        sig_len: int,
        crc_ok: bool,
        avail: bytes,
        events: list[ZipEvent],
    ) -> int:
        stated = None
        if not self._crc_on:  # the CRC the descriptor states, for the caller to check later
            (stated,) = struct.unpack_from("<I", avail, sig_len)
        crc = self._crc if stated is None else stated
        if not (self._hdr_csize == 0 and self._hdr_usize == 0 and self._hdr_crc == 0):
            # bit 3 with sizes filled in the header: they must agree too
            crc_ok = crc_ok and (self._hdr_crc in (0, crc)) and self._usize == self._hdr_usize
        self._finish_entry(crc_ok, events, stated)
        return pos + length

    # --- helpers ------------------------------------------------------------------------------

    def _describe(self) -> str:
        return f"entry {self._index} ({self._name!r})" if self._index >= 0 else "the archive"

    def _corrupt(self, exc: Exception) -> DataError:
        error = DataError(f"corrupt compressed data in {self._describe()} of the ZIP: {exc}")
        error.__cause__ = exc
        return error

    def _bad_structure(self, buf: bytes, pos: int) -> DataError:
        if self._index < 0:
            return _not_a_zip(buf[pos:])
        return DataError(
            f"bad ZIP structure after entry {self._index} ({self._name!r}): "
            f"unexpected bytes {bytes(buf[pos : pos + 8])!r}"
        )

    def _fail(self, exc: DataError) -> DataError:
        self._error = exc
        self._state = _S_FAILED
        self._buf = b""
        self._inflater = None
        return exc


def _match(avail: bytes, sig: bytes, crc: bytes | None, sizes: bytes) -> str:
    """Compare ``avail`` with sig + crc + sizes (crc None = any): 'match', 'prefix' or 'no'."""
    length = len(sig) + 4 + len(sizes)
    n = min(len(avail), length)
    s = len(sig)
    if avail[: min(n, s)] != sig[: min(n, s)]:
        return "no"
    if crc is not None and n > s and avail[s : min(n, s + 4)] != crc[: min(n, s + 4) - s]:
        return "no"
    if n > s + 4 and avail[s + 4 : n] != sizes[: n - s - 4]:
        return "no"
    return "match" if n == length else "prefix"


def _find_extra(extra: bytes, header_id: int) -> bytes | None:
    pos = 0
    while pos + 4 <= len(extra):
        hid, size = struct.unpack_from("<HH", extra, pos)
        if hid == header_id:
            return extra[pos + 4 : pos + 4 + size]
        pos += 4 + size
    return None


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int] | None:
    """Sizes from the ZIP64 extra field (only the fields that are 0xFFFFFFFF in the header)."""
    field = _find_extra(extra, 0x0001)
    if field is None:
        return None
    pos = 0
    if usize == _U32 and pos + 8 <= len(field):
        (usize,) = struct.unpack_from("<Q", field, pos)
        pos += 8
    if csize == _U32 and pos + 8 <= len(field):
        (csize,) = struct.unpack_from("<Q", field, pos)
    return usize, csize


_UNPRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\uffff]+")


def _not_a_zip(head: bytes) -> DataError:
    text = bytes(head[:200]).decode("utf-8", errors="replace")
    text = " ".join(_UNPRINTABLE.sub(" ", text).split())[:60]
    return DataError(
        f"the archive answered with something that is not a ZIP (begins with {text!r}); "
        "it may be an error page: retry later or check the series UID"
    )


# --- entry names ------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_entry_name(name: str) -> str | None:
    """The basename of a ZIP entry name if the name is harmless, else ``None``.

    ``None`` for names that are empty or directories, absolute (``/x``, ``\\x``, ``C:x``), contain
    ``..`` components (either separator), NUL/control characters or ``:``, or whose basename is
    ``.``/``..`` or longer than 255 UTF-8 bytes. The result is for reports and legacy layouts:
    it is never joined to a path without the layout's own checks.
    """
    if not name or _CONTROL.search(name) or _DRIVE.match(name):
        return None
    parts = name.replace("\\", "/").split("/")
    if parts[0] == "" or parts[-1] == "":  # absolute or directory
        return None
    if any(p == ".." for p in parts):
        return None
    base = parts[-1]
    if base in (".", "..") or ":" in base or len(base.encode("utf-8")) > 255:
        return None
    return base
