"""The archive's MD5 as the root of trust (issue 12): stated MD5s are persisted with where they
came from, a file counts only once every check the archive offers has passed, single images are
checked against the per-image endpoint, and verify compares with the archive's MD5."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from test_reliability import CraftedSim, dataset, make_zip, series_entries

from helpers import config_for, dicom_files, ground_truth_files, running_sim
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.engine.pipeline import Fetcher, SeriesWork
from tcia_mirror.errors import TransferError
from tcia_mirror.progress import NullProgress
from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import FetchUnit
from tcia_mirror.sources.nbia.client import ArchiveClient
from tcia_mirror.sources.nbia.formats import render_md5_csv
from tcia_mirror.sources.nbia.source import NbiaSource
from tcia_mirror.store.sqlite import SqliteStore, StateStore

pytestmark = pytest.mark.anyio


def _instances(root: Path) -> list[tuple[str, int, str | None, str | None, str | None]]:
    conn = sqlite3.connect(root / ".tcia-mirror" / "state.sqlite")
    try:
        return conn.execute(
            "SELECT sop_uid, done, md5, expected_md5, md5_source FROM instance"
        ).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("profile", "mode", "where"),
    [
        ("nbia-v4", "zip", "md5hashes.csv"),
        ("nbia-v2", "zip", "md5hashes.csv"),
        ("nbia-v4", "single", "getMD5HashForImage"),
        ("nbia-v2", "single", "getM5HashForImage"),
        ("nbia-v1", "single", "getM5HashForImage"),
    ],
)
async def test_the_archives_md5_is_persisted_with_its_source(
    tmp_path: Path, profile: str, mode: str, where: str
) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        mirror = Mirror(tmp_path, config_for(sim, profile))
        report = await mirror.download(
            Selection(collection=coll),
            DownloadOptions(mode=mode),  # type: ignore[arg-type]
        )
        assert report.ok, report.problems
        rows = _instances(tmp_path)
        assert rows and all(done for _s, done, *_ in rows)
        # every file's MD5 is the archive's, and we know which endpoint said so
        assert {(src, md5 == exp) for _s, _d, md5, exp, src in rows} == {(where, True)}
        assert all(
            s["archive_md5"] == s["found_count"] and s["local_md5"] == 0 for s in report.series
        )
        status = await mirror.status()
        assert status["instances"]["archive_md5"] == status["instances"]["complete"] == len(rows)


async def test_no_md5_asks_for_none_and_says_so(tmp_path: Path) -> None:
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        mirror = Mirror(tmp_path, config_for(sim, "nbia-v4"))
        report = await mirror.download(Selection(collection=coll), DownloadOptions(md5=False))
        assert report.ok
        assert all(exp is None for *_, exp, _src in _instances(tmp_path))
        status = await mirror.status()
        assert status["instances"]["archive_md5"] == 0
        assert status["instances"]["local_md5"] == status["instances"]["complete"] > 0


class _CutBeforeTheList:
    """A Source whose series ZIP breaks off after its last DICOM entry, before md5hashes.csv
    (``cut`` beyond its end: the whole ZIP)."""

    def __init__(self, inner: NbiaSource, zip_bytes: bytes, cut: int) -> None:
        self.inner, self.zip_bytes, self.cut = inner, zip_bytes, cut

    def states_md5(self, unit: FetchUnit, *, md5: bool) -> str | None:
        return self.inner.states_md5(unit, md5=md5)

    @asynccontextmanager
    async def open(  # bytes: the transport is not taken
        self, unit: FetchUnit, *, md5: bool, transport: object = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async def body() -> AsyncIterator[bytes]:
            yield self.zip_bytes[: self.cut]
            if self.cut <= len(self.zip_bytes):
                raise TransferError("getImage: ClientPayloadError: cut before md5hashes.csv")

        yield body()


async def test_files_of_a_zip_cut_before_its_md5_list_never_count(tmp_path: Path) -> None:
    ds = dataset()
    uid = ds.series[1].series_uid
    entries = series_entries(ds, uid)
    digests = [(str(n), hashlib.md5(d).hexdigest()) for n, d in entries]
    body = make_zip([*entries, ("md5hashes.csv", render_md5_csv(digests))])
    cut = (
        body.index(b"md5hashes.csv") - 30
    )  # inside the list's local header: every DICOM entry came
    async with running_sim() as sim:
        async with ArchiveClient(config_for(sim)) as client:
            source = _CutBeforeTheList(NbiaSource(client), body, cut)
            store = await SqliteStore.open(tmp_path, create=True)
            async with store:
                from tcia_mirror.store.base import SeriesPlan

                await store.record_plan([SeriesPlan(uid, "C", "P", "1.2", len(entries), None)])
                work = SeriesWork(uid, "C", "C/P/S", frozenset(), len(entries), None)
                fetcher = Fetcher(source, store, tmp_path, NullProgress())  # type: ignore[arg-type]
                with pytest.raises(TransferError):
                    await fetcher.fetch_zip(work, FetchUnit(uid, "archive"))
                assert work.done == {}
                assert [i for i in await store.instances(uid) if i.done] == []
    assert not list(tmp_path.rglob("*.dcm")), "a file no MD5 confirmed is under its final name"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


async def test_a_rotten_single_image_is_refused_by_the_per_image_md5(tmp_path: Path) -> None:
    ds = dataset()
    s = ds.series[1]
    victim = s.instances[0].sop_uid
    good = ds.instance_bytes(s.series_uid, victim)
    rotten = good[:-4] + bytes(b ^ 0xFF for b in good[-4:])  # same size, same header
    async with CraftedSim(ds) as sim:
        sim.singles[(s.series_uid, victim)] = rotten
        report = await Mirror(tmp_path, config_for(sim, "nbia-v2")).download(
            Selection(series=(s.series_uid,)), DownloadOptions(mode="single", give_up_after=0)
        )
        bad = [p for p in report.problems if p["kind"] == "md5_mismatch"]
        assert bad and bad[0]["sop"] == victim
        assert bad[0]["checked_against"] == "getM5HashForImage"
        assert f"{victim}.dcm" not in dicom_files(tmp_path)
        done = {sop for sop, d, *_ in _instances(tmp_path) if d}
        assert victim not in done and len(done) == len(s.instances) - 1


async def test_verify_checks_the_archives_md5_not_our_own(tmp_path: Path) -> None:
    async with running_sim() as sim:
        s = sim.dataset.series[0]
        mirror = Mirror(tmp_path, config_for(sim))
        assert (await mirror.download(Selection(series=(s.series_uid,)))).ok
        path = sorted(tmp_path.rglob("*.dcm"))[0]
        data = path.read_bytes()
        forged = data[:-4] + bytes(b ^ 0xFF for b in data[-4:])
        path.write_bytes(forged)
        # the local record is forged too: only the archive's MD5 can tell
        with StateStore.open(tmp_path, create=False) as db, db.transaction() as conn:
            conn.execute(
                "UPDATE instance SET md5 = ? WHERE sop_uid = ?",
                (hashlib.md5(forged).hexdigest(), path.stem),
            )
        verdict = await mirror.verify()
        bad = [p for p in verdict.problems if p["kind"] == "md5_mismatch"]
        assert [p["sop"] for p in bad] == [path.stem]
        assert bad[0]["checked_against"] == "md5hashes.csv"
        assert bad[0]["expected"] == hashlib.md5(data).hexdigest()
        assert (await mirror.resume()).ok
        assert dicom_files(tmp_path) == ground_truth_files(sim, [s.series_uid])


class _SlowStatedStore(SqliteStore):
    """A store that is still storing a ZIP's stated MD5s when the run is cancelled."""

    entered: anyio.Event

    async def set_expected_md5(self, series_uid: str, md5s: dict[str, str], where: str) -> None:
        self.entered.set()
        await anyio.sleep_forever()


