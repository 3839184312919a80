"""Query bodies both ways: exact server shapes, liberal parsing, render -> parse round trips.

Empty and whitespace-only strings (the behaviour pinned here):

* JSON, XML, HTML keep ``""`` and whitespace-only values exactly.
* Quoted multi-column CSV writes ``""`` for both null and the empty string, so an empty CSV
  field parses as an absent key; whitespace-only values survive.
* A single-column CSV list is unquoted with one value per line: a blank or whitespace-only line
  is no value, and a value cannot hold a line break.
* XML/HTML turn control characters other than TAB/CR/LF into U+FFFD, like the real server.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcia_mirror.errors import ProtocolError
from tcia_mirror.sources.nbia.formats import (
    FORMATS,
    field,
    parse_md5_csv,
    parse_rows,
    render,
    render_md5_csv,
    to_int,
)

HERE = Path(__file__).parents[1]
SAMPLE_NAME = "nbia_v2_getSeries_Soft-tissue-Sarcoma_first3_compact.json"
SHARED_SAMPLE = Path("/work/shared/reference/samples") / SAMPLE_NAME
SAMPLE_JSON = SHARED_SAMPLE if SHARED_SAMPLE.exists() else HERE / "data" / SAMPLE_NAME

V2_SERIES_COLUMNS = [
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "ProtocolName",
    "SeriesDate",
    "SeriesDescription",
    "BodyPartExamined",
    "SeriesNumber",
    "AnnotationsFlag",
    "Collection",
    "PatientID",
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "ImageCount",
    "TimeStamp",
    "LicenseName",
    "LicenseURI",
    "CollectionURI",
    "FileSize",
    "DateReleased",
    "StudyDesc",
    "StudyDate",
    "ThirdPartyAnalysis",
]

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------

AWKWARD = st.sampled_from(
    [",", '"', '""', "'", "\n", "\r\n", "\r", "/", "\\/", "<&>", " ", "  ", "\t", "é", "中文",
     "😀", "&nbsp;", "&amp;", "\xa0", "ﬃ", "=", ";", "#"]
)  # fmt: skip


def awkward_text(alphabet: st.SearchStrategy[str] | None = None) -> st.SearchStrategy[str]:
    plain = st.text(max_size=6) if alphabet is None else st.text(alphabet=alphabet, max_size=6)
    return st.lists(st.one_of(AWKWARD, plain), max_size=5).map("".join)


# Realistic column names: identifiers, optionally with a space or parentheses ("Date Released",
# "PixelSpacing(mm)-Row"). They never start or end with a space.
COLUMN = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}(?: ?[A-Za-z0-9()\-]{1,6})?", fullmatch=True)
# Control characters (category Cc) other than TAB/CR/LF: the markup formats replace them.
MARKUP_SAFE = st.characters(blacklist_categories=("Cs", "Cc"), whitelist_characters="\t\r\n")
NO_NUL = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
NUMBER = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)


def rows_of(values: st.SearchStrategy[Any], min_columns: int = 1, max_columns: int = 5) -> Any:
    """(columns, rows) with some nulls (None or a missing key) mixed in."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[list[str], list[dict[str, Any]]]:
        columns = draw(
            st.lists(COLUMN, min_size=min_columns, max_size=max_columns, unique_by=str.casefold)
        )
        rows = []
        for _ in range(draw(st.integers(0, 4))):
            row: dict[str, Any] = {}
            for column in columns:
                choice = draw(st.integers(0, 5))
                if choice == 0:
                    continue  # missing key
                row[column] = None if choice == 1 else draw(values)
            rows.append(row)
        return columns, rows

    return build()


def without_nulls(rows: list[dict[str, Any]], columns: list[str]) -> list[dict[str, Any]]:
    return [{c: row[c] for c in columns if row.get(c) is not None} for row in rows]


def as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


FLAVORS = pytest.mark.parametrize("flavor", ["nbia", "tcia-v3"])


# ---------------------------------------------------------------------------------------------
# round trips, every format and both flavors
# ---------------------------------------------------------------------------------------------


