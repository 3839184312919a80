"""Query-response bodies of the NBIA / TCIA REST APIs, in both directions.

:func:`render` writes rows exactly the way the real NBIA server does
(``restUtil/FormatOutput.java``, api-notes §4); the archive simulator serves what it returns.
:func:`parse_rows` reads any of the four formats liberally; the client uses it on every query
answer. The two are tested as a pair.

Behaviour shared by every format:

* A null (``None`` or a missing key) is never written as a value: omitted from JSON objects and XML
  rows, ``""`` in quoted CSV, ``&nbsp;`` in HTML. Parsed rows never hold ``None``: a null is an
  absent key, whatever the format.
* ``""`` survives JSON, XML and HTML. CSV cannot tell ``""`` from null, so an empty CSV field is an
  absent key. In a single-column CSV list a blank (or whitespace-only) line is no value at all.
* Whitespace inside values is kept as sent (leading, trailing, whitespace-only).
* XML and HTML values are encoded like OWASP ESAPI ``encodeForHTML``: ASCII letters, digits and
  ``, . - _`` and space stay, every other character becomes an entity, and control characters
  other than tab, CR and LF become U+FFFD (so those cannot round-trip, as on the real server).
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from html.entities import codepoint2name
from typing import Any, Literal

from tcia_mirror.errors import ProtocolError

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "Flavor",
    "field",
    "parse_md5_csv",
    "parse_rows",
    "render",
    "render_md5_csv",
    "to_int",
]

FORMATS: tuple[str, ...] = ("json", "csv", "xml", "html")
Flavor = Literal["nbia", "tcia-v3"]
CONTENT_TYPES: dict[str, str] = {
    "json": "application/json",
    "csv": "text/csv",
    "xml": "application/xml",
    "html": "text/html",
}
MD5_CSV_HEADER = "Filename,MD5Hash"

_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
_PREVIEW_CHARS = 80


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def render(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    fmt: str,
    *,
    flavor: Flavor = "nbia",
) -> tuple[bytes, str]:
    """Body and Content-Type of a query answer, the way the real server writes it.

    ``rows`` are mappings; a missing key or a ``None`` value is a null. Only ``columns`` are
    written, in that order. The ``nbia`` flavor answers no rows with an empty body (HTTP 200, as
    the real server does); ``tcia-v3`` (the retired Bindaas API) answers ``[]``, a header-only
    CSV, an empty ``<Results>`` or a header-only table, and does not escape ``/`` in JSON.
    """
    key = fmt.lower() if isinstance(fmt, str) else ""
    if key not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if flavor not in ("nbia", "tcia-v3"):
        raise ValueError(f"unknown flavor {flavor!r}: expected 'nbia' or 'tcia-v3'")
    if not columns:
        raise ValueError("render() needs at least one column")
    content_type = CONTENT_TYPES[key]
    if not rows and flavor == "nbia":
        return b"", content_type
    return _WRITERS[key](rows, columns, flavor).encode("utf-8"), content_type


def _text(value: object) -> str:
    """A non-null value as the Java server prints it (``Boolean.toString`` is lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _json_value(value: object) -> object:
    return value if isinstance(value, str | int | float) else str(value)


def _write_json(rows: Sequence[Mapping[str, object]], columns: Sequence[str], flavor: str) -> str:
    objects = [
        {column: _json_value(value) for column in columns if (value := row.get(column)) is not None}
        for row in rows
    ]
    text = json.dumps(objects, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # Jettison escapes every '/'; in JSON text a '/' can only occur inside a string.
    return text.replace("/", "\\/") if flavor == "nbia" else text


def _csv_quote(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _write_csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str], flavor: str) -> str:
    if len(columns) == 1:  # toCsv(String, List<String>): unquoted, a null is an empty line
        column = columns[0]
        lines = [column]
        lines += ["" if (value := row.get(column)) is None else _text(value) for row in rows]
    else:  # toCsvQuoted: everything quoted, a null is ""
        lines = [",".join(_csv_quote(column) for column in columns)]
        for row in rows:
            cells = ("" if (value := row.get(c)) is None else _text(value) for c in columns)
            lines.append(",".join(_csv_quote(cell) for cell in cells))
    return "\n".join(lines) + "\n"


_ESAPI_SAFE = re.compile(r"[^A-Za-z0-9,.\-_ ]")
_NAMED_ENTITIES = {0x22: "quot", 0x26: "amp", 0x3C: "lt", 0x3E: "gt"}


def _esapi_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if (code <= 0x1F and code not in (0x09, 0x0A, 0x0D)) or 0x7F <= code <= 0x9F:
        return "&#xfffd;"  # ESAPI replaces illegal characters
    if code in _NAMED_ENTITIES:
        return f"&{_NAMED_ENTITIES[code]};"
    # Latin-1 named entities as ESAPI; U+00A0 as a number so it cannot be mistaken for a null cell.
    if code < 0x100 and code != 0xA0 and code in codepoint2name:
        return f"&{codepoint2name[code]};"
    return f"&#x{code:x};"


def encode_html(text: str) -> str:
    """Encode ``text`` like ESAPI ``encodeForHTML`` (``/`` -> ``&#x2f;``, space kept)."""
    return _ESAPI_SAFE.sub(_esapi_char, text)


def _markup_value(value: object) -> str:
    """Strings are encoded; numbers and booleans are printed as they are."""
    if isinstance(value, bool | int | float):
        return _text(value)
    return encode_html(_text(value))


def _java_type(value: object) -> str:
    if isinstance(value, bool):
        return "java.lang.Boolean"
    if isinstance(value, int):
        return "java.lang.Integer" if -(2**31) <= value < 2**31 else "java.lang.Long"
    if isinstance(value, float):
        return "java.lang.Double"
    return "java.lang.String"


def _write_xml(rows: Sequence[Mapping[str, object]], columns: Sequence[str], flavor: str) -> str:
    parts = [_XML_DECLARATION, "<Results>"]
    for row in rows:
        parts.append("<Row>")
        for column in columns:
            value = row.get(column)
            if value is not None:
                kind = _java_type(value)
                parts.append(f"<{column} type='{kind}'>{_markup_value(value)}</{column}>")
        parts.append("</Row>")
    parts.append("</Results>")
    return "".join(parts)


def _write_html(rows: Sequence[Mapping[str, object]], columns: Sequence[str], flavor: str) -> str:
    parts = ["<P ALIGN='center'><TABLE BORDER=1><TR>"]
    parts += [f"<TH>{html.escape(column, quote=False)}</TH>" for column in columns]
    parts.append("</TR>")
    for row in rows:
        parts.append("<TR>")
        for column in columns:
            value = row.get(column)
            parts.append("<TD>&nbsp;</TD>" if value is None else f"<TD>{_markup_value(value)}</TD>")
        parts.append("</TR>")
    parts.append("</TABLE></P>")
    return "".join(parts)


_Writer = Callable[[Sequence[Mapping[str, object]], Sequence[str], str], str]
_WRITERS: dict[str, _Writer] = {
    "json": _write_json,
    "csv": _write_csv,
    "xml": _write_xml,
    "html": _write_html,
}


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def parse_rows(
    body: bytes, content_type: str | None = None, fmt: str | None = None
) -> list[dict[str, Any]]:
    """Rows of a query answer in any of the four formats; never a ``None`` value.

    The format is sniffed from the body: JSON (``[``/``{``), XML (``<Results``, ``<?xml``), HTML
    (a ``<TABLE>``), otherwise CSV. ``content_type`` and ``fmt`` are hints only, because the real
    server sends plain-text errors as ``application/json``. A CSV is accepted as declared when
    the Content-Type (or, without one, ``fmt``) says CSV; otherwise it must look like a table
    (identifier-like header, at least one row, consistent widths), so that a one-line error
    message is never read as an empty table. Empty body -> ``[]``. Anything else -> ProtocolError.
    """
    hint = _format_hint(content_type, fmt)
    text = _decode(body, content_type).lstrip("\ufeff")
    stripped = text.strip()
    if not stripped:
        return []
    if stripped[0] in "[{":
        return _parse_json(stripped)
    if stripped == "null" and hint == "json":
        return []
    if stripped[0] == "<":
        if _looks_like_html(stripped):
            return _parse_html(stripped)
        return _parse_xml(stripped)
    return _parse_csv(text, hint)


def _preview(text: str) -> str:
    """The first characters of a body, on one line, for error messages."""
    head = text[:_PREVIEW_CHARS]
    head = head.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return f"'{head}{'...' if len(text) > _PREVIEW_CHARS else ''}'"


def _fail(what: str, text: str) -> ProtocolError:
    return ProtocolError(
        f"{what}; the archive sent {_preview(text)} "
        "(check the endpoint and its parameters, or retry later)"
    )


def _format_hint(content_type: str | None, fmt: str | None) -> str | None:
    """The declared format: the Content-Type's, else (no type, or text/plain) the requested one."""
    requested = None
    if fmt is not None:
        requested = fmt.lower()
        if requested.startswith("csv"):  # csvquoted, csv-download
            requested = "csv"
        if requested not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    for name in FORMATS:
        if name in mime:
            return name
    return requested if mime in ("", "text/plain") else None


def _decode(body: bytes, content_type: str | None) -> str:
    if b"\x00" in body:
        raise _fail(
            "binary data instead of a query answer", body[:_PREVIEW_CHARS].decode("latin-1")
        )
    if body.startswith(b"\xef\xbb\xbf"):
        return body[3:].decode("utf-8", errors="replace")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    charset = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type or "", re.IGNORECASE)
    if charset:
        try:
            return body.decode(charset.group(1), errors="replace")
        except LookupError:
            pass
    return body.decode("latin-1")


