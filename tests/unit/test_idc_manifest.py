"""The .s5cmd manifest parser: every real line format, odd lines reported and skipped."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcia_mirror.errors import InputError
from tcia_mirror.selection import Selection, build_selection
from tcia_mirror.sources.idc.manifest import (
    AWS_ENDPOINT,
    GCS_ENDPOINT,
    BucketRef,
    collection_from_filename,
    endpoint_for,
    is_s5cmd,
    parse_s5cmd,
    render_s5cmd,
)

U1 = "0c7b6c1e-1f4a-4b2e-9d8f-3a2b1c0d9e8f"
U2 = "7a1e2f3d-4c5b-6a79-8b0c-1d2e3f4a5b6c"


@pytest.mark.parametrize(
    "line",
    [
        f"cp s3://idc-open-data/{U1}/* .",
        f"cp s3://idc-open-data/{U1}/* ./",
        f"cp s3://idc-open-data/{U1}/*  .",
        f"sync s3://idc-open-data/{U1}/* .",
        f"cp --show-progress s3://idc-open-data/{U1}/* .",
        f"sync --concurrency 4 --show-progress s3://idc-open-data/{U1}/* .",
        f'cp s3://idc-open-data/{U1}/* "./my folder/with spaces"',
        f"s3://idc-open-data/{U1}/*",
        f"  cp   s3://idc-open-data/{U1}/*   .  ",
    ],
)
def test_every_real_folder_line_names_the_folder(line: str) -> None:
    m = parse_s5cmd(f"# a comment\n\n{line}\n")
    assert m.refs == (BucketRef("idc-open-data", U1, "folder"),)
    assert not m.skipped


def test_legacy_file_level_line() -> None:
    m = parse_s5cmd(f"cp s3://idc-open-data/{U1}.dcm .\n")
    assert m.refs == (BucketRef("idc-open-data", f"{U1}.dcm", "object"),)
    assert m.refs[0].prefix == f"{U1}.dcm"


def test_unknown_and_gs_lines_are_reported_by_number_and_skipped() -> None:
    text = "\n".join(
        [
            "# header",
            f"cp s3://idc-open-data/{U1}/* .",
            f"cp gs://public-datasets-idc/{U2}/* .",
            "rm -rf /",
            f"cp s3://idc-open-data/{U2}/* .",
            'cp "unbalanced',
        ]
    )
    m = parse_s5cmd(text)
    assert [r.path for r in m.refs] == [U1, U2]
    assert [n for n, _t, _w in m.skipped] == [3, 4, 6]
    assert "gs://" in m.skipped[0][2]
    assert any("line 3" in msg for msg in m.messages())


def test_a_manifest_without_any_series_is_refused() -> None:
    with pytest.raises(InputError):
        parse_s5cmd("# nothing\nrm x\n")


def test_header_comment_gives_the_endpoint() -> None:
    text = f"# s5cmd --no-sign-request --endpoint-url https://example.org/ run m.s5cmd\ncp s3://b-x/{U1}/* .\n"
    m = parse_s5cmd(text)
    assert m.endpoint == "https://example.org"
    assert m.refs[0].endpoint == "https://example.org"


def test_bucket_endpoints() -> None:
    for b in ("idc-open-data", "idc-open-data-two", "idc-open-data-cr"):
        assert endpoint_for(b) == AWS_ENDPOINT
    for b in ("public-datasets-idc", "idc-open-idc1", "idc-open-cr"):
        assert endpoint_for(b) == GCS_ENDPOINT
    assert endpoint_for("someone-elses-bucket") is None


def test_collection_from_the_file_name() -> None:
    assert collection_from_filename("/x/NLST-idc_v20-aws.s5cmd") == "NLST"
    assert collection_from_filename("TCGA-LUAD-idc_v18-gcs.s5cmd") == "TCGA-LUAD"
    assert collection_from_filename("manifest.s5cmd") is None
    m = parse_s5cmd(f"cp s3://idc-open-data/{U1}/* .\n", source="dir/LIDC-IDRI-idc_v19-aws.s5cmd")
    assert m.refs[0].collection == "LIDC-IDRI"


def test_kind_is_recognised_by_content() -> None:
    assert is_s5cmd(f"cp s3://idc-open-data/{U1}/* .\n")
    assert not is_s5cmd("ListOfSeriesToDownload=\n1.2.3.4\n")
    assert not is_s5cmd("# s3://in-a-comment/only\n1.2.3\n")


def test_build_selection_mixes_tcia_and_s5cmd_manifests(tmp_path: Path, caplog) -> None:
    s5 = tmp_path / "whatever.txt"  # not the extension: the content decides
    s5.write_text(f"cp s3://idc-open-data/{U1}/* .\ncp gs://public-datasets-idc/{U2}/* .\n")
    tcia = tmp_path / "m.tcia"
    tcia.write_text("manifestVersion=3.0\nListOfSeriesToDownload=\n1.2.840.1.2\n")
    with caplog.at_level(logging.WARNING, logger="tcia_mirror"):
        sel = build_selection(manifests=[str(s5), str(tcia)], series=["1.2.840.9"])
    assert set(sel.series) == {"1.2.840.1.2", "1.2.840.9"}
    assert sel.bucket_series == (f"s3://idc-open-data/{U1}/",)
    assert "line 2" in caplog.text
    assert not sel.is_empty()
    assert Selection.from_json(sel.to_json()) == sel
    assert "bucket series" in sel.describe()


def test_union_merges_bucket_series() -> None:
    a = Selection(bucket_series=("s3://idc-open-data/a/",))
    b = Selection(bucket_series=("s3://idc-open-data/b/", "s3://idc-open-data/a/"))
    assert a.union(b).bucket_series == ("s3://idc-open-data/a/", "s3://idc-open-data/b/")


_uuid = st.uuids().map(str)
_bucket = st.sampled_from(["idc-open-data", "idc-open-data-two", "idc-open-cr", "my.bucket-1"])


@given(
    refs=st.lists(st.builds(BucketRef, _bucket, _uuid), min_size=1, max_size=8, unique=True),
    style=st.sampled_from(["portal", "portal-slash", "doi", "sync", "bare", "quoted"]),
    endpoint=st.none() | st.just("http://127.0.0.1:9000"),
)
def test_render_then_parse_round_trips(refs, style, endpoint) -> None:
    m = parse_s5cmd(render_s5cmd(refs, style, endpoint=endpoint))
    assert [(r.bucket, r.path, r.kind) for r in m.refs] == [
        (r.bucket, r.path, r.kind) for r in refs
    ]
    assert m.endpoint == endpoint
    assert not m.skipped


@given(
    ref=st.builds(
        BucketRef,
        _bucket,
        _uuid,
        st.just("folder"),
        st.none() | st.just("http://h:1/x y"),
        st.none() | st.text(min_size=1, max_size=20).filter(lambda t: t.strip() == t and t),
    )
)
def test_bucket_ref_text_round_trips(ref: BucketRef) -> None:
    assert BucketRef.from_text(ref.to_text()) == ref


@given(junk=st.text(max_size=200))
def test_parser_never_crashes_on_junk(junk: str) -> None:
    try:
        m = parse_s5cmd(junk)
    except InputError:
        return
    assert m.refs
