"""What each query endpoint answers: parameters, required sets, column orders, row values.

Pure functions of a :class:`Dataset` and the request parameters; the server turns the result
into bytes with :func:`tcia_mirror.sources.nbia.formats.render`. Dialects: ``v1``/``v2``/``v4`` are the NBIA
REST API (api-notes §3), ``v3`` the retired Bindaas "TCIA API" (§1).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from .dataset import Dataset, SimSeries
from .dicomgen import sop_class_uid

__all__ = ["Dialect", "EndpointSpec", "QueryError", "endpoint_spec", "run_query"]

Dialect = Literal["v1", "v2", "v4", "v3"]
Row = dict[str, object]
Kind = Literal["query", "zip", "dicom", "md5"]


class QueryError(Exception):
    """A request the real server refuses: ``status`` and plain-text ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    name: str
    kind: Kind
    params: tuple[str, ...]  # everything the endpoint reads (v4: the allowed set, with format)
    required: tuple[str, ...] = ()
    missing: str = ""  # the 400 text when a required parameter is absent
    description: str = ""
    json_only: bool = False


def _need(what: str, plural: bool = False) -> str:
    verb = "are" if plural else "is"
    return f"A parameter, {what} {verb} required for this API call."


_SERIES_PARAMS = (
    "Collection", "PatientID", "StudyInstanceUID", "Modality", "BodyPartExamined",
    "ManufacturerModelName", "Manufacturer", "SeriesInstanceUID",
)  # fmt: skip
_SERIES_UID = ("SeriesInstanceUID",)
_SERIES_UID_MISSING = _need("SeriesInstanceUID")


def _specs(dialect: Dialect) -> dict[str, EndpointSpec]:
    v4 = dialect == "v4"
    date = "fromDate" if v4 else "Date"
    new_missing = _need(f"Collection and {date}", plural=True)
    specs = [
        EndpointSpec("getCollectionValues", "query", ("format",),
                     description="Set of all collection names"),
        EndpointSpec("getModalityValues", "query", ("Collection", "BodyPartExamined", "format"),
                     description="Set of all modality values filtered by query keys"),
        EndpointSpec("getBodyPartValues", "query", ("Collection", "Modality", "format"),
                     description="Set of all body part names filtered by query keys"),
        EndpointSpec("getManufacturerValues", "query",
                     ("Collection", "Modality", "BodyPartExamined", "format"),
                     description="Set of all manufacturer names filtered by query keys"),
        EndpointSpec("getPatientStudy", "query",
                     ("Collection", "PatientID", "StudyInstanceUID", "format"),
                     description="Set of patient/study objects filtered by query keys"),
        EndpointSpec("getSeries", "query", (*_SERIES_PARAMS, "format"),
                     description="Set of series objects filtered by query keys"),
        EndpointSpec("getSeriesSize", "query", ("SeriesInstanceUID", "format"), _SERIES_UID,
                     _SERIES_UID_MISSING, "Total byte size and object count of a series"),
        EndpointSpec("getSOPInstanceUIDs", "query", ("SeriesInstanceUID", "format"), _SERIES_UID,
                     _SERIES_UID_MISSING, "SOPInstanceUIDs of a series"),
        EndpointSpec("NewPatientsInCollection", "query", ("Collection", date, "format"),
                     ("Collection", date), new_missing,
                     "Patients added to a collection since a date"),
        EndpointSpec("NewStudiesInPatientCollection", "query",
                     ("Collection", "PatientID", date, "format"), ("Collection", date),
                     new_missing, "Studies added to a collection (and patient) since a date"),
        EndpointSpec("getImage", "zip",
                     ("SeriesInstanceUID",) if dialect == "v3"
                     else ("SeriesInstanceUID", "NewFileNames", "IncludeMD5") if v4
                     else ("SeriesInstanceUID", "NewFileNames"),
                     _SERIES_UID, _need("SeriesInstanceUID,"), "Set of images in a zip file"),
        EndpointSpec("getSingleImage", "dicom", ("SeriesInstanceUID", "SOPInstanceUID"),
                     ("SeriesInstanceUID", "SOPInstanceUID"),
                     _need("SeriesInstanceUID and SOPInstanceUID,", plural=True),
                     "A single DICOM object"),
    ]  # fmt: skip
    if dialect == "v3":
        specs += [
            EndpointSpec("getPatient", "query", ("Collection", "format"),
                         description="Set of patient objects filtered by query keys"),
            EndpointSpec("PatientsByModality", "query", ("Collection", "Modality", "format"),
                         ("Collection", "Modality"),
                         _need("Collection and Modality,", plural=True),
                         "PatientIDs of a collection having a modality"),
            EndpointSpec("ContentsByName", "query", ("name",), ("name",), _need("name"),
                         "Contents of a shared list", json_only=True),
        ]  # fmt: skip
        return {s.name: s for s in specs}
    specs += [
        EndpointSpec("getPatient", "query", ("Collection", "PatientId", "format"),
                     description="Set of patient objects filtered by query keys"),
        EndpointSpec("getPatientByCollectionAndModality", "query",
                     ("Collection", "Modality", "format"), ("Collection", "Modality"),
                     _need("Collection and Modality,", plural=True),
                     "PatientIds of a collection having a modality"),
        EndpointSpec("getUpdatedSeries", "query", ("fromDate", "format"),
                     description="Series released after a date"),
        EndpointSpec("getImageWithMD5Hash", "zip", ("SeriesInstanceUID",), _SERIES_UID,
                     _need("SeriesInstanceUID,"), "Images and md5hashes.csv in a zip file"),
        # api-notes 5.7: one instance's MD5; v1/v2 spell it without the D
        EndpointSpec("getMD5HashForImage" if v4 else "getM5HashForImage", "md5",
                     ("SOPInstanceUID",), ("SOPInstanceUID",), _need("SOPInstanceUID,"),
                     "MD5 hash of one image"),
    ]  # fmt: skip
    if not v4:
        specs += [
            EndpointSpec("getContentsByName", "query", ("name",), ("name",), _need("name"),
                         "Contents of a shared list", json_only=True),
            EndpointSpec("getSeriesMetaData", "query", ("SeriesInstanceUID", "format"),
                         _SERIES_UID, _SERIES_UID_MISSING, "Download metadata of a series"),
        ]  # fmt: skip
    return {s.name: s for s in specs}


