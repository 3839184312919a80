""".tcia manifests and series files: the real sample, quirks, render -> parse round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcia_mirror.errors import InputError
from tcia_mirror.sources.nbia.manifest import (
    UID_RE,
    Manifest,
    is_uid,
    parse_manifest,
    parse_series_file,
    render_manifest,
)

SAMPLE_NAME = "manifest-1561766528292.tcia"
SHARED_SAMPLE = Path("/work/shared/reference/samples") / SAMPLE_NAME
FIXTURE = Path(__file__).parents[1] / "data" / SAMPLE_NAME
SAMPLE = SHARED_SAMPLE if SHARED_SAMPLE.exists() else FIXTURE

SETTINGS = settings(max_examples=150, deadline=None)

U1 = "1.3.6.1.4.1.14519.5.2.1.2932.1975.258485580179562855968279889580"
U2 = "1.3.6.1.4.1.14519.5.2.1.2932.1975.828151202600553380765273057255"
U3 = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"

HEADER = (
    "downloadServerUrl=https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet\n"
    "includeAnnotation=true\n"
    "noOfrRetry=4\n"
    "databasketId=manifest-1.tcia\n"
    "manifestVersion=3.0\n"
    "ListOfSeriesToDownload=\n"
)

UID = st.from_regex(r"[0-9]{1,8}(\.[0-9]{1,8}){1,6}", fullmatch=True)


# ---------------------------------------------------------------------------------------------
# UIDs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (U1, True),
        ("1.2", True),
        ("1.02.003", True),  # leading zeros are not valid DICOM, but we are liberal
        ("1" + ".2" * 31 + "3", True),  # 64 characters
        ("1" + ".2" * 32, False),  # 65 characters
        ("12345", False),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.2.3a", False),
        (" 1.2.3", False),
        ("", False),
        ("Series ID", False),
        ("1.2.3\n", False),
    ],
)
def test_is_uid(text: str, expected: bool) -> None:
    assert len("1" + ".2" * 31 + "3") == 64
    assert is_uid(text) is expected


def test_uid_re_is_a_compiled_pattern() -> None:
    assert UID_RE.fullmatch("1.2.3") and not UID_RE.fullmatch("1.2.x")


# ---------------------------------------------------------------------------------------------
# manifests
# ---------------------------------------------------------------------------------------------


def test_fixture_copy_matches_the_shared_sample() -> None:
    assert FIXTURE.exists()
    if SHARED_SAMPLE.exists():
        assert FIXTURE.read_bytes() == SHARED_SAMPLE.read_bytes()


def test_real_sample_manifest() -> None:
    manifest = parse_manifest(SAMPLE.read_text(encoding="utf-8"), source=SAMPLE.name)
    assert manifest.headers == {
        "downloadServerUrl": (
            "https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"
        ),
        "includeAnnotation": "true",
        "noOfrRetry": "4",
        "databasketId": "manifest-1561766528292.tcia",
        "manifestVersion": "3.0",
    }
    assert len(manifest.series_uids) == 13
    assert manifest.series_uids[0] == U1
    assert manifest.series_uids[-1] == (
        "1.3.6.1.4.1.14519.5.2.1.2932.1975.806694139290428616868542160946"
    )
    assert all(uid.startswith("1.3.6.1.4.1.14519.5.2.1.2932.1975.") for uid in manifest.series_uids)


def test_render_manifest_exact_and_like_the_sample() -> None:
    assert render_manifest([U1, U2]) == f"{HEADER}{U1}\n{U2}\n"
    sample = SAMPLE.read_text(encoding="utf-8")
    uids = parse_manifest(sample).series_uids
    rendered = render_manifest(
        uids,
        server_url="https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet",
        basket_id="manifest-1561766528292.tcia",
    )
    assert rendered == sample


def test_render_manifest_drops_duplicates_and_rejects_non_uids() -> None:
    assert render_manifest([U1, U2, U1]) == f"{HEADER}{U1}\n{U2}\n"
    assert render_manifest([]) == HEADER
    with pytest.raises(ValueError, match="not a DICOM series UID"):
        render_manifest([U1, "1.2.3\nevil=1"])


def test_stray_series_id_line() -> None:
    text = f"{HEADER}Series ID\n{U1}\n{U2}\n"
    assert parse_manifest(text).series_uids == (U1, U2)


def test_crlf_bom_blank_lines_and_trailing_spaces() -> None:
    text = "\ufeff" + HEADER.replace("\n", "  \r\n") + f"\r\n{U1}  \r\n\r\n\t{U2}\r\n\r\n"
    manifest = parse_manifest(text)
    assert manifest.series_uids == (U1, U2)
    assert manifest.headers["downloadServerUrl"].endswith("/DownloadServlet")
    assert manifest.headers["manifestVersion"] == "3.0"
    assert "ListOfSeriesToDownload" not in manifest.headers


def test_old_mac_line_endings() -> None:
    assert parse_manifest(f"{U1}\r{U2}\r").series_uids == (U1, U2)


def test_no_header_is_a_plain_uid_list() -> None:
    manifest = parse_manifest(f"{U1}\n{U2}\n")
    assert manifest == Manifest(headers={}, series_uids=(U1, U2))


def test_uids_before_the_list_marker_and_duplicates() -> None:
    text = f"{U3}\n{HEADER}{U1}\n{U3}\n{U2}\n{U1}\n"
    assert parse_manifest(text).series_uids == (U3, U1, U2)


def test_non_uid_lines_are_skipped() -> None:
    text = f"{HEADER}# a comment\n{U1}\nnot a uid\n1.2.3.\n{U2} trailing words\n=oops\n"
    manifest = parse_manifest(text)
    assert manifest.series_uids == (U1,)
    assert set(manifest.headers) == {
        "downloadServerUrl",
        "includeAnnotation",
        "noOfrRetry",
        "databasketId",
        "manifestVersion",
    }


def test_header_spaces_properties_escapes_and_uid_on_marker_line() -> None:
    text = (
        "downloadServerUrl = https\\://nlst.cancerimagingarchive.net/nbia-download/servlet/"
        "DownloadServlet\nnoOfrRetry=10\nListOfSeriesToDownload=" + U1 + "\n" + U2 + "\n"
    )
    manifest = parse_manifest(text)
    assert manifest.headers == {
        "downloadServerUrl": (
            "https://nlst.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet"
        ),
        "noOfrRetry": "10",
    }
    assert manifest.series_uids == (U1, U2)


@pytest.mark.parametrize("text", ["", "\n\n", HEADER, "Series ID\nhello\n", '{"a": 1}'])
def test_no_uids_is_an_input_error(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_manifest(text, source="x.tcia")
    assert str(caught.value) == "x.tcia: no series UIDs found (is this a .tcia manifest?)"
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    "text",
    [
        "PK\x03\x04\x14\x00\x00\x00" + U1,
        "\x00" * 10 + U1,
        bytes(range(256)).decode("latin-1") * 2 + "\n" + U1,
        "\ufffd\ufffd\ufffd\ufffd" * 10 + "\n" + U1,
    ],
)
def test_binary_file_is_an_input_error(text: str) -> None:
    with pytest.raises(InputError, match="binary"):
        parse_manifest(text, source="scan.dcm")
    with pytest.raises(InputError, match="binary"):
        parse_series_file(text)


@SETTINGS
@given(
    uids=st.lists(UID, max_size=30).filter(bool),
    server=st.sampled_from(
        [
            "https://nbia.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet",
            "https://public.cancerimagingarchive.net/nbia-download/servlet/DownloadServlet",
            "http://127.0.0.1:8765/nbia-download/servlet/DownloadServlet",
        ]
    ),
    basket=st.from_regex(r"manifest-[0-9A-Za-z]{1,24}\.tcia", fullmatch=True),
)
def test_render_parse_round_trip(uids: list[str], server: str, basket: str) -> None:
    text = render_manifest(uids, server_url=server, basket_id=basket)
    assert text.endswith("\n") and "\r" not in text
    assert len(text.splitlines()) == 6 + len(set(uids))
    manifest = parse_manifest(text)
    assert manifest.series_uids == tuple(dict.fromkeys(uids))
    assert manifest.headers == {
        "downloadServerUrl": server,
        "includeAnnotation": "true",
        "noOfrRetry": "4",
        "databasketId": basket,
        "manifestVersion": "3.0",
    }
    # The same file with Windows line endings and a BOM reads the same.
    assert parse_manifest("\ufeff" + text.replace("\n", "\r\n")) == manifest


# ---------------------------------------------------------------------------------------------
# series files
# ---------------------------------------------------------------------------------------------


def test_plain_series_list() -> None:
    text = f"# series to fetch\n\n{U1}\n  {U2}  # the second one\nnot-a-uid\n{U1}\n{U3}\r\n"
    assert parse_series_file(text) == [U1, U2, U3]


def test_plain_list_with_a_header_word_and_trailing_fields() -> None:
    assert parse_series_file(f"SeriesInstanceUID\n{U1}\n{U2}\n") == [U1, U2]
    assert parse_series_file(f"{U1},CT\n{U2},MR\n") == [U1, U2]


def test_csv_with_series_instance_uid_column() -> None:
    text = (
        "\ufeffStudyInstanceUID,SeriesInstanceUID,Modality\r\n"
        f"{U3},{U1},CT\r\n"
        f'{U3},"{U2}",MR\r\n'
        f"{U3},n/a,MR\r\n"
        f"{U3}\r\n"
    )
    assert parse_series_file(text) == [U1, U2]  # the study UID column is never read


@pytest.mark.parametrize(
    ("header", "delimiter"),
    [
        ("Series UID", "\t"),
        ("series_instance_uid", ","),
        ("SERIESINSTANCEUID", ";"),
        ("Series Instance UID", ","),
        ("Series ID", "\t"),
    ],
)
def test_series_column_spellings(header: str, delimiter: str) -> None:
    text = delimiter.join(["Collection", header]) + "\n"
    text += delimiter.join(["LIDC-IDRI", U1]) + "\n" + delimiter.join(["LIDC-IDRI", U2]) + "\n"
    assert parse_series_file(text, source="list.tsv") == [U1, U2]


def test_csv_without_series_column_is_an_input_error() -> None:
    with pytest.raises(InputError, match="list.csv: the header has no series UID column"):
        parse_series_file(f"StudyInstanceUID,Modality\n{U1},CT\n", source="list.csv")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "hello\nworld\n", "Series UID\n"])
def test_series_file_without_uids_is_an_input_error(text: str) -> None:
    with pytest.raises(InputError, match="^series file: "):
        parse_series_file(text)


def test_a_manifest_is_also_a_series_file() -> None:
    assert parse_series_file(SAMPLE.read_text(encoding="utf-8"))[:2] == [U1, U2]


@SETTINGS
@given(
    uids=st.lists(UID, min_size=1, max_size=30),
    newline=st.sampled_from(["\n", "\r\n"]),
    as_csv=st.booleans(),
)
def test_series_file_round_trip(uids: list[str], newline: str, as_csv: bool) -> None:
    if as_csv:
        lines = ["Collection,SeriesInstanceUID,Modality"]
        lines += [f"C{i},{uid},CT" for i, uid in enumerate(uids)]
    else:
        lines = uids
    assert parse_series_file(newline.join(lines) + newline) == list(dict.fromkeys(uids))