def _parse_json(text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _fail(f"malformed JSON ({exc.__class__.__name__})", text) from exc
    items = [data] if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise _fail("a JSON answer that is not a list of rows", text)
    rows: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, dict):
            rows.append({str(key): value for key, value in item.items() if value is not None})
        elif isinstance(item, str | int | float):
            rows.append({"value": item})
        elif item is not None:
            raise _fail("a JSON list holding nested lists instead of rows", text)
    return rows


_HTML_MARKERS = re.compile(r"<\s*(?:table|html|body|head|!doctype)\b", re.IGNORECASE)
_XML_RESULTS = re.compile(r"(?:<\?xml[^>]*>\s*)?<Results\b")


def _looks_like_html(text: str) -> bool:
    return not _XML_RESULTS.match(text) and _HTML_MARKERS.search(text) is not None


def _markup_text(raw: str) -> str:
    """Cell or element content: raw CR/LF/tab at the edges are layout (the writer encodes them)."""
    return html.unescape(raw.strip("\r\n\t"))


_ROW_RE = re.compile(r"<Row\b[^>]*?(?:/>|>(.*?)</Row\s*>)", re.DOTALL)
_COLUMN_RE = re.compile(
    r"<(?P<name>[^<>/\s][^<>]*?)"
    r"(?P<attrs>(?:\s+[\w:.-]+\s*=\s*(?:'[^']*'|\"[^\"]*\"))*)\s*"
    r"(?:/>|>(?P<value>[^<]*)</(?P=name)\s*>)",
    re.DOTALL,
)
_TYPE_ATTR = re.compile(r"\btype\s*=\s*['\"]([^'\"]*)['\"]")
_EMPTY_RESULTS = re.compile(r"<Results\b[^>]*(?:/>|>\s*</Results\s*>)")
_INT_TYPES = frozenset(
    (
        "java.lang.Integer",
        "java.lang.Long",
        "java.lang.Short",
        "java.lang.Byte",
        "java.math.BigInteger",
    )
)
_INT_RE = re.compile(r"[+-]?\d+")


