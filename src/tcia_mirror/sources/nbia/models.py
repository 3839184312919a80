"""Plain records shared by the client, planner, store and verifier. Immutable where possible."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Patient:
    patient_id: str
    collection: str | None = None
    patient_name: str | None = None
    patient_sex: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Study:
    study_instance_uid: str
    patient_id: str | None = None
    collection: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    series_count: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Series:
    """One row of getSeries / getContentsByName, normalised across API dialects."""

    series_instance_uid: str
    study_instance_uid: str | None = None
    patient_id: str | None = None
    collection: str | None = None
    modality: str | None = None
    body_part_examined: str | None = None
    manufacturer: str | None = None
    manufacturer_model_name: str | None = None
    series_number: str | None = None
    series_description: str | None = None
    series_date: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    image_count: int | None = None
    file_size: int | None = None
    date_released: str | None = None
    license_name: str | None = None
    license_uri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class SeriesSize:
    """getSeriesSize: uncompressed DICOM bytes and object count (None when the archive gave none)."""

    total_bytes: int | None
    object_count: int | None
