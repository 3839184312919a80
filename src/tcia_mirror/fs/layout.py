"""Where a series goes on disk: layout templates, presets and name sanitising.

A layout is a template such as ``{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}``
or a preset name (:data:`PRESETS`). Literal parts are checked when the template is parsed, and
every value is passed through :func:`sanitize_component` when a path is built, so no server value
can produce an absolute path, a ``..`` component or a separator: a layout always yields a relative
:class:`~pathlib.PurePosixPath` below the mirror folder.

``nbia-descriptive`` reproduces the NBIA Data Retriever's "Descriptive" folder names
(``<StudyDate>-<StudyID>-<StudyDescription[:53]>-<last 5 of StudyUID>`` and
``<SeriesNumber>-<SeriesDescription[:53]>-<last 5 of SeriesUID>``) through two computed fields,
``DescriptiveStudy`` and ``DescriptiveSeries``, which any template may use.
"""

from __future__ import annotations

import hashlib
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from tcia_mirror.errors import DataError, InputError
from tcia_mirror.sources.nbia.models import Series

__all__ = [
    "FIELDS",
    "PRESETS",
    "Layout",
    "descriptive_date",
    "fields_from_series",
    "instance_filename",
    "sanitize_component",
]

#: Series fields a template may name (values come from the plan's series records).
SERIES_FIELDS: tuple[str, ...] = (
    "Collection",
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "StudyID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesDate",
)

PRESETS: dict[str, str] = {
    "default": "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}",
    "nbia-classic": "{Collection}/{PatientID}/{StudyInstanceUID}/{SeriesInstanceUID}",
    "nbia-descriptive": "{Collection}/{PatientID}/{DescriptiveStudy}/{DescriptiveSeries}",
    "flat": "{SeriesInstanceUID}",
}

_MAX_COMPONENT_BYTES = 255  # file-name limit of common file systems
_RESERVED = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff/\\<>:"|?*]')
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)


def sanitize_component(value: object, *, fallback: str = "unknown", max_len: int = 120) -> str:
    """Turn any value into one safe path component.

    No ``/``, ``\\``, NUL or control characters (each becomes ``_``, as do the Windows-reserved
    ``<>:"|?*``), never ``.`` or ``..``, no leading/trailing spaces or dots, Windows device names
    (``CON``, ``NUL``, ``COM1`` ...) get a ``_`` suffix, at most ``max_len`` UTF-8 bytes (never
    splitting a character). ``None`` or an empty result gives ``fallback``.
    """
    if value is None:
        return fallback
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # SeriesNumber 3.0 -> "3"
    text = str(value).strip(" \t\r\n\x00")
    text = _RESERVED.sub("_", text).strip(" .")
    if not text:
        return fallback
    base, dot, ext = text.partition(".")
    if base.rstrip().upper() in _WINDOWS_DEVICES:
        text = f"{base}_{dot}{ext}"  # CON.txt -> CON_.txt
    raw = text.encode("utf-8")
    if len(raw) > max_len:
        text = raw[:max_len].decode("utf-8", errors="ignore").rstrip(" .")
    return text or fallback


def instance_filename(sop_uid: str) -> str:
    """``<SOPInstanceUID>.dcm``; a UID that needed sanitising gets a short hash of the original.

    The hash keeps two odd UIDs that sanitise alike (``a/b``, ``a_b``) from sharing a file.
    """
    raw = sop_uid.strip(" \x00") if isinstance(sop_uid, str) else ""
    if not raw:
        raise DataError(f"invalid SOPInstanceUID {sop_uid!r}: cannot name its file")
    safe = sanitize_component(raw, max_len=200)
    if safe != raw:
        digest = hashlib.sha256(raw.encode("utf-8", errors="surrogatepass")).hexdigest()[:10]
        safe = f"{safe}~{digest}"
    return safe + ".dcm"


def fields_from_series(series: Series) -> dict[str, object]:
    """Layout/metadata fields of a :class:`~tcia_mirror.sources.nbia.models.Series` record (None = unknown).

    ``PatientName`` and ``StudyID`` are not part of the record; they are taken from its ``extra``
    when the archive sent them.
    """
    extra = series.extra
    return {
        "Collection": series.collection,
        "PatientID": series.patient_id,
        "PatientName": extra.get("PatientName"),
        "StudyInstanceUID": series.study_instance_uid,
        "StudyDate": series.study_date,
        "StudyDescription": series.study_description,
        "StudyID": extra.get("StudyID"),
        "SeriesInstanceUID": series.series_instance_uid,
        "SeriesNumber": series.series_number,
        "SeriesDescription": series.series_description,
        "Modality": series.modality,
        "BodyPartExamined": series.body_part_examined,
        "Manufacturer": series.manufacturer,
        "ManufacturerModelName": series.manufacturer_model_name,
        "SeriesDate": series.series_date,
    }


# --- the Descriptive names of the NBIA Data Retriever ------------------------------------------

_DATE_FORMATS = ("%Y-%m-%d", "%m-%d-%Y", "%Y%m%d", "%m/%d/%Y", "%Y/%m/%d", "%d-%b-%Y")


def descriptive_date(value: object) -> str:
    """A study date as ``MM-dd-yyyy`` (the Data Retriever's form); unparseable values pass through.

    Accepts ``2003-12-12 00:00:00.0``, ``2003-12-12T00:00:00``, ``12-12-2003``, ``20031212``,
    ``2003-12-12`` and ``12/12/2003``.
    """
    text = _present(value)
    if not text:
        return ""
    head = re.split(r"[ T]", text, maxsplit=1)[0]
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(head, fmt).strftime("%m-%d-%Y")
        except ValueError:
            continue
    return text.replace("/", "-")