@FLAVORS
@SETTINGS
@given(table=rows_of(st.one_of(awkward_text(), NUMBER)))
def test_json_round_trip_keeps_values_and_types(flavor: str, table: Any) -> None:
    columns, rows = table
    body, content_type = render(rows, columns, "json", flavor=flavor)  # type: ignore[arg-type]
    assert content_type == "application/json"
    parsed = parse_rows(body, content_type)
    assert parsed == without_nulls(rows, columns)
    for got, want in zip(parsed, without_nulls(rows, columns), strict=True):
        assert list(got) == list(want)  # key order = column order
        assert [type(v) for v in got.values()] == [type(v) for v in want.values()]
    if flavor == "nbia":
        assert b"/" not in body.replace(b"\\/", b"")  # Jettison escapes every '/'
    else:
        assert b"\\/" not in body.replace(b"\\\\", b"")


@FLAVORS
@SETTINGS
@given(table=rows_of(awkward_text(NO_NUL), min_columns=2))
def test_multi_column_csv_round_trip(flavor: str, table: Any) -> None:
    # CSV writes null and "" alike (an empty quoted field), so "" comes back as an absent key.
    columns, rows = table
    body, content_type = render(rows, columns, "csv", flavor=flavor)  # type: ignore[arg-type]
    assert content_type == "text/csv"
    expected = [{c: v for c, v in row.items() if v} for row in without_nulls(rows, columns)]
    assert parse_rows(body, content_type) == expected


# A single-column list is written unquoted, one value per line: values hold no line break, and a
# blank or whitespace-only line is not a value. A null is written as an empty line (no value).
LIST_VALUE = awkward_text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r\n")
).map(lambda s: s.replace("\r", "").replace("\n", ""))


@FLAVORS
@SETTINGS
@given(column=COLUMN, values=st.lists(st.one_of(LIST_VALUE, st.none()), max_size=6))
def test_single_column_csv_round_trip(flavor: str, column: str, values: list[str | None]) -> None:
    rows = [{column: value} for value in values]
    body, content_type = render(rows, [column], "csv", flavor=flavor)  # type: ignore[arg-type]
    if rows or flavor == "tcia-v3":
        assert body.startswith(column.encode() + b"\n") and body.endswith(b"\n")
        assert b'"' + column.encode() not in body  # unquoted
    expected = [{column: v} for v in values if v is not None and v.strip()]
    assert parse_rows(body, content_type) == expected


@FLAVORS
@SETTINGS
@given(table=rows_of(st.one_of(awkward_text(MARKUP_SAFE), NUMBER)))
def test_xml_round_trip_keeps_values_and_types(flavor: str, table: Any) -> None:
    columns, rows = table
    body, content_type = render(rows, columns, "xml", flavor=flavor)  # type: ignore[arg-type]
    assert content_type == "application/xml"
    assert parse_rows(body, content_type) == without_nulls(rows, columns)


@FLAVORS
@SETTINGS
@given(table=rows_of(st.one_of(awkward_text(MARKUP_SAFE), NUMBER)))
def test_html_round_trip_values_as_strings(flavor: str, table: Any) -> None:
    columns, rows = table
    body, content_type = render(rows, columns, "html", flavor=flavor)  # type: ignore[arg-type]
    assert content_type == "text/html"
    expected = [{c: as_text(v) for c, v in row.items()} for row in without_nulls(rows, columns)]
    assert parse_rows(body, content_type) == expected


@pytest.mark.parametrize("fmt", FORMATS)
@SETTINGS
@given(table=rows_of(st.text(alphabet="abcXYZ019-. ", min_size=1, max_size=8), min_columns=2))
def test_round_trip_without_any_content_type(fmt: str, table: Any) -> None:
    # Sniffing alone must find the format (no Content-Type, no fmt); rows may be empty.
    columns, rows = table
    body, _ = render(rows, columns, fmt, flavor="nbia")
    expected = [{c: v for c, v in row.items() if v} for row in without_nulls(rows, columns)]
    assert parse_rows(body) == expected


# ---------------------------------------------------------------------------------------------
# exact bytes of the real server (notes §3.1, §4)
# ---------------------------------------------------------------------------------------------

COLLECTIONS = [{"Collection": "4D-Lung"}, {"Collection": "ACRIN-6698"}]


def test_collection_values_csv_exact() -> None:
    assert render(COLLECTIONS, ["Collection"], "csv") == (
        b"Collection\n4D-Lung\nACRIN-6698\n",
        "text/csv",
    )