_SPECS: dict[Dialect, dict[str, EndpointSpec]] = {d: _specs(d) for d in ("v1", "v2", "v4", "v3")}


def endpoint_spec(dialect: Dialect, name: str) -> EndpointSpec | None:
    return _SPECS[dialect].get(name)


# -------------------------------------------------------------------------------- columns
SERIES_V12 = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate",
    "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection",
    "PatientID", "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
    "TimeStamp", "LicenseName", "LicenseURI", "CollectionURI", "FileSize", "DateReleased",
    "StudyDesc", "StudyDate", "ThirdPartyAnalysis",
)  # fmt: skip
SERIES_V4 = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate",
    "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection",
    "Site", "PatientID", "PatientSex", "PatientAge", "AdmittingDiagnosisDescription",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
    "MaxSubmissionTimestamp", "LicenseName", "LicenseURI", "DataDescriptionURI", "FileSize",
    "ReleasedStatus", "DateReleased", "StudyDesc", "StudyDate", "ThirdPartyAnalysis", "Authorized",
)  # fmt: skip
SERIES_V3 = (
    "PatientID", "Collection", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
    "ProtocolName", "SeriesDate", "SeriesDescription", "BodyPartExamined", "SeriesNumber",
    "AnnotationsFlag", "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
)  # fmt: skip
UPDATED_V12 = SERIES_V12[:15] + ("DateReleased",)
CONTENTS_V12 = SERIES_V12[:15] + ("Date Released",)
PATIENT_V12 = (
    "PatientId", "PatientName", "PatientBirthDate", "PatientSex", "EthnicGroup", "Collection",
    "Phantom", "SpeciesCode", "SpeciesDescription",
)  # fmt: skip
PATIENT_V4 = (
    "PatientId", "PatientName", "PatientSex", "EthnicGroup", "Collection", "Phantom",
    "SpeciesCode", "SpeciesDescription", "Authorized",
)  # fmt: skip
PATIENT_V3 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "EthnicGroup",
    "Collection",
)
STUDY_V12 = (
    "StudyInstanceUID", "StudyDate", "StudyDescription", "AdmittingDiagnosesDescription",
    "StudyID", "PatientAge", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "EthnicGroup", "Collection", "SeriesCount", "LongitudinalTemporalEventType",
    "LongitudinalTemporalOffsetFromEvent",
)  # fmt: skip
STUDY_V4 = tuple(c for c in STUDY_V12 if c != "PatientBirthDate") + ("Authorized",)
STUDY_V3 = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientAge", "PatientSex", "EthnicGroup",
    "AdmittingDiagnosesDescription", "Collection", "StudyID", "StudyInstanceUID", "StudyDate",
    "StudyDescription", "SeriesCount",
)  # fmt: skip
METADATA_V12 = (
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
    "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
    "Modality", "SOP Class UID", "Number of Images", "File Size", "File Location",
    "Series Number", "License Name", "License URL", "Annotation Size", "Date Released",
    "Series Date", "Protocol Name", "Body Part Examined", "Annotations Flag",
    "Manufacturer Model Name", "Software Versions", "TimeStamp",
)  # fmt: skip
SIZE_COLUMNS = ("TotalSizeInBytes", "ObjectCount")
SIZE_MISMATCH_BYTES = 1000

