from __future__ import annotations

import io
import random
import struct
import tracemalloc
import zipfile
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcia_mirror.errors import DataError
from tcia_mirror.sources.nbia import zipstream
from tcia_mirror.sources.nbia.zipstream import (
    ArchiveEnd,
    EntryData,
    EntryEnd,
    EntryStart,
    ZipLimits,
    ZipStreamReader,
    safe_entry_name,
)

# --- helpers ------------------------------------------------------------------------------------


class Unseekable(io.RawIOBase):
    """A write-only stream: zipfile must use data descriptors (flag bit 3), like Java."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.buf += b
        return len(b)


def make_zip(
    entries: list[tuple[str, bytes]],
    method: int = zipfile.ZIP_DEFLATED,
    *,
    seekable: bool = True,
    zip64: bool = False,
) -> bytes:
    out: io.BytesIO | Unseekable = io.BytesIO() if seekable else Unseekable()
    with zipfile.ZipFile(out, "w", method) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            with zf.open(info, "w", force_zip64=zip64) as w:
                w.write(data)
    return out.getvalue() if isinstance(out, io.BytesIO) else bytes(out.buf)


def chunked(blob: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos, i = [], 0, 0
    while pos < len(blob):
        n = sizes[i % len(sizes)] if sizes else len(blob)
        chunks.append(blob[pos : pos + n])
        pos += n
        i += 1
    return chunks


class Collected:
    def __init__(self) -> None:
        self.complete: list[tuple[str, bytes, bool]] = []
        self.current: tuple[str, bytearray] | None = None
        self.archive_end = 0
        self.starts: list[int] = []

    def take(self, events: list) -> None:
        for e in events:
            if isinstance(e, EntryStart):
                assert self.current is None
                self.current = (e.name, bytearray())
                self.starts.append(e.index)
            elif isinstance(e, EntryData):
                assert e.data and self.current is not None
                self.current[1].extend(e.data)
            elif isinstance(e, EntryEnd):
                assert self.current is not None
                assert e.size == len(self.current[1])
                self.complete.append((self.current[0], bytes(self.current[1]), e.crc_ok))
                self.current = None
            else:
                assert isinstance(e, ArchiveEnd)
                self.archive_end += 1


def read_all(blob: bytes, sizes: list[int] | None = None, **kw: object) -> Collected:
    reader = ZipStreamReader(**kw)  # type: ignore[arg-type]
    got = Collected()
    for chunk in chunked(blob, sizes or [len(blob) or 1]):
        got.take(reader.feed(chunk))
    reader.close()
    assert got.archive_end == 1 and reader.finished
    return got


def entry_ends(blob: bytes) -> list[int]:
    """Offset just past each entry (header + data + descriptor) in a zipfile-made archive."""
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        infos = zf.infolist()
        cd_start = zf.start_dir
    starts = [i.header_offset for i in infos]
    return starts[1:] + [cd_start]


ENTRIES = [
    ("LICENSE", b"License Information. The X collection is distributed under CC BY 4.0."),
    ("00000001.dcm", bytes(128) + b"DICM" + bytes(range(256)) * 40),
    ("00000002.dcm", random.Random(2).randbytes(3000)),
    ("md5hashes.csv", b"Filename,MD5Hash\n00000001.dcm,0123456789abcdef0123456789abcdef\n"),
]

VARIANTS = {
    "stored": dict(method=zipfile.ZIP_STORED),
    "stored-zip64": dict(method=zipfile.ZIP_STORED, zip64=True),
    "stored-descriptor": dict(method=zipfile.ZIP_STORED, seekable=False),
    "stored-descriptor-zip64": dict(method=zipfile.ZIP_STORED, seekable=False, zip64=True),
    "deflated": dict(method=zipfile.ZIP_DEFLATED),
    "deflated-descriptor": dict(method=zipfile.ZIP_DEFLATED, seekable=False),
    "deflated-descriptor-zip64": dict(method=zipfile.ZIP_DEFLATED, seekable=False, zip64=True),
    "deflated-zip64": dict(method=zipfile.ZIP_DEFLATED, zip64=True),
}


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [1, 3, 29, 31, 4096, 1 << 20])
def test_round_trip_fixed_chunks(variant: str, size: int) -> None:
    blob = make_zip(ENTRIES, **VARIANTS[variant])  # type: ignore[arg-type]
    got = read_all(blob, [size])
    assert [(n, d) for n, d, _ in got.complete] == ENTRIES
    assert all(ok for _, _, ok in got.complete)
    assert got.starts == [0, 1, 2, 3]


names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=20)
datas = st.one_of(
    st.binary(max_size=3000),
    st.integers(0, 20000).map(lambda n: b"\0" * n),  # compressible, also empty
    st.integers(0, 5000).map(lambda n: bytes(range(256)) * (n // 256)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(st.tuples(names, datas), max_size=6, unique_by=lambda e: e[0]),
    variant=st.sampled_from(sorted(VARIANTS)),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
)
def test_round_trip_random_chunks(
    entries: list[tuple[str, bytes]], variant: str, sizes: list[int]
) -> None:
    blob = make_zip(entries, **VARIANTS[variant])  # type: ignore[arg-type]
    got = read_all(blob, sizes)
    assert [(n, d) for n, d, _ in got.complete] == entries
    assert all(ok for _, _, ok in got.complete)


def test_utf8_and_cp437_names() -> None:
    blob = bytearray(make_zip([("été/ü.dcm", b"x"), ("xy.dcm", b"y")]))
    # The second name is ASCII (flag bit 11 clear); make its first byte 0x82, which is "é" in cp437.
    pos = blob.index(b"xy.dcm")
    blob[pos] = 0x82
    got = read_all(bytes(blob))
    assert [n for n, _, _ in got.complete] == ["été/ü.dcm", "éy.dcm"]


def test_empty_archive_and_feed_after_end() -> None:
    blob = make_zip([])
    reader = ZipStreamReader()
    events = reader.feed(blob)
    assert events == [ArchiveEnd()]
    assert reader.feed(b"anything after the end") == []
    reader.close()


# --- hand-made archives (what Java and other writers do) ---------------------------------------


def raw_entry(
    name: bytes, data: bytes, *, sig: bool = True, wide: bool = False, extra: bytes = b""
) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    cdata = comp.compress(data) + comp.flush()
    header = struct.pack(
        "<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0x08, 8, 0, 0, 0, 0, 0, len(name), len(extra)
    )
    fmt = "<IQQ" if wide else "<III"
    descriptor = (b"PK\x07\x08" if sig else b"") + struct.pack(
        fmt, zlib.crc32(data), len(cdata), len(data)
    )
    return header + name + extra + cdata + descriptor


END = b"PK\x05\x06" + bytes(18)


@pytest.mark.parametrize("sig", [True, False])
@pytest.mark.parametrize("wide", [True, False])
@pytest.mark.parametrize("data", [b"", b"a", b"hello" * 1000])
def test_descriptor_layouts(sig: bool, wide: bool, data: bytes) -> None:
    """Java writes 8-byte descriptor sizes past 4 GiB without a ZIP64 extra; the signature is
    optional per spec. Every layout must parse, also for empty entries."""
    blob = raw_entry(b"a.dcm", data, sig=sig, wide=wide) + raw_entry(b"b.dcm", b"B", sig=sig)
    for size in (1, 7, len(blob) + len(END)):
        got = read_all(blob + END, [size])
        assert [(n, d, ok) for n, d, ok in got.complete] == [
            ("a.dcm", data, True),
            ("b.dcm", b"B", True),
        ]


def test_descriptor_crc_mismatch_is_reported() -> None:
    entry = bytearray(raw_entry(b"a.dcm", b"payload" * 100))
    entry[-12] ^= 0xFF  # first byte of the descriptor CRC (16-byte descriptor with signature)
    got = read_all(bytes(entry) + raw_entry(b"b.dcm", b"ok") + END)
    assert [(n, ok) for n, _, ok in got.complete] == [("a.dcm", False), ("b.dcm", True)]


def test_stored_data_corruption_detected() -> None:
    blob = bytearray(make_zip(ENTRIES, zipfile.ZIP_STORED))
    pos = blob.index(ENTRIES[2][1])
    blob[pos + 100] ^= 0x01
    got = read_all(bytes(blob))
    assert [ok for _, _, ok in got.complete] == [True, True, False, True]


def test_deflated_data_corruption_detected() -> None:
    blob = bytearray(make_zip(ENTRIES, seekable=False))
    ends = entry_ends(bytes(blob))
    blob[ends[1] + 60] ^= 0x55  # inside entry 2's compressed data
    try:
        got = read_all(bytes(blob), [1000])
    except DataError as exc:
        assert "entry 2" in str(exc)
    else:
        assert [ok for _, _, ok in got.complete][2] is False


# --- the inflater: ISA-L where installed, else zlib ----------------------------------------------


@pytest.fixture(params=["installed", "zlib"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both inflaters the reader may run with: the one installed (ISA-L on the usual
    platforms) and the standard zlib it falls back to."""
    if request.param == "zlib":
        monkeypatch.setattr(zipstream, "_lib", zlib)
    return str(request.param)


