"""Deterministic DICOM Part-10 files for the simulator, cheap enough to serve hundreds of MB.

The header (everything before PixelData) is written once per instance with pydicom and kept;
the pixel bytes are a window into a per-series pseudo-random "pool", so building an instance is
one slice and one concatenation. PixelData is the last element, so splicing it after the
pydicom-written header gives a valid file.

Like a real archive, a series mixes transfer syntaxes (:func:`mixed_transfer_syntax`): mostly
Explicit VR Little Endian, about a third Implicit VR Little Endian, and a few RLE Lossless
files whose PixelData is encapsulated (a Basic Offset Table item, one fragment per frame).
"""

from __future__ import annotations

import io
import random
import re
import struct
from typing import TYPE_CHECKING

from pydicom import dcmwrite
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

if TYPE_CHECKING:
    from .dataset import SimInstance, SimSeries

UID_ROOT = "1.2.826.0.1.3680043.10.1234"
IMPLEMENTATION_CLASS_UID = UID_ROOT + ".0.1"
IMPLEMENTATION_VERSION = "TCIA_MIRROR_SIM"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_CLASS_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}

EXPLICIT_VR_LE = str(ExplicitVRLittleEndian)
IMPLICIT_VR_LE = str(ImplicitVRLittleEndian)
RLE_LOSSLESS = str(RLELossless)
TRANSFER_SYNTAXES = (EXPLICIT_VR_LE, IMPLICIT_VR_LE, RLE_LOSSLESS)

# (7FE0,0010) explicit VR: tag, VR, 2 reserved bytes, then a 4-byte length; implicit VR: tag,
# then the length. Encapsulated: OB of undefined length, items, a sequence delimiter.
_PIXEL_TAG = {
    EXPLICIT_VR_LE: b"\xe0\x7f\x10\x00OW\x00\x00",
    IMPLICIT_VR_LE: b"\xe0\x7f\x10\x00",
}
_ENCAPSULATED_TAG = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_RUN = re.compile(rb"(.)\1{2,}", re.DOTALL)  # 3+ equal bytes: worth a PackBits replicate run

# Low byte of each pixel: 4 bits of noise (so DEFLATE gets about 2.7:1 and runs fast).
_NOISE_TABLE = bytes(0x30 + (b & 0x0F) for b in range(256))


def sop_class_uid(modality: str) -> str:
    return SOP_CLASS_BY_MODALITY.get(modality, CT_IMAGE_STORAGE)


def pixel_length(rows: int, cols: int) -> int:
    return rows * cols * 2


def mixed_transfer_syntax(series_number: int, instance_number: int) -> str:
    """The transfer syntax of an instance: a fixed pattern, so every preset holds all three.

    The 2nd instance of every odd-numbered series is RLE Lossless; of the others, those where
    ``series_number + instance_number`` is a multiple of 3 are Implicit VR Little Endian.
    """
    if instance_number == 2 and series_number % 2 == 1:
        return RLE_LOSSLESS
    if (series_number + instance_number) % 3 == 0:
        return IMPLICIT_VR_LE
    return EXPLICIT_VR_LE


def is_encapsulated(transfer_syntax: str) -> bool:
    return transfer_syntax not in _PIXEL_TAG


def pixel_element(pixels: bytes, transfer_syntax: str = EXPLICIT_VR_LE, *, cols: int = 0) -> bytes:
    """The PixelData element of 16-bit ``pixels`` (``cols`` is needed for RLE: rows are coded
    one by one)."""
    tag = _PIXEL_TAG.get(transfer_syntax)
    if tag is not None:
        return tag + struct.pack("<I", len(pixels)) + pixels
    if transfer_syntax != RLE_LOSSLESS:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    frame = rle_frame(pixels, cols)
    return _ENCAPSULATED_TAG + encapsulate([frame], has_bot=True) + _SEQUENCE_DELIMITER


def pixel_element_length(rows: int, cols: int, transfer_syntax: str = EXPLICIT_VR_LE) -> int:
    """Length of the PixelData element (uncompressed syntaxes only: RLE depends on content)."""
    tag = _PIXEL_TAG.get(transfer_syntax)
    if tag is None:
        raise ValueError(f"the length of {transfer_syntax} pixel data depends on the pixels")
    return len(tag) + 4 + pixel_length(rows, cols)