# DICOM tags of returned attributes, for the v3 ``/metadata`` description.
DICOM_TAGS = {
    "Collection": "(0013,1010)", "PatientID": "(0010,0020)", "PatientName": "(0010,0010)",
    "PatientBirthDate": "(0010,0030)", "PatientSex": "(0010,0040)", "PatientAge": "(0010,1010)",
    "EthnicGroup": "(0010,2160)", "StudyInstanceUID": "(0020,000D)", "StudyDate": "(0008,0020)",
    "StudyDescription": "(0008,1030)", "StudyID": "(0020,0010)",
    "AdmittingDiagnosesDescription": "(0008,1080)", "SeriesInstanceUID": "(0020,000E)",
    "Modality": "(0008,0060)", "ProtocolName": "(0018,1030)", "SeriesDate": "(0008,0021)",
    "SeriesDescription": "(0008,103E)", "BodyPartExamined": "(0018,0015)",
    "SeriesNumber": "(0020,0011)", "Manufacturer": "(0008,0070)",
    "ManufacturerModelName": "(0008,1090)", "SoftwareVersions": "(0018,1020)",
    "sop_instance_uid": "(0008,0018)",
}  # fmt: skip


# --------------------------------------------------------------------------------- values
def _ts(value: datetime.date | datetime.datetime) -> str:
    """java.sql.Timestamp.toString: ``yyyy-MM-dd HH:mm:ss.0``."""
    if not isinstance(value, datetime.datetime):
        value = datetime.datetime.combine(value, datetime.time())
    return value.strftime("%Y-%m-%d %H:%M:%S.0")


def _mdy(value: datetime.date) -> str:
    return value.strftime("%m-%d-%Y")


def _size(ds: Dataset, s: SimSeries, mismatch: frozenset[str]) -> tuple[int, int]:
    total, count = ds.series_size(s.series_uid)
    if s.series_uid in mismatch:
        return total + SIZE_MISMATCH_BYTES, count + 1
    return total, count


def _series_row(ds: Dataset, s: SimSeries, dialect: Dialect, mismatch: frozenset[str]) -> Row:
    total, count = _size(ds, s, mismatch)
    row: Row = {
        "SeriesInstanceUID": s.series_uid,
        "StudyInstanceUID": s.study_uid,
        "Modality": s.modality,
        "ProtocolName": s.protocol_name,
        "SeriesDescription": s.series_description,
        "BodyPartExamined": s.body_part,
        "SeriesNumber": s.series_number,
        "Collection": s.collection,
        "PatientID": s.patient_id,
        "Manufacturer": s.manufacturer,
        "ManufacturerModelName": s.manufacturer_model,
        "SoftwareVersions": s.software_versions,
        "ImageCount": count,
        "LicenseName": s.license_name,
        "LicenseURI": s.license_uri,
        "FileSize": total,
        "StudyDesc": s.study_description,
    }
    if dialect == "v4":
        row |= {
            "SeriesDate": _mdy(s.study_date),
            "Site": s.site,
            "PatientSex": s.patient_sex,
            "PatientAge": s.patient_age,
            "MaxSubmissionTimestamp": _mdy(s.date_released),
            "DataDescriptionURI": s.collection_uri,
            "ReleasedStatus": "Released",
            "DateReleased": _mdy(s.date_released),
            "StudyDate": _mdy(s.study_date),
            "ThirdPartyAnalysis": "NO",
            "Authorized": 1,
        }
    elif dialect == "v3":
        row["SeriesDate"] = s.study_date.isoformat()
    else:
        row |= {
            "SeriesDate": _ts(s.study_date),
            "TimeStamp": _ts(s.released_at),
            "CollectionURI": s.collection_uri,
            "DateReleased": _ts(s.released_at),
            "Date Released": _ts(s.released_at),
            "StudyDate": _ts(s.study_date),
        }
    return row


