from __future__ import annotations

from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcia_mirror.errors import DataError, InputError
from tcia_mirror.fs.layout import (
    FIELDS,
    PRESETS,
    SERIES_FIELDS,
    Layout,
    descriptive_date,
    fields_from_series,
    instance_filename,
    sanitize_component,
)
from tcia_mirror.sources.nbia.models import Series

SERIES = {
    "Collection": "TCGA-BRCA",
    "PatientID": "TCGA-EW-A1IY",
    "StudyInstanceUID": "1.3.6.1.4.1.14519.5.2.1.3344.4008.108215298826582925342143430123",
    "StudyDate": "2001-06-20 00:00:00.0",
    "StudyDescription": "BreastBilateral Tumor",
    "StudyID": "",
    "SeriesInstanceUID": "1.3.6.1.4.1.14519.5.2.1.3344.4008.237453938471291093081022654321",
    "SeriesNumber": "3",
    "SeriesDescription": "T1 se ax bilat",
    "Modality": "MR",
}


# --- sanitize_component ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.2.840.113619.2.55", "1.2.840.113619.2.55"),
        ("LIDC-IDRI", "LIDC-IDRI"),
        ("a/b\\c", "a_b_c"),
        ("..", "unknown"),
        (".", "unknown"),
        ("../../etc", "_.._etc"),
        ("  padded  ", "padded"),
        ("1.2.3\x00", "1.2.3"),  # DICOM UI padding
        ("trailing dots...", "trailing dots"),
        (".hidden", "hidden"),
        ("x\x00y\x1fz\x7f", "x_y_z_"),
        ('<>:"|?*', "_______"),
        ("", "unknown"),
        ("   ", "unknown"),
        (None, "unknown"),
        (3, "3"),
        (3.0, "3"),
        (2.5, "2.5"),
        ("CON", "CON_"),
        ("nul.txt", "nul_.txt"),
        ("Console", "Console"),
        ("CT\tHEAD\nNECK", "CT_HEAD_NECK"),
        ("\udcff", "_"),  # lone surrogate (surrogateescape'd bytes) never reaches the disk
    ],
)
def test_sanitize_examples(value: object, expected: str) -> None:
    assert sanitize_component(value) == expected


def test_sanitize_truncates_utf8_safely() -> None:
    assert sanitize_component("é" * 100) == "é" * 60  # 120 bytes
    assert sanitize_component("é" * 100, max_len=7) == "é" * 3
    assert sanitize_component("ab" + "." * 200, max_len=10) == "ab"
    assert sanitize_component("abc   def", max_len=5) == "abc"
    assert sanitize_component(None, fallback="NA") == "NA"


@given(
    st.one_of(st.text(), st.integers(), st.floats(allow_nan=True), st.none()),
    st.integers(1, 300),
)
def test_sanitize_properties(value: object, max_len: int) -> None:
    out = sanitize_component(value, max_len=max(max_len, len("unknown")))
    assert out
    assert out not in (".", "..")
    assert not any(c in out for c in '/\\\x00<>:"|?*')
    assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in out)
    assert out == out.strip(" .")
    assert len(out.encode("utf-8")) <= max(max_len, len("unknown"))


# --- instance file names -------------------------------------------------------------------------


def test_instance_filename() -> None:
    assert instance_filename("1.2.3.4") == "1.2.3.4.dcm"
    assert instance_filename("1.2.3.4\x00") == "1.2.3.4.dcm"
    odd_a, odd_b = instance_filename("a/b"), instance_filename("a_b")
    assert odd_a != odd_b and odd_a.startswith("a_b~") and odd_b == "a_b.dcm"
    assert instance_filename("..") != instance_filename(".")
    assert len(instance_filename("9" * 400).encode()) <= 255
    with pytest.raises(DataError):
        instance_filename("")
    with pytest.raises(DataError):
        instance_filename(" \x00")


# --- presets ------------------------------------------------------------------------------------


def test_presets() -> None:
    uid_path = PurePosixPath(
        SERIES["Collection"],
        SERIES["PatientID"],
        SERIES["StudyInstanceUID"],
        SERIES["SeriesInstanceUID"],
    )
    assert Layout.parse("default").series_dir(SERIES) == uid_path
    assert Layout.parse("nbia-classic").series_dir(SERIES) == uid_path
    assert Layout.parse("flat").series_dir(SERIES) == PurePosixPath(SERIES["SeriesInstanceUID"])
    assert Layout.parse("nbia-descriptive").series_dir(SERIES) == PurePosixPath(
        "TCGA-BRCA/TCGA-EW-A1IY/06-20-2001-BreastBilateral Tumor-30123/3-T1 se ax bilat-54321"
    )
    assert set(PRESETS) == {"default", "nbia-classic", "nbia-descriptive", "flat"}


