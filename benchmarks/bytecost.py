"""What each byte of a series ZIP costs on this machine, step by step (issue 9's profile summary).

    benchmarks/.venv/bin/python benchmarks/bytecost.py [--level 1] [--repeats 3]

Starts the simulator (bench preset, ZIPs at ``--level``), fetches the 8 series ZIPs once into
memory, then times each step of tcia-mirror's byte path alone, on one thread, in this process:
receiving (8 streams at once, bytes dropped), parsing with inflate and CRC-32
(``ZipStreamReader`` with the inflater installed, ISA-L on the usual machines; again with zlib,
its fallback; again without the DICOM entries' CRC-32, as a run does where the ZIP states their
MD5s), CRC-32 alone, MD5 of every entry, writing every entry to a file, fsync of each file, and
one SQLite transaction per series recording its files. Prints CPU seconds per GB of DICOM
payload, best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tcia_mirror.engine.zipentries import is_dicom_entry
from tcia_mirror.sources.nbia import zipstream
from tcia_mirror.sources.nbia.zipstream import EntryData, EntryEnd, ZipStreamReader

HERE = Path(__file__).resolve().parent


def _best(fn: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


async def _fetch(root: str, uids: list[str], keep: bool) -> list[list[bytes]]:
    async with aiohttp.ClientSession() as s:

        async def one(uid: str) -> list[bytes]:
            url = f"{root}/nbia-api/services/v4/getImage"
            async with s.get(url, params={"SeriesInstanceUID": uid}) as r:
                chunks = []
                async for c in r.content.iter_chunked(256 * 1024):
                    if keep:
                        chunks.append(c)
                return chunks

        return await asyncio.gather(*(one(u) for u in uids))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--level", type=int, default=1, help="the simulator's ZIP level (0: stored)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bytecost-"))
    listing = work / "listing.json"
    cfg = {"preset": "bench", "zip_level": args.level, "warm": True, "listing": str(listing)}
    sim = subprocess.Popen(
        [sys.executable, str(HERE / "simserver.py"), json.dumps(cfg)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        root = sim.stdout.readline().split()[1]
        uids = [s["uid"] for s in json.loads(listing.read_text())["series"]]
        zips = asyncio.run(_fetch(root, uids, keep=True))
        entries: list[list[bytes]] = []
        for z in zips:
            reader, pieces, files = ZipStreamReader(), [], []
            for c in z:
                for ev in reader.feed(c):
                    if isinstance(ev, EntryData):
                        pieces.append(ev.data)
                    elif isinstance(ev, EntryEnd):
                        files.append(b"".join(pieces))
                        pieces = []
            entries.append(files)
        payload = sum(len(f) for fs in entries for f in fs)
        wire = sum(len(c) for z in zips for c in z)
        out = work / "files"

        def recv() -> None:
            asyncio.run(_fetch(root, uids, keep=False))

        def parse(skip: bool = False) -> None:
            for z in zips:
                reader = ZipStreamReader(skip_crc=is_dicom_entry if skip else None)
                for c in z:
                    reader.feed(c)

        def parse_zlib() -> None:  # the fallback where ISA-L's wheels are missing
            installed = zipstream._zlib()
            zipstream._lib = zlib
            try:
                parse()
            finally:
                zipstream._lib = installed

        def crc(fn: Callable[[bytes, int], int] = zipstream.crc32) -> None:
            for fs in entries:
                for f in fs:
                    fn(f, 0)

        def md5() -> None:
            for fs in entries:
                for f in fs:
                    hashlib.md5(f, usedforsecurity=False).hexdigest()

        def write() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            for i, fs in enumerate(entries):
                for j, f in enumerate(fs):
                    with open(out / f"{i}-{j}.dcm", "wb") as fh:
                        fh.write(f)

        def fsync_s() -> float:
            """CPU of fsyncing each file just written (its pages dirty), best of the repeats."""
            best = float("inf")
            for _ in range(args.repeats):
                write()
                t = time.process_time()
                for name in os.listdir(out):
                    fd = os.open(out / name, os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)
                best = min(best, time.process_time() - t)
            return best

        def checkpoint() -> None:
            db = work / "state.sqlite"
            db.unlink(missing_ok=True)
            conn = sqlite3.connect(db)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE i (sop TEXT PRIMARY KEY, path TEXT, size INT, md5 TEXT)")
            for i, fs in enumerate(entries):
                with conn:
                    conn.executemany(
                        "INSERT INTO i VALUES (?, ?, ?, ?)",
                        [
                            (f"{i}.{j}", f"p/{i}/{j}.dcm", len(f), "0" * 32)
                            for j, f in enumerate(fs)
                        ],
                    )
            conn.close()

        gb = payload / 1e9
        write_s = _best(write, args.repeats)
        steps = [
            ("receive (8 streams, loopback)", _best(recv, args.repeats)),
            (f"parse: inflate + CRC-32 ({zipstream._zlib().__name__})", _best(parse, args.repeats)),
            ("  the same with zlib (the fallback)", _best(parse_zlib, args.repeats)),
            (
                "  without DICOM entries' CRC-32 (a run where the ZIP states their MD5s)",
                _best(lambda: parse(skip=True), args.repeats),
            ),
            ("  CRC-32 alone (as installed)", _best(crc, args.repeats)),
            ("  CRC-32 alone (zlib)", _best(lambda: crc(zlib.crc32), args.repeats)),
            ("MD5", _best(md5, args.repeats)),
            ("write to the page cache", write_s),
            ("fsync of each file (after its write)", fsync_s()),
            ("checkpoint: one SQLite transaction per series", _best(checkpoint, args.repeats)),
        ]
        print(
            f"ZIP level {args.level}: {payload / 1e6:.0f} MB of DICOM in {len(uids)} ZIPs, "
            f"{wire / 1e6:.0f} MB on the wire; CPU s per GB of DICOM, best of {args.repeats}"
        )
        print("| step | CPU s/GB |\n| --- | --- |")
        for label, secs in steps:
            print(f"| {label} | {secs / gb:.2f} |")
        return 0
    finally:
        if sim.stdin is not None:
            sim.stdin.close()
        sim.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