def test_isal_is_the_inflater_where_its_wheels_exist() -> None:
    """The dependency is declared for these machines: a silent fallback would cost speed."""
    import platform

    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        assert zipstream._zlib().__name__ == "isal.isal_zlib"


@pytest.mark.parametrize("variant", VARIANTS)
def test_either_inflater_reads_every_variant_and_sees_damage(inflater: str, variant: str) -> None:
    blob = make_zip(ENTRIES, **VARIANTS[variant])  # type: ignore[arg-type]
    got = read_all(blob, [777])
    assert [(n, d, True) for n, d in ENTRIES] == got.complete
    bad = bytearray(blob)
    bad[bad.index(ENTRIES[2][1][:8]) if "stored" in variant else entry_ends(blob)[1] + 60] ^= 0x55
    try:
        damaged = read_all(bytes(bad), [777])
    except DataError as exc:
        assert "entry 2" in str(exc)
    else:
        assert [ok for _, _, ok in damaged.complete][2] is False


# --- skip_crc: entries whose MD5 the caller checks ----------------------------------------------


def ends_of(blob: bytes, sizes: list[int], **kw: object) -> list[EntryEnd]:
    reader = ZipStreamReader(**kw)  # type: ignore[arg-type]
    out: list[EntryEnd] = []
    for chunk in chunked(blob, sizes):
        out += [e for e in reader.feed(chunk) if isinstance(e, EntryEnd)]
    reader.close()
    return out