def _present(value: object) -> str:
    """The value as text, or "" for the Data Retriever's absent values (None, "", "null")."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return "" if text.lower() == "null" else text


def _description(value: object) -> str:
    text = _present(value).replace("/", "-")[:53].strip()
    return "" if text == "-" else text


def _join(*parts: str) -> str:
    return "-".join(p for p in parts if p)


def _descriptive_study(fields: Mapping[str, object]) -> str:
    return _join(
        descriptive_date(fields.get("StudyDate")),
        _present(fields.get("StudyID")),
        _description(fields.get("StudyDescription")),
        _present(fields.get("StudyInstanceUID"))[-5:],
    )


def _descriptive_series(fields: Mapping[str, object]) -> str:
    return _join(
        _present(fields.get("SeriesNumber")),
        _description(fields.get("SeriesDescription")),
        _present(fields.get("SeriesInstanceUID"))[-5:],
    )


COMPUTED_FIELDS: dict[str, Callable[[Mapping[str, object]], str]] = {
    "DescriptiveStudy": _descriptive_study,
    "DescriptiveSeries": _descriptive_series,
}

FIELDS: frozenset[str] = frozenset(SERIES_FIELDS) | frozenset(COMPUTED_FIELDS)


# --- templates ---------------------------------------------------------------------------------

_Piece = tuple[str, str | None]  # (literal text, field name or None)


@dataclass(frozen=True, slots=True)
class Layout:
    """A parsed, validated layout template. Build with :meth:`parse`."""

    template: str

    def __post_init__(self) -> None:
        _components(self.template)  # every Layout is valid, however it was made

    @classmethod
    def parse(cls, spec: str) -> Layout:
        """A preset name (see :data:`PRESETS`) or a template of ``{Field}`` placeholders."""
        return cls(PRESETS.get(spec.strip(), spec))

    def fields_used(self) -> frozenset[str]:
        """The fields the template names (computed fields included as named)."""
        return frozenset(
            name for component in _components(self.template) for _, name in component if name
        )

    def series_dir(self, fields: Mapping[str, object]) -> PurePosixPath:
        """The series folder, relative to the mirror folder, for one series' fields.

        Missing values become ``unknown``. Each value is sanitised on its own, then each
        component is capped at 255 UTF-8 bytes.
        """
        parts: list[str] = []
        for component in _components(self.template):
            text = "".join(
                literal if name is None else sanitize_component(_value(name, fields))
                for literal, name in component
            )
            text = _cap(text)
            if text in ("", ".", "..") or "/" in text or "\x00" in text:  # cannot happen
                raise InputError(f"layout {self.template!r} produced an unsafe folder {text!r}")
            parts.append(text)
        return PurePosixPath(*parts)


def _value(name: str, fields: Mapping[str, object]) -> object:
    computed = COMPUTED_FIELDS.get(name)
    if computed is not None:
        return computed(fields) or None
    return fields.get(name)


def _cap(text: str) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= _MAX_COMPONENT_BYTES:
        return text
    return raw[:_MAX_COMPONENT_BYTES].decode("utf-8", errors="ignore").rstrip(" .") or "unknown"


_COMPONENT_CACHE: dict[str, tuple[tuple[_Piece, ...], ...]] = {}


def _components(template: str) -> tuple[tuple[_Piece, ...], ...]:
    """Split a template into path components of (literal, field) pieces; InputError if bad."""
    cached = _COMPONENT_CACHE.get(template)
    if cached is not None:
        return cached
    allowed = ", ".join(sorted(FIELDS))
    if not template.strip():
        raise InputError("empty layout: give a preset name or a template such as '{Collection}/…'")
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputError(
            f"bad layout template {template!r}: {exc} (use {{Field}} placeholders; "
            "write {{ and }} for literal braces)"
        ) from None
    components: list[list[_Piece]] = [[]]
    for literal, name, spec, conversion in parsed:
        chunks = literal.split("/")
        for i, chunk in enumerate(chunks):
            if i:
                components.append([])
            if chunk:
                components[-1].append((chunk, None))
        if name is None:
            continue
        if name not in FIELDS:
            presets = ", ".join(PRESETS)
            raise InputError(
                f"unknown field {{{name}}} in layout {template!r}; allowed fields: {allowed} "
                f"(or a preset: {presets})"
            )
        if spec or conversion:
            raise InputError(
                f"layout field {{{name}}} in {template!r} cannot take a format spec or "
                "conversion; write just {" + name + "}"
            )
        components[-1].append(("", name))
    if template.startswith("/") or re.match(r"^[A-Za-z]:", template):
        raise InputError(f"layout {template!r} must be relative (no leading '/' or drive)")
    result: list[tuple[_Piece, ...]] = []
    for component in components:
        if not component:
            raise InputError(
                f"layout {template!r} has an empty folder name ('//' or a trailing '/')"
            )
        literal_only = "".join(text for text, name in component if name is None)
        has_field = any(name for _, name in component)
        if not has_field and literal_only in (".", ".."):
            raise InputError(f"layout {template!r} may not contain '.' or '..' folders")
        bad = _RESERVED.search(literal_only)
        if bad:
            raise InputError(
                f"layout {template!r} contains the character {bad.group()!r}, "
                'which is not allowed in folder names (\\ < > : " | ? * and control characters)'
            )
        if literal_only != literal_only.strip() and not has_field:
            raise InputError(f"layout {template!r} has a folder name with outer spaces")
        result.append(tuple(component))
    frozen = tuple(result)
    if len(_COMPONENT_CACHE) < 256:
        _COMPONENT_CACHE[template] = frozen
    return frozen
