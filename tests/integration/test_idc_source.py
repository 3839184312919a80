"""IDC buckets end to end: the simulator's S3 bucket mirrored through .s5cmd manifests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tcia_mirror.config import client_config, resolve
from tcia_mirror.engine import pipeline
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.selection import build_selection
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.idc.source import HEAD_BYTES, _identity_fast
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.store import open_store
from tcia_mirror.store.sqlite import SqliteStore
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults
from tcia_mirror.testing.simulator.s3 import S3Simulator

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(attempts=6, base=0.01, cap=0.05, jitter=0.0, max_retry_after=0.05)


@pytest.fixture(params=["loop", "worker"], autouse=True)
def where_bytes_go(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs twice: with each object's bytes worked on the event loop (as
    for objects under ``OBJECT_WORKER_MIN_MEAN``), and in a ZIP worker that makes the
    request itself (as for larger ones); then no object's bytes may pass the loop."""
    if request.param == "loop":
        monkeypatch.setattr(pipeline, "OBJECT_WORKER_MIN_MEAN", 1 << 62)
    else:
        monkeypatch.setattr(pipeline, "OBJECT_WORKER_MIN_MEAN", 0)

        async def bytes_through_the_loop(self: object, chunk: bytes) -> None:
            raise AssertionError("an object's bytes passed through the event loop")

        monkeypatch.setattr(pipeline._SingleFile, "take", bytes_through_the_loop)
    return str(request.param)


class _Crash(BaseException):
    """A kill: raised from the rename seam, it skips every handler but ``finally``."""


@asynccontextmanager
async def bucket(**kw: object) -> AsyncIterator[S3Simulator]:
    s3 = S3Simulator(Dataset(DatasetSpec.preset("test")), **kw)  # type: ignore[arg-type]
    async with s3:
        yield s3


def config(s3: S3Simulator) -> ClientConfig:
    # the archive is never asked: a selection of bucket folders only
    return ClientConfig(base_url="http://127.0.0.1:9/unused", s3_endpoint=s3.endpoint, retry=FAST)


async def recorded_mirror(out: Path) -> Mirror:
    """What the CLI builds for ``resume --out DIR``: the recorded connection, nothing else."""
    rec = await Mirror(out).recorded()
    keep = {k: v for k in ("api", "base_url", "s3_endpoint") if (v := rec.get(k))}
    return Mirror(out, client_config(resolve({}, environ={}, defaults=keep)))


def on_disk(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*.dcm")
        if ".tcia-mirror" not in p.parts and not p.name.startswith(".")
    }


def expected_tree(s3: S3Simulator, dataset_series) -> dict[str, bytes]:
    """Where each object must land: <Collection>/<PatientID>/<StudyUID>/<SeriesUID>/<SOP>.dcm."""
    out: dict[str, bytes] = {}
    for s in dataset_series:
        bodies = s3.folder_bytes(s.series_uid)
        sops = sorted(i.sop_uid for i in s.instances)
        import io

        import pydicom  # noqa: E401, PLC0415

        for body in bodies.values():
            sop = pydicom.dcmread(io.BytesIO(body), stop_before_pixels=True).SOPInstanceUID
            assert sop in sops
            rel = f"{s.collection}/{s.patient_id}/{s.study_uid}/{s.series_uid}/{sop}.dcm"
            out[rel] = body
    return out


async def test_manifest_mirror_is_byte_identical_in_the_default_layout(tmp_path: Path) -> None:
    async with bucket(page_size=2) as s3:  # 2 keys a page: continuation must be followed
        manifest = s3.write_manifest(tmp_path / "m.s5cmd", style="doi")
        ds_series = [s for s in s3_dataset(s3)]
        mirror = Mirror(tmp_path / "out", config(s3))
        report = await mirror.download(build_selection(manifests=[str(manifest)]))
        assert report.ok, report.problems
        assert on_disk(tmp_path / "out") == expected_tree(s3, ds_series)
        lists = [r for r in s3.requests if r[1] == "?list"]
        assert len(lists) > len(s3.folders)  # more pages than folders
        assert (await mirror.verify()).ok
        # resume needs only --out: the endpoint was recorded
        recorded = await Mirror(tmp_path / "out").recorded()
        assert recorded["s3_endpoint"] == s3.endpoint


