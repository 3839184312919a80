"""Reading the identity of a DICOM file (header only, pixels skipped)."""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID"]


@dataclass(frozen=True, slots=True)
class DicomIds:
    sop_uid: str | None
    series_uid: str | None
    study_uid: str | None
    patient_id: str | None


def read_ids(path: Path | str) -> DicomIds | None:
    """The UIDs in a file's header, or None when it is not a readable DICOM file."""
    import pydicom  # noqa: PLC0415 (a fallback: importing it costs a command ~0.2 s)
    from pydicom.errors import InvalidDicomError  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # odd VRs are not our concern; the UIDs are
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError):
        return None
    except Exception:  # pydicom raises assorted errors on garbage; garbage is "not DICOM"
        return None

    def get(name: str) -> str | None:
        value = ds.get(name)
        text = str(value).strip() if value is not None else ""
        return text or None

    ids = DicomIds(
        get("SOPInstanceUID"), get("SeriesInstanceUID"), get("StudyInstanceUID"), get("PatientID")
    )
    if ids.sop_uid is None and ids.series_uid is None:
        return None
    return ids


def file_md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_WANTED = {0x00080018: "sop", 0x0020000E: "series", 0x0020000D: "study", 0x00100020: "patient"}
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
_IMPLICIT_LE = "1.2.840.10008.1.2"
_DICOM_TS = "1.2.840.10008.1.2"  # the root of the standard transfer syntaxes
# the data sets the fast path cannot read: big endian, and deflated (the whole data set is
# compressed). Every other transfer syntax, the encapsulated ones (JPEG, JPEG 2000, RLE, ...)
# included, encodes its data set as explicit VR little endian (PS3.5 A.4); only pixels differ.
_NOT_EXPLICIT_LE = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})


class _Unsure(Exception):
    """The fast reader cannot be sure of this header: pydicom decides."""


def _u16(b: bytes, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise _Unsure
    return int(struct.unpack_from("<H", b, pos)[0])


def _u32(b: bytes, pos: int, end: int) -> int:
    if pos + 4 > end:
        raise _Unsure
    return int(struct.unpack_from("<I", b, pos)[0])


def _element(b: bytes, pos: int, end: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, position of the value) of the element at ``pos``."""
    tag = _u16(b, pos, end) << 16 | _u16(b, pos + 2, end)
    if implicit or tag >> 16 == 0xFFFE:  # items and delimiters carry no VR in any encoding
        return tag, None, _u32(b, pos + 4, end), pos + 8
    vr = b[pos + 4 : pos + 6]
    if vr in _LONG_VRS:
        return tag, vr, _u32(b, pos + 8, end), pos + 12
    return tag, vr, _u16(b, pos + 6, end), pos + 8


def _skip_undefined(b: bytes, pos: int, end: int, implicit: bool, depth: int = 0) -> int:
    """Past a value of undefined length at ``pos``: items (each of defined length, or elements
    up to an item delimiter) up to the sequence delimiter. Encapsulated pixel data has the same
    shape (fragments are items). ``implicit``: the items' elements carry no VR (an implicit VR
    data set, or the content of a UN). Returns the position after the delimiter."""
    if depth > 16:
        raise _Unsure  # nesting this deep is no header we know
    while True:
        tag, _vr, length, pos = _element(b, pos, end, True)
        if tag == 0xFFFEE0DD:  # sequence delimiter
            return pos
        if tag != 0xFFFEE000:  # not an item: not a sequence we can walk
            raise _Unsure
        if length != 0xFFFFFFFF:
            pos += length
            continue
        while True:  # an item of undefined length: its elements up to the item delimiter
            tag, vr, length, pos = _element(b, pos, end, implicit)
            if tag == 0xFFFEE00D:
                break
            pos = (
                _skip_undefined(b, pos, end, implicit or vr == b"UN", depth + 1)
                if length == 0xFFFFFFFF
                else pos + length
            )


def head_elements(
    head: bytes, wanted: Callable[[int], bool], stop: int, *, complete: bool = False
) -> dict[int, bytes]:
    """The raw values of the top-level elements of a Part-10 header for which ``wanted(tag)``
    holds, up to (not including) tag ``stop``; sequences are stepped over, whatever their
    encoding of length. Little endian transfer syntaxes only.

    Raises :class:`_Unsure` when it cannot be sure (no preamble, big endian or deflated data
    set, a tag before ``stop`` beyond ``head``): the caller then asks pydicom. ``complete``:
    ``head`` is the whole file, so a data set that ends before ``stop`` is read to its end.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        raise _Unsure
    pos, end = 132, len(head)
    found: dict[int, bytes] = {}
    ts: str | None = None
    implicit = False
    meta = True
    while True:
        if complete and pos == end and not meta:
            return found
        if pos + 8 > end:
            raise _Unsure  # ran out of bytes before passing the tags we want
        if meta and _u16(head, pos, end) != 2:  # the data set: encoded as its transfer syntax
            meta = False
            if ts is None or ts in _NOT_EXPLICIT_LE or not ts.startswith(_DICOM_TS):
                raise _Unsure  # unknown or private: pydicom decides
            implicit = ts == _IMPLICIT_LE
        tag, vr, length, pos = _element(head, pos, end, implicit and not meta)
        if tag >= stop:
            return found
        if length == 0xFFFFFFFF:
            # a UN of undefined length holds implicit VR items (PS3.5 6.2.2)
            pos = _skip_undefined(head, pos, end, implicit or vr == b"UN")
            continue
        if pos + length > end:
            raise _Unsure
        if tag == 0x00020010:
            ts = head[pos : pos + length].decode("ascii", "replace").strip("\x00 ")
        if wanted(tag):
            found[tag] = head[pos : pos + length]
        pos += length