def _dicom(name: str) -> bool:
    return name.endswith(".dcm")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(st.tuples(names, datas), max_size=5, unique_by=lambda e: e[0]),
    variant=st.sampled_from(sorted(VARIANTS)),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
)
def test_skipping_crc_gives_the_same_entries_and_states_their_crc(
    entries: list[tuple[str, bytes]], variant: str, sizes: list[int]
) -> None:
    entries = [(f"{n}.dcm" if i % 2 else n, d) for i, (n, d) in enumerate(entries)]
    blob = make_zip(entries, **VARIANTS[variant])  # type: ignore[arg-type]
    got = read_all(blob, sizes, skip_crc=_dicom)
    assert [(n, d, True) for n, d in entries] == got.complete
    unsized = variant == "stored-descriptor" or variant == "stored-descriptor-zip64"
    for (name, data), end in zip(entries, ends_of(blob, sizes, skip_crc=_dicom), strict=True):
        if _dicom(name) and not unsized:  # not computed: the archive's, for a later check
            assert end.crc_stated == zlib.crc32(data)
        else:  # computed (an unsized stored entry is framed by its CRC)
            assert end.crc_stated is None


@pytest.mark.parametrize("variant", ["stored", "deflated", "deflated-descriptor"])
def test_skipping_crc_passes_damage_on_with_the_stated_crc(variant: str) -> None:
    """An entry spared its CRC is not refused for damage the CRC would see: the caller checks
    its MD5, or the CRC the archive stated (carried in EntryEnd) against what it wrote."""
    data = random.Random(3).randbytes(3000)
    blob = bytearray(make_zip([("a.dcm", data), ("LICENSE", b"L" * 40)], **VARIANTS[variant]))
    if variant == "stored":
        blob[blob.index(data) + 100] ^= 0x01
    else:  # same length, another payload: the stated CRC is the original's
        start = blob.index(b"a.dcm") + len("a.dcm")
        comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        good = comp.compress(data) + comp.flush()
        assert bytes(blob[start : start + len(good)]) == good
        bad = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        comp = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        other = comp.compress(bad) + comp.flush()
        assert len(other) == len(good)  # (random bytes: deflate stores them, one flip in place)
        blob[start : start + len(good)] = other
    checked = ends_of(bytes(blob), [700])
    assert [e.crc_ok for e in checked] == [False, True]
    spared = ends_of(bytes(blob), [700], skip_crc=_dicom)
    assert [(e.crc_ok, e.crc_stated) for e in spared] == [(True, zlib.crc32(data)), (True, None)]


def test_skipping_crc_still_checks_sizes() -> None:
    entry = bytearray(raw_entry(b"a.dcm", b"payload" * 100))
    entry[-4] ^= 0x01  # the descriptor's uncompressed size
    with pytest.raises(DataError, match="data descriptor does not match"):
        ends_of(bytes(entry) + raw_entry(b"b.dcm", b"ok") + END, [50], skip_crc=_dicom)