def _patient_row(s: SimSeries, dialect: Dialect) -> Row:
    key = "PatientID" if dialect == "v3" else "PatientId"
    row: Row = {key: s.patient_id, "PatientName": s.patient_id, "PatientSex": s.patient_sex,
                "Collection": s.collection}  # fmt: skip
    if dialect != "v3":
        row |= {"Phantom": "NO", "SpeciesCode": "337915000", "SpeciesDescription": "Homo sapiens"}
    if dialect == "v4":
        row["Authorized"] = 1
    return row


def _study_row(s: SimSeries, dialect: Dialect, series_count: int) -> Row:
    return {
        "StudyInstanceUID": s.study_uid,
        "StudyDate": _mdy(s.study_date) if dialect == "v4"
        else s.study_date.isoformat() if dialect == "v3" else _ts(s.study_date),
        "StudyDescription": s.study_description,
        "StudyID": s.study_id,
        "PatientAge": s.patient_age,
        "PatientID": s.patient_id,
        "PatientName": s.patient_id,
        "PatientSex": s.patient_sex,
        "Collection": s.collection,
        "SeriesCount": series_count,
        "Authorized": 1,
    }  # fmt: skip


_META_STRIP = re.compile(r"[^a-zA-Z0-9 .\-]")


def _metadata_row(ds: Dataset, s: SimSeries) -> Row:
    """getSeriesMetaData (v1/v2): every value a string (``Util.nullSafeString``)."""
    total, count = ds.series_size(s.series_uid)
    return {
        "Series UID": s.series_uid, "Collection": s.collection, "3rd Party Analysis": "",
        "Data Description URI": s.collection_uri, "Subject ID": s.patient_id,
        "Study UID": s.study_uid,
        "Study Description": _META_STRIP.sub("", s.study_description),
        "Study Date": _mdy(s.study_date),
        "Series Description": _META_STRIP.sub("", s.series_description),
        "Manufacturer": s.manufacturer.replace(",", " "), "Modality": s.modality,
        "SOP Class UID": sop_class_uid(s.modality), "Number of Images": str(count),
        "File Size": str(total), "File Location": s.study_id,
        "Series Number": str(s.series_number), "License Name": s.license_name,
        "License URL": s.license_uri, "Annotation Size": "0",
        "Date Released": _ts(s.released_at), "Series Date": _ts(s.study_date),
        "Protocol Name": s.protocol_name or "", "Body Part Examined": s.body_part,
        "Annotations Flag": "", "Manufacturer Model Name": s.manufacturer_model,
        "Software Versions": s.software_versions, "TimeStamp": _ts(s.released_at),
    }  # fmt: skip


# ------------------------------------------------------------------------------- matching
_CASE_INSENSITIVE_ALWAYS = frozenset({"Collection", "PatientID", "PatientId"})
_UIDS = frozenset({"StudyInstanceUID", "SeriesInstanceUID"})
_ATTRIBUTES = {
    "Collection": "collection", "PatientID": "patient_id", "PatientId": "patient_id",
    "StudyInstanceUID": "study_uid", "SeriesInstanceUID": "series_uid", "Modality": "modality",
    "BodyPartExamined": "body_part", "Manufacturer": "manufacturer",
    "ManufacturerModelName": "manufacturer_model",
}  # fmt: skip


def _filter(
    series: Iterable[SimSeries], params: Mapping[str, str], names: Iterable[str], dialect: Dialect
) -> list[SimSeries]:
    """Series matching every given (non-empty) filter; case rules of api-notes §3."""
    tests: list[tuple[str, str, bool]] = []
    for name in names:
        value = params.get(name)
        if value and name in _ATTRIBUTES:
            loose = name in _CASE_INSENSITIVE_ALWAYS or (dialect == "v4" and name not in _UIDS)
            tests.append((_ATTRIBUTES[name], value.upper() if loose else value, loose))
    out = []
    for s in series:
        for attr, want, loose in tests:
            have = str(getattr(s, attr))
            if (have.upper() if loose else have) != want:
                break
        else:
            out.append(s)
    return out


