"""The archive simulator: dataset, DICOM files, every endpoint family, auth and each fault."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import io
import json
import re
import struct
import time
import zipfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import pydicom
import pytest

from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults, Simulator, serve
from tcia_mirror.testing.simulator.dataset import AWKWARD_DESCRIPTION
from tcia_mirror.testing.simulator.queries import SERIES_V4, SERIES_V12
from tcia_mirror.testing.simulator.zipstream import new_file_names

pytestmark = pytest.mark.anyio

Response = tuple[int, Mapping[str, str], bytes]


@pytest.fixture
def dataset() -> Dataset:
    return Dataset(DatasetSpec.preset("test", seed=7))


@pytest.fixture
async def sim(dataset: Dataset) -> AsyncIterator[Simulator]:
    async with Simulator(dataset) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(
    http: aiohttp.ClientSession,
    url: str,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    async with http.get(url, params=params, headers=headers) as resp:
        return resp.status, resp.headers, await resp.read()


def unzip(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


# ------------------------------------------------------------------------------- dataset
def test_dataset_is_deterministic_per_seed() -> None:
    one, two = Dataset(DatasetSpec.preset("test", 3)), Dataset(DatasetSpec.preset("test", 3))
    assert [s.series_uid for s in one.series] == [s.series_uid for s in two.series]
    assert one.ground_truth() == two.ground_truth()
    other = Dataset(DatasetSpec.preset("test", 4))
    uids = {i.sop_uid for s in one.series for i in s.instances}
    assert uids.isdisjoint(i.sop_uid for s in other.series for i in s.instances)
    assert {s.series_uid for s in one.series}.isdisjoint(s.series_uid for s in other.series)
    for uid in [s.series_uid for s in one.series] + list(uids):
        assert len(uid) <= 64 and re.fullmatch(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))+", uid)


def test_presets() -> None:
    test = Dataset(DatasetSpec.preset("test"))
    assert len(test.series) == 6 and len(test.collections()) == 2
    assert len({s.patient_id for s in test.series}) == 3
    assert all(2 <= len(s.instances) <= 5 for s in test.series)
    assert test.total_bytes() < 100_000
    demo = Dataset(DatasetSpec.preset("demo"))
    assert 8 <= len(demo.series) <= 12 and len({s.patient_id for s in demo.series}) == 4
    assert all(10 <= len(s.instances) <= 20 for s in demo.series)
    bench = Dataset(DatasetSpec.preset("bench"))
    assert [len(s.instances) for s in bench.series] == [80] * 8
    assert (bench.spec.rows, bench.spec.cols) == (512, 512)
    with pytest.raises(ValueError, match="unknown preset"):
        DatasetSpec.preset("huge")  # type: ignore[arg-type]


def test_dicom_files_are_valid_part10(dataset: Dataset) -> None:
    for series in dataset.series:
        total = 0
        for inst in series.instances:
            data = dataset.instance_bytes(series.series_uid, inst.sop_uid)
            total += len(data)
            ds = pydicom.dcmread(io.BytesIO(data))
            assert data[128:132] == b"DICM"
            assert ds.file_meta.TransferSyntaxUID == inst.transfer_syntax  # a mix: see dicomgen
            assert ds.SOPInstanceUID == inst.sop_uid == ds.file_meta.MediaStorageSOPInstanceUID
            assert ds.SeriesInstanceUID == series.series_uid
            assert ds.StudyInstanceUID == series.study_uid
            assert ds.PatientID == series.patient_id
            assert ds.SeriesDescription == series.series_description
            assert ds.InstanceNumber == inst.instance_number
            assert ds.Modality == series.modality
            want = {"CT": pydicom.uid.CTImageStorage, "MR": pydicom.uid.MRImageStorage}
            assert ds.SOPClassUID == want[series.modality]
            assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (16, 16, 16)
            if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
                assert len(ds.PixelData) == 16 * 16 * 2
        assert dataset.series_size(series.series_uid) == (total, len(series.instances))


def test_awkward_values_exist(dataset: Dataset) -> None:
    assert any(s.series_description == AWKWARD_DESCRIPTION for s in dataset.series)
    assert all(c in AWKWARD_DESCRIPTION for c in ',"/µ')
    assert any(" " in s.patient_id for s in dataset.series)


def test_new_file_names_algorithm(dataset: Dataset) -> None:
    from tcia_mirror.testing.simulator.dataset import SimInstance

    names = [n for _, n in new_file_names([SimInstance(str(i), i, 1) for i in range(1, 49)])]
    assert names[0] == "1-01.dcm" and names[-1] == "1-48.dcm"
    names = [n for _, n in new_file_names([SimInstance(str(i), i, 1) for i in range(120, 0, -1)])]
    assert names[:2] == ["1-001.dcm", "1-002.dcm"] and names[-1] == "1-120.dcm"
    two_acq = [SimInstance(str(i), i, 1 if i <= 3 else 2) for i in range(1, 6)]
    assert [n for _, n in new_file_names(two_acq)] == [
        "1-1.dcm", "1-2.dcm", "1-3.dcm", "2-1.dcm", "2-2.dcm",
    ]  # fmt: skip


# ------------------------------------------------------------------------------- queries
async def test_query_columns_types_and_case_rules(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    v1, v4 = sim.base_url("nbia-v1"), sim.base_url("nbia-v4")
    status, headers, body = await fetch(http, f"{v1}/getSeries", {"Collection": "sim-lung-ct"})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert b"\\/" in body  # Jettison escapes slashes
    rows = json.loads(body)
    assert len(rows) == 4 and all(r["Collection"] == "SIM-LUNG-CT" for r in rows)
    for row in rows:
        assert list(row) == [c for c in SERIES_V12 if c in row]
        assert isinstance(row["SeriesNumber"], int) and isinstance(row["FileSize"], int)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.0", row["DateReleased"])
        assert "AnnotationsFlag" not in row  # nulls omitted
    assert any("ProtocolName" not in r for r in rows)
    _, _, body = await fetch(http, f"{v1}/getSeries", {"Modality": "ct"})
    assert body == b""  # v1 matches Modality exactly
    _, _, body = await fetch(http, f"{v4}/getSeries", {"Modality": "ct"})
    v4_rows = json.loads(body)
    assert len(v4_rows) == 4 and list(v4_rows[0]) == [c for c in SERIES_V4 if c in v4_rows[0]]
    assert re.fullmatch(r"\d\d-\d\d-\d{4}", v4_rows[0]["DateReleased"])
    assert v4_rows[0]["Authorized"] == 1
    space_id = next(s.patient_id for s in dataset.series if " " in s.patient_id)
    _, _, body = await fetch(http, f"{v1}/getPatient", {"PatientId": space_id.lower()})
    assert [r["PatientId"] for r in json.loads(body)] == [space_id]
    _, _, body = await fetch(http, f"{v1}/getCollectionValues", {"format": "csv"})
    assert body == b"Collection\nSIM-BRAIN-MR\nSIM-LUNG-CT\n"
    _, headers, body = await fetch(http, f"{v4}/getPatientStudy", {"format": "xml"})
    assert headers["Content-Type"].startswith("application/xml") and b"<Results>" in body


async def test_empty_result_is_empty_body(sim: Simulator, http: aiohttp.ClientSession) -> None:
    for profile in ("nbia-v1", "nbia-v4"):
        url = sim.base_url(profile) + "/getSeries"
        status, _, body = await fetch(http, url, {"Collection": "NOPE"})
        assert (status, body) == (200, b"")
    v3 = sim.base_url("tcia-v3") + "/TCIA/query/getSeries"
    status, _, body = await fetch(http, v3, {"Collection": "NOPE", "api_key": sim.api_key})
    assert (status, body) == (200, b"[]")
    status, _, body = await fetch(
        http, sim.base_url("nbia-v1") + "/getSeriesSize", {"SeriesInstanceUID": "1.2.3"}
    )
    assert (status, json.loads(body)) == (200, [{}])
    status, _, body = await fetch(
        http, sim.base_url("nbia-v1") + "/getSeriesMetaData", {"SeriesInstanceUID": "1.2.3"}
    )
    assert (status, body) == (204, b"")


async def test_parameter_errors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    v1, v4 = sim.base_url("nbia-v1"), sim.base_url("nbia-v4")
    status, _, body = await fetch(http, f"{v4}/getSeries", {"Colection": "x"})
    assert status == 400
    assert body.decode().startswith(
        "Invalid query parameter: 'Colection'. Allowed parameters are: ["
    )
    status, _, body = await fetch(http, f"{v1}/getSeries", {"Colection": "x"})
    assert status == 200 and len(json.loads(body)) == 6  # v1 ignores unknown parameters
    status, headers, body = await fetch(http, f"{v1}/getSOPInstanceUIDs")
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert body == b"A parameter, SeriesInstanceUID is required for this API call."
    status, _, body = await fetch(http, f"{v4}/getImage")
    assert (status, body) == (
        400,
        b"A parameter, SeriesInstanceUID, is required for this API call.",
    )
    status, _, body = await fetch(http, f"{v1}/NewPatientsInCollection", {"Collection": "X"})
    assert (status, body) == (
        400,
        b"A parameter, Collection and Date are required for this API call.",
    )
    status, _, body = await fetch(http, f"{v1}/getSeries", {"format": "yaml"})
    assert (status, body) == (500, b"Server was not able to process your request")
    status, _, body = await fetch(http, f"{v1}/getImage", {"SeriesInstanceUID": "1.2.3"})
    assert status == 400 and body.endswith(b"is not in public domain.")
    status, _, _ = await fetch(http, f"{v4}/getContentsByName", {"name": "sim-shared-1"})
    assert status == 404
    assert (await fetch(http, f"{v1}/noSuchEndpoint"))[0] == 404


async def test_shared_list_and_updated_series(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    v1 = sim.base_url("nbia-v1")
    _, headers, body = await fetch(
        http, f"{v1}/getContentsByName", {"name": "sim-shared-1", "format": "csv"}
    )
    rows = json.loads(body)  # always JSON
    assert [r["SeriesInstanceUID"] for r in rows] == dataset.shared_lists["sim-shared-1"]
    assert "Date Released" in rows[0]
    _, _, body = await fetch(http, f"{v1}/getUpdatedSeries", {"fromDate": "01/01/2016"})
    assert {r["Collection"] for r in json.loads(body)} == {"SIM-BRAIN-MR"}


# ---------------------------------------------------------------------------------- images
async def test_get_image_zip_layout_and_sizes(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    truth = dataset.ground_truth()
    for series in dataset.series:
        uid = series.series_uid
        params = {"SeriesInstanceUID": uid}
        status, headers, body = await fetch(http, sim.base_url("nbia-v1") + "/getImage", params)
        assert status == 200 and headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"] == f'attachment; filename="{uid}.zip"'
        assert "Content-Length" not in headers and headers["Transfer-Encoding"] == "chunked"
        # Java ZipOutputStream shape: DEFLATED entries with a data descriptor (flag bit 3).
        _, _, flags, method = struct.unpack("<IHHH", body[:10])
        assert flags & 0x08 and method == 8
        entries = unzip(body)
        names = list(entries)
        assert names[0] == "LICENSE" and b"SIM-" in entries["LICENSE"]
        assert names[1:] == [f"{i:08d}.dcm" for i in range(1, len(series.instances) + 1)]
        ordered = sorted(series.instances, key=lambda i: i.instance_number)
        assert [entries[n] for n in names[1:]] == [truth[uid][i.sop_uid] for i in ordered]
        _, _, size = await fetch(http, sim.base_url("nbia-v4") + "/getSeriesSize", params)
        dicom_bytes = sum(len(entries[n]) for n in names[1:])
        assert json.loads(size) == [
            {"TotalSizeInBytes": dicom_bytes, "ObjectCount": len(names) - 1}
        ]


async def test_md5_zips_and_new_file_names(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    series = dataset.series[2]  # two acquisitions
    params = {"SeriesInstanceUID": series.series_uid}
    _, _, body = await fetch(http, sim.base_url("nbia-v1") + "/getImageWithMD5Hash", params)
    entries = unzip(body)
    names = list(entries)
    assert "LICENSE" not in entries and names[-1] == "md5hashes.csv"
    lines = entries["md5hashes.csv"].decode().splitlines()
    assert lines[0] == "Filename,MD5Hash"
    listed = dict(line.split(",") for line in lines[1:])
    assert listed == {n: hashlib.md5(entries[n]).hexdigest() for n in names[:-1]}
    v4 = sim.base_url("nbia-v4") + "/getImage"
    _, _, body = await fetch(http, v4, {**params, "NewFileNames": "Yes", "IncludeMD5": "Yes"})
    names = list(unzip(body))
    acquisitions = [i.acquisition_number for i in series.instances]
    first = acquisitions.count(1)
    expected = [f"1-{i}.dcm" for i in range(1, first + 1)]
    expected += [f"2-{i}.dcm" for i in range(1, len(acquisitions) - first + 1)]
    assert names == ["LICENSE", *expected, "md5hashes.csv"] and first < len(acquisitions)
    v1 = sim.base_url("nbia-v1") + "/getImage"
    _, _, body = await fetch(http, v1, {**params, "IncludeMD5": "Yes"})
    assert "md5hashes.csv" not in unzip(body)  # v1 ignores IncludeMD5


async def test_single_image(sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset) -> None:
    series = dataset.series[0]
    inst = series.instances[1]
    url = sim.base_url("nbia-v4") + "/getSingleImage"
    params = {"SeriesInstanceUID": series.series_uid, "SOPInstanceUID": inst.sop_uid}
    status, headers, body = await fetch(http, url, params)
    assert status == 200 and headers["Content-Type"] == "application/dicom"
    assert headers["Content-Disposition"] == f"attachment; filename={inst.sop_uid}.dcm"
    assert body == dataset.instance_bytes(series.series_uid, inst.sop_uid)
    status, _, _ = await fetch(http, url, {**params, "SOPInstanceUID": "1.2.3"})
    assert status == 500
    status, _, body = await fetch(http, url, {"SeriesInstanceUID": series.series_uid})
    assert status == 400 and b"SeriesInstanceUID and SOPInstanceUID" in body
    assert sim.image_requests[("getSingleImage", series.series_uid, inst.sop_uid)] == 1
    assert sim.stats["getSingleImage"] == 3


# --------------------------------------------------------------------------------- TCIA v3
async def test_v3_api_key_metadata_and_rows(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    base = sim.base_url("tcia-v3") + "/TCIA/query"
    key = {"api_key": sim.api_key}
    status, _, body = await fetch(http, f"{base}/getCollectionValues")
    assert status == 401 and "errorMessage" in json.loads(body)
    assert (await fetch(http, f"{base}/getCollectionValues", {"api_key": "wrong"}))[0] == 401
    status, _, body = await fetch(http, f"{base}/getCollectionValues", headers=key)
    assert status == 200 and json.loads(body) == [
        {"Collection": "SIM-BRAIN-MR"}, {"Collection": "SIM-LUNG-CT"},
    ]  # fmt: skip
    status, _, body = await fetch(http, f"{base}/getCollectionValues", key)
    assert status == 200
    assert (await fetch(http, f"{base}/getSeries/metadata"))[0] == 401
    status, _, body = await fetch(http, f"{base}/getSeriesSize/metadata", headers=key)
    meta = json.loads(body)
    assert status == 200 and meta["name"] == "getSeriesSize"
    assert meta["parameters"] == [
        {
            "name": "SeriesInstanceUID",
            "required": True,
            "description": "SeriesInstanceUID to filter by",
        }
    ]
    assert [a["name"] for a in meta["returnedAttributes"]] == ["TotalSizeInBytes", "ObjectCount"]
    assert (await fetch(http, f"{base}/getNothing", headers=key))[0] == 404
    series = dataset.series[0]
    uid = {"SeriesInstanceUID": series.series_uid}
    _, _, body = await fetch(http, f"{base}/getSeriesSize", uid, key)
    total, count = dataset.series_size(series.series_uid)
    assert json.loads(body) == [{"TotalSizeInBytes": f"{total}.0", "ObjectCount": count}]
    _, _, body = await fetch(http, f"{base}/getSOPInstanceUIDs", uid, key)
    assert json.loads(body) == [{"sop_instance_uid": i.sop_uid} for i in series.instances]
    status, headers, body = await fetch(http, f"{base}/getImage", uid, key)
    assert headers["Content-Disposition"] == 'attachment; filename="bindaas-blob-download.zip"'
    assert len(unzip(body)) == len(series.instances) + 1
    _, _, body = await fetch(
        http, f"{base}/PatientsByModality", {"Collection": "SIM-BRAIN-MR", "Modality": "MR"}, key
    )
    assert [r["PatientID"] for r in json.loads(body)] == ["SIM-BRAIN 0001"]
    status, _, body = await fetch(http, f"{base}/PatientsByModality", {"Collection": "X"}, key)
    assert status == 400 and "errorMessage" in json.loads(body)
    shared = sim.base_url("tcia-v3") + "/SharedList/query/ContentsByName"
    _, _, body = await fetch(http, shared, {"name": "sim-shared-1"}, key)
    assert len(json.loads(body)) == len(dataset.shared_lists["sim-shared-1"])


# ------------------------------------------------------------------------------- auth (v2)
async def test_v2_tokens_issue_expire_refresh(
    dataset: Dataset, http: aiohttp.ClientSession
) -> None:
    async with Simulator(dataset, token_ttl=1.0, refresh_ttl=30.0) as sim:
        url = sim.base_url("nbia-v2") + "/getCollectionValues"
        status, _, body = await fetch(http, url)
        assert status == 401 and json.loads(body)["error"] == "unauthorized"
        form = {
            "username": "alice",
            "password": "nope",
            "client_id": "NBIA",
            "grant_type": "password",
        }
        async with http.post(sim.token_url, data=form) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "invalid_grant"
        token_urls = [sim.token_url, sim.root + "/nbia-api/services/oauth/token"]
        for token_url, user in zip(token_urls, ["alice", "nbia_guest"], strict=True):
            password = "wonderland" if user == "alice" else "anything"
            async with http.post(
                token_url, data={**form, "username": user, "password": password}
            ) as resp:
                assert resp.status == 200
                grant = await resp.json()
        assert grant["token_type"] == "Bearer" and grant["expires_in"] == 1
        bearer = {"Authorization": f"Bearer {grant['access_token']}"}
        status, _, body = await fetch(http, url, headers=bearer)
        assert status == 200 and len(json.loads(body)) == 2
        status, _, _ = await fetch(http, url, headers={"Authorization": "Bearer junk"})
        assert status == 401
        await asyncio.sleep(1.1)
        status, headers, body = await fetch(http, url, headers=bearer)
        assert status == 401 and json.loads(body)["error"] == "invalid_token"
        assert "expired" in json.loads(body)["error_description"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
        refresh = {
            "grant_type": "refresh_token",
            "refresh_token": grant["refresh_token"],
            "client_id": "NBIA",
        }
        async with http.post(sim.token_url, data=refresh) as resp:
            assert resp.status == 200
            fresh = await resp.json()
        status, _, _ = await fetch(
            http, url, headers={"Authorization": f"Bearer {fresh['access_token']}"}
        )
        assert status == 200
        async with http.post(sim.token_url, data={**refresh, "refresh_token": "bad"}) as resp:
            assert resp.status == 400
        # v1 is public; v4 accepts a token but does not need one.
        assert (await fetch(http, sim.base_url("nbia-v1") + "/getCollectionValues"))[0] == 200
        assert (
            await fetch(http, sim.base_url("nbia-v4") + "/getCollectionValues", headers=bearer)
        )[0] == 200


# ---------------------------------------------------------------------------------- faults
async def test_error_rate_limit_and_endpoint_filter(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    base = sim.base_url("nbia-v4")
    image = {"SeriesInstanceUID": dataset.series[0].series_uid}
    sim.faults = Faults(error_rate=1.0)
    for _ in range(5):
        status, headers, _ = await fetch(http, f"{base}/getCollectionValues")
        assert status in (500, 502, 503) and headers["Content-Type"].startswith("text/plain")
    sim.faults = Faults(rate_limit_rate=1.0, retry_after=0.25)
    status, headers, _ = await fetch(http, f"{base}/getSeries")
    assert status == 429 and headers["Retry-After"] == "0.25"
    sim.faults = Faults(error_rate=1.0, endpoints=frozenset({"getImage"}))
    assert (await fetch(http, f"{base}/getSeries"))[0] == 200
    assert (await fetch(http, f"{base}/getImage", image))[0] >= 500
    sim.faults = Faults(error_rate=0.5, seed=1)
    statuses = [(await fetch(http, f"{base}/getCollectionValues"))[0] for _ in range(40)]
    assert 5 <= sum(s != 200 for s in statuses) <= 35
    assert sim.image_requests[("getImage", image["SeriesInstanceUID"], None)] == 1


async def test_latency_and_bandwidth(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    base = sim.base_url("nbia-v4")
    sim.faults = Faults(latency=0.3)
    start = time.monotonic()
    await fetch(http, f"{base}/getCollectionValues")
    assert time.monotonic() - start >= 0.3
    uid = max(dataset.series, key=lambda s: len(s.instances)).series_uid
    sim.faults = Faults()
    _, _, body = await fetch(http, f"{base}/getImage", {"SeriesInstanceUID": uid})
    sim.faults = Faults(bandwidth=len(body) / 0.4)
    start = time.monotonic()
    _, _, slow = await fetch(http, f"{base}/getImage", {"SeriesInstanceUID": uid})
    assert slow == body and time.monotonic() - start >= 0.35


async def test_drop_truncate_and_html_error(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    base = sim.base_url("nbia-v1")
    series = dataset.series[1]
    params = {"SeriesInstanceUID": series.series_uid}
    _, _, full = await fetch(http, f"{base}/getImage", params)
    sim.faults = Faults(drop_rate=1.0)
    for endpoint, extra in (
        ("getImage", {}),
        ("getSingleImage", {"SOPInstanceUID": series.instances[0].sop_uid}),
    ):
        async with http.get(f"{base}/{endpoint}", params={**params, **extra}) as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
    sim.faults = Faults(truncate_rate=1.0)
    status, _, short = await fetch(http, f"{base}/getImage", params)
    assert status == 200 and 0 < len(short) < len(full) and full.startswith(short)
    with pytest.raises(zipfile.BadZipFile):
        unzip(short)
    sim.faults = Faults(html_error_rate=1.0)
    status, headers, body = await fetch(http, f"{base}/getImage", params)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert body.lstrip().lower().startswith(b"<!doctype html")
    assert (await fetch(http, f"{base}/getSeries"))[0] == 200  # image endpoints only


async def test_hostile_names_and_size_mismatch(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    base = sim.base_url("nbia-v4")
    victim = max(dataset.series, key=lambda s: len(s.instances))
    other = next(s for s in dataset.series if s is not victim)
    sim.faults = Faults(hostile_series=frozenset({victim.series_uid}))
    _, _, body = await fetch(http, f"{base}/getImage", {"SeriesInstanceUID": victim.series_uid})
    names = list(unzip(body))
    assert names[1:4] == ["../evil.dcm", "/abs/evil.dcm", "a/../../x.dcm"]
    _, _, body = await fetch(http, f"{base}/getImage", {"SeriesInstanceUID": other.series_uid})
    assert not any(".." in n for n in unzip(body))
    sim.faults = Faults(hostile=True)
    _, _, body = await fetch(http, f"{base}/getImage", {"SeriesInstanceUID": other.series_uid})
    assert "../evil.dcm" in unzip(body)
    sim.faults = Faults(size_mismatch_series=frozenset({victim.series_uid}))
    _, _, body = await fetch(
        http, f"{base}/getSeriesSize", {"SeriesInstanceUID": victim.series_uid}
    )
    total, count = dataset.series_size(victim.series_uid)
    reported = json.loads(body)[0]
    assert (reported["TotalSizeInBytes"], reported["ObjectCount"]) != (total, count)


async def test_set_unreachable_then_back(sim: Simulator, http: aiohttp.ClientSession) -> None:
    url = sim.base_url("nbia-v1") + "/getCollectionValues"
    assert (await fetch(http, url))[0] == 200  # a keep-alive connection now exists
    sim.set_unreachable(0.5)
    for _ in range(2):  # the open connection is cut, then new connections are refused
        with pytest.raises(aiohttp.ClientConnectionError):
            await fetch(http, url)
    await asyncio.sleep(0.6)
    assert (await fetch(http, url))[0] == 200


# ------------------------------------------------------------------------ growing archive
async def test_add_patient_and_new_patients(
    sim: Simulator, http: aiohttp.ClientSession, dataset: Dataset
) -> None:
    added = dataset.add_patient("SIM-BRAIN-MR", released=datetime.date(2030, 1, 2), n_series=2)
    assert len(added) == 2 and all(s in dataset.series for s in added)
    patient = added[0].patient_id
    v1, v4 = sim.base_url("nbia-v1"), sim.base_url("nbia-v4")
    _, _, body = await fetch(
        http, f"{v1}/NewPatientsInCollection", {"Collection": "SIM-BRAIN-MR", "Date": "2030/01/02"}
    )
    assert [r["PatientId"] for r in json.loads(body)] == [patient]
    _, _, body = await fetch(
        http, f"{v1}/NewPatientsInCollection", {"Collection": "SIM-BRAIN-MR", "Date": "2030/01/03"}
    )
    assert body == b""
    _, _, body = await fetch(
        http,
        f"{v4}/NewPatientsInCollection",
        {"Collection": "sim-brain-mr", "fromDate": "01-01-2030"},
    )
    assert [r["PatientId"] for r in json.loads(body)] == [patient]
    _, _, body = await fetch(
        http,
        f"{v4}/NewStudiesInPatientCollection",
        {"Collection": "SIM-BRAIN-MR", "fromDate": "01-01-2030"},
    )
    assert [r["SeriesCount"] for r in json.loads(body)] == [2]
    v3 = sim.base_url("tcia-v3") + "/TCIA/query/NewPatientsInCollection"
    _, _, body = await fetch(
        http, v3, {"Collection": "SIM-BRAIN-MR", "Date": "2030-01-01", "api_key": sim.api_key}
    )
    assert [r["PatientID"] for r in json.loads(body)] == [patient]
    status, _, _ = await fetch(
        http,
        f"{v4}/NewPatientsInCollection",
        {"Collection": "SIM-BRAIN-MR", "fromDate": "2030/01/01"},
    )
    assert status == 400
    _, _, body = await fetch(http, f"{v4}/getImage", {"SeriesInstanceUID": added[1].series_uid})
    assert len(unzip(body)) == len(added[1].instances) + 1


# -------------------------------------------------------------------------------- serve()
async def test_serve_prints_profiles_and_serves(http: aiohttp.ClientSession) -> None:
    lines: list[str] = []
    task = asyncio.create_task(serve("test", seed=1, print_fn=lines.append))
    try:
        for _ in range(200):
            if any(line.startswith("shared") for line in lines):
                break
            await asyncio.sleep(0.01)
        urls: dict[str, Any] = dict(line.split(None, 1) for line in lines[1:] if "http" in line)
        assert set(urls) >= {"tcia-v3", "nbia-v1", "nbia-v2", "nbia-v4", "token-url"}
        status, _, body = await fetch(http, urls["nbia-v4"] + "/getCollectionValues")
        assert status == 200 and b"SIM-LUNG-CT" in body
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
