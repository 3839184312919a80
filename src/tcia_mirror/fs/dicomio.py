"""Reading the identity of a DICOM file (header only, pixels skipped)."""

from __future__ import annotations

import hashlib
import struct
import warnings
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


def ids_from_head(head: bytes) -> DicomIds | None:
    """Fast path: the UIDs from the first bytes of a Part-10 file (little endian only).

    Returns None when unsure (no preamble, other transfer syntax, undefined lengths, tags beyond
    ``head``); the caller then asks :func:`read_ids`.
    """
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    pos, end = 132, len(head)
    found: dict[str, str] = {}
    ts = None
    implicit = False
    while pos + 8 <= end:
        group, elem = struct.unpack_from("<HH", head, pos)
        tag = group << 16 | elem
        if group != 2:  # the data set: its encoding is the transfer syntax's
            if ts is None or ts in _NOT_EXPLICIT_LE or not ts.startswith(_DICOM_TS):
                return None  # unknown or private: pydicom decides
            implicit = ts == _IMPLICIT_LE
        if implicit:
            (length,) = struct.unpack_from("<I", head, pos + 4)
            pos += 8
        else:
            vr = head[pos + 4 : pos + 6]
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    return None
                (length,) = struct.unpack_from("<I", head, pos + 8)
                pos += 12
            else:
                (length,) = struct.unpack_from("<H", head, pos + 6)
                pos += 8
        if length == 0xFFFFFFFF:
            return None
        if tag > 0x0020000E:
            break
        if pos + length > end:
            return None
        if tag == 0x00020010:
            ts = head[pos : pos + length].decode("ascii", "replace").strip("\x00 ")
        name = _WANTED.get(tag)
        if name is not None:
            found[name] = head[pos : pos + length].decode("ascii", "replace").strip("\x00 ")
        pos += length
    else:
        return None  # ran out of bytes before passing the tags we want
    ids = DicomIds(
        found.get("sop") or None,
        found.get("series") or None,
        found.get("study") or None,
        found.get("patient") or None,
    )
    return ids if ids.sop_uid and ids.series_uid else None