def _packbits_literal(data: bytes, out: bytearray) -> None:
    for start in range(0, len(data), 128):
        chunk = data[start : start + 128]
        out.append(len(chunk) - 1)
        out += chunk


def _packbits_row(row: bytes, out: bytearray) -> None:
    """PackBits (DICOM PS3.5 Annex G.3.1): literal runs, and replicate runs of 3+ bytes."""
    pos = 0
    for m in _RUN.finditer(row):
        _packbits_literal(row[pos : m.start()], out)
        value, run = row[m.start()], m.end() - m.start()
        while run >= 2:
            n = min(run, 128)
            out += bytes((257 - n, value))
            run -= n
        if run:
            _packbits_literal(row[m.end() - 1 : m.end()], out)
        pos = m.end()
    _packbits_literal(row[pos:], out)


def rle_frame(pixels: bytes, cols: int) -> bytes:
    """One RLE Lossless frame of 16-bit little-endian ``pixels``: a 64-byte header, then the
    high-byte segment and the low-byte segment, each coded row by row and padded to even."""
    if cols <= 0:
        raise ValueError("RLE needs the number of columns")
    segments = []
    for plane in (pixels[1::2], pixels[0::2]):  # most significant byte first
        out = bytearray()
        for start in range(0, len(plane), cols):
            _packbits_row(plane[start : start + cols], out)
        if len(out) % 2:
            out.append(0)
        segments.append(bytes(out))
    header = struct.pack("<3I", len(segments), 64, 64 + len(segments[0])).ljust(64, b"\0")
    return header + b"".join(segments)


def pixel_pool(seed: str, rows: int, cols: int) -> bytes:
    """Two images' worth of 16-bit little-endian pixels: a bright disc on dark air, with noise.

    Instances take windows of this pool at different offsets, so every slice differs.
    """
    n = rows * cols
    rng = random.Random(seed)
    low = rng.randbytes(2 * n).translate(_NOISE_TABLE)
    radius2 = (min(rows, cols) * 0.4) ** 2
    cy, cx = rows / 2, cols / 2
    high = bytearray(2 * n)
    for y in range(2 * rows):
        dy2 = ((y % rows) - cy) ** 2
        if dy2 >= radius2:
            continue
        half = int((radius2 - dy2) ** 0.5)
        start = max(0, int(cx) - half)
        stop = min(cols, int(cx) + half)
        high[y * cols + start : y * cols + stop] = b"\x04" * (stop - start)
    pool = bytearray(4 * n)
    pool[0::2] = low
    pool[1::2] = high
    return bytes(pool)


def pixel_window(pool: bytes, index: int, rows: int, cols: int) -> bytes:
    """The pixels of the index-th instance of a series: an even-aligned window of the pool."""
    length = pixel_length(rows, cols)
    offset = ((index * 2 * 7919) % length) & ~1
    return pool[offset : offset + length]


def dicom_header(series: SimSeries, instance: SimInstance, rows: int, cols: int) -> bytes:
    """Everything of the Part-10 file except the trailing PixelData element."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid(series.modality))
    meta.MediaStorageSOPInstanceUID = UID(instance.sop_uid)
    meta.TransferSyntaxUID = UID(instance.transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION

    ds = DicomDataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = instance.sop_uid
    study_date = series.study_date.strftime("%Y%m%d")
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = series.modality
    ds.Manufacturer = series.manufacturer
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = series.study_description
    ds.SeriesDescription = series.series_description
    ds.ManufacturerModelName = series.manufacturer_model
    ds.PatientName = series.patient_name
    ds.PatientID = series.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = series.patient_sex
    ds.PatientAge = series.patient_age
    ds.BodyPartExamined = series.body_part
    ds.SliceThickness = "2.5"
    ds.SoftwareVersions = series.software_versions
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = series.study_id
    ds.SeriesNumber = series.series_number
    if instance.acquisition_number is not None:
        ds.AcquisitionNumber = instance.acquisition_number
    ds.InstanceNumber = instance.instance_number
    ds.ImagePositionPatient = [-160, -160, -2.5 * instance.instance_number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.SliceLocation = -2.5 * instance.instance_number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [0.625, 0.625]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if series.modality == "CT":
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