def test_single_column_csv_null_is_an_empty_line() -> None:
    body, _ = render([{"Collection": "A"}, {"Collection": None}, {}], ["Collection"], "csv")
    assert body == b"Collection\nA\n\n\n"
    assert parse_rows(body, "text/csv") == [{"Collection": "A"}]


def test_collection_values_json_exact() -> None:
    body, content_type = render(COLLECTIONS, ["Collection"], "json")
    assert body == b'[{"Collection":"4D-Lung"},{"Collection":"ACRIN-6698"}]'
    assert content_type == "application/json"


def test_json_escapes_slash_omits_nulls_and_keeps_column_order() -> None:
    row = {
        "LicenseURI": "http://creativecommons.org/licenses/by/3.0/",
        "ProtocolName": None,
        "ImageCount": 48,
        "SeriesInstanceUID": "1.2.3",
        "AnnotationsFlag": True,
        "Extra": "not a column",
    }
    columns = ["SeriesInstanceUID", "ProtocolName", "ImageCount", "AnnotationsFlag", "LicenseURI"]
    body, _ = render([row], columns, "json")
    assert body == (
        b'[{"SeriesInstanceUID":"1.2.3","ImageCount":48,"AnnotationsFlag":true,'
        b'"LicenseURI":"http:\\/\\/creativecommons.org\\/licenses\\/by\\/3.0\\/"}]'
    )
    assert parse_rows(body)[0]["LicenseURI"] == "http://creativecommons.org/licenses/by/3.0/"
    body_v3, _ = render([row], columns, "json", flavor="tcia-v3")
    assert b'"LicenseURI":"http://creativecommons.org/licenses/by/3.0/"' in body_v3


def test_json_keeps_non_ascii_as_utf8() -> None:
    body, _ = render([{"Manufacturer": "Siemens Healthineers é"}], ["Manufacturer"], "json")
    assert body == '[{"Manufacturer":"Siemens Healthineers é"}]'.encode()


def test_multi_column_csv_exact() -> None:
    rows = [{"SeriesInstanceUID": "1.2.3", "Modality": 'M"R', "ProtocolName": None, "N": 2}]
    body, content_type = render(rows, ["SeriesInstanceUID", "Modality", "ProtocolName", "N"], "csv")
    assert body == (b'"SeriesInstanceUID","Modality","ProtocolName","N"\n"1.2.3","M""R","","2"\n')
    assert content_type == "text/csv"


def test_xml_exact() -> None:
    assert render(COLLECTIONS[:1], ["Collection"], "xml") == (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results><Row>'
        b"<Collection type='java.lang.String'>4D-Lung</Collection></Row></Results>",
        "application/xml",
    )


def test_xml_types_encoding_and_null_omission() -> None:
    row = {"URI": "http://x.org/a b", "Count": 48, "Size": 2**40, "Ratio": 0.5, "Flag": False}
    row["Gone"] = None
    body, _ = render([row], ["URI", "Gone", "Count", "Size", "Ratio", "Flag"], "xml")
    assert body.endswith(
        b"<Row><URI type='java.lang.String'>http&#x3a;&#x2f;&#x2f;x.org&#x2f;a b</URI>"
        b"<Count type='java.lang.Integer'>48</Count>"
        b"<Size type='java.lang.Long'>1099511627776</Size>"
        b"<Ratio type='java.lang.Double'>0.5</Ratio>"
        b"<Flag type='java.lang.Boolean'>false</Flag></Row></Results>"
    )
    assert parse_rows(body) == [{k: v for k, v in row.items() if v is not None}]


def test_xml_and_html_encode_like_esapi() -> None:
    value = "a&b<c>\"d\"'e'/f é\u0001"
    encoded = b"a&amp;b&lt;c&gt;&quot;d&quot;&#x27;e&#x27;&#x2f;f &eacute;&#xfffd;"
    assert encoded in render([{"V": value}], ["V"], "xml")[0]
    assert b"<TD>" + encoded + b"</TD>" in render([{"V": value}], ["V"], "html")[0]
    # The control character is replaced (as ESAPI does); everything else comes back.
    assert parse_rows(render([{"V": value}], ["V"], "html")[0]) == [{"V": value[:-1] + "\ufffd"}]


