"""Reliability and security (issue 5): archive faults, hostile and bad input, secrets.

Every download here ends in one of two ways, checked by :func:`outcome`: the mirror is complete
and byte-identical to the simulator's ground truth, or the run reports exit code 1 and names
every series it could not finish. Never a silent gap, never a wrong file under a final name.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sqlite3
import stat
import warnings
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import anyio
import pytest
from aiohttp import web

from reliability_kit import (
    SimThread,
    assert_final_files_correct,
    assert_store_agrees_with_disk,
    cli_argv,
    final_dicom_files,
    part_files,
    read_store,
    run_cli,
    truth_by_sop,
    walk_files,
)
from tcia_mirror.cli import run as cli_run
from tcia_mirror.engine.mirror import DownloadOptions, Mirror, RunReport
from tcia_mirror.engine.pipeline import Fetcher, SeriesWork
from tcia_mirror.errors import DiskError, InputError, ProtocolError
from tcia_mirror.progress import NullProgress
from tcia_mirror.selection import Selection
from tcia_mirror.sources.base import FetchUnit
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.client import ArchiveClient, ClientConfig
from tcia_mirror.sources.nbia.formats import render_md5_csv
from tcia_mirror.sources.nbia.profiles import load_profile
from tcia_mirror.store.sqlite import SqliteStore
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults, Simulator
from tcia_mirror.testing.simulator.faults import IMAGE_ENDPOINTS, ZIP_ENDPOINTS

pytestmark = pytest.mark.anyio


# -- helpers -----------------------------------------------------------------------------------


def cfg(sim: Simulator, profile: str = "nbia-v4", *, attempts: int = 8, **kw: Any) -> ClientConfig:
    retry = kw.pop("retry", None) or RetryPolicy(
        attempts=attempts, base=0.01, cap=0.05, jitter=0.0, max_retry_after=60.0
    )
    return ClientConfig(
        profile=load_profile(profile), base_url=sim.base_url(profile), retry=retry, **kw
    )


class Sleeps:
    """The injectable sleep: records every wait, waits for nothing, may run a hook."""

    def __init__(self, hook: Callable[[Sleeps], None] | None = None) -> None:
        self.waits: list[float] = []
        self.hook = hook

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.hook is not None:
            self.hook(self)


class SpyMirror(Mirror):
    """A Mirror that keeps its ArchiveClient for inspection (concurrency, throttling)."""

    client: ArchiveClient | None = None

    def _client(self, concurrency: int) -> ArchiveClient:
        self.client = super()._client(concurrency)
        return self.client


class OnBytes(NullProgress):
    """Calls ``action`` once, when ``after`` bytes have arrived."""

    def __init__(self, after: int, action: Callable[[], None]) -> None:
        self.after, self.action, self.seen, self.fired = after, action, 0, False

    def on_bytes(self, n: int) -> None:
        self.seen += n
        if not self.fired and self.seen >= self.after:
            self.fired = True
            self.action()


def dataset(preset: str = "test", seed: int = 0) -> Dataset:
    return Dataset(DatasetSpec.preset(preset, seed))  # type: ignore[arg-type]


def coll_series(ds: Dataset, collection: str) -> list[str]:
    return [s.series_uid for s in ds.series if s.collection == collection]


def outcome(report: RunReport, root: Path, ds: Dataset, series: list[str]) -> set[str]:
    """Complete and byte-identical, or the missing series named with exit code 1. Returns the
    series the run could not finish."""
    truth = truth_by_sop(ds, series)
    assert_final_files_correct(root, truth)
    snap = read_store(root)
    assert snap.integrity == "ok"
    assert_store_agrees_with_disk(root, snap, truth)
    assert part_files(root) == []
    on_disk = set(final_dicom_files(root))
    named = {p["series"] for p in report.problems}
    unfinished = set()
    for uid in series:
        sops = {i.sop_uid for i in ds.get_series(uid).instances}  # type: ignore[union-attr]
        if not sops <= on_disk or snap.series[uid]["status"] != "complete":
            unfinished.add(uid)
            assert uid in report.failed and uid in named, f"silent gap: series {uid}"
    assert report.exit_code == (1 if unfinished or report.missing else 0)
    if report.failed:
        assert "INCOMPLETE" in report.summary() and report.failed[0] in report.summary()
    return unfinished


async def until_complete(
    mirror: Mirror,
    selection: Selection,
    ds: Dataset,
    root: Path,
    *,
    runs: int = 4,
    opts: DownloadOptions | None = None,
) -> list[RunReport]:
    """Download, then resume while something is unfinished (each run checked by outcome)."""
    series = [s.series_uid for s in ds.series if _selected(s, selection)]
    reports = [await mirror.download(selection, opts)]
    while outcome(reports[-1], root, ds, series):
        assert len(reports) < runs, [r.summary() for r in reports]
        reports.append(await mirror.resume(opts))
    assert set(final_dicom_files(root)) == set(truth_by_sop(ds, series))
    return reports


def _selected(s: Any, selection: Selection) -> bool:
    return s.collection == selection.collection or s.series_uid in selection.series


# -- archive faults, each alone ----------------------------------------------------------------


async def test_5xx_burst_is_retried_with_backoff_and_completes(tmp_path: Path) -> None:
    faults = Faults(error_rate=1.0, endpoints=IMAGE_ENDPOINTS)
    ds = dataset()

    def end_burst(sl: Sleeps) -> None:
        if len(sl.waits) == 5:
            faults.error_rate = 0.0

    sleeps = Sleeps(end_burst)
    async with Simulator(ds, faults=faults) as sim:
        coll = ds.series[0].collection
        report = await Mirror(tmp_path, cfg(sim), sleep=sleeps).download(Selection(collection=coll))
        assert outcome(report, tmp_path, ds, coll_series(ds, coll)) == set()
        assert sim.faults_injected["5xx"] >= 5 and report.retries >= 5
        policy = cfg(sim).retry
        assert set(sleeps.waits) <= {policy.backoff(n) for n in range(1, 9)}  # backoff, no jitter


async def test_5xx_that_never_ends_names_every_series_exit_1(tmp_path: Path) -> None:
    ds = dataset()
    async with Simulator(ds, faults=Faults(error_rate=1.0, endpoints=IMAGE_ENDPOINTS)) as sim:
        coll = ds.series[0].collection
        sleeps = Sleeps()
        mirror = Mirror(
            tmp_path, cfg(sim, attempts=2), sleep=sleeps, clock=lambda: sum(sleeps.waits)
        )
        report = await mirror.download(Selection(collection=coll), DownloadOptions(give_up_after=1))
        unfinished = outcome(report, tmp_path, ds, coll_series(ds, coll))
        assert unfinished == set(coll_series(ds, coll))
        assert all("HTTP 5" in " ".join(s["notes"]) for s in report.series)
        assert all("given up after" in s["notes"][-1] for s in report.series)


async def test_429_retry_after_is_honoured_and_concurrency_lowered_then_raised(
    tmp_path: Path,
) -> None:
    faults = Faults(rate_limit_rate=1.0, retry_after=7.0, endpoints=frozenset({"getSingleImage"}))
    ds = dataset()
    seen: list[tuple[float, int]] = []
    mirror: SpyMirror

    def stop_throttling(sl: Sleeps) -> None:
        assert mirror.client is not None
        seen.append((sl.waits[-1], mirror.client.concurrency))
        if len(sl.waits) == 6:
            faults.rate_limit_rate = 0.0

    async with Simulator(ds, faults=faults) as sim:
        coll = ds.series[0].collection
        mirror = SpyMirror(tmp_path, cfg(sim), sleep=Sleeps(stop_throttling))
        report = await mirror.download(
            Selection(collection=coll), DownloadOptions(mode="single", concurrency=8)
        )
        assert outcome(report, tmp_path, ds, coll_series(ds, coll)) == set()
        n429 = sim.faults_injected["429"]
        assert n429 >= 6 and report.throttled == n429
        assert [w for w, _c in seen] == [7.0] * len(seen)  # Retry-After, not the backoff
        assert len(seen) == n429
        lowest = min(c for _w, c in seen)
        assert lowest < 8  # halved on each 429
        assert mirror.client is not None and mirror.client.concurrency > lowest  # raised again


@pytest.mark.parametrize("mode", ["zip", "single"])
async def test_connections_reset_mid_body(tmp_path: Path, mode: str) -> None:
    ds = dataset()
    async with Simulator(ds, faults=Faults(drop_rate=0.35, seed=2)) as sim:
        coll = ds.series[0].collection
        mirror = Mirror(tmp_path, cfg(sim), sleep=Sleeps())
        await until_complete(mirror, Selection(collection=coll), ds, tmp_path,
                             opts=DownloadOptions(mode=mode))  # fmt: skip
        assert sim.faults_injected["drop"] > 0


async def test_truncated_zips(tmp_path: Path) -> None:
    ds = dataset()
    async with Simulator(ds, faults=Faults(truncate_rate=0.5, seed=4)) as sim:
        coll = ds.series[0].collection
        reports = await until_complete(
            Mirror(tmp_path, cfg(sim), sleep=Sleeps()), Selection(collection=coll), ds, tmp_path
        )
        assert sim.faults_injected["truncate"] > 0
        notes = " ".join(n for r in reports for s in r.series for n in s["notes"])
        assert "truncated" in notes or "ZIP ended" in notes


async def test_zip_that_is_an_html_error_page(tmp_path: Path) -> None:
    ds = dataset()
    faults = Faults(html_error_rate=1.0)

    def recover(sl: Sleeps) -> None:
        faults.html_error_rate = 0.0 if len(sl.waits) >= 2 else 1.0

    async with Simulator(ds, faults=faults) as sim:
        coll = ds.series[0].collection
        reports = await until_complete(
            Mirror(tmp_path, cfg(sim), sleep=Sleeps(recover)),
            Selection(collection=coll),
            ds,
            tmp_path,
        )
        assert sim.faults_injected["html"] > 0
        notes = " ".join(n for r in reports for s in r.series for n in s["notes"])
        assert "not a ZIP" in notes


async def test_series_size_disagreeing_with_the_zip_is_named(tmp_path: Path) -> None:
    ds = dataset()
    bad = ds.series[1].series_uid
    async with Simulator(ds, faults=Faults(size_mismatch_series=frozenset({bad}))) as sim:
        coll = ds.series[0].collection
        report = await Mirror(tmp_path, cfg(sim), sleep=Sleeps()).download(
            Selection(collection=coll)
        )
        assert outcome(report, tmp_path, ds, coll_series(ds, coll)) == {bad}
        kinds = {p["kind"] for p in report.problems if p["series"] == bad}
        assert kinds == {"object_count", "total_bytes"}
        # what the archive did send is all there and correct
        assert {i.sop_uid for i in ds.get_series(bad).instances} <= set(final_dicom_files(tmp_path))  # type: ignore[union-attr]
        verdict = await Mirror(tmp_path).verify()
        assert not verdict.ok and {p["series"] for p in verdict.problems} == {bad}


async def test_token_expiring_mid_run_nbia_v2(tmp_path: Path) -> None:
    ds = dataset()
    slow = Faults(bandwidth=12_000, endpoints=ZIP_ENDPOINTS)
    async with Simulator(ds, faults=slow, token_ttl=0.3, users={"alice": "pw-zebra"}) as sim:
        coll = ds.series[0].collection
        config = cfg(sim, "nbia-v2", credentials=Credentials(user="alice", password="pw-zebra"))
        report = await Mirror(tmp_path, config).download(
            Selection(collection=coll), DownloadOptions(concurrency=2)
        )
        assert report.seconds > 0.65  # outlived two token lifetimes
        assert outcome(report, tmp_path, ds, coll_series(ds, coll)) == set()
        assert sim.tokens.issued >= 2  # refreshed while downloading


async def test_token_revoked_by_the_archive_mid_run(tmp_path: Path) -> None:
    ds = dataset()
    async with Simulator(ds, faults=Faults(bandwidth=50_000, endpoints=ZIP_ENDPOINTS)) as sim:
        coll = ds.series[0].collection
        config = cfg(sim, "nbia-v2", credentials=Credentials(user="alice", password="wonderland"))
        revoke = OnBytes(2_000, lambda: sim.tokens._access.clear())
        report = await Mirror(tmp_path, config, progress=revoke).download(
            Selection(collection=coll), DownloadOptions(concurrency=2)
        )
        assert revoke.fired
        assert outcome(report, tmp_path, ds, coll_series(ds, coll)) == set()
        assert sim.tokens.issued >= 2


async def test_archive_unreachable_for_a_while_then_back(tmp_path: Path) -> None:
    ds = dataset()
    async with Simulator(ds, faults=Faults(bandwidth=40_000, endpoints=IMAGE_ENDPOINTS)) as sim:
        coll = ds.series[0].collection
        patient = RetryPolicy(attempts=30, base=0.1, cap=0.2, jitter=0.0)
        outage = OnBytes(1_000, lambda: sim.set_unreachable(1.0))
        report = await Mirror(tmp_path, cfg(sim, retry=patient), progress=outage).download(
            Selection(collection=coll), DownloadOptions(concurrency=2)
        )
        assert outage.fired and report.retries > 0
        assert outcome(report, tmp_path, ds, coll_series(ds, coll)) == set()


# -- archive faults, mixed ---------------------------------------------------------------------


async def test_all_faults_at_once(tmp_path: Path) -> None:
    # 24 small series in one collection: the ZIP-level faults (drop, truncate, HTML page) are
    # drawn per ZIP request, and the draws' order follows the scheduling. With the 4-series
    # collection this test once had, 1 run in 12 failed here (CI saw it): it drew none of them
    # at all, or an HTML page answered the one hostile series' first ZIP. With 24 ZIP requests
    # or more, none is drawn about once in 10^5 runs (0.612 ** 24).
    spec = DatasetSpec(
        name="faults",
        collections=("SIM-LUNG-CT",),
        patients=(4,),
        studies_per_patient=(2, 2),
        series_per_study=(3, 3),
        instances_per_series=(3, 8),
        rows=64,
        cols=64,
        seed=3,
    )
    ds = Dataset(spec)
    coll = ds.series[0].collection
    series = coll_series(ds, coll)
    # four hostile series: an HTML page in place of a series' first ZIP (10 %) sends it to
    # single images before its hostile ZIP is ever served, so one hostile series was not enough
    mismatch, hostile = series[1], frozenset(series[2:6])
    faults = Faults(
        error_rate=0.1,
        rate_limit_rate=0.05,
        retry_after=0.01,
        drop_rate=0.15,
        truncate_rate=0.2,
        html_error_rate=0.1,
        hostile_series=hostile,
        size_mismatch_series=frozenset({mismatch}),
        seed=9,
    )
    async with Simulator(ds, faults=faults) as sim:
        mirror = Mirror(tmp_path, cfg(sim), sleep=Sleeps())
        report = await mirror.download(Selection(collection=coll))
        unfinished = outcome(report, tmp_path, ds, series)
        for _ in range(3):  # the flaky ones finish on resume; the bad ones stay named
            if unfinished <= {mismatch} | hostile:
                break
            report = await mirror.resume()
            unfinished = outcome(report, tmp_path, ds, series)
        assert mismatch in unfinished and unfinished <= {mismatch} | hostile
        injected = sim.faults_injected
        # each body fault alone fires a few times per run, so may miss one (tested alone above)
        assert {"5xx", "429", "hostile"} <= set(injected), injected
        assert set(injected) & {"drop", "truncate", "html"}, injected
        # the hostile series were fetched correctly with single images all the same
        hostile_sops = {i.sop_uid for s in hostile for i in ds.get_series(s).instances}  # type: ignore[union-attr]
        assert hostile_sops <= set(final_dicom_files(tmp_path))


# -- hostile ZIPs ------------------------------------------------------------------------------


def snapshot_tree(top: Path) -> set[Path]:
    return set(walk_files(top))


async def test_hostile_entry_names_write_nothing_outside_and_singles_fill_the_gap(
    tmp_path: Path,
) -> None:
    ds = dataset()
    root = tmp_path / "a" / "b" / "mirror"  # '../' entries would land in a/ or b/
    before = snapshot_tree(tmp_path)
    async with Simulator(ds, faults=Faults(hostile=True)) as sim:
        coll = ds.series[0].collection
        series = coll_series(ds, coll)
        report = await Mirror(root, cfg(sim), sleep=Sleeps()).download(Selection(collection=coll))
        # flagged: every series names its unsafe entries ...
        assert outcome(report, root, ds, series) == set(series)
        for uid in series:
            kinds = {p["kind"] for p in report.problems if p["series"] == uid}
            assert kinds == {"unsafe_entry_names"}, (uid, kinds)
        # ... yet every instance is there, byte-identical: the rejected entries came as singles
        assert set(final_dicom_files(root)) == set(truth_by_sop(ds, series))
        for uid in series:
            ordered = sorted(ds.get_series(uid).instances, key=lambda i: i.instance_number)  # type: ignore[union-attr]
            rejected = {i.sop_uid for i in ordered[:4]}
            singles = {k[2] for k in sim.image_requests if k[0] == "getSingleImage" and k[1] == uid}
            assert singles == rejected, uid
            assert (
                sum(n for k, n in sim.image_requests.items() if k[1] == uid and k[2] is None) == 1
            )
    # nothing was written outside the mirror, and inside only where the layout puts things
    outside = snapshot_tree(tmp_path) - before
    assert all(root in p.parents for p in outside)
    assert not [p for p in walk_files(tmp_path) if "evil" in p.name or p.name == "x.dcm"]


class CraftedSim(Simulator):
    """The simulator with hand-made answers for chosen series / instances."""

    def __init__(self, ds: Dataset, **kw: Any) -> None:
        super().__init__(ds, **kw)
        self.zips: dict[str, bytes] = {}
        self.singles: dict[tuple[str, str], bytes] = {}

    async def _zip_endpoint(
        self, request: web.Request, spec: Any, dialect: Any, params: dict[str, str]
    ) -> web.StreamResponse:
        body = self.zips.get(params["SeriesInstanceUID"])
        if body is None:
            return await super()._zip_endpoint(request, spec, dialect, params)
        return web.Response(body=body, content_type="application/octet-stream")

    async def _single_image(
        self, request: web.Request, dialect: Any, params: dict[str, str]
    ) -> web.StreamResponse:
        body = self.singles.get((params["SeriesInstanceUID"], params["SOPInstanceUID"]))
        if body is None:
            return await super()._single_image(request, dialect, params)
        return web.Response(body=body, content_type="application/dicom")


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return buf.getvalue()


def series_entries(ds: Dataset, uid: str) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    s = ds.get_series(uid)
    assert s is not None
    return [
        (f"{n:08d}.dcm", ds.instance_bytes(uid, i.sop_uid))
        for n, i in enumerate(sorted(s.instances, key=lambda i: i.instance_number), 1)
    ]


async def test_decompression_bomb_is_refused_and_named(tmp_path: Path) -> None:
    ds = dataset()
    uid = ds.series[1].series_uid
    bomb = make_zip([("00000001.dcm", bytes(64 * 2**20)), *series_entries(ds, uid)])
    assert len(bomb) < 2**20  # ratio above 200
    async with CraftedSim(ds) as sim:
        sim.zips[uid] = bomb
        report = await Mirror(tmp_path, cfg(sim), sleep=Sleeps()).download(Selection(series=(uid,)))
        # the bomb is refused; the series is then finished with single images, never the ZIP again
        assert outcome(report, tmp_path, ds, [uid]) == set()
        assert "decompression bomb" in " ".join(report.series[0]["notes"])
        assert sum(n for k, n in sim.image_requests.items() if k[0] == "getImage") == 1
        assert all(p.stat().st_size < 2**20 for p in walk_files(tmp_path))


async def test_symlink_entries_and_duplicate_names(tmp_path: Path) -> None:
    ds = dataset()
    s_link, s_dup = ds.series[1].series_uid, ds.series[2].series_uid
    link = zipfile.ZipInfo("link.dcm")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    entries = series_entries(ds, s_dup)
    dup = [(entries[0][0], entries[1][1]), *entries, (entries[1][0], entries[0][1])]
    async with CraftedSim(ds) as sim:
        sim.zips[s_link] = make_zip(
            [(link, b"../../../../../etc/passwd"), *series_entries(ds, s_link)]
        )
        sim.zips[s_dup] = make_zip(dup)
        mirror = Mirror(tmp_path, cfg(sim), sleep=Sleeps())
        report = await mirror.download(Selection(series=(s_link, s_dup)))
        # the link target is just the content of a file that is not DICOM: flagged, not followed
        assert outcome(report, tmp_path, ds, [s_link, s_dup]) == {s_link}
        assert [p["kind"] for p in report.problems] == ["not_dicom"]
        assert not [p for p in walk_files(tmp_path) if p.is_symlink()]
        # duplicate names do not matter: files are named by the SOP UID in their header
        assert set(final_dicom_files(tmp_path)) == set(truth_by_sop(ds, [s_link, s_dup]))


async def test_md5_the_archive_disagrees_with_is_never_kept(tmp_path: Path) -> None:
    ds = dataset()
    uid = ds.series[1].series_uid
    entries = series_entries(ds, uid)
    digests = [(str(n), hashlib.md5(d).hexdigest()) for n, d in entries]
    digests[0] = (digests[0][0], "0" * 32)
    async with CraftedSim(ds) as sim:
        sim.zips[uid] = make_zip([*entries, ("md5hashes.csv", render_md5_csv(digests))])
        report = await Mirror(tmp_path, cfg(sim), sleep=Sleeps()).download(Selection(series=(uid,)))
        assert outcome(report, tmp_path, ds, [uid]) == {uid}
        bad = [p for p in report.problems if p["kind"] == "md5_mismatch"]
        assert bad and all(p["expected"] == "0" * 32 for p in bad)
        first = sorted(ds.get_series(uid).instances, key=lambda i: i.instance_number)[0]  # type: ignore[union-attr]
        assert first.sop_uid not in final_dicom_files(tmp_path)
        assert first.sop_uid not in read_store(tmp_path).committed
        # a kill between the store forgetting that file and its deletion leaves it under its
        # final name: the store keeps the archive's MD5, so resume does not adopt it
        folder = next(iter(final_dicom_files(tmp_path).values())).parent
        (folder / f"{first.sop_uid}.dcm").write_bytes(ds.instance_bytes(uid, first.sop_uid))
        again = await Mirror(tmp_path, cfg(sim), sleep=Sleeps()).resume(
            DownloadOptions(mode="single")
        )
        assert again.files_adopted == 0
        assert any("0" * 32 in n for s in again.series for n in s["notes"]), again.series


async def test_payloads_that_are_not_what_was_asked_for(tmp_path: Path) -> None:
    ds = dataset()
    a, b, c = (ds.series[i] for i in (1, 2, 3))
    a0, a1 = a.instances[0].sop_uid, a.instances[1].sop_uid
    async with CraftedSim(ds) as sim:
        sim.singles[(a.series_uid, a0)] = b"<html><body>Service Unavailable</body></html>"
        sim.singles[(a.series_uid, a1)] = ds.instance_bytes(a.series_uid, a.instances[2].sop_uid)
        sim.singles[(b.series_uid, b.instances[0].sop_uid)] = ds.instance_bytes(
            c.series_uid, c.instances[0].sop_uid
        )
        # a ZIP with a foreign instance and a text file among the real ones
        sim.zips[c.series_uid] = make_zip(
            [*series_entries(ds, c.series_uid),
             ("00000099.dcm", ds.instance_bytes(b.series_uid, b.instances[1].sop_uid)),
             ("00000100.dcm", b"just text, no DICOM preamble")]
        )  # fmt: skip
        mirror = Mirror(tmp_path, cfg(sim), sleep=Sleeps())
        singles = await mirror.download(
            Selection(series=(a.series_uid, b.series_uid)), DownloadOptions(mode="single")
        )
        bad = outcome(singles, tmp_path, ds, [a.series_uid, b.series_uid])
        assert bad == {a.series_uid, b.series_uid}
        kinds = {(p["series"], p["kind"]) for p in singles.problems}
        assert (a.series_uid, "not_dicom") in kinds
        assert (a.series_uid, "wrong_instance") in kinds
        assert (b.series_uid, "wrong_series") in kinds
        zipped = await Mirror(tmp_path / "z", cfg(sim), sleep=Sleeps()).download(
            Selection(series=(c.series_uid,))
        )
        assert outcome(zipped, tmp_path / "z", ds, [c.series_uid]) == {c.series_uid}
        assert {p["kind"] for p in zipped.problems} == {"wrong_series", "not_dicom"}
        assert set(final_dicom_files(tmp_path / "z")) == set(truth_by_sop(ds, [c.series_uid]))


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the hostile study "UID"
async def test_path_characters_in_archive_answers_stay_inside_the_mirror(tmp_path: Path) -> None:
    ds = dataset()
    s = ds.series[0]
    s.patient_id = "../../../escaped-patient"
    s.study_uid = "/tmp/../../escaped-study"
    s.series_description = "..\\..\\desc/../x"
    root = tmp_path / "m"
    async with Simulator(ds) as sim:
        for layout in ("default", "nbia-descriptive"):
            out = root / layout
            report = await Mirror(out, cfg(sim), sleep=Sleeps()).download(
                Selection(series=(s.series_uid,)), DownloadOptions(layout=layout)
            )
            assert outcome(report, out, ds, [s.series_uid]) == set()
    for p in walk_files(tmp_path):
        assert root in p.resolve().parents, p
    assert not list(tmp_path.glob("**/escaped-*/..*"))


async def test_malformed_json_from_the_archive_is_a_clear_error(tmp_path: Path) -> None:
    class BrokenJson(Simulator):
        async def _query(
            self, request: web.Request, spec: Any, dialect: Any, params: Any
        ) -> web.StreamResponse:
            if spec.name == "getSeries":
                return web.Response(
                    body=b'[{"SeriesInstanceUID": "1.2.3", ', content_type="application/json"
                )
            return await super()._query(request, spec, dialect, params)

    ds = dataset()
    async with BrokenJson(ds) as sim:
        with pytest.raises(ProtocolError, match="getSeries|archive sent"):
            await Mirror(tmp_path, cfg(sim, attempts=2), sleep=Sleeps()).download(
                Selection(series=(ds.series[0].series_uid,))
            )
    assert final_dicom_files(tmp_path) == {}


# -- unknown collection ------------------------------------------------------------------------


async def test_unknown_collection_is_bad_input_and_leaves_the_mirror_usable(tmp_path: Path) -> None:
    ds = dataset()
    async with Simulator(ds) as sim:
        coll = ds.series[0].collection
        with pytest.raises(InputError, match=r"collection 'NOPE' is not on the archive.*SIM-"):
            await Mirror(tmp_path, cfg(sim)).download(Selection(collection="NOPE"))
        assert sim.image_requests == {}
        # the typo was not recorded: the right name works on the same folder
        report = await Mirror(tmp_path, cfg(sim)).download(Selection(collection=coll))
        assert outcome(report, tmp_path, ds, coll_series(ds, coll)) == set()
        # a known collection whose filters match nothing is reported, not a silent success
        empty = await Mirror(tmp_path / "e", cfg(sim)).download(
            Selection(collection=coll, patients=("NO-SUCH-PATIENT",))
        )
        assert empty.exit_code == 1 and "no series match" in empty.summary()
        unknown_list = await Mirror(tmp_path / "l", cfg(sim)).download(
            Selection(shared_lists=("no-such-list",))
        )
        assert unknown_list.exit_code == 1 and "no-such-list" in unknown_list.summary()


# -- the command line: bad input, disk errors --------------------------------------------------


def one_line_error(proc: Any, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


class Proc:
    """What an in-process CLI run returned and printed (like subprocess.CompletedProcess)."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def cli_here(capsys: pytest.CaptureFixture[str], *argv: str) -> Proc:
    """The CLI in this process (no interpreter start-up: fast); same code path as the command."""
    capsys.readouterr()
    code = cli_run(list(argv))
    out, err = capsys.readouterr()
    return Proc(code, out, err)


