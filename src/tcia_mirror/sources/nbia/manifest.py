"""``.tcia`` manifests and plain series files: read liberally, write exactly like the archive.

A real manifest (api-notes §6, ``restUtil/ManifestMaker.java``)::

    downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet
    includeAnnotation=true
    noOfrRetry=4
    databasketId=manifest-1561766528292.tcia
    manifestVersion=3.0
    ListOfSeriesToDownload=
    1.3.6.1.4.1.14519.5.2.1.2932.1975.258485580179562855968279889580
    ...

Readers in the wild differ (tcia_utils drops 6 lines, the Go retriever keeps every line without
``=``); this one keeps every line that is a UID, wherever it is, and reads every ``key=value``
line as a header, so stray lines (``Series ID``), missing headers and CRLF do not matter.
"""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from tcia_mirror.errors import InputError

__all__ = [
    "DEFAULT_SERVER_URL",
    "UID_RE",
    "Manifest",
    "is_uid",
    "parse_manifest",
    "parse_series_file",
    "render_manifest",
]

DEFAULT_SERVER_URL = "https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"
LIST_MARKER = "ListOfSeriesToDownload"

#: A DICOM UID, liberally: at least two dot-separated digit runs (leading zeros allowed).
UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)+")
UID_MAX_LENGTH = 64

_HEADER_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
_LINE_BREAK = re.compile(r"\r\n|\n|\r")
_SERIES_COLUMNS = frozenset(("seriesinstanceuid", "seriesuid", "seriesid"))
_DELIMITERS = ("\t", ",", ";")
_FIELD_SPLIT = re.compile(r"[\s,;]+")


def is_uid(text: str) -> bool:
    """True for a DICOM UID: digits and dots, at most 64 characters, no empty component."""
    return len(text) <= UID_MAX_LENGTH and UID_RE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed ``.tcia`` file. ``headers`` omits the ``ListOfSeriesToDownload`` marker."""

    headers: dict[str, str]
    series_uids: tuple[str, ...]


def _check_text(text: str, source: str, what: str) -> None:
    """Refuse binary content (a ZIP, a DICOM file, a spreadsheet) with a helpful message."""
    sample = text[:4096]
    odd = sum(
        1
        for char in sample
        if char == "\ufffd" or (unicodedata.category(char) == "Cc" and char not in "\t\n\r\f\v")
    )
    if "\x00" in sample or (sample and odd / len(sample) > 0.05):
        raise InputError(f"{source}: this is a binary file, not {what} (expected plain text)")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in _LINE_BREAK.split(text.lstrip("\ufeff"))]


def _unescape_property(value: str) -> str:
    """Java properties escapes that hand-edited manifests sometimes carry (``https\\://``)."""
    return value.replace("\\:", ":").replace("\\=", "=")


def parse_manifest(text: str, *, source: str = "manifest") -> Manifest:
    """Read a ``.tcia`` manifest: ``key=value`` headers, then one series UID per line.

    UIDs are kept in order without duplicates wherever they appear (also before the
    ``ListOfSeriesToDownload=`` line, or without any header at all). Lines that are neither a
    header nor a UID are skipped. No UID at all -> InputError; a binary file -> InputError.
    """
    _check_text(text, source, "a .tcia manifest")
    headers: dict[str, str] = {}
    uids: dict[str, None] = {}
    for line in _lines(text):
        if not line:
            continue
        if is_uid(line):
            uids.setdefault(line)
            continue
        key, equals, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not equals or not _HEADER_KEY.fullmatch(key):
            continue  # "Series ID", comments, junk
        if key == LIST_MARKER:
            if is_uid(value):  # "ListOfSeriesToDownload=1.2.3" on one line
                uids.setdefault(value)
            continue
        headers[key] = _unescape_property(value)
    if not uids:
        raise InputError(f"{source}: no series UIDs found (is this a .tcia manifest?)")
    return Manifest(headers=headers, series_uids=tuple(uids))


def _series_column(header: list[str]) -> int | None:
    for index, name in enumerate(header):
        key = re.sub(r"[\s_\-\"']+", "", name).casefold()
        if key in _SERIES_COLUMNS:
            return index
    return None


def parse_series_file(text: str, *, source: str = "series file") -> list[str]:
    """Series UIDs from a plain list or from a CSV/TSV with a series UID column.

    Plain list: one UID per line; blank lines, ``#`` comments (also after a UID) and non-UID lines
    are skipped. Table: when the first content line is not a UID and holds a tab, comma or
    semicolon, it is a header and the column named ``SeriesInstanceUID`` (or ``Series UID``,
    ``series_instance_uid``, ``Series ID``; any case) is read. Order kept, duplicates removed.
    """
    _check_text(text, source, "a series list")
    lines = [line for line in _lines(text) if line and not line.startswith("#")]
    if not lines:
        raise InputError(f"{source}: the file is empty (expected one series UID per line)")
    first = lines[0]
    delimiter = next((d for d in _DELIMITERS if d in first), None)
    uids: dict[str, None] = {}
    if delimiter is None or is_uid(first.split(delimiter, 1)[0].strip().strip("\"'")):
        for line in lines:  # the first field of each line: "1.2.3", "1.2.3,CT", "1.2.3  # note"
            candidate = _FIELD_SPLIT.split(line.split("#", 1)[0].strip())[0].strip("\"'")
            if is_uid(candidate):
                uids.setdefault(candidate)
    else:
        records = list(csv.reader(lines, delimiter=delimiter))
        column = _series_column(records[0])
        if column is None:
            raise InputError(
                f"{source}: the header has no series UID column (expected one named "
                f"SeriesInstanceUID or 'Series UID'; found: {', '.join(records[0])[:200]})"
            )
        for record in records[1:]:
            if column < len(record) and is_uid(candidate := record[column].strip()):
                uids.setdefault(candidate)
    if not uids:
        raise InputError(f"{source}: no series UIDs found (expected one series UID per line)")
    return list(uids)


def render_manifest(
    series_uids: Iterable[str],
    *,
    server_url: str = DEFAULT_SERVER_URL,
    basket_id: str = "manifest-1.tcia",
) -> str:
    """A ``.tcia`` manifest exactly as ManifestMaker writes it: 6 header lines, one UID per line,
    LF endings, a LF after the last UID. Duplicates are dropped; a non-UID is a ValueError."""
    uids: dict[str, None] = {}
    for uid in series_uids:
        if not is_uid(uid):
            raise ValueError(f"not a DICOM series UID: {uid!r}")
        uids.setdefault(uid)
    header = [
        f"downloadServerUrl={server_url}",
        "includeAnnotation=true",
        "noOfrRetry=4",
        f"databasketId={basket_id}",
        "manifestVersion=3.0",
        f"{LIST_MARKER}=",
    ]
    return "".join(f"{line}\n" for line in [*header, *uids])