def test_descriptive_rules() -> None:
    layout = Layout.parse("nbia-descriptive")
    fields = dict(
        SERIES,
        StudyDate="12-12-2003",
        StudyID="7",
        StudyDescription="CHEST/ABD/PELVIS " + "x" * 60,
        SeriesNumber=3000566.0,
        SeriesDescription="null",
    )
    study, series = layout.series_dir(fields).parts[2:]
    assert study == "12-12-2003-7-CHEST-ABD-PELVIS " + "x" * 36 + "-30123"
    assert len("CHEST-ABD-PELVIS " + "x" * 36) == 53
    assert series == "3000566-54321"  # "null" description omitted with its dash
    # every optional part missing: only the UID tails remain
    bare = {"SeriesInstanceUID": "1.2.345678", "StudyInstanceUID": "9.8.76543"}
    assert layout.series_dir(bare).parts[2:] == ("76543", "45678")
    assert layout.series_dir(bare).parts[:2] == ("unknown", "unknown")
    # a description of "-" is omitted too
    assert layout.series_dir(dict(bare, SeriesDescription="-")).parts[3] == "45678"


@pytest.mark.parametrize(
    "value",
    ["2003-12-12 00:00:00.0", "12-12-2003", "20031212", "2003-12-12", "2003-12-12T00:00:00"],
)
def test_descriptive_date_forms(value: str) -> None:
    assert descriptive_date(value) == "12-12-2003"


def test_descriptive_date_odd_values() -> None:
    assert descriptive_date(None) == ""
    assert descriptive_date("null") == ""
    assert descriptive_date("06/20/2001") == "06-20-2001"
    assert descriptive_date("sometime") == "sometime"


def test_descriptive_values_are_sanitised() -> None:
    fields = dict(SERIES, SeriesDescription='a:b*c?"<>|\\', SeriesNumber=None)
    assert Layout.parse("nbia-descriptive").series_dir(fields).parts[3] == "a_b_c______-54321"


# --- templates ----------------------------------------------------------------------------------


def test_custom_template_and_fields_used() -> None:
    layout = Layout.parse("{Modality}/{PatientID}_{SeriesNumber}/series-{SeriesInstanceUID}")
    assert layout.fields_used() == {"Modality", "PatientID", "SeriesNumber", "SeriesInstanceUID"}
    assert layout.series_dir(SERIES) == PurePosixPath(
        "MR", "TCGA-EW-A1IY_3", "series-" + SERIES["SeriesInstanceUID"]
    )
    assert Layout.parse("nbia-descriptive").fields_used() == {
        "Collection",
        "PatientID",
        "DescriptiveStudy",
        "DescriptiveSeries",
    }
    assert Layout.parse("{{literal}}/{Modality}").series_dir(SERIES) == PurePosixPath(
        "{literal}/MR"
    )


def test_missing_values_fall_back() -> None:
    assert Layout.parse("default").series_dir({"SeriesInstanceUID": "1.2"}) == PurePosixPath(
        "unknown/unknown/unknown/1.2"
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{Colection}/{SeriesInstanceUID}", "unknown field {Colection}"),
        ("{Collection.x}", "unknown field"),
        ("{Collection[0]}", "unknown field"),
        ("{}", "unknown field"),
        ("{Collection", "bad layout template"),
        ("Collection}", "bad layout template"),
        ("{Collection!r}", "format spec or conversion"),
        ("{Collection:>10}", "format spec or conversion"),
        ("/{Collection}", "must be relative"),
        ("C:/{Collection}", "must be relative"),
        ("{Collection}//{SeriesInstanceUID}", "empty folder name"),
        ("{Collection}/", "empty folder name"),
        ("../{Collection}", "'.' or '..'"),
        ("{Collection}/./x", "'.' or '..'"),
        ("a\\b/{Collection}", "not allowed"),
        ("ab:c/{Collection}", "not allowed"),
        ("x/{Collection}\x01", "not allowed"),
        ("", "empty layout"),
        ("  ", "empty layout"),
    ],
)
def test_bad_templates(template: str, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("{", r"\{").replace("[", r"\[")):
        Layout.parse(template)


def test_unknown_field_message_lists_allowed() -> None:
    with pytest.raises(InputError) as info:
        Layout.parse("{Foo}")
    assert "{Foo}" in str(info.value)
    for name in SERIES_FIELDS:
        assert name in str(info.value)


def test_direct_construction_is_validated() -> None:
    with pytest.raises(InputError):
        Layout("../{Collection}")


field_values = st.one_of(st.none(), st.text(max_size=80), st.integers(), st.floats())


@given(
    st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4),
    st.dictionaries(st.sampled_from(sorted(SERIES_FIELDS)), field_values),
    st.sampled_from(["", "x-", ".", "..", " "]),
)
def test_series_dir_always_relative_and_safe(
    names: list[str], fields: dict[str, object], prefix: str
) -> None:
    layout = Layout.parse("/".join(prefix + "{" + n + "}" for n in names))
    path = layout.series_dir(fields)
    assert not path.is_absolute()
    assert len(path.parts) == len(names)
    for part in path.parts:
        assert part not in ("", ".", "..")
        assert "\x00" not in part and "\\" not in part
        assert len(part.encode("utf-8")) <= 255


def test_fields_from_series() -> None:
    series = Series(
        series_instance_uid="1.2",
        study_instance_uid="1.1",
        patient_id="P1",
        collection="C",
        series_number="4",
        extra={"StudyID": "77", "PatientName": "Anon"},
    )
    fields = fields_from_series(series)
    assert set(fields) == set(SERIES_FIELDS)
    assert fields["StudyID"] == "77" and fields["SeriesNumber"] == "4"
    assert Layout.parse("default").series_dir(fields) == PurePosixPath("C/P1/1.1/1.2")