def test_a_descriptor_crc_disagreeing_with_the_header_fails_even_unchecked() -> None:
    """Bit 3 with the CRC also in the header: the two statements must agree."""
    entry = bytearray(raw_entry(b"a.dcm", b"payload" * 100))
    struct.pack_into("<I", entry, 14, zlib.crc32(b"payload" * 100) ^ 1)  # the header's CRC
    struct.pack_into("<I", entry, 22, 700)  # its uncompressed size, so it is trusted
    ends = ends_of(bytes(entry) + END, [64], skip_crc=_dicom)
    assert [e.crc_ok for e in ends] == [False]


# --- truncation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["stored", "deflated", "deflated-descriptor-zip64"])
@pytest.mark.parametrize("skip", [False, True], ids=["crc", "skip-crc"])
def test_truncation_at_every_offset(variant: str, skip: bool) -> None:
    """A cut anywhere keeps exactly the entries complete before it, also when the images'
    CRC-32 is spared for their MD5."""
    entries = [("LICENSE", b"L" * 50), ("00000001.dcm", b"\x01" * 700 + bytes(range(200)))]
    entries.append(("00000002.dcm", random.Random(5).randbytes(400)))
    blob = make_zip(entries, **VARIANTS[variant])  # type: ignore[arg-type]
    ends = entry_ends(blob)
    rnd = random.Random(11)
    for offset in range(len(blob)):
        reader = ZipStreamReader(skip_crc=_dicom if skip else None)
        got = Collected()
        sizes = [rnd.randint(1, 300) for _ in range(4)]
        for chunk in chunked(blob[:offset], sizes):
            got.take(reader.feed(chunk))
        expected = [e for e, end in zip(entries, ends, strict=True) if end <= offset]
        assert [(n, d) for n, d, _ in got.complete] == expected, offset
        assert all(ok for _, _, ok in got.complete)
        if offset >= ends[-1] + 4:  # the central directory's signature has arrived
            assert got.archive_end == 1
            reader.close()
        else:
            assert got.archive_end == 0
            with pytest.raises(DataError, match="ZIP ended|empty response"):
                reader.close()


def test_truncated_message_names_entry() -> None:
    blob = make_zip(ENTRIES, seekable=False)
    ends = entry_ends(blob)
    reader = ZipStreamReader()
    reader.feed(blob[: ends[1] + 80])
    with pytest.raises(DataError, match=r"ZIP ended in the middle of entry 2 \('00000002.dcm'\)"):
        reader.close()
    reader = ZipStreamReader()
    reader.feed(blob[: ends[1] + 20])  # inside the local header
    with pytest.raises(DataError, match="ZIP ended in the middle of entry 2"):
        reader.close()
    reader = ZipStreamReader()
    reader.feed(blob[: ends[1]])
    with pytest.raises(DataError, match="ZIP ended after entry 1"):
        reader.close()


def test_damage_after_complete_entries_in_same_chunk_keeps_them() -> None:
    blob = bytearray(make_zip(ENTRIES, seekable=False))
    ends = entry_ends(bytes(blob))
    blob[ends[1] : ends[1] + 4] = b"JUNK"  # entry 2's signature destroyed
    reader = ZipStreamReader()
    got = Collected()
    got.take(reader.feed(bytes(blob)))  # no exception: the complete entries come first
    assert [n for n, _, _ in got.complete] == ["LICENSE", "00000001.dcm"]
    with pytest.raises(DataError, match="bad ZIP structure after entry 1"):
        reader.feed(b"more")
    with pytest.raises(DataError):
        reader.close()


# --- hostile input --------------------------------------------------------------------------------


def test_bomb_rejected_without_allocating() -> None:
    out = io.BytesIO()
    block = bytes(1 << 20)
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("bomb.dcm", "w", force_zip64=True) as w,
    ):
        for _ in range(100):  # 100 MB of zeros, written 1 MB at a time
            w.write(block)
    blob = out.getvalue()
    del block, out
    assert len(blob) < 1_000_000
    tracemalloc.start()
    try:
        reader = ZipStreamReader()
        with pytest.raises(DataError, match="decompression bomb"):
            for chunk in chunked(blob, [64 * 1024]):
                reader.feed(chunk)
            reader.close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_max_entry_size() -> None:
    data = random.Random(3).randbytes(5000)  # incompressible: the ratio check does not fire
    for variant in ("stored", "deflated", "deflated-descriptor"):
        blob = make_zip([("a.dcm", data)], **VARIANTS[variant])  # type: ignore[arg-type]
        with pytest.raises(DataError, match="limit of 4000 bytes"):
            read_all(blob, [999], limits=ZipLimits(max_entry_size=4000))


