"""Engine scenarios that must hold for every Store and Source: plan, fetch and commit; kill and
resume; tamper and verify; sync. Each runs the real engine against the simulator."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from helpers import config_for, dicom_files, ground_truth_files, running_sim
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.errors import TransferError
from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import FetchUnit, SeriesView
from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.testing.simulator import Faults

pytestmark = pytest.mark.anyio


class _Crash(BaseException):
    """Stands for a kill: raised from the rename seam, it skips every handler but ``finally``."""


def _series(sim, collection: str) -> list[str]:
    return [s.series_uid for s in sim.dataset.series if s.collection == collection]


def _mirror(root: Path, sim, open_store, make_source, **kw) -> Mirror:
    return Mirror(root, config_for(sim), open_store=open_store, make_source=make_source, **kw)


async def test_plan_fetch_commit(mirror_dir: Path, open_store, make_source) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        mirror = _mirror(mirror_dir, sim, open_store, make_source)
        plan = await mirror.plan(Selection(collection=coll))
        assert {p.uid for p in plan.series} == set(_series(sim, coll))
        assert not sim.image_requests  # planning fetches no image
        report = await mirror.resume()
        assert report.ok, report.problems
        assert dicom_files(mirror_dir) == ground_truth_files(sim, _series(sim, coll))
        status = await mirror.status()
        assert status["series"]["complete"] == status["series"]["total"] == len(plan.series)


async def test_kill_and_resume_fetches_nothing_committed_twice(
    mirror_dir: Path, open_store, make_source
) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        renamed: list[Path] = []

        def crash_after_five(path: Path) -> None:
            renamed.append(path)
            if len(renamed) == 5:
                raise _Crash

        killed = _mirror(mirror_dir, sim, open_store, make_source, after_rename=crash_after_five)
        with pytest.raises(BaseException) as caught:
            await killed.download(
                Selection(collection=coll), DownloadOptions(mode="single", concurrency=1)
            )
        assert (
            caught.group_contains(_Crash)
            if isinstance(caught.value, BaseExceptionGroup)
            else (isinstance(caught.value, _Crash))
        )
        on_disk = {p.name for p in renamed}
        sim.image_requests.clear()
        report = await _mirror(mirror_dir, sim, open_store, make_source).resume(
            DownloadOptions(mode="single")
        )
        assert report.ok, report.problems
        fetched_again = {f"{k[2]}.dcm" for k in sim.image_requests if k[2]}
        assert not (on_disk & fetched_again), "a file renamed before the kill was fetched again"
        assert dicom_files(mirror_dir) == ground_truth_files(sim, _series(sim, coll))


async def test_tamper_and_verify(mirror_dir: Path, open_store, make_source) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        mirror = _mirror(mirror_dir, sim, open_store, make_source)
        assert (await mirror.download(Selection(collection=coll))).ok
        victim = sorted(mirror_dir.rglob("*.dcm"))[0]
        victim.write_bytes(victim.read_bytes()[:-10] + b"x" * 10)  # same size, other content
        verdict = await mirror.verify()
        assert not verdict.ok
        assert any(p.get("sop") == victim.stem for p in verdict.problems)
        sim.image_requests.clear()
        assert (await mirror.resume()).ok
        assert sum(sim.image_requests.values()) == 1  # exactly the damaged file
        assert (await mirror.verify()).ok


async def test_sync_fetches_only_what_is_new(mirror_dir: Path, open_store, make_source) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        mirror = _mirror(mirror_dir, sim, open_store, make_source)
        assert (await mirror.download(Selection(collection=coll))).ok
        sim.image_requests.clear()
        new = sim.dataset.add_patient(coll, released=datetime.date.today(), n_series=1)
        report = await mirror.sync()
        assert report.ok, report.problems
        assert {k[1] for k in sim.image_requests} == {s.series_uid for s in new}
        sim.image_requests.clear()
        assert (await mirror.sync()).files_committed == 0 and not sim.image_requests


async def test_source_units_open_and_retryable(make_source) -> None:
    async with running_sim(
        faults=Faults(drop_rate=1.0, endpoints=frozenset({"getSingleImage"}))
    ) as sim:
        s = sim.dataset.series[0]
        sops = [i.sop_uid for i in s.instances]
        async with ArchiveClient(config_for(sim)) as client:
            source = make_source(client)
            view = SeriesView(
                s.series_uid, frozenset(sops), frozenset(sops[:1]), len(sops), 10**9, 0, False
            )
            assert [u.kind for u in source.units(view, "single")] == ["object"] * (len(sops) - 1)
            done = SeriesView(
                s.series_uid, frozenset(sops), frozenset(sops), len(sops), 1, 0, False
            )
            assert source.units(done, "zip") == []
            body = b""
            async with source.open(FetchUnit(s.series_uid, "archive"), md5=True) as chunks:
                async for chunk in chunks:
                    body += chunk
            assert body[:2] == b"PK"
            with pytest.raises(TransferError) as cut:
                async with source.open(
                    FetchUnit(s.series_uid, "object", sops[0]), md5=True
                ) as chunks:
                    async for _ in chunks:
                        pass
            assert source.retryable(cut.value)
