"""Deterministic DICOM Part-10 files for the simulator, cheap enough to serve hundreds of MB.

The header (everything before PixelData) is written once per instance with pydicom and kept;
the pixel bytes are a window into a per-series pseudo-random "pool", so building an instance is
one slice and one concatenation. PixelData is the last element, so splicing it after the
pydicom-written header gives a valid Explicit VR Little Endian file.
"""

from __future__ import annotations

import io
import random
import struct
from typing import TYPE_CHECKING

from pydicom import dcmwrite
from pydicom.dataset import Dataset as DicomDataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

if TYPE_CHECKING:
    from .dataset import SimInstance, SimSeries

UID_ROOT = "1.2.826.0.1.3680043.10.1234"
IMPLEMENTATION_CLASS_UID = UID_ROOT + ".0.1"
IMPLEMENTATION_VERSION = "TCIA_MIRROR_SIM"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_CLASS_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}

# (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, then a 4-byte length.
_PIXEL_TAG = b"\xe0\x7f\x10\x00OW\x00\x00"

# Low byte of each pixel: 4 bits of noise (so DEFLATE gets about 2.7:1 and runs fast).
_NOISE_TABLE = bytes(0x30 + (b & 0x0F) for b in range(256))


def sop_class_uid(modality: str) -> str:
    return SOP_CLASS_BY_MODALITY.get(modality, CT_IMAGE_STORAGE)


def pixel_length(rows: int, cols: int) -> int:
    return rows * cols * 2


def pixel_element(pixels: bytes) -> bytes:
    return _PIXEL_TAG + struct.pack("<I", len(pixels)) + pixels


def pixel_element_length(rows: int, cols: int) -> int:
    return len(_PIXEL_TAG) + 4 + pixel_length(rows, cols)


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
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
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
