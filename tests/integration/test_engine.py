"""The mirror engine against the simulator: zip/single, selections, verify, sync, locking."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import (
    config_for,
    dicom_files,
    ground_truth_files,
    running_sim,
    temp_files,
    tree_digest,
)
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.errors import InputError, MirrorLockedError
from tcia_mirror.progress import RecordingProgress
from tcia_mirror.selection import Selection, build_selection
from tcia_mirror.sources.nbia.manifest import render_manifest
from tcia_mirror.store.sqlite import StateStore

pytestmark = pytest.mark.anyio


def collection_series(sim, collection: str) -> list[str]:
    return [s.series_uid for s in sim.dataset.series if s.collection == collection]


async def test_zip_and_single_modes_give_identical_verified_mirrors(tmp_path: Path) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        trees = {}
        for mode in ("zip", "single"):
            out = tmp_path / mode
            progress = RecordingProgress()
            report = await Mirror(out, config_for(sim), progress=progress).download(
                Selection(collection=coll), DownloadOptions(mode=mode, concurrency=4)
            )
            assert report.ok, report.problems
            assert report.exit_code == 0
            assert progress.bytes > 0 and len(progress.series) == len(collection_series(sim, coll))
            trees[mode] = tree_digest(out)
            assert dicom_files(out) == ground_truth_files(sim, collection_series(sim, coll))
            assert (out / coll / "LICENSE").exists() or mode == "single"
            assert temp_files(out) == []
            verdict = await Mirror(out).verify()
            assert verdict.ok and verdict.series_checked == len(collection_series(sim, coll))
        assert trees["zip"] == trees["single"]
        assert sim.image_requests  # both endpoints were used
        kinds = {k[0] for k in sim.image_requests}
        assert "getSingleImage" in kinds and ({"getImage", "getImageWithMD5Hash"} & kinds)


async def test_layout_is_collection_patient_study_series(tmp_path: Path) -> None:
    async with running_sim() as sim:
        s = sim.dataset.series[0]
        await Mirror(tmp_path, config_for(sim)).download(Selection(series=(s.series_uid,)))
        sop = s.instances[0].sop_uid
        path = tmp_path / s.collection / s.patient_id / s.study_uid / s.series_uid / f"{sop}.dcm"
        assert path.read_bytes() == sim.dataset.instance_bytes(s.series_uid, sop)
        meta = (tmp_path / "metadata.csv").read_text().splitlines()
        assert meta[0].startswith("SeriesInstanceUID,") and s.series_uid in meta[1]


async def test_shared_list_selection(tmp_path: Path) -> None:
    async with running_sim() as sim:
        name, uids = next(iter(sim.dataset.shared_lists.items()))
        report = await Mirror(tmp_path, config_for(sim)).download(Selection(shared_lists=(name,)))
        assert report.ok
        assert {s["series"] for s in report.series} == set(uids)
        assert dicom_files(tmp_path) == ground_truth_files(sim, list(uids))


async def test_real_format_manifest_with_stray_line(tmp_path: Path) -> None:
    async with running_sim() as sim:
        uids = [s.series_uid for s in sim.dataset.series[:3]]
        text = render_manifest(uids).replace(
            "ListOfSeriesToDownload=\n", "ListOfSeriesToDownload=\nSeries ID\n"
        )
        manifest = tmp_path / "manifest-1.tcia"
        manifest.write_text(text.replace("\n", "\r\n"))
        selection = build_selection(manifests=[str(manifest)])
        assert selection.series == tuple(uids)
        report = await Mirror(tmp_path / "m", config_for(sim)).download(selection)
        assert report.ok and len(report.series) == 3
        assert dicom_files(tmp_path / "m") == ground_truth_files(sim, uids)


async def test_unknown_series_uid_is_reported_not_ignored(tmp_path: Path) -> None:
    async with running_sim() as sim:
        good = sim.dataset.series[0].series_uid
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(series=(good, "1.2.3.4.5.6.7"))
        )
        assert report.missing == ["1.2.3.4.5.6.7"]
        assert report.exit_code == 1


async def test_verify_catches_deleted_truncated_and_swapped_files(tmp_path: Path) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        mirror = Mirror(tmp_path, config_for(sim))
        assert (await mirror.download(Selection(collection=coll))).ok
        files = sorted(p for p in tmp_path.rglob("*.dcm"))
        deleted, truncated, a, b = files[0], files[1], files[2], files[3]
        deleted.unlink()
        truncated.write_bytes(truncated.read_bytes()[:100])
        da, db = a.read_bytes(), b.read_bytes()
        a.write_bytes(db)
        b.write_bytes(da)
        verdict = await Mirror(tmp_path).verify()
        assert not verdict.ok
        kinds = {(p["kind"]) for p in verdict.problems}
        assert "missing_file" in kinds
        damaged = {p.get("sop") for p in verdict.problems if p.get("sop")}
        for f in (deleted, truncated, a, b):
            assert f.stem in damaged, f
        # resume repairs exactly the damaged files
        before = sum(sim.image_requests.values())
        report = await mirror.resume()
        assert report.ok, report.problems
        assert (await Mirror(tmp_path).verify()).ok
        assert dicom_files(tmp_path) == ground_truth_files(sim, collection_series(sim, coll))
        assert sum(sim.image_requests.values()) - before <= 4


async def test_sync_fetches_only_the_newly_released_patient(tmp_path: Path) -> None:
    import datetime

    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        mirror = Mirror(tmp_path, config_for(sim))
        assert (await mirror.download(Selection(collection=coll))).ok
        sim.image_requests.clear()
        new = sim.dataset.add_patient(coll, released=datetime.date.today(), n_series=2)
        report = await mirror.sync(since=datetime.date.today() - datetime.timedelta(days=1))
        assert report.ok, report.problems
        fetched = {k[1] for k in sim.image_requests}
        assert fetched == {s.series_uid for s in new}
        assert {s["series"] for s in report.series} == fetched
        assert dicom_files(tmp_path) == ground_truth_files(sim, collection_series(sim, coll))
        # nothing new: nothing fetched
        sim.image_requests.clear()
        again = await mirror.sync()
        assert again.ok and not sim.image_requests and again.files_committed == 0


async def test_second_process_is_refused_while_the_mirror_is_locked(tmp_path: Path) -> None:
    import subprocess
    import sys

    async with running_sim() as sim:
        await Mirror(tmp_path, config_for(sim)).plan(
            Selection(series=(sim.dataset.series[0].series_uid,))
        )
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys,time; from pathlib import Path; from tcia_mirror.store.sqlite import StateStore\n"
                "s=StateStore.open(Path(sys.argv[1]), create=False)\n"
                "with s.lock():\n print('locked', flush=True); time.sleep(30)",
                str(tmp_path),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            with pytest.raises(MirrorLockedError, match="another tcia-mirror process"):
                await Mirror(tmp_path, config_for(sim)).resume()
        finally:
            holder.kill()
            holder.wait()
            assert holder.stdout is not None
            holder.stdout.close()
        assert (await Mirror(tmp_path, config_for(sim)).resume()).ok


async def test_dry_run_fetches_nothing_and_changing_layout_is_refused(tmp_path: Path) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(collection=coll), DownloadOptions(dry_run=True)
        )
        assert report.planned_series == len(collection_series(sim, coll))
        assert report.planned_bytes > 0
        assert not sim.image_requests and dicom_files(tmp_path) == {}
        with pytest.raises(InputError, match="layout"):
            await Mirror(tmp_path, config_for(sim)).download(
                Selection(collection=coll), DownloadOptions(layout="nbia-descriptive")
            )


async def test_status_counts(tmp_path: Path) -> None:
    async with running_sim() as sim:
        s = sim.dataset.series[0]
        await Mirror(tmp_path, config_for(sim)).plan(Selection(series=(s.series_uid,)))
        st = await Mirror(tmp_path).status()
        assert st["series"] == {"total": 1, "complete": 0, "failed": 0, "pending": 1}
        assert st["instances"]["total"] == len(s.instances) and st["instances"]["complete"] == 0
        await Mirror(tmp_path, config_for(sim)).resume()
        st = await Mirror(tmp_path).status()
        assert st["series"]["complete"] == 1
        assert (
            st["bytes"]["complete"]
            == st["bytes"]["total"]
            == sim.dataset.series_size(s.series_uid)[0]
        )
        assert os.path.exists(tmp_path / ".tcia-mirror" / "state.sqlite")
        assert StateStore  # imported for the path contract


async def test_archive_without_series_size_or_sop_lists_is_still_mirrored(tmp_path: Path) -> None:
    from aiohttp import web

    async with running_sim() as sim:
        app_handler = sim._nbia  # the real handler, answering everything else

        async def broken(request: web.Request) -> web.StreamResponse:
            if request.match_info["endpoint"] in ("getSeriesSize", "getSOPInstanceUIDs"):
                return web.Response(status=404, text="Not Found")
            return await app_handler(request)

        sim._nbia = broken  # type: ignore[method-assign]
        # restart the app so the route picks the patched handler
        await sim.stop()
        await sim.start()
        s = sim.dataset.series[0]
        report = await Mirror(tmp_path, config_for(sim)).download(Selection(series=(s.series_uid,)))
        assert report.ok, report.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim, [s.series_uid])


async def test_progress_bytes_end_at_the_dicom_total(tmp_path: Path) -> None:
    from tcia_mirror.testing.simulator import Faults

    async with running_sim(faults=Faults(drop_rate=0.3, seed=3)) as sim:
        coll = sim.dataset.series[0].collection
        progress = RecordingProgress()
        report = await Mirror(tmp_path, config_for(sim), progress=progress).download(
            Selection(collection=coll)
        )
        assert report.ok, report.problems
        total = sum(sim.dataset.series_size(u)[0] for u in collection_series(sim, coll))
        # uncompressed DICOM bytes, with bytes of broken transfers taken back
        assert progress.bytes == total == progress.started["bytes_total"]
        assert report.bytes_received == total


def test_a_recorded_selection_is_never_silently_narrowed_or_widened() -> None:
    recorded = Selection(collection="X", modality="MR")
    with pytest.raises(InputError, match="use another --out"):
        recorded.union(Selection(collection="X", modality="CT"))
    with pytest.raises(InputError, match="use another --out"):
        recorded.union(Selection(collection="X", modality="MR", patients=("P1",)))
    with pytest.raises(InputError, match="use another --out"):
        recorded.union(Selection(collection="Y"))
    same = recorded.union(Selection(collection="X", modality="MR", series=("1.2.3",)))
    assert same.modality == "MR" and same.series == ("1.2.3",)
    added = recorded.union(Selection(shared_lists=("L",)))
    assert added.collection == "X" and added.shared_lists == ("L",)


def test_a_series_whose_zip_broke_twice_is_finished_one_instance_at_a_time() -> None:
    from tcia_mirror.engine.pipeline import SeriesWork
    from tcia_mirror.sources.nbia.source import choose_units

    sops = [f"1.2.3.{i}" for i in range(10)]

    def work(earlier: int) -> SeriesWork:
        w = SeriesWork(
            uid="1.2.3",
            collection="C",
            rel_dir="d",
            expected=frozenset(sops),
            expected_count=10,
            expected_bytes=10 * 1000,  # small files: a whole ZIP looks cheaper
            earlier_attempts=earlier,
        )
        w.done[sops[0]] = ("d/x.dcm", 1000, None)
        return w

    assert [u.kind for u in choose_units(work(0).view(), "zip")] == ["archive"]
    assert [u.kind for u in choose_units(work(2).view(), "zip")] == ["object"] * 9
    assert [u.key for u in choose_units(work(2).view(), "zip")] == sops[1:]


def test_a_zip_that_broke_twice_before_anything_counted_is_finished_one_by_one() -> None:
    """A ZIP's files count only once its MD5 list (its last entry) arrived: a series whose ZIP
    is cut twice before that point must not be given the same ZIP forever."""
    from tcia_mirror.sources.base import SeriesView
    from tcia_mirror.sources.nbia.source import choose_units

    sops = frozenset(f"1.2.3.{i}" for i in range(5))
    view = SeriesView("1.2.3", sops, frozenset(), 5, 5000, archive_tries=1, archive_untrusted=False)
    assert [u.kind for u in choose_units(view, "zip")] == ["archive"]
    twice = SeriesView(
        "1.2.3", sops, frozenset(), 5, 5000, archive_tries=2, archive_untrusted=False
    )
    assert sorted(u.key for u in choose_units(twice, "zip")) == sorted(sops)  # type: ignore[type-var]


async def test_series_are_made_ready_several_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers' next series are made ready (instance lists read, folders looked at) up to
    PREPARE_AHEAD at once, not one after another: a run of many small series waited on each."""
    import anyio  # noqa: PLC0415

    from tcia_mirror.engine import run  # noqa: PLC0415
    from tcia_mirror.store.sqlite import SqliteStore  # noqa: PLC0415

    reading, most = 0, 0
    instances = SqliteStore.instances

    async def slow_instances(self: SqliteStore, series_uid: str) -> list:  # type: ignore[type-arg]
        nonlocal reading, most
        reading += 1
        most = max(most, reading)
        try:
            await anyio.sleep(0.05)  # a store under load answers late
            return await instances(self, series_uid)
        finally:
            reading -= 1

    monkeypatch.setattr(SqliteStore, "instances", slow_instances)
    async with running_sim() as sim:
        uids = [s.series_uid for s in sim.dataset.series]
        assert len(uids) > 2
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(series=tuple(uids)), DownloadOptions(concurrency=4)
        )
    assert report.ok, report.problems
    assert dicom_files(tmp_path) == ground_truth_files(sim, uids)
    assert most == min(len(uids), run.PREPARE_AHEAD)


async def test_each_collections_license_is_looked_at_once_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ZIP carries its collection's LICENSE; the file is written (or found written) once
    a run, not once a series."""
    from tcia_mirror.engine.pipeline import Fetcher  # noqa: PLC0415

    looked: list[str] = []
    write = Fetcher._write_license

    def counted(self: Fetcher, work, text: bytes) -> None:  # type: ignore[no-untyped-def]
        looked.append(work.collection)
        write(self, work, text)

    monkeypatch.setattr(Fetcher, "_write_license", counted)
    async with running_sim() as sim:
        uids = [s.series_uid for s in sim.dataset.series]
        colls = {s.collection for s in sim.dataset.series}
        assert len(uids) > len(colls)  # some collection has several series
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(series=tuple(uids)), DownloadOptions(concurrency=1)
        )
    assert report.ok, report.problems
    assert sorted(looked) == sorted(colls)
    for c in colls:
        assert b"SIM-" in (tmp_path / c / "LICENSE").read_bytes()
