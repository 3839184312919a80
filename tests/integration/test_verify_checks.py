"""Checks that must stand on their own: each test here fails if its one check is switched off.

* ``verify --quick`` (no MD5) still reads every header: a same-size file holding another
  instance (or another series) is a ``header_mismatch``.
* A ZIP entry whose data does not match its CRC-32 is never committed, even when nothing else
  (no MD5 list) would notice; the run reports ``crc_mismatch``.
* Where the ZIP's MD5 list states an entry's MD5, its CRC-32 is not computed: the MD5 catches the
  same damage (``md5_mismatch``). An entry the list leaves out is checked against the CRC-32 the
  ZIP stated, read back from disk (``crc_mismatch``).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Iterable
from pathlib import Path

import pydicom
import pytest

from helpers import config_for, dicom_files, ground_truth_files, running_sim
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.selection import Selection
from tcia_mirror.sources.nbia import zipstream
from tcia_mirror.testing.simulator import server as sim_server
from tcia_mirror.testing.simulator.zipstream import ZipEntryData

pytestmark = pytest.mark.anyio


def _other_uid(uid: str) -> str:
    """A different, equally long, still valid UID (only the last digit changes)."""
    return uid[:-1] + ("7" if uid[-1] != "7" else "8")


@pytest.mark.parametrize("which", ["sop", "series"])
async def test_quick_verify_catches_a_same_size_file_with_another_uid(
    tmp_path: Path, which: str
) -> None:
    async with running_sim() as sim:
        series = sim.dataset.series[0]
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(series=(series.series_uid,))
        )
        assert report.ok, report.problems
    assert (await Mirror(tmp_path).verify(deep=False)).ok

    victim = series.instances[0].sop_uid
    (path,) = tmp_path.rglob(f"{victim}.dcm")
    data = path.read_bytes()
    old = victim if which == "sop" else series.series_uid
    new = _other_uid(old)
    swapped = data.replace(old.encode() + b"\0", new.encode() + b"\0")  # UIDs are NUL-padded
    assert swapped != data and len(swapped) == len(data)
    header = pydicom.dcmread(io.BytesIO(swapped), stop_before_pixels=True)
    if which == "sop":
        assert (header.SOPInstanceUID, header.SeriesInstanceUID) == (new, series.series_uid)
    else:
        assert (header.SOPInstanceUID, header.SeriesInstanceUID) == (victim, new)
    path.write_bytes(swapped)  # the store still says: this size, the old MD5

    verdict = await Mirror(tmp_path).verify(deep=False)  # --quick: no MD5 to hide behind
    assert not verdict.ok
    kinds = {(p["kind"], p.get("sop")) for p in verdict.problems}
    assert ("header_mismatch", victim) in kinds, verdict.problems


@pytest.mark.parametrize("zip_workers", [0, 1], ids=["loop", "worker"])
@pytest.mark.parametrize(
    "md5", ["no-md5-list", "md5-list", "md5-list-without-it"], ids=lambda m: str(m)
)
async def test_a_zip_entry_failing_its_crc_is_never_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, md5: str, zip_workers: int
) -> None:
    async with running_sim() as sim:
        series = sim.dataset.series[0]
        victim = series.instances[0].sop_uid
        good = sim.dataset.instance_bytes(series.series_uid, victim)
        good_md5 = hashlib.md5(good, usedforsecurity=False).hexdigest()
        # same length, same header; one pixel byte differs near the end of the file
        bad = good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:]
        real_deflate = sim_server.deflate_entry
        served: list[int] = []
        if md5 == "md5-list-without-it":  # the ZIP's MD5 list leaves the damaged entry out
            real_render = sim_server.render_md5_csv

            def render_md5_csv(pairs: Iterable[tuple[str, str]]) -> bytes:
                return real_render([(n, m) for n, m in pairs if m != good_md5])

            monkeypatch.setattr(sim_server, "render_md5_csv", render_md5_csv)
        if md5 == "md5-list" and zip_workers == 0:  # the MD5 is checked: no CRC is computed
            crcs: list[int] = []
            real_crc32 = zipstream.crc32

            def crc32(data: bytes, value: int = 0) -> int:
                crcs.append(len(data))
                return real_crc32(data, value)

            monkeypatch.setattr(zipstream, "crc32", crc32)

        def deflate_entry(data: bytes, level: int = 1) -> ZipEntryData:
            entry = real_deflate(data, level)
            if data != good:
                return entry
            served.append(1)  # the ZIP carries the bad bytes with the good bytes' CRC-32
            comp = zlib.compressobj(level, zlib.DEFLATED, -15)
            return ZipEntryData(entry.crc, entry.size, entry.md5, comp.compress(bad) + comp.flush())

        monkeypatch.setattr(sim_server, "deflate_entry", deflate_entry)
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(series=(series.series_uid,)),
            DownloadOptions(md5=md5 != "no-md5-list", zip_workers=zip_workers),
        )
        assert served, "the simulator no longer builds ZIP entries through deflate_entry"
        caught, not_caught = "crc_mismatch", "md5_mismatch"
        if md5 == "md5-list":
            caught, not_caught = not_caught, caught
            if zip_workers == 0:  # only the small LICENSE and MD5 list entries were CRC-checked
                assert crcs and sum(crcs) < 4096, crcs
        assert any(
            p["kind"] == caught and p["series"] == series.series_uid for p in report.problems
        ), report.problems
        assert not any(p["kind"] == not_caught for p in report.problems), report.problems
        on_disk = dicom_files(tmp_path)
        assert on_disk.get(f"{victim}.dcm") != bad  # never under its final name
        # the instance was fetched again on its own (getSingleImage): the mirror is whole
        assert on_disk == ground_truth_files(sim, [series.series_uid])
        assert ("getSingleImage", series.series_uid, victim) in sim.image_requests