def ids_from_head(head: bytes) -> DicomIds | None:
    """Fast path: the UIDs from the first bytes of a Part-10 file (little endian only).

    Returns None when unsure (no preamble, other transfer syntax, tags beyond ``head``); the
    caller then asks :func:`read_ids`.
    """
    try:
        raw = head_elements(head, _WANTED.__contains__, 0x0020000F)
    except _Unsure:
        return None
    found = {_WANTED[t]: v.decode("ascii", "replace").strip("\x00 ") for t, v in raw.items()}
    ids = DicomIds(
        found.get("sop") or None,
        found.get("series") or None,
        found.get("study") or None,
        found.get("patient") or None,
    )
    return ids if ids.sop_uid and ids.series_uid else None


# the character sets read here, by Python codec (others are pydicom's to decode)
CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
_CHARSET_TAG = 0x00080005  # Specific Character Set


def head_texts(
    head: bytes,
    tags: frozenset[int],
    stop: int,
    groups: frozenset[int] = frozenset(),
    *,
    complete: bool = False,
) -> dict[int, str] | None:
    """The text values of ``tags`` (and of every element of ``groups``) in a Part-10 header, as
    pydicom gives them for single-valued text (decoded, trailing padding removed), or None
    when unsure: no fast read (see :func:`head_elements`), a character set other than ASCII,
    Latin-1 or UTF-8, or a value holding several values or control characters."""

    def wanted(tag: int) -> bool:
        return tag in tags or tag >> 16 in groups or tag == _CHARSET_TAG

    try:
        raw = head_elements(head, wanted, stop, complete=complete)
    except _Unsure:
        return None
    charset = raw.pop(_CHARSET_TAG, b"").decode("ascii", "replace").strip("\x00 ")
    codec = CHARSETS.get(charset)
    if codec is None:
        return None  # several or other character sets: pydicom's to decode
    out: dict[int, str] = {}
    for tag, value in raw.items():
        try:
            text = value.rstrip(b"\x00 ").decode(codec)
        except UnicodeDecodeError:
            return None
        if "\\" in text or any(c < " " for c in text):  # "\\": the value separator
            return None
        out[tag] = text
    return out
