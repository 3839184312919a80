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
    # pydicom 3.0.2 ships: 135 parsed (6 implicit VR, 96 explicit VR little endian, 33
    # encapsulated: JPEG, JPEG-LS, JPEG 2000, RLE), 10 fall back (big endian, deflated, tags
    # past the head), 3 without a preamble. Before sequences of undefined length were stepped
    # over, 125 parsed and 20 fell back.
    # Floors, not exact numbers: a pydicom release may add or drop files.
    assert counts["parsed"] >= 130, counts
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


# --------------------------------------------------------------------------- sequences, fields
# Real archives' headers often hold sequences before the series' UIDs (Referenced Series,
# Source Image, Procedure Code ...), encoded with undefined lengths by many writers. The fast
# reader steps over them; these files are written by pydicom with every mix of defined and
# undefined lengths, nested, in both little endian encodings.

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydicom.dataset import Dataset as DicomDataset  # noqa: E402
from pydicom.dataset import FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from tcia_mirror.sources.idc.source import _identity, _identity_fast  # noqa: E402

_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
    max_size=12,
)
# the character sets the fast reader decodes, and text each can hold
_CHARSET_TEXT = {
    None: _TEXT,
    "ISO_IR 100": st.text(
        alphabet=st.characters(
            codec="latin_1", exclude_categories=("Cc",), exclude_characters="\\"
        ),
        max_size=12,
    ),
    "ISO_IR 192": st.text(
        alphabet=st.characters(
            codec="utf_8", exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters="\\"
        ),
        max_size=12,
    ),
}


@st.composite
def _sequence(draw: st.DrawFn, depth: int = 0) -> Sequence:
    items = []
    for _ in range(draw(st.integers(0, 3))):
        item = DicomDataset()
        item.ReferencedSOPInstanceUID = "1.2.3." + str(draw(st.integers(0, 999)))
        if depth < 2 and draw(st.booleans()):
            item.ReferencedImageSequence = draw(_sequence(depth + 1))
            item["ReferencedImageSequence"].is_undefined_length = draw(st.booleans())
        item.is_undefined_length_sequence_item = draw(st.booleans())
        items.append(item)
    return Sequence(items)


@st.composite
def _file(draw: st.DrawFn) -> bytes:
    implicit = draw(st.booleans())
    charset = draw(st.sampled_from(sorted(_CHARSET_TEXT, key=str)))
    text = _CHARSET_TEXT[charset]
    ds = DicomDataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality = draw(st.sampled_from(["CT", "MR", "", " PT"]))
    ds.StudyDescription = draw(text)
    ds.SeriesDescription = draw(text)
    ds.PatientName = draw(text.filter(lambda t: "=" not in t and "^" not in t))
    ds.PatientID = draw(_TEXT)
    ds.StudyInstanceUID = "1.2.3.5"
    ds.SeriesInstanceUID = "1.2.3.6"
    ds.SeriesNumber = draw(st.sampled_from(["1", " 7", "+3 ", "12"]))
    for keyword in ("ReferencedSeriesSequence", "SourceImageSequence", "ProcedureCodeSequence"):
        if draw(st.booleans()):
            setattr(ds, keyword, draw(_sequence()))
            ds[keyword].is_undefined_length = draw(st.booleans())  # how pydicom writes it
    if draw(st.booleans()):  # TCIA's CTP block, maybe after another creator's
        block = draw(st.sampled_from([0x10, 0x11, 0x20]))
        if block != 0x10:
            ds.add_new((0x0013, 0x0010), "LO", "OTHER")
        ds.add_new((0x0013, block), "LO", "CTP")
        ds.add_new((0x0013, block << 8 | 0x10), "LO", draw(text.filter(str.strip)))
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(_file())
def test_fast_reader_steps_over_sequences_and_agrees_with_pydicom(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    ids = ids_from_head(data)
    assert ids is not None  # these encodings: the fast reader must not need pydicom
    assert (ids.sop_uid, ids.series_uid, ids.study_uid) == ("1.2.3.4", "1.2.3.6", "1.2.3.5")
    assert ids.patient_id == (str(ds.PatientID).strip() or None)
    fast = _identity_fast(data, complete=True)
    assert fast is not None
    assert fast == _identity(ds)
    # cut anywhere, it declines or agrees: never a wrong answer
    for cut in range(132, len(data), 11):
        partial = _identity_fast(data[:cut])
        assert partial is None or partial == fast, cut


@settings(max_examples=300, deadline=None)
@given(
    _file(),
    st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
    st.integers(0, 4096),
)
def test_fast_reader_never_raises_on_damaged_headers(
    data: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    """A header from the network may be anything: bytes changed anywhere, and cut anywhere,
    make the readers answer or decline (None), never raise (a hostile length, an item that
    never ends, a length field cut in two ...)."""
    damaged = bytearray(data)
    for pos, value in flips:
        if 128 <= pos < len(damaged):  # past the preamble, which only needs "DICM"
            damaged[pos] = value
    head = bytes(damaged[: max(cut, 132)])
    ids_from_head(head)
    _identity_fast(head)
    _identity_fast(head, complete=True)


def test_a_un_of_undefined_length_is_stepped_over_as_implicit_vr_items() -> None:
    """A private sequence read as UN, of undefined length, in an explicit VR data set: its
    items are encoded implicit VR (PS3.5 6.2.2), and the patient name inside one must not be
    taken for the data set's own."""
    ds = DicomDataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Outside^Top"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3.5"
    ds.SeriesInstanceUID = "1.2.3.6"
    ds.SeriesNumber = "2"
    ds.InstanceNumber = "7"  # past every tag the readers want: they know they are done
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    data = buf.getvalue()
    at = data.index(b"\x10\x00\x10\x00PN")  # (0010,0010), the data set's own name
    private = (
        b"\x09\x00\x10\x00LO\x04\x00ACME"  # (0009,0010) private creator
        + b"\x09\x00\x10\x10UN\x00\x00\xff\xff\xff\xff"  # (0009,1010) UN, undefined length
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # an item of undefined length
        + b"\x10\x00\x10\x00\x0c\x00\x00\x00Inside^Item "  # implicit VR (0010,0010)
        + b"\x10\x00\x20\x00\x02\x00\x00\x00P9"  # implicit VR (0010,0020)
        + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"  # item delimiter
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # sequence delimiter
    )
    data = data[:at] + private + data[at:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        truth = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert str(truth.PatientName) == "Outside^Top"  # the file is as meant
    ids = ids_from_head(data)
    assert ids is not None and ids.patient_id == "P1"
    fast = _identity_fast(data)
    assert fast is not None
    assert fast == _identity(truth)
    assert fast["PatientName"] == "Outside^Top"