def test_html_exact_with_null_cell() -> None:
    rows = [{"Collection": "4D-Lung", "Count": 3}, {"Collection": None, "Count": 0}]
    assert render(rows, ["Collection", "Count"], "html") == (
        b"<P ALIGN='center'><TABLE BORDER=1><TR><TH>Collection</TH><TH>Count</TH></TR>"
        b"<TR><TD>4D-Lung</TD><TD>3</TD></TR><TR><TD>&nbsp;</TD><TD>0</TD></TR></TABLE></P>",
        "text/html",
    )


def test_html_nbsp_character_is_not_a_null() -> None:
    body, _ = render([{"V": "\xa0"}, {"V": None}, {"V": ""}], ["V"], "html")
    assert parse_rows(body) == [{"V": "\xa0"}, {}, {"V": ""}]


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("json", "application/json"), ("csv", "text/csv"), ("xml", "application/xml"),
     ("html", "text/html")],
)  # fmt: skip
def test_no_rows_is_an_empty_body_on_nbia(fmt: str, content_type: str) -> None:
    assert render([], ["Collection"], fmt) == (b"", content_type)
    assert render([], ["A", "B"], fmt.upper()) == (b"", content_type)


def test_no_rows_on_tcia_v3() -> None:
    assert render([], ["Collection"], "json", flavor="tcia-v3")[0] == b"[]"
    assert render([], ["Collection"], "csv", flavor="tcia-v3")[0] == b"Collection\n"
    assert render([], ["A", "B"], "csv", flavor="tcia-v3")[0] == b'"A","B"\n'
    assert render([], ["A"], "xml", flavor="tcia-v3")[0].endswith(b"<Results></Results>")
    html_body = render([], ["A"], "html", flavor="tcia-v3")[0]
    assert html_body == b"<P ALIGN='center'><TABLE BORDER=1><TR><TH>A</TH></TR></TABLE></P>"
    for fmt in FORMATS:
        body, content_type = render([], ["A", "B"], fmt, flavor="tcia-v3")
        assert parse_rows(body, content_type) == []


def test_render_rejects_unknown_format_flavor_and_no_columns() -> None:
    with pytest.raises(ValueError, match="unknown format 'yaml'"):
        render(COLLECTIONS, ["Collection"], "yaml")
    with pytest.raises(ValueError, match="flavor"):
        render(COLLECTIONS, ["Collection"], "json", flavor="v9")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        render(COLLECTIONS, [], "json")
    with pytest.raises(ValueError):
        render([{"x": float("nan")}], ["x"], "json")


def test_render_other_python_types_as_strings() -> None:
    rows = [{"When": Decimal("1.50"), "Path": Path("a")}]
    assert parse_rows(render(rows, ["When", "Path"], "json")[0]) == [{"When": "1.50", "Path": "a"}]


# ---------------------------------------------------------------------------------------------
# parsing real and hostile bodies
# ---------------------------------------------------------------------------------------------


def test_parse_real_get_series_sample() -> None:
    raw = SAMPLE_JSON.read_bytes()
    rows = parse_rows(raw, "application/json")
    assert len(rows) == 3
    first = rows[0]
    assert first["SeriesInstanceUID"] == (
        "1.3.6.1.4.1.14519.5.2.1.5168.1900.104193299251798317056218297018"
    )
    assert first["ImageCount"] == 48 and isinstance(first["ImageCount"], int)
    assert first["FileSize"] == 25273786 and first["SeriesNumber"] == 2
    assert first["LicenseURI"] == "http://creativecommons.org/licenses/by/3.0/"
    assert "ProtocolName" not in first  # null columns are omitted
    assert [to_int(field(r, "FileSize")) for r in rows] == [25273786, 25273674, 6664860]
    # Writing the rows back with the v2 column list gives the same bytes, modulo Jettison's '\/'.
    body, _ = render(rows, V2_SERIES_COLUMNS, "json")
    assert body.replace(b"\\/", b"/") == raw.strip()
    assert json.loads(body) == json.loads(raw)


def test_parse_real_sample_in_every_format() -> None:
    rows = parse_rows(SAMPLE_JSON.read_bytes())
    for fmt in ("xml", "html", "csv"):
        body, content_type = render(rows, V2_SERIES_COLUMNS, fmt)
        again = parse_rows(body, content_type)
        if fmt == "xml":
            assert again == rows
        else:
            assert again == [{k: str(v) for k, v in row.items()} for row in rows]