def s3_dataset(s3: S3Simulator):
    return S3_DATASETS[id(s3)]


S3_DATASETS: dict[int, object] = {}


@pytest.fixture(autouse=True)
def _remember_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    real = S3Simulator.__init__

    def init(self, dataset=None, **kw):  # type: ignore[no-untyped-def]
        real(self, dataset, **kw)
        S3_DATASETS[id(self)] = dataset.series if dataset is not None else []

    monkeypatch.setattr(S3Simulator, "__init__", init)


async def test_a_cut_body_continues_with_a_range_request(tmp_path: Path) -> None:
    async with bucket(multipart_every=0) as s3:
        manifest = s3.write_manifest(tmp_path / "m.s5cmd", style="portal")
        mirror = Mirror(tmp_path / "out", config(s3))
        await mirror.plan(build_selection(manifests=[str(manifest)]))
        # from now on every body is cut part-way, continuations included
        s3.faults.drop_rate = 1.0
        s3.requests.clear()
        report = await mirror.resume()
        assert report.ok, report.problems
        assert s3.faults_injected["drop"] > len(s3.objects)
        assert on_disk(tmp_path / "out") == expected_tree(s3, s3_dataset(s3))
        for key, obj in s3.objects.items():
            starts = [
                int(r[2].split("=")[1].split("-")[0]) if r[2] else 0
                for r in s3.requests
                if r[0] == "GET" and r[1] == key
            ]
            assert starts[0] == 0 and len(starts) > 1, (key, starts)
            assert starts == sorted(set(starts)), f"{key}: bytes fetched again: {starts}"
            assert starts[-1] < len(obj.body)


async def test_kill_and_resume_fetches_nothing_committed_again(tmp_path: Path) -> None:
    async with bucket() as s3:
        manifest = s3.write_manifest(tmp_path / "m.s5cmd", style="sync")
        renamed: list[Path] = []

        def crash_after_four(path: Path) -> None:
            renamed.append(path)
            if len(renamed) == 4:
                raise _Crash

        killed = Mirror(tmp_path / "out", config(s3), after_rename=crash_after_four)
        with pytest.raises(BaseException) as caught:
            await killed.download(
                build_selection(manifests=[str(manifest)]), DownloadOptions(concurrency=1)
            )
        assert (
            caught.group_contains(_Crash)
            if isinstance(caught.value, BaseExceptionGroup)
            else isinstance(caught.value, _Crash)
        )  # noqa: E501
        store = await SqliteStore.open(tmp_path / "out", create=False)
        async with store:
            committed = {
                i.sop_uid.split("/", 3)[3]
                for s in await store.series()
                for i in await store.instances(s.uid)
                if i.done
            }
        # files are renamed and recorded in batches: some were recorded before the kill
        assert 0 < len(committed) < len(s3.objects)
        s3.requests.clear()
        report = await (await recorded_mirror(tmp_path / "out")).resume()  # only --out
        assert report.ok, report.problems
        fetched = {r[1] for r in s3.requests if r[0] == "GET" and r[1] != "?list"}
        assert not (committed & fetched), "an object committed before the kill was fetched again"
        assert on_disk(tmp_path / "out") == expected_tree(s3, s3_dataset(s3))


async def test_tampered_file_is_found_by_verify_and_refetched_alone(tmp_path: Path) -> None:
    async with bucket() as s3:
        manifest = s3.write_manifest(tmp_path / "m.s5cmd", style="bare")
        mirror = Mirror(tmp_path / "out", config(s3))
        assert (await mirror.download(build_selection(manifests=[str(manifest)]))).ok
        victim = sorted((tmp_path / "out").rglob("*.dcm"))[0]
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
        report = await mirror.verify()
        assert not report.ok
        assert {p["kind"] for p in report.problems} == {
            "md5_mismatch",
            "object_count",
            "total_bytes",
        } or any(p["kind"] == "md5_mismatch" for p in report.problems)
        s3.requests.clear()
        again = await mirror.resume()
        assert again.ok, again.problems
        gets = [r for r in s3.requests if r[0] == "GET" and r[1] != "?list"]
        assert len(gets) == 1
        assert (await mirror.verify()).ok
        assert on_disk(tmp_path / "out") == expected_tree(s3, s3_dataset(s3))