def _typed(text: str, java_type: str | None) -> Any:
    """Restore int/float/bool from the ``type`` attribute; anything doubtful stays a string."""
    if java_type in _INT_TYPES and _INT_RE.fullmatch(text.strip()):
        return int(text)
    if java_type in ("java.lang.Double", "java.lang.Float"):
        try:
            return float(text)
        except ValueError:
            return text
    if java_type == "java.lang.Boolean" and text.strip().lower() in ("true", "false"):
        return text.strip().lower() == "true"
    return text


def _parse_xml(text: str) -> list[dict[str, Any]]:
    # A regular-expression reader: the real server writes column names that are not XML names
    # ("Date Released", "3rd Party Analysis") and HTML entities that XML does not know (&eacute;).
    rows: list[dict[str, Any]] = []
    for row_match in _ROW_RE.finditer(text):
        row: dict[str, Any] = {}
        for column in _COLUMN_RE.finditer(row_match.group(1) or ""):
            type_attr = _TYPE_ATTR.search(column.group("attrs"))
            value = _markup_text(column.group("value") or "")
            row[column.group("name")] = _typed(value, type_attr.group(1) if type_attr else None)
        rows.append(row)
    if rows or _EMPTY_RESULTS.search(text):
        return rows
    return _parse_generic_xml(text)