async def test_a_run_cancelled_while_a_zips_md5s_are_stored_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    """CI caught it: a disk full in another series cancelled this ZIP in that window, and its
    files waiting for the MD5 list stayed behind as ``.part`` files."""
    ds = dataset()
    uid = ds.series[1].series_uid
    entries = series_entries(ds, uid)
    digests = [(str(n), hashlib.md5(d).hexdigest()) for n, d in entries]
    body = make_zip([*entries, ("md5hashes.csv", render_md5_csv(digests))])
    async with running_sim() as sim:
        async with ArchiveClient(config_for(sim)) as client:
            source = _CutBeforeTheList(NbiaSource(client), body, len(body) + 1)
            store = await _SlowStatedStore.open(tmp_path, create=True)
            store.entered = anyio.Event()
            async with store:
                from tcia_mirror.store.base import SeriesPlan

                await store.record_plan([SeriesPlan(uid, "C", "P", "1.2", len(entries), None)])
                work = SeriesWork(uid, "C", "C/P/S", frozenset(), len(entries), None)
                fetcher = Fetcher(source, store, tmp_path, NullProgress())  # type: ignore[arg-type]
                async with anyio.create_task_group() as tg:
                    tg.start_soon(fetcher.fetch_zip, work, FetchUnit(uid, "archive"))
                    await store.entered.wait()
                    tg.cancel_scope.cancel()
                assert work.done == {}
                assert fetcher.bytes_received == 0
    assert not list(tmp_path.rglob("*.dcm"))
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]