def test_max_entries() -> None:
    blob = make_zip([(f"{i}.dcm", b"x") for i in range(5)])
    with pytest.raises(DataError, match="more than 3 entries"):
        read_all(blob, limits=ZipLimits(max_entries=3))


@pytest.mark.parametrize(
    ("body", "quoted"),
    [
        (b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>" * 3,
         "<html><head><title>502 Bad Gateway</title>"),
        (b'{"error": "Series not found"}', '{"error": "Series not found"}'),
        (b"A parameter, SeriesInstanceUID, is required for this API call.\r\n",
         "A parameter, SeriesInstanceUID, is required for this API"),
    ],
)  # fmt: skip
def test_not_a_zip(body: bytes, quoted: str) -> None:
    reader = ZipStreamReader()
    with pytest.raises(DataError) as info:
        for chunk in chunked(body, [10]):
            reader.feed(chunk)
        reader.close()
    message = str(info.value)
    assert "not a ZIP" in message and quoted in message
    assert "\n" not in message and len(message) < 250


def test_empty_body() -> None:
    reader = ZipStreamReader()
    with pytest.raises(DataError, match="empty response"):
        reader.close()


def _patch_first_header(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(blob)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_encrypted_entry_rejected() -> None:
    blob = make_zip([("a.dcm", b"secret")])
    flags = struct.unpack_from("<H", blob, 6)[0]
    with pytest.raises(DataError, match="encrypted"):
        read_all(_patch_first_header(blob, 6, "<H", flags | 1))


def test_unsupported_method_rejected() -> None:
    blob = _patch_first_header(make_zip([("a.dcm", b"x" * 100)]), 8, "<H", 12)
    with pytest.raises(DataError, match="bzip2"):
        read_all(blob)


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=4),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8),
)
def test_stored_entries_without_size_are_found_by_their_descriptor(
    entries: list[bytes], sizes: list[int]
) -> None:
    # Python's zipfile writing STORED to a stream: sizes only in the data descriptor. The data
    # may even contain descriptor signatures; only one whose CRC and size match ends the entry.
    decoys = [d + b"PK\x07\x08" + d[:12] for d in entries]
    named = [(f"{i:08d}.dcm", d) for i, d in enumerate(decoys)]
    blob = make_zip(named, zipfile.ZIP_STORED, seekable=False)
    got = read_all(blob, sizes)
    assert [(n, d, True) for n, d in named] == got.complete


def test_stored_entry_without_size_truncated_keeps_complete_entries() -> None:
    named = [("00000001.dcm", b"a" * 500), ("00000002.dcm", b"b" * 500)]
    blob = make_zip(named, zipfile.ZIP_STORED, seekable=False)
    ends = entry_ends(blob)
    reader = ZipStreamReader()
    got = Collected()
    got.take(reader.feed(blob[: ends[0] + 100]))
    assert [c[0] for c in got.complete] == ["00000001.dcm"]
    with pytest.raises(DataError, match="ZIP ended in the middle of entry"):
        reader.close()


# --- safe_entry_name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("00000001.dcm", "00000001.dcm"),
        ("1-001.dcm", "1-001.dcm"),
        ("LICENSE", "LICENSE"),
        ("sub/dir/x.dcm", "x.dcm"),
        ("./x.dcm", "x.dcm"),
        ("sub\\x.dcm", "x.dcm"),
        ("", None),
        ("dir/", None),
        ("/etc/passwd", None),
        ("\\\\server\\share\\x", None),
        ("../x.dcm", None),
        ("a/../../x.dcm", None),
        ("..\\..\\x.dcm", None),
        ("..", None),
        (".", None),
        ("C:x.dcm", None),
        ("c:\\windows\\x.dcm", None),
        ("x\x00.dcm", None),
        ("x\n.dcm", None),
        ("a:b", None),
        ("x" * 256, None),
        ("é.dcm", "é.dcm"),
    ],
)
def test_safe_entry_name(name: str, expected: str | None) -> None:
    assert safe_entry_name(name) == expected


@given(st.text(max_size=40))
def test_safe_entry_name_never_escapes(name: str) -> None:
    base = safe_entry_name(name)
    if base is not None:
        assert base and "/" not in base and "\\" not in base and base not in (".", "..")
        assert not any(ord(c) < 32 for c in base)