@pytest.mark.parametrize("body", [b"", b" ", b"\n", b"\r\n\t  \n", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("content_type", [None, "application/json", "text/csv", "text/html"])
def test_empty_body_is_no_rows(body: bytes, content_type: str | None) -> None:
    assert parse_rows(body, content_type) == []


@pytest.mark.parametrize(
    "body",
    [
        b"A parameter, SeriesInstanceUID is required for this API call.",
        b"Server was not able to process your request",
        b"Invalid query parameter: 'Foo'. Allowed parameters are: [Collection, format]",
    ],
)
@pytest.mark.parametrize("fmt", [None, "json"])
def test_plain_text_error_under_json_content_type(body: bytes, fmt: str | None) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_rows(body, "application/json", fmt)
    message = str(caught.value)
    assert "\n" not in message
    assert body[:40].decode() in message
    assert "JSON" in message


def test_plain_text_without_any_content_type_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="Server was not able"):
        parse_rows(b"Server was not able to process your request")


def test_protocol_error_message_is_one_line_and_short() -> None:
    body = b"Line one, with a comma\nline two is long " + b"x" * 500
    with pytest.raises(ProtocolError) as caught:
        parse_rows(body, "application/json")
    message = str(caught.value)
    assert "\n" not in message and "\\n" in message and len(message) < 300
    assert "Line one, with a comma" in message


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"PK\x03\x04\x14\x00\x00\x00binary zip", "binary"),
        (b'[{"Collection":"4D-Lung"', "malformed JSON"),
        (b'"just a string"', "JSON"),
        (b"42", "JSON"),
        (b"[[1, 2]]", "nested"),
        (b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>", "HTML"),
        (b"<Results><Row>", "XML"),
        (b"<unclosed", "XML"),
    ],
)
def test_unparseable_bodies(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parse_rows(body, "application/json")


def test_csv_with_too_many_fields_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="more fields"):
        parse_rows(b'"A","B"\n"1","2","3"\n', "text/csv")


def test_sniffing_beats_a_lying_content_type() -> None:
    csv_body = b'"Collection","Count"\n"4D-Lung","20"\n'
    assert parse_rows(csv_body, "application/json") == [{"Collection": "4D-Lung", "Count": "20"}]
    assert parse_rows(b"Collection\n4D-Lung\n", "application/json") == [{"Collection": "4D-Lung"}]
    assert parse_rows(b'[{"a":1}]', "text/csv", "csv") == [{"a": 1}]
    assert parse_rows(b"<TABLE><TR><TH>a</TH></TR><TR><TD>1</TD></TR></TABLE>", "text/csv") == [
        {"a": "1"}
    ]


def test_header_only_csv_needs_a_csv_declaration() -> None:
    assert parse_rows(b'"A","B"\n', "text/csv") == []
    assert parse_rows(b"Collection\n", "text/csv; charset=utf-8") == []
    assert parse_rows(b"Collection\n", None, "csv") == []
    assert parse_rows(b"Collection\n", "text/plain", "csvquoted") == []
    with pytest.raises(ProtocolError):
        parse_rows(b'"A","B"\n', "application/json", "csv")


def test_parse_rejects_unknown_fmt_hint() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        parse_rows(b"[]", None, "yaml")


def test_json_shapes() -> None:
    assert parse_rows(b"[]") == []
    assert parse_rows(b"null", "application/json") == []
    assert parse_rows(b'{"errorMessage":"boom"}') == [{"errorMessage": "boom"}]
    assert parse_rows(b'["1.2.3","1.2.4"]') == [{"value": "1.2.3"}, {"value": "1.2.4"}]
    assert parse_rows(b'[{"a":null,"b":1,"c":"x\\/y"}]') == [{"b": 1, "c": "x/y"}]
    assert parse_rows(b' \n [{"a": 1.5, "b": true}] \n') == [{"a": 1.5, "b": True}]


def test_csv_crlf_bom_quotes_and_newlines() -> None:
    body = (
        b'\xef\xbb\xbf"Name","Note","Empty"\r\n'
        b'"a, b","say ""hi""\r\nnext line",""\r\n'
        b'"  spaced  ","x",""\r\n'
    )
    assert parse_rows(body, "text/csv") == [
        {"Name": "a, b", "Note": 'say "hi"\r\nnext line'},
        {"Name": "  spaced  ", "Note": "x"},
    ]


