"""Every endpoint of the seed's table, every format, every profile, against the simulator."""

from __future__ import annotations

import datetime

import pytest

from helpers import config_for, running_sim
from tcia_mirror.errors import AuthError, BadRequestError
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.sources.nbia.formats import parse_rows

pytestmark = pytest.mark.anyio

PROFILES = ["tcia-v3", "nbia-v1", "nbia-v2", "nbia-v4"]


def creds_for(profile: str) -> Credentials:
    if profile == "tcia-v3":
        return Credentials(api_key="sim-key")
    if profile == "nbia-v2":
        return Credentials(user="alice", password="wonderland")
    return Credentials()


@pytest.mark.parametrize("profile", PROFILES)
async def test_typed_endpoints(profile: str) -> None:
    async with running_sim() as sim:
        ds = sim.dataset
        s0 = ds.series[0]
        async with ArchiveClient(config_for(sim, profile, credentials=creds_for(profile))) as c:
            assert set(await c.collections()) == set(ds.collections())
            assert s0.modality in await c.modalities(s0.collection)
            assert s0.body_part in await c.body_parts(s0.collection)
            assert s0.manufacturer in await c.manufacturers(s0.collection)
            patients = await c.patients(s0.collection)
            assert s0.patient_id in {p.patient_id for p in patients}
            by_mod = await c.patients_by_modality(s0.collection, s0.modality)
            assert s0.patient_id in {p.patient_id for p in by_mod}
            studies = await c.patient_studies(s0.collection, s0.patient_id)
            assert s0.study_uid in {st.study_instance_uid for st in studies}
            series = await c.series(s0.collection)
            expected = {s.series_uid for s in ds.series if s.collection == s0.collection}
            assert {s.series_instance_uid for s in series} == expected
            one = [s for s in series if s.series_instance_uid == s0.series_uid][0]
            assert one.patient_id == s0.patient_id and one.study_instance_uid == s0.study_uid
            size = await c.series_size(s0.series_uid)
            assert (size.total_bytes, size.object_count) == ds.series_size(s0.series_uid)
            sops = await c.sop_instance_uids(s0.series_uid)
            assert set(sops) == {i.sop_uid for i in s0.instances}
            old = datetime.date(1990, 1, 1)
            assert s0.patient_id in {p.patient_id for p in await c.new_patients(s0.collection, old)}
            assert s0.study_uid in {
                st.study_instance_uid for st in await c.new_studies(s0.collection, old)
            }
            future = datetime.date(2100, 1, 1)
            assert await c.new_patients(s0.collection, future) == []
            name, uids = next(iter(ds.shared_lists.items()))
            assert {s.series_instance_uid for s in await c.shared_list(name)} == set(uids)
            assert await c.series("NO-SUCH-COLLECTION") == []
            # images
            endpoint, params = c.single_image_request(s0.series_uid, s0.instances[0].sop_uid)
            async with c.open(endpoint, params) as resp:
                body = await resp.read()
            assert body == ds.instance_bytes(s0.series_uid, s0.instances[0].sop_uid)
            async with c.open("getImage", {"SeriesInstanceUID": s0.series_uid}) as resp:
                assert (await resp.read())[:2] == b"PK"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("fmt", ["json", "csv", "xml", "html"])
async def test_every_format_parses_to_the_same_rows(profile: str, fmt: str) -> None:
    async with running_sim() as sim:
        s0 = sim.dataset.series[0]
        async with ArchiveClient(config_for(sim, profile, credentials=creds_for(profile))) as c:
            old = c._date("NewPatientsInCollection", datetime.date(1990, 1, 1))
            for endpoint, params in [
                ("getCollectionValues", {}),
                ("getModalityValues", {"Collection": s0.collection}),
                ("getBodyPartValues", {"Collection": s0.collection}),
                ("getManufacturerValues", {"Collection": s0.collection}),
                ("getPatient", {"Collection": s0.collection}),
                ("PatientsByModality", {"Collection": s0.collection, "Modality": s0.modality}),
                ("getPatientStudy", {"Collection": s0.collection}),
                ("getSeries", {"Collection": s0.collection}),
                ("getSeriesSize", {"SeriesInstanceUID": s0.series_uid}),
                ("NewPatientsInCollection", {"Collection": s0.collection, "Date": old}),
                ("NewStudiesInPatientCollection", {"Collection": s0.collection, "Date": old}),
                ("getSOPInstanceUIDs", {"SeriesInstanceUID": s0.series_uid}),
            ]:
                as_json = await c.raw(endpoint, params, fmt="json")
                other = await c.raw(endpoint, params, fmt=fmt)
                assert as_json.status == other.status == 200
                rows_json = parse_rows(as_json.body, as_json.content_type)
                rows_other = parse_rows(other.body, other.content_type)
                assert len(rows_json) == len(rows_other) > 0
                # values agree as text whatever the format
                for a, b in zip(rows_json, rows_other, strict=True):
                    assert {k: str(v) for k, v in a.items()} == {k: str(v) for k, v in b.items()}


async def test_v3_metadata_and_api_key_in_query() -> None:
    import dataclasses

    async with running_sim() as sim:
        cfg = config_for(sim, "tcia-v3", credentials=Credentials(api_key="sim-key"))
        async with ArchiveClient(cfg) as c:
            meta = await c.raw("getPatientStudy", metadata=True)
            assert meta.status == 200 and b"PatientID" in meta.body
        prof = dataclasses.replace(cfg.profile, api_key_in="query")
        async with ArchiveClient(dataclasses.replace(cfg, profile=prof)) as c:
            assert await c.collections()
        bad = config_for(sim, "tcia-v3", credentials=Credentials(api_key="wrong"))
        async with ArchiveClient(bad) as c:
            with pytest.raises(AuthError, match="--api-key"):
                await c.collections()


async def test_v2_token_is_refreshed_after_expiry() -> None:
    import anyio

    async with running_sim(token_ttl=1.0) as sim:
        cfg = config_for(
            sim, "nbia-v2", credentials=Credentials(user="alice", password="wonderland")
        )
        async with ArchiveClient(cfg) as c:
            assert await c.collections()
            assert c._tokens is not None and c._tokens.grants == 1
            await anyio.sleep(1.2)
            assert await c.collections()
            assert c._tokens.grants == 2
        bad = config_for(sim, "nbia-v2", credentials=Credentials(user="alice", password="nope"))
        async with ArchiveClient(bad) as c:
            with pytest.raises(AuthError) as info:
                await c.collections()
            assert "nope" not in str(info.value)
        guest = config_for(sim, "nbia-v2")
        async with ArchiveClient(guest) as c:
            assert await c.collections()


async def test_v4_strict_parameters_are_reported() -> None:
    async with running_sim() as sim, ArchiveClient(config_for(sim, "nbia-v4")) as c:
        with pytest.raises(BadRequestError, match="Invalid query parameter"):
            await c.raw("getSeries", {"Bogus": "1"})
