"""The fast header reader (``ids_from_head``) against pydicom, on files it did not write.

The simulator's files are all made by one writer; pydicom's bundled test files cover implicit
and explicit VR, big endian, deflated and encapsulated transfer syntaxes, odd VRs and files
without a preamble. Wherever the fast reader answers, it must agree with pydicom; where it is
unsure it must say so (None) so the caller falls back to :func:`read_ids`.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from pathlib import Path

import pydicom
from pydicom.data import data_manager
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from tcia_mirror.fs.dicomio import ids_from_head, read_ids
from tcia_mirror.testing.simulator import Dataset, DatasetSpec

HEAD = 16 * 1024  # what the fetcher keeps of each file for the fast check

# Only the files shipped inside pydicom: get_testdata_files() would also try to download the
# others, and tests never touch the network.
TEST_FILES = Path(data_manager.DATA_ROOT) / "test_files"


def _truth(path: Path) -> tuple[str, str, str | None, str | None, str | None] | None:
    """(SOP, Series, Study, PatientID, transfer syntax) by pydicom, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # pydicom's test data includes deliberately broken files
        return None

    def get(name: str) -> str | None:
        value = ds.get(name)
        text = str(value).strip() if value is not None else ""
        return text or None

    sop, series = get("SOPInstanceUID"), get("SeriesInstanceUID")
    if sop is None or series is None:
        return None
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return sop, series, get("StudyInstanceUID"), get("PatientID"), ts and str(ts)


def test_fast_reader_agrees_with_pydicom_on_its_test_files() -> None:
    counts: Counter[str] = Counter()
    parsed_by_ts: Counter[str] = Counter()
    disagree: list[str] = []
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file() or path.suffix == ".py":
            continue
        truth = _truth(path)
        if truth is None:
            continue
        sop, series, study, patient, ts = truth
        with path.open("rb") as fh:
            head = fh.read(HEAD)
        ids = ids_from_head(head)
        if ids is None:
            counts["fallback" if head[128:132] == b"DICM" else "rejected"] += 1
            continue
        counts["parsed"] += 1
        parsed_by_ts[ts or "?"] += 1
        if (ids.sop_uid, ids.series_uid) != (sop, series):
            disagree.append(f"{path.name}: {ids} != {sop}/{series}")
        if ids.study_uid is not None and ids.study_uid != study:
            disagree.append(f"{path.name}: study {ids.study_uid} != {study}")
        if ids.patient_id is not None and ids.patient_id != patient:
            disagree.append(f"{path.name}: patient {ids.patient_id!r} != {patient!r}")
    assert not disagree, disagree
    # pydicom 3.0.2 ships: 125 parsed (6 implicit VR, 93 explicit VR little endian, 26
    # encapsulated: JPEG, JPEG-LS, JPEG 2000, RLE), 20 fall back (big endian, deflated, tags
    # past the head), 3 without a preamble.
    # Floors, not exact numbers: a pydicom release may add or drop files.
    assert counts["parsed"] >= 115, counts
    assert parsed_by_ts[ImplicitVRLittleEndian] >= 5, parsed_by_ts
    assert parsed_by_ts[ExplicitVRLittleEndian] >= 80, parsed_by_ts
    assert parsed_by_ts[JPEGBaseline8Bit] >= 5 and parsed_by_ts[RLELossless] >= 5, parsed_by_ts
    assert counts["rejected"] >= 1, counts  # files without the DICM preamble are not guessed at


def _transfer_syntax(data: bytes) -> str:
    return str(
        pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    )


def test_fast_reader_parses_each_uncompressed_kind_the_simulator_serves(tmp_path: Path) -> None:
    dataset = Dataset(DatasetSpec.preset("test"))
    seen: Counter[str] = Counter()
    for series in dataset.series:
        for inst in series.instances:
            data = dataset.instance_bytes(series.series_uid, inst.sop_uid)
            ts = _transfer_syntax(data)
            seen[ts] += 1
            path = tmp_path / f"{inst.sop_uid}.dcm"
            path.write_bytes(data)
            slow = read_ids(path)
            assert slow is not None
            assert (slow.sop_uid, slow.series_uid) == (inst.sop_uid, series.series_uid)
            fast = ids_from_head(data[:HEAD])
            # encapsulated too: its data set is explicit VR little endian (pixels differ)
            assert fast == slow, (ts, fast, slow)
            # cut anywhere in the header, it declines or agrees: never a wrong answer
            for cut in range(0, min(len(data), 1200), 7):
                partial = ids_from_head(data[:cut])
                assert partial is None or partial == slow, (ts, cut, partial)
    assert seen[ImplicitVRLittleEndian] and seen[ExplicitVRLittleEndian] and seen[RLELossless]
