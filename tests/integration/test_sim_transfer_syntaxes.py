"""The simulator serves a deterministic mix of transfer syntaxes, and the engine mirrors them all.

Real collections hold Implicit VR files (old scanners, converted archives) and compressed ones
next to Explicit VR Little Endian; a simulator that only makes one kind hides bugs in every
reader branch the others would take (the fast header reader's implicit-VR branch went missing
unnoticed that way).
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.pixels.decoders.rle import _rle_decode_frame
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from helpers import config_for, dicom_files, ground_truth_files, running_sim
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.selection import Selection
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, dicomgen

KINDS = {ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless}


def kinds_served(dataset: Dataset) -> Counter[str]:
    seen: Counter[str] = Counter()
    for series in dataset.series:
        for inst in series.instances:
            data = dataset.instance_bytes(series.series_uid, inst.sop_uid)
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            seen[str(ds.file_meta.TransferSyntaxUID)] += 1
    return seen


@pytest.mark.parametrize("preset", ["test", "demo"])
def test_every_preset_mixes_implicit_explicit_and_encapsulated(preset: str) -> None:
    seen = kinds_served(Dataset(DatasetSpec.preset(preset)))
    assert set(seen) == KINDS, seen
    total = sum(seen.values())
    assert seen[ExplicitVRLittleEndian] > total / 2  # mostly the usual kind
    assert 0 < seen[RLELossless] <= total / 6  # a few compressed ones


def test_the_mix_is_deterministic_and_sizes_are_announced_exactly() -> None:
    one, two = Dataset(DatasetSpec.preset("test", 7)), Dataset(DatasetSpec.preset("test", 7))
    assert one.ground_truth() == two.ground_truth()
    fresh = Dataset(DatasetSpec.preset("test", 7))  # sizes asked before any file was built
    for series in fresh.series:
        truth = one.ground_truth()[series.series_uid]
        assert fresh.series_size(series.series_uid) == (
            sum(len(b) for b in truth.values()),
            len(truth),
        )


def test_encapsulated_pixels_are_valid_rle_of_the_same_image() -> None:
    dataset = Dataset(DatasetSpec.preset("test"))
    rows, cols = dataset.spec.rows, dataset.spec.cols
    checked = 0
    for series in dataset.series:
        for index, inst in enumerate(series.instances):
            if inst.transfer_syntax != RLELossless:
                continue
            ds = pydicom.dcmread(
                io.BytesIO(dataset.instance_bytes(series.series_uid, inst.sop_uid))
            )
            (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
            decoded = _rle_decode_frame(frame, rows, cols, 1, 16)
            pool = dataset._pool(series)
            assert bytes(decoded) == dicomgen.pixel_window(pool, index, rows, cols)
            checked += 1
    assert checked


@pytest.mark.parametrize(
    "row",
    [b"a", b"aa", b"aaa", b"ab" * 100, b"x" * 128, b"x" * 129, b"x" * 130, b"y" * 300 + b"z"],
)
def test_packbits_rows_round_trip(row: bytes) -> None:
    pixels = bytes(b for byte in row for b in (byte, 0))  # row as low bytes, high bytes zero
    frame = dicomgen.rle_frame(pixels, len(row))
    assert bytes(_rle_decode_frame(frame, 1, len(row), 1, 16)) == pixels


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["zip", "single"])
async def test_a_mixed_collection_is_mirrored_byte_identical(tmp_path: Path, mode: str) -> None:
    async with running_sim() as sim:
        assert set(kinds_served(sim.dataset)) == KINDS
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(series=tuple(s.series_uid for s in sim.dataset.series)),
            DownloadOptions(mode=mode, concurrency=4),  # type: ignore[arg-type]
        )
        assert report.ok, report.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim)
        verdict = await Mirror(tmp_path).verify()
        assert verdict.ok, verdict.problems
