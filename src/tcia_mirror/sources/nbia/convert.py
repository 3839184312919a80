"""Rows (dicts from any response format, any dialect) to records. Liberal in what it accepts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tcia_mirror.sources.nbia.formats import field, to_int
from tcia_mirror.sources.nbia.models import Patient, Series, SeriesSize, Study


def _str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text if text and text.lower() != "null" else None


def _extra(row: Mapping[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
    norm = {u.lower().replace("_", "").replace(" ", "") for u in used}
    return {k: v for k, v in row.items() if k.lower().replace("_", "").replace(" ", "") not in norm}


_PATIENT = ("PatientID", "Collection", "PatientName", "PatientSex")


def patient_from_row(row: Mapping[str, Any]) -> Patient | None:
    pid = _str(field(row, "PatientID"))
    if pid is None:
        return None
    return Patient(
        patient_id=pid,
        collection=_str(field(row, "Collection")),
        patient_name=_str(field(row, "PatientName")),
        patient_sex=_str(field(row, "PatientSex")),
        extra=_extra(row, _PATIENT),
    )


_STUDY = (
    "StudyInstanceUID",
    "PatientID",
    "Collection",
    "StudyDate",
    "StudyDescription",
    "SeriesCount",
)


def study_from_row(row: Mapping[str, Any]) -> Study | None:
    uid = _str(field(row, "StudyInstanceUID"))
    if uid is None:
        return None
    return Study(
        study_instance_uid=uid,
        patient_id=_str(field(row, "PatientID")),
        collection=_str(field(row, "Collection")),
        study_date=_str(field(row, "StudyDate")),
        study_description=_str(field(row, "StudyDescription", "StudyDesc")),
        series_count=to_int(field(row, "SeriesCount")),
        extra=_extra(row, _STUDY),
    )


_SERIES = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "PatientID",
    "Collection",
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "StudyDate",
    "StudyDesc",
    "StudyDescription",
    "ImageCount",
    "FileSize",
    "DateReleased",
    "LicenseName",
    "LicenseURI",
)


def series_from_row(row: Mapping[str, Any]) -> Series | None:
    uid = _str(field(row, "SeriesInstanceUID", "Series UID", "SeriesUID"))
    if uid is None:
        return None
    return Series(
        series_instance_uid=uid,
        study_instance_uid=_str(field(row, "StudyInstanceUID", "Study UID")),
        patient_id=_str(field(row, "PatientID", "Subject ID")),
        collection=_str(field(row, "Collection")),
        modality=_str(field(row, "Modality")),
        body_part_examined=_str(field(row, "BodyPartExamined")),
        manufacturer=_str(field(row, "Manufacturer")),
        manufacturer_model_name=_str(field(row, "ManufacturerModelName")),
        series_number=_str(field(row, "SeriesNumber")),
        series_description=_str(field(row, "SeriesDescription")),
        series_date=_str(field(row, "SeriesDate")),
        study_date=_str(field(row, "StudyDate")),
        study_description=_str(field(row, "StudyDesc", "StudyDescription")),
        image_count=to_int(field(row, "ImageCount", "Number of Images")),
        file_size=to_int(field(row, "FileSize", "File Size")),
        date_released=_str(field(row, "DateReleased")),
        license_name=_str(field(row, "LicenseName")),
        license_uri=_str(field(row, "LicenseURI", "LicenseURL")),
        extra=_extra(row, _SERIES),
    )


def series_size_from_rows(rows: list[dict[str, Any]]) -> SeriesSize:
    if not rows:
        return SeriesSize(None, None)
    row = rows[0]
    return SeriesSize(
        total_bytes=to_int(field(row, "TotalSizeInBytes")),
        object_count=to_int(field(row, "ObjectCount")),
    )


def values_from_rows(rows: list[dict[str, Any]], *names: str) -> list[str]:
    """A single-column list (getCollectionValues, getSOPInstanceUIDs ...). Falls back to the only column."""
    out: list[str] = []
    for row in rows:
        value = field(row, *names)
        if value is None and len(row) == 1:
            value = next(iter(row.values()))
        text = _str(value)
        if text is not None:
            out.append(text)
    return out