def parse_date(value: str, dialect: Dialect, *, updated: bool = False) -> datetime.date:
    """The date format of each dialect (v1/v2 getUpdatedSeries has its own: ``dd/MM/yyyy``)."""
    if dialect == "v4":
        fmt = "%m-%d-%Y"
    elif dialect == "v3":
        fmt = "%Y-%m-%d"
    else:
        fmt = "%d/%m/%Y" if updated else "%Y/%m/%d"
    try:
        return datetime.datetime.strptime(value.strip(), fmt).date()
    except ValueError:
        raise QueryError(400, f"Invalid date format: {value}") from None


# -------------------------------------------------------------------------------- queries
def _values(series: list[SimSeries], attr: str, column: str, upper: bool = False) -> list[Row]:
    values = {str(getattr(s, attr)) for s in series}
    if upper:
        values = {v.upper() for v in values}
    return [{column: v} for v in sorted(values, key=lambda v: (v.upper(), v))]


def _patients(series: list[SimSeries], dialect: Dialect) -> list[Row]:
    seen: dict[tuple[str, str], Row] = {}
    for s in series:
        seen.setdefault((s.collection, s.patient_id), _patient_row(s, dialect))
    return list(seen.values())


def _studies(series: list[SimSeries], dialect: Dialect) -> list[Row]:
    counts: dict[str, int] = {}
    firsts: dict[str, SimSeries] = {}
    for s in series:
        counts[s.study_uid] = counts.get(s.study_uid, 0) + 1
        firsts.setdefault(s.study_uid, s)
    return [_study_row(s, dialect, counts[uid]) for uid, s in firsts.items()]


QueryResult = tuple[list[Row], tuple[str, ...]]
_Handler = Callable[[Dataset, Mapping[str, str], Dialect, frozenset[str]], QueryResult]