@pytest.fixture
def sim_thread() -> Any:
    with SimThread(dataset()) as st:
        yield st


def test_malformed_selections_and_dates_exit_2(
    sim_thread: SimThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = sim_thread.base_url()
    out = str(tmp_path / "m")
    files = {
        "binary.tcia": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "empty.tcia": b"",
        "junk.tcia": b"downloadServerUrl=x\n../../etc/passwd\nrm -rf /\n",
        "no-column.csv": b"PatientID,Modality\nP1,CT\n",
        "bad-values.csv": b"SeriesInstanceUID,Modality\n../../evil,CT\n1.2/3,MR\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    cases = [
        ("--manifest", "binary.tcia"), ("--manifest", "empty.tcia"),
        ("--manifest", "junk.tcia"), ("--series-file", "no-column.csv"),
        ("--series-file", "bad-values.csv"), ("--series-file", "missing.csv"),
    ]  # fmt: skip
    for flag, name in cases:
        proc = cli_here(capsys, "download", flag, str(tmp_path / name), "--out", out,
                        "--base-url", base, "--no-progress")  # fmt: skip
        one_line_error(proc, 2, name)
    for bad in ("2024-02-30", "02-01-2024", "yesterday", "2024-1-1x"):
        proc = cli_here(capsys, "sync", "--out", out, "--since", bad, "--no-progress")
        one_line_error(proc, 2)
    proc = run_cli(cli_argv("download", "--collection", "NOPE", "--out", out,
                            "--base-url", base, "--no-progress"))  # fmt: skip
    one_line_error(proc, 2, "'NOPE' is not on the archive")  # the real command, once
    assert not list(Path(out).rglob("*.dcm"))


def test_output_folder_that_cannot_exist_exits_2(
    sim_thread: SimThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    uid = sim_thread.sim.dataset.series[0].series_uid
    proc = cli_here(capsys, "download", "--series", uid, "--out", str(blocker / "mirror"),
                    "--base-url", sim_thread.base_url(), "--no-progress")  # fmt: skip
    one_line_error(proc, 2, "cannot create the mirror folder")
    for cmd in ("resume", "verify", "status", "sync"):
        one_line_error(cli_here(capsys, cmd, "--out", str(tmp_path / "missing")), 2)
        one_line_error(cli_here(capsys, cmd, "--out", str(blocker / "mirror")), 2)


def test_damaged_state_is_a_clear_error_not_a_traceback(
    sim_thread: SimThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uid = sim_thread.sim.dataset.series[0].series_uid
    out = tmp_path / "m"
    argv = ["--out", str(out), "--no-progress"]
    assert (
        cli_here(
            capsys, "download", "--series", uid, "--base-url", sim_thread.base_url(), *argv
        ).returncode
        == 0
    )
    state = out / ".tcia-mirror" / "state.sqlite"
    conn = sqlite3.connect(state)
    with conn:
        conn.execute("UPDATE meta SET value = '{\"collection\": [1, ' WHERE key = 'selection'")
    conn.close()
    one_line_error(cli_here(capsys, "resume", *argv), 2, "recorded selection is unreadable")
    state.write_bytes(b"this is not an SQLite file at all" * 100)
    for cmd in ("resume", "status", "verify"):
        one_line_error(cli_here(capsys, cmd, "--out", str(out)), 2, "damaged")
    assert set(final_dicom_files(out))  # the files themselves are untouched


def test_series_folder_blocked_by_a_file_is_a_disk_error(
    sim_thread: SimThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = sim_thread.sim.dataset.series[0]
    out = tmp_path / "m"
    argv = ["--series", s.series_uid, "--out", str(out), "--base-url", sim_thread.base_url()]
    assert cli_run(["plan", *argv]) == 0
    (out / s.collection).write_text("a file where the collection folder goes")
    capsys.readouterr()
    assert cli_run(["download", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and err.startswith("tcia-mirror: error: ") and "Traceback" not in err
    )


class _FailingFile:
    """A file whose writes fail with ``code`` once the shared budget is spent."""

    def __init__(self, inner: BinaryIO, budget: list[int], code: int) -> None:
        self._inner, self._budget, self._code = inner, budget, code

    def write(self, data: bytes) -> int:
        self._budget[0] -= len(data)
        if self._budget[0] < 0:
            raise OSError(self._code, "No space left on device" if self._code == errno.ENOSPC
                          else "Read-only file system")  # fmt: skip
        return self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def failing_opener(budget: int, code: int = errno.ENOSPC) -> Callable[..., BinaryIO]:
    left = [budget]

    def opener(path: Any, mode: str) -> BinaryIO:
        return _FailingFile(open(path, mode), left, code)  # type: ignore[return-value]  # noqa: SIM115

    return opener


class _OneChunkZip:
    """A Source whose ZIP arrives in one chunk, MD5s unstated."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def states_md5(self, unit: FetchUnit, *, md5: bool) -> str | None:
        return None

    @asynccontextmanager
    async def open(  # bytes: the transport is not taken
        self, unit: FetchUnit, *, md5: bool, transport: object = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        async def body() -> AsyncIterator[bytes]:
            yield self.body

        yield body()


@pytest.mark.anyio
async def test_disk_full_inside_a_chunk_leaves_no_temp_file_of_the_entries_before(
    tmp_path: Path,
) -> None:
    """Two large entries (streamed to disk) in one chunk: the disk fills up in the second, and
    the first, complete but not handed on yet, must not stay behind as a ``.part`` file."""
    big = 3 * 2**19  # above the size kept in memory
    body = make_zip([("00000001.dcm", os.urandom(big)), ("00000002.dcm", os.urandom(big))])
    store = await SqliteStore.open(tmp_path, create=True)
    async with store:
        work = SeriesWork("1.2.3", "C", "C/P/S", frozenset(), 2, None)
        fetcher = Fetcher(
            _OneChunkZip(body), store, tmp_path, NullProgress(),  # type: ignore[arg-type]
            opener=failing_opener(big + 2**18),
        )  # fmt: skip
        with pytest.raises(DiskError):
            await fetcher.fetch_zip(work, FetchUnit("1.2.3", "archive"))
    assert fetcher.bytes_received == 0
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".part")]


@pytest.mark.parametrize("mode", ["zip", "single"])
def test_disk_full_mid_run_keeps_everything_and_resumes(
    sim_thread: SimThread, tmp_path: Path, mode: str
) -> None:
    ds = sim_thread.sim.dataset
    coll = ds.series[0].collection
    out = tmp_path / "m"
    config = ClientConfig(profile=load_profile("nbia-v4"), base_url=sim_thread.base_url())
    full = Mirror(out, config, opener=failing_opener(24_000))  # the disk fills up mid-run
    opts = DownloadOptions(mode=mode, concurrency=2)  # type: ignore[arg-type]
    with pytest.raises(DiskError) as raised:
        anyio.run(lambda: full.download(Selection(collection=coll), opts))
    err = str(raised.value)
    assert "\n" not in err and "disk full while writing" in err and "resume --out" in err
    assert str(out) in err  # the advice names this mirror
    argv = ["--out", str(out), "--no-progress", "--mode", mode, "--concurrency", "2"]
    truth = truth_by_sop(ds, coll_series(ds, coll))
    snap = read_store(out)
    assert 0 < len(snap.committed) < len(truth)
    assert_store_agrees_with_disk(out, snap, truth)
    assert_final_files_correct(out, truth)
    assert part_files(out) == []
    kept = {c.sop: (out / c.rel_path).stat().st_ino for c in snap.committed.values()}
    singles = {k: n for k, n in sim_thread.image_requests().items() if k[0] == "getSingleImage"}
    # space was freed: the CLI resumes with the real file opener
    assert cli_run(["resume", *argv]) == 0
    assert set(final_dicom_files(out)) == set(truth)
    assert_final_files_correct(out, truth)
    for sop, ino in kept.items():  # nothing already downloaded was fetched or written again
        assert (out / snap.committed[sop].rel_path).stat().st_ino == ino
        series = snap.committed[sop].series
        key = ("getSingleImage", series, sop)
        assert sim_thread.image_requests().get(key, 0) == singles.get(key, 0)


def test_read_only_file_system_is_a_disk_error(sim_thread: SimThread, tmp_path: Path) -> None:
    def refuse(path: Any, mode: str) -> BinaryIO:
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    uid = sim_thread.sim.dataset.series[0].series_uid
    config = ClientConfig(profile=load_profile("nbia-v4"), base_url=sim_thread.base_url())
    mirror = Mirror(tmp_path / "m", config, opener=refuse)  # the pipeline's injected file opener
    with pytest.raises(DiskError) as err:
        anyio.run(lambda: mirror.download(Selection(series=(uid,))))
    message = str(err.value)
    assert "\n" not in message and "read-only file system" in message


# -- secrets -----------------------------------------------------------------------------------

API_KEY = "key-Secr3t-okapi-4711"
PASSWORD = "pw-Secr3t-zebra-0815"


def scan_for_secrets(secrets: set[str], texts: list[str], root: Path) -> None:
    assert all(len(s) >= 8 for s in secrets)
    for text in texts:
        for secret in secrets:
            assert secret not in text, "a secret is in the output"
    for path in walk_files(root):
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"a secret is in {path}"


def test_no_secret_in_any_output_or_file(tmp_path: Path) -> None:
    ds = dataset()
    faults = Faults(bandwidth=20_000, endpoints=ZIP_ENDPOINTS)
    with SimThread(ds, faults=faults, api_key=API_KEY, users={"alice": PASSWORD},
                   token_ttl=0.5) as st:  # fmt: skip
        coll = ds.series[0].collection
        series = ["--series", ds.series[0].series_uid, "--series", ds.series[1].series_uid]
        texts: list[str] = []

        def cli(*args: str) -> Any:
            proc = run_cli(cli_argv(*args))
            texts.extend([proc.stdout, proc.stderr])
            return proc

        v3 = ["--api", "tcia-v3", "--base-url", st.base_url("tcia-v3")]
        v2 = ["--api", "nbia-v2", "--base-url", st.base_url("nbia-v2"), "--user", "alice"]
        k_out, p_out = tmp_path / "v3", tmp_path / "v2"
        # refused credentials
        assert cli("download", *series, "--out", str(k_out), *v3, "--api-key", API_KEY + "x",
                   "--no-progress").returncode == 3  # fmt: skip
        assert cli("download", *series, "--out", str(p_out), *v2, "--password", PASSWORD + "x",
                   "--no-progress").returncode == 3  # fmt: skip
        # working runs; the v2 tokens expire twice a second and are refreshed
        ok = cli("download", "--collection", coll, "--out", str(k_out), *v3, "--api-key", API_KEY,
                 "--no-progress", "--json")  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        ok = cli("download", "--collection", coll, "--out", str(p_out), *v2, "--password", PASSWORD,
                 "--no-progress", "--json", "--concurrency", "2")  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        # failing runs on started mirrors: a file lost, a wrong password, 5xx, an unknown series
        v2_auth = ("--user", "alice", "--password", PASSWORD)
        for out in (p_out, k_out):
            next(iter(out.rglob("*.dcm"))).unlink()
            assert cli("verify", "--out", str(out), "--json").returncode == 1
        assert cli("resume", "--out", str(p_out), "--user", "alice", "--password", PASSWORD[:-1],
                   "--no-progress").returncode == 3  # fmt: skip
        st.set_faults(Faults(error_rate=1.0))
        for out, auth in ((p_out, v2_auth), (k_out, ("--api-key", API_KEY))):
            bad = cli("download", "--series", "1.2.3.999", "--out", str(out), *auth,
                      "--retries", "1", "--give-up-after", "0", "--no-progress")  # fmt: skip
            assert bad.returncode == 3, bad.stderr
        st.set_faults(Faults())
        for out, auth in ((p_out, v2_auth), (k_out, ("--api-key", API_KEY))):
            bad = cli("download", "--series", "1.2.3.999", "--out", str(out), *auth,
                      "--no-progress", "--json")  # fmt: skip
            assert bad.returncode == 1 and "1.2.3.999" in bad.stdout, bad.stderr
        cli("status", "--out", str(k_out), "--json")
        tokens = st.call(lambda: {*st.sim.tokens._access, *st.sim.tokens._refresh})
        assert len(tokens) >= 4
        scan_for_secrets({API_KEY, PASSWORD, *tokens}, texts, tmp_path)
        assert json.loads(ok.stdout)["ok"] is True


# -- leftovers ---------------------------------------------------------------------------------


async def test_faults_counter_counts_what_it_serves(tmp_path: Path) -> None:
    ds = dataset()
    async with Simulator(ds, faults=Faults(html_error_rate=1.0)) as sim:
        async with aiohttp.ClientSession() as http:
            url = sim.base_url("nbia-v4") + "/getImage"
            async with http.get(url, params={"SeriesInstanceUID": ds.series[0].series_uid}) as r:
                assert r.content_type == "text/html"
        assert sim.faults_injected == {"html": 1}
