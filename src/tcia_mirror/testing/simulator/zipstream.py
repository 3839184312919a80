"""A streaming ZIP writer shaped like Java's ``ZipOutputStream`` (what the NBIA server uses).

Every entry is DEFLATED and written as: local header with zero CRC/sizes and flag bit 3, the
compressed data, then a data descriptor; the central directory follows the last entry. Nothing
needs a seekable stream and only one entry is held at a time. Also here: entry naming
(``%08d.dcm`` and the ``NewFileNames=Yes`` algorithm of api-notes §5.2) and the LICENSE text.
"""

from __future__ import annotations

import datetime
import hashlib
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .dataset import SimInstance, SimSeries

__all__ = ["ZipEntryData", "ZipStreamWriter", "deflate_entry", "license_text", "new_file_names"]

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_DESCRIPTOR = struct.Struct("<IIII")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_FLAG_DESCRIPTOR = 0x0008
_FLAG_UTF8 = 0x0800
_DEFLATED = 8
_VERSION = 20

LICENSE_TEMPLATE = (
    "License Information. The {0} collection is distributed under the {1} at {2} "
    "By downloading the data, you agree to abide by terms of this license."
)

# Entry names served in hostile mode, in place of the first DICOM names of a series.
HOSTILE_NAMES = ("../evil.dcm", "/abs/evil.dcm", "a/../../x.dcm", "..\\win-evil.dcm")


@dataclass(frozen=True, slots=True)
class ZipEntryData:
    """One entry's payload, compressed once and reusable for every ZIP that carries it."""

    crc: int
    size: int
    md5: str
    compressed: bytes


def deflate_entry(data: bytes, level: int = 1) -> ZipEntryData:
    """Raw DEFLATE (level 1 keeps a few hundred MB/s; the payload stays valid at any level)."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -15)
    compressed = comp.compress(data) + comp.flush()
    return ZipEntryData(zlib.crc32(data), len(data), hashlib.md5(data).hexdigest(), compressed)


def _dos_datetime(when: datetime.datetime) -> tuple[int, int]:
    dos_time = (when.hour << 11) | (when.minute << 5) | (when.second // 2)
    dos_date = ((max(when.year, 1980) - 1980) << 9) | (when.month << 5) | when.day
    return dos_time, dos_date


class ZipStreamWriter:
    """Produces the bytes of a ZIP archive entry by entry (call :meth:`finish` at the end)."""

    def __init__(self, when: datetime.datetime, *, chunk_size: int = 256 * 1024) -> None:
        self._time, self._date = _dos_datetime(when)
        self._offset = 0
        self._central: list[bytes] = []
        self._chunk = chunk_size

    def entry(self, name: str, data: ZipEntryData) -> Iterator[bytes]:
        """Local header, compressed data in chunks, data descriptor."""
        raw_name = name.encode("utf-8")
        flags = _FLAG_DESCRIPTOR | (0 if raw_name.isascii() else _FLAG_UTF8)
        header = _LOCAL.pack(
            0x04034B50, _VERSION, flags, _DEFLATED, self._time, self._date, 0, 0, 0,
            len(raw_name), 0,
        )  # fmt: skip
        csize = len(data.compressed)
        self._central.append(
            _CENTRAL.pack(
                0x02014B50, _VERSION, _VERSION, flags, _DEFLATED, self._time, self._date,
                data.crc, csize, data.size, len(raw_name), 0, 0, 0, 0, 0, self._offset,
            )
            + raw_name
        )  # fmt: skip
        yield header + raw_name
        view = memoryview(data.compressed)
        for start in range(0, csize, self._chunk):
            yield bytes(view[start : start + self._chunk])
        yield _DESCRIPTOR.pack(0x08074B50, data.crc, csize, data.size)
        self._offset += len(header) + len(raw_name) + csize + _DESCRIPTOR.size

    def finish(self) -> bytes:
        """Central directory and end record."""
        directory = b"".join(self._central)
        count = len(self._central)
        end = _END.pack(0x06054B50, 0, 0, count, count, len(directory), self._offset, 0)
        return directory + end


def license_text(series: SimSeries) -> bytes:
    """The LICENSE entry (api-notes §5.4 template; missing values become ``Not Specified``)."""
    return LICENSE_TEMPLATE.format(
        series.collection or "Not Specified",
        series.license_short_name or "Not Specified",
        series.license_uri or "Not Specified",
    ).encode("utf-8")


def sequential_names(count: int) -> list[str]:
    return [f"{i:08d}.dcm" for i in range(1, count + 1)]


def new_file_names(instances: Sequence[SimInstance]) -> list[tuple[SimInstance, str]]:
    """``NewFileNames=Yes`` (api-notes §5.2): ``<acq>-<inst>.dcm`` in InstanceNumber order."""
    ordered = sorted(instances, key=lambda i: i.instance_number)
    acq_values = [i.acquisition_number or 0 for i in ordered]
    acq_changes = sum(1 for a, b in zip(acq_values, acq_values[1:], strict=False) if a != b)
    inst_values = [i.instance_number for i in ordered]
    inst_changes = sum(1 for a, b in zip(inst_values, inst_values[1:], strict=False) if a != b)
    acc_pad, ins_pad = len(str(acq_changes + 1)), len(str(inst_changes + 1))
    named: list[tuple[SimInstance, str]] = []
    acq_counter, ins_counter = 1, 0
    previous: int | None = None
    for inst, acq in zip(ordered, acq_values, strict=True):
        if previous is not None and acq != previous:
            acq_counter += 1
            ins_counter = 1
        else:
            ins_counter += 1
        previous = acq
        named.append((inst, f"{acq_counter:0{acc_pad}d}-{ins_counter:0{ins_pad}d}.dcm"))
    return named