def test_unquoted_multi_column_csv() -> None:
    body = b"Filename,Size,Flag\r\n00000001.dcm,12,\r\n\r\n00000002.dcm,13,yes\r\n"
    assert parse_rows(body) == [
        {"Filename": "00000001.dcm", "Size": "12"},
        {"Filename": "00000002.dcm", "Size": "13", "Flag": "yes"},
    ]


def test_single_column_csv_takes_values_literally() -> None:
    body = b'Manufacturer\r\nSiemens, AG\r\n"Quoted" Inc\r\n  spaced \r\n\r\n'
    assert parse_rows(body, "text/csv") == [
        {"Manufacturer": "Siemens, AG"},
        {"Manufacturer": '"Quoted" Inc'},
        {"Manufacturer": "  spaced "},
    ]


def test_xml_with_entities_odd_names_and_self_closing() -> None:
    body = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Results>\n <Row>\n'
        b"  <Collection type='java.lang.String'>A&#x2f;B &amp; C &eacute;</Collection>\n"
        b"  <Date Released type='java.lang.String'>2015-05-27</Date Released>\n"
        b'  <SeriesCount type="java.lang.Integer">2</SeriesCount>\n'
        b"  <Size type='java.math.BigDecimal'>12.0</Size>\n"
        b"  <Plain>untyped</Plain><Empty/>\n"
        b" </Row>\n <Row/>\n</Results>\n"
    )
    rows = parse_rows(body, "application/xml")
    assert rows == [
        {
            "Collection": "A/B & C é",
            "Date Released": "2015-05-27",
            "SeriesCount": 2,
            "Size": "12.0",
            "Plain": "untyped",
            "Empty": "",
        },
        {},
    ]
    assert field(rows[0], "DateReleased") == "2015-05-27"
    assert to_int(rows[0]["Size"]) == 12


def test_xml_empty_results_and_generic_xml() -> None:
    assert parse_rows(b"<Results/>") == []
    assert parse_rows(b"<?xml version='1.0'?><Results>\n</Results>") == []
    generic = b"<list><item><Collection>A</Collection><N>1</N></item><item><N>2</N></item></list>"
    assert parse_rows(generic, "application/xml") == [{"Collection": "A", "N": "1"}, {"N": "2"}]


def test_html_liberal_table() -> None:
    body = (
        b"<!DOCTYPE html><html><body><p>Results</p>\n<table border='1'>\n"
        b"<tr><th>Collection</th><th>Series&nbsp;Count</th><th>URI</th></tr>\n"
        b"<tr><td>4D-Lung</td><td>&nbsp;</td>"
        b"<td><a href='x'>http&#x3a;&#x2f;&#x2f;x</a></td></tr>\n"
        b"<tr><td>A &amp; B</td><td>2</td></tr>\n"
        b"</table><table><tr><th>other</th></tr></table></body></html>"
    )
    # First table only; inline tags dropped; a short row simply lacks the last columns.
    assert parse_rows(body, "text/html") == [
        {"Collection": "4D-Lung", "URI": "http://x"},
        {"Collection": "A & B", "Series\xa0Count": "2"},
    ]


def test_non_utf8_body_falls_back() -> None:
    assert parse_rows("Collection\nCaf\xe9\n".encode("latin-1"), "text/csv") == [
        {"Collection": "Café"}
    ]
    body = '[{"a":"Ωmega"}]'.encode("cp1253")
    assert parse_rows(body, "application/json; charset=cp1253") == [{"a": "Ωmega"}]


# ---------------------------------------------------------------------------------------------
# field() and to_int()
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "names", "expected"),
    [
        ({"PatientId": "P1"}, ("PatientID",), "P1"),
        ({"PatientID": "P2"}, ("PatientID",), "P2"),
        ({"patient_id": "P3"}, ("PatientID",), "P3"),
        ({"PATIENT ID": "P4"}, ("PatientID",), "P4"),
        ({"Date Released": "d"}, ("DateReleased",), "d"),
        ({"sop_instance_uid": "1.2"}, ("SOPInstanceUID",), "1.2"),
        ({"Subject ID": "S"}, ("PatientID", "Subject ID"), "S"),
        ({"PatientID": None, "PatientId": "P5"}, ("PatientID",), "P5"),
        ({"StudyDesc": "x", "StudyDescription": "y"}, ("StudyDescription", "StudyDesc"), "y"),
        ({"a": 0}, ("A",), 0),
        ({"a": ""}, ("a",), ""),
        ({"Other": "x"}, ("PatientID",), None),
        ({}, ("PatientID", "Subject ID"), None),
    ],
)
def test_field_aliases(row: dict[str, Any], names: tuple[str, ...], expected: object) -> None:
    assert field(row, *names) == expected