async def test_slowdown_and_5xx_are_retried(tmp_path: Path) -> None:
    faults = Faults(rate_limit_rate=0.3, error_rate=0.2, retry_after=0.01, seed=5)
    async with bucket(faults=faults) as s3:
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        report = await Mirror(tmp_path / "out", config(s3)).download(
            build_selection(manifests=[str(manifest)])
        )
        assert report.ok, report.problems
        assert s3.faults_injected["slowdown"] and s3.faults_injected["5xx"]
        assert on_disk(tmp_path / "out") == expected_tree(s3, s3_dataset(s3))


async def test_a_changed_object_is_refused_never_mixed(tmp_path: Path) -> None:
    async with bucket(multipart_every=0) as s3:
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        mirror = Mirror(tmp_path / "out", config(s3))
        await mirror.plan(build_selection(manifests=[str(manifest)]))
        key = sorted(s3.objects)[-1]
        body = bytearray(s3.objects[key].body)
        body[-1] ^= 0xFF
        s3.put(key, bytes(body), multipart=False)  # changed after the plan
        report = await mirror.resume(DownloadOptions(give_up_after=0))
        assert not report.ok
        assert all(p.name != "" for p in (tmp_path / "out").rglob("*.dcm"))
        assert len(on_disk(tmp_path / "out")) == len(s3.objects) - 1


async def test_latin1_and_deflated_headers_are_planned_as_their_header_says(
    tmp_path: Path,
) -> None:
    """A Latin-1 header (read by the fast reader) and a deflated one (the fast reader declines,
    pydicom reads it): each series lands where its header says, named as pydicom names it."""
    import io

    import pydicom  # noqa: PLC0415
    from pydicom.uid import DeflatedExplicitVRLittleEndian  # noqa: PLC0415

    dataset = Dataset(DatasetSpec.preset("test"))
    s3 = S3Simulator(None)
    wanted: dict[str, tuple[str, str]] = {}  # folder -> (series uid, patient name)
    for n, s in enumerate(dataset.series[:2]):
        folder = f"f{n}"
        for inst in s.instances:
            ds = pydicom.dcmread(io.BytesIO(dataset.instance_bytes(s.series_uid, inst.sop_uid)))
            ds.SpecificCharacterSet = "ISO_IR 100"
            for elem in ds.iterall():  # the simulator's own texts may be outside Latin-1
                if elem.VR in ("LO", "SH", "ST", "LT", "PN"):
                    elem.value = "x"
            ds.private_block(0x0013, "CTP", create=True).add_new(0x10, "LO", "Écoles-CT")
            ds.PatientName = "Müller^Jörg"
            if n == 1:
                ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            s3.put(f"{folder}/{inst.sop_uid}.dcm", buf.getvalue())
        wanted[folder] = (s.series_uid, "Müller^Jörg")
        fast = _identity_fast(buf.getvalue()[:HEAD_BYTES])
        if n == 1:
            assert fast is None  # deflated: pydicom's to read
        else:
            assert fast is not None and fast["PatientName"] == "Müller^Jörg"
    manifest = tmp_path / "m.s5cmd"
    manifest.write_text("".join(f"cp s3://{s3.bucket}/{f}/* .\n" for f in wanted))
    async with s3:
        mirror = Mirror(tmp_path / "out", config(s3))
        report = await mirror.download(build_selection(manifests=[str(manifest)]))
        assert report.ok, report.problems
    async with await open_store(None, tmp_path / "out", create=False) as store:
        by_uid = {st.uid: st for st in await store.series()}
    for series_uid, name in wanted.values():
        st = by_uid[series_uid]
        assert st.collection == "Écoles-CT"  # from the CTP block, decoded as Latin-1
        assert st.fields["PatientName"] == name
        files = list((tmp_path / "out" / "Écoles-CT").rglob(f"{series_uid}/*.dcm"))
        assert len(files) == st.expected_count > 0