def _parse_generic_xml(text: str) -> list[dict[str, Any]]:
    """Any other well-formed XML: each child of the root is a row, its children the columns."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise _fail("malformed XML", text) from exc
    rows: list[dict[str, Any]] = []
    for child in root:
        if len(child):
            rows.append({cell.tag: (cell.text or "").strip("\r\n\t") for cell in child})
        else:
            rows.append({child.tag: (child.text or "").strip("\r\n\t")})
    return rows


_TABLE_RE = re.compile(r"<table\b[^>]*>(.*?)(?:</table\s*>|\Z)", re.IGNORECASE | re.DOTALL)
_TR_START = re.compile(r"<tr\b[^>]*>", re.IGNORECASE)
_TR_END = re.compile(r"</tr\s*>", re.IGNORECASE)
_CELL_RE = re.compile(
    r"<(t[hd])\b[^>]*>(.*?)(?=<t[hd]\b|</t[hd]\s*>|\Z)", re.IGNORECASE | re.DOTALL
)
_TAG_RE = re.compile(r"<[^>]*>")


def _parse_html(text: str) -> list[dict[str, Any]]:
    table = _TABLE_RE.search(text)
    if table is None:
        raise _fail("an HTML page without a table", text)
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    for chunk in _TR_START.split(table.group(1))[1:]:
        cells = [_TAG_RE.sub("", raw) for _, raw in _CELL_RE.findall(_TR_END.split(chunk)[0])]
        if not cells:
            continue
        if header is None:  # the first row is the header (TH cells on the real server)
            header = [html.unescape(cell).strip() for cell in cells]
            continue
        row: dict[str, Any] = {}
        for name, raw in zip(header, cells, strict=False):
            if raw.strip().lower() != "&nbsp;":  # the server's null
                row[name] = _markup_text(raw)
        rows.append(row)
    return rows


def _not_a_table(hint: str | None) -> str:
    if hint is None or hint == "csv":
        return "an answer that is neither JSON, XML, HTML nor a CSV table"
    return f"expected {hint.upper()} but got plain text (no CSV table either)"


_HEADER_CELL = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _()\-./#]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LINE_BREAK = re.compile(r"\r\n|\n|\r")


def _parse_csv(text: str, hint: str | None) -> list[dict[str, Any]]:
    declared = hint == "csv"
    lines = _LINE_BREAK.split(text)
    first = next(line for line in lines if line.strip())
    if not first.lstrip().startswith('"') and "," not in first:
        return _parse_value_list(text, lines, first, hint)
    try:
        records = [record for record in csv.reader(io.StringIO(text, newline="")) if record]
    except csv.Error as exc:
        raise _fail(f"malformed CSV ({exc})", text) from exc
    header = [name.strip() for name in records[0]]
    body = records[1:]
    if not declared:
        plausible = (
            body
            and all(_HEADER_CELL.fullmatch(name) for name in header)
            and (len(header) > 1 or _IDENTIFIER.fullmatch(header[0]))
            and all(len(record) == len(header) for record in body)
        )
        if not plausible:
            raise _fail(_not_a_table(hint), text)
    rows: list[dict[str, Any]] = []
    for number, record in enumerate(body, start=2):
        if len(record) > len(header):
            raise _fail(f"CSV record {number} has more fields than the header", text)
        rows.append({name: value for name, value in zip(header, record, strict=False) if value})
    return rows


def _parse_value_list(
    text: str, lines: list[str], first: str, hint: str | None
) -> list[dict[str, Any]]:
    """A single-column list: unquoted, one value per line, commas and quotes taken literally."""
    column = first.strip()
    start = lines.index(first) + 1
    values = [line for line in lines[start:] if line.strip()]
    if hint != "csv" and not (values and _IDENTIFIER.fullmatch(column)):
        raise _fail(_not_a_table(hint), text)
    return [{column: value} for value in values]


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------


def _normalise_key(name: str) -> str:
    return name.replace(" ", "").replace("_", "").casefold()


def field(row: Mapping[str, Any], *names: str) -> Any:
    """The first non-null value among ``names``, tolerant of API dialects.

    Exact keys win; then keys are compared case-insensitively ignoring spaces and underscores,
    so ``PatientID`` finds ``PatientId`` and ``patient_id``, ``DateReleased`` ``Date Released``.
    """
    for name in names:
        value = row.get(name)
        if value is not None:
            return value
    loose: dict[str, Any] = {}
    for key, value in row.items():
        if value is not None:
            loose.setdefault(_normalise_key(str(key)), value)
    for name in names:
        value = loose.get(_normalise_key(name))
        if value is not None:
            return value
    return None


_DECIMAL_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_MAX_EXPONENT = 30  # "1E999999999" must not build a billion-digit int


def to_int(value: object) -> int | None:
    """An integer from a JSON number or a numeric string, else ``None``.

    ``"12"``, ``"12345.0"``, ``"1.2345678E7"`` and ``12.0`` are integers; ``12.5``, booleans,
    ``None``, ``""``, ``"null"`` and anything else are not.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        if _INT_RE.fullmatch(text):
            return int(text)
        if not _DECIMAL_RE.fullmatch(text):
            return None
        try:
            number = Decimal(text)
        except InvalidOperation:
            return None
    else:
        return None
    if not number.is_finite() or number.adjusted() > _MAX_EXPONENT:
        return None
    return int(number) if number == number.to_integral_value() else None


