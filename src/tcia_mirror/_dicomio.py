"""Reading the identity of a DICOM file (header only, pixels skipped)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID"]


@dataclass(frozen=True, slots=True)
class DicomIds:
    sop_uid: str | None
    series_uid: str | None
    study_uid: str | None
    patient_id: str | None


def read_ids(path: Path | str) -> DicomIds | None:
    """The UIDs in a file's header, or None when it is not a readable DICOM file."""
    try:
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