def _q_values(attr: str, column: str, filters: tuple[str, ...]) -> _Handler:
    def run(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
        upper = d == "v4" and column == "Modality"
        return _values(_filter(ds.series, p, filters, d), attr, column, upper), (column,)

    return run


def _q_patient(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    names = ("Collection", "PatientID") if d == "v3" else ("Collection", "PatientId")
    cols = {"v3": PATIENT_V3, "v4": PATIENT_V4}.get(d, PATIENT_V12)
    return _patients(_filter(ds.series, p, names, d), d), cols


def _q_by_modality(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    rows = _patients(_filter(ds.series, p, ("Collection", "Modality"), d), d)
    if d == "v3":
        return rows, PATIENT_V3
    return rows, ("PatientId", "Authorized") if d == "v4" else ("PatientId",)


def _q_study(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    names = ("Collection", "PatientID", "StudyInstanceUID")
    cols = {"v3": STUDY_V3, "v4": STUDY_V4}.get(d, STUDY_V12)
    return _studies(_filter(ds.series, p, names, d), d), cols


def _series_cols(d: Dialect) -> tuple[str, ...]:
    return {"v3": SERIES_V3, "v4": SERIES_V4}.get(d, SERIES_V12)


def _q_series(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    rows = [_series_row(ds, s, d, m) for s in _filter(ds.series, p, _SERIES_PARAMS, d)]
    return rows, _series_cols(d)


def _q_size(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    s = ds.get_series(p["SeriesInstanceUID"])
    if s is None:  # an aggregate over no rows: one all-null row, rendered [{}]
        return [{}], SIZE_COLUMNS
    total, count = _size(ds, s, m)
    return [{"TotalSizeInBytes": f"{total}.0" if d == "v3" else total, "ObjectCount": count}], (
        SIZE_COLUMNS
    )


def _q_sops(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    column = "sop_instance_uid" if d == "v3" else "SOPInstanceUID"
    s = ds.get_series(p["SeriesInstanceUID"])
    return ([{column: i.sop_uid} for i in s.instances] if s else []), (column,)


def _released_since(
    ds: Dataset, p: Mapping[str, str], d: Dialect, names: tuple[str, ...]
) -> list[SimSeries]:
    since = parse_date(p["fromDate" if d == "v4" else "Date"], d)
    return [s for s in _filter(ds.series, p, names, d) if s.date_released >= since]


def _q_new_patients(
    ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]
) -> QueryResult:
    cols = {"v3": PATIENT_V3, "v4": PATIENT_V4}.get(d, PATIENT_V12)
    return _patients(_released_since(ds, p, d, ("Collection",)), d), cols


def _q_new_studies(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    cols = {"v3": STUDY_V3, "v4": STUDY_V4}.get(d, STUDY_V12)
    return _studies(_released_since(ds, p, d, ("Collection", "PatientID")), d), cols


def _q_updated(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    raw = p.get("fromDate")
    since = parse_date(raw, d, updated=True) if raw else datetime.date(1900, 1, 1)
    rows = [_series_row(ds, s, d, m) for s in ds.series if s.date_released > since]
    return rows, SERIES_V4 if d == "v4" else UPDATED_V12


def _q_contents(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    uids = ds.shared_lists.get(p["name"], [])
    found = [s for uid in uids if (s := ds.get_series(uid)) is not None]
    rows = [_series_row(ds, s, d, m) for s in found]
    return rows, SERIES_V3 if d == "v3" else CONTENTS_V12


def _q_metadata(ds: Dataset, p: Mapping[str, str], d: Dialect, m: frozenset[str]) -> QueryResult:
    s = ds.get_series(p["SeriesInstanceUID"])
    return ([_metadata_row(ds, s)] if s else []), METADATA_V12


_QUERIES: dict[str, _Handler] = {
    "getCollectionValues": _q_values("collection", "Collection", ()),
    "getModalityValues": _q_values(
        "modality", "Modality", ("Collection", "BodyPartExamined", "Modality")
    ),
    "getBodyPartValues": _q_values(
        "body_part", "BodyPartExamined", ("Collection", "Modality", "BodyPartExamined")
    ),
    "getManufacturerValues": _q_values(
        "manufacturer", "Manufacturer", ("Collection", "Modality", "BodyPartExamined")
    ),
    "getPatient": _q_patient,
    "PatientsByModality": _q_by_modality,
    "getPatientByCollectionAndModality": _q_by_modality,
    "getPatientStudy": _q_study,
    "getSeries": _q_series,
    "getSeriesSize": _q_size,
    "getSOPInstanceUIDs": _q_sops,
    "NewPatientsInCollection": _q_new_patients,
    "NewStudiesInPatientCollection": _q_new_studies,
    "getUpdatedSeries": _q_updated,
    "getContentsByName": _q_contents,
    "ContentsByName": _q_contents,
    "getSeriesMetaData": _q_metadata,
}


def run_query(
    ds: Dataset,
    name: str,
    params: Mapping[str, str],
    dialect: Dialect,
    size_mismatch: frozenset[str] = frozenset(),
) -> QueryResult:
    """Rows and columns of a query endpoint (parameters already checked by the server)."""
    return _QUERIES[name](ds, params, dialect, size_mismatch)


_V3_COLUMNS: dict[str, tuple[str, ...]] = {
    "getCollectionValues": ("Collection",),
    "getModalityValues": ("Modality",),
    "getBodyPartValues": ("BodyPartExamined",),
    "getManufacturerValues": ("Manufacturer",),
    "getPatient": PATIENT_V3,
    "PatientsByModality": PATIENT_V3,
    "getPatientStudy": STUDY_V3,
    "getSeries": SERIES_V3,
    "getSeriesSize": SIZE_COLUMNS,
    "getSOPInstanceUIDs": ("sop_instance_uid",),
    "NewPatientsInCollection": PATIENT_V3,
    "NewStudiesInPatientCollection": STUDY_V3,
    "ContentsByName": SERIES_V3,
}


def describe(dialect: Dialect, name: str) -> dict[str, object] | None:
    """The v3 ``<endpoint>/metadata`` document: name, description, parameters, returns."""
    spec = endpoint_spec(dialect, name)
    if spec is None:
        return None
    params = [
        {"name": p, "required": p in spec.required, "description": f"{p} to filter by"}
        for p in spec.params
        if p != "format"
    ]
    columns: tuple[str, ...] = ()
    if spec.kind == "zip":
        return_types = ["ZIP"]
    elif spec.kind == "dicom":
        return_types = ["application/dicom"]
    else:
        return_types = ["JSON"] if spec.json_only else ["CSV", "HTML", "XML", "JSON"]
        columns = _V3_COLUMNS[name]
    attributes = [{"name": c, "dicomTag": DICOM_TAGS.get(c, ""), "description": c} for c in columns]
    return {
        "name": name,
        "description": spec.description,
        "parameters": params,
        "returnTypes": return_types,
        "returnedAttributes": attributes,
    }