def test_field_prefers_exact_key_then_name_order() -> None:
    row = {"patientid": "loose", "PatientID": "exact"}
    assert field(row, "PatientID") == "exact"
    assert field({"Subject ID": "b", "patient_id": "a"}, "PatientID", "SubjectID") == "a"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12),
        ("12", 12),
        (" 12 ", 12),
        ("+7", 7),
        ("-3", -3),
        ("12345.0", 12345),
        ("12345.000000", 12345),
        ("1.2345678E7", 12345678),
        ("1.2345678e+7", 12345678),
        ("25273786", 25273786),
        (12.0, 12),
        (-0.0, 0),
        (Decimal("48"), 48),
        (2**70, 2**70),
        ("123456789012345678901234567890", 123456789012345678901234567890),
        (None, None),
        ("", None),
        ("  ", None),
        ("null", None),
        ("None", None),
        ("NaN", None),
        ("inf", None),
        (float("inf"), None),
        (float("nan"), None),
        ("12.5", None),
        (12.5, None),
        ("1_000", None),
        ("12abc", None),
        ("0x10", None),
        ("1E999999999", None),
        (True, None),
        (False, None),
        ([12], None),
        (b"12", None),
    ],
)
def test_to_int(value: object, expected: int | None) -> None:
    assert to_int(value) == expected
    assert to_int(value) is None or type(to_int(value)) is int


@SETTINGS
@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_to_int_of_every_integer_spelling(number: int) -> None:
    assert to_int(number) == number
    assert to_int(str(number)) == number
    assert to_int(f"{number}.0") == number
    assert to_int(f"{number:E}".replace("E", "e")) == int(Decimal(f"{number:E}"))


# ---------------------------------------------------------------------------------------------
# md5hashes.csv
# ---------------------------------------------------------------------------------------------

HASH_A = "0123456789abcdef0123456789abcdef"
HASH_B = "fedcba9876543210fedcba9876543210"


def test_md5_csv_exact() -> None:
    body = render_md5_csv([("00000001.dcm", HASH_A), ("00000002.dcm", HASH_B)])
    assert body == f"Filename,MD5Hash\n00000001.dcm,{HASH_A}\n00000002.dcm,{HASH_B}\n".encode()
    assert render_md5_csv([]) == b"Filename,MD5Hash\n"
    with pytest.raises(ValueError):
        render_md5_csv([("a\nb.dcm", HASH_A)])


def test_md5_csv_tolerant_parse() -> None:
    body = (
        f"\ufeffFilename , MD5Hash\r\n 1-001.dcm , {HASH_A.upper()} \r\n\r\n"
        f'"1-002.dcm","{HASH_B}"\r\n'
    ).encode()
    assert parse_md5_csv(body) == {"1-001.dcm": HASH_A, "1-002.dcm": HASH_B}
    assert parse_md5_csv(f"00000001.dcm,{HASH_A}\n".encode()) == {"00000001.dcm": HASH_A}
    assert parse_md5_csv(b"") == {}
    assert parse_md5_csv(b"Filename,MD5Hash\n") == {}


def test_md5_csv_bad_line_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not 'name,md5'"):
        parse_md5_csv(f"Filename,MD5Hash\na.dcm,{HASH_A}\nb.dcm,nothex\n".encode())
    with pytest.raises(ProtocolError, match="binary"):
        parse_md5_csv(b"PK\x03\x04\x00")


@SETTINGS
@given(
    st.dictionaries(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
            min_size=1,
            max_size=20,
        ).filter(lambda s: s.strip() == s and s.strip('"\ufeff') == s),
        st.from_regex(r"[0-9a-fA-F]{32}", fullmatch=True),
        max_size=10,
    )
)
def test_md5_csv_round_trip(hashes: dict[str, str]) -> None:
    parsed = parse_md5_csv(render_md5_csv(hashes.items()))
    assert parsed == {name: digest.lower() for name, digest in hashes.items()}