# --------------------------------------------------------------------------------------------
# md5hashes.csv (getImageWithMD5Hash, getImage?IncludeMD5=Yes)
# --------------------------------------------------------------------------------------------

_MD5_RE = re.compile(r"[0-9A-Fa-f]{32}")


def render_md5_csv(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``Filename,MD5Hash`` then ``name,hash`` lines, LF endings, unquoted (notes §5.3)."""
    lines = [MD5_CSV_HEADER]
    for name, digest in pairs:
        if "\n" in name or "\r" in name:
            raise ValueError(f"a file name in md5hashes.csv cannot hold a line break: {name!r}")
        lines.append(f"{name},{digest}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def parse_md5_csv(body: bytes) -> dict[str, str]:
    """File name -> lower-case MD5 hex. Header optional; CRLF, quotes and spaces tolerated."""
    text = _decode(body, None)
    result: dict[str, str] = {}
    first = True
    for line in _LINE_BREAK.split(text):
        if not line.strip():
            continue
        name, comma, digest = line.rpartition(",")
        name = name.strip().strip('"').strip()
        digest = digest.strip().strip('"').strip()
        if comma and name and _MD5_RE.fullmatch(digest):
            result[name] = digest.lower()
        elif not first:  # only the first line may be something else: the header
            raise _fail("md5hashes.csv has a line that is not 'name,md5'", line)
        first = False
    return result
