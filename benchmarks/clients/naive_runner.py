"""The baseline users write by hand: one request at a time with aiohttp (tcia-mirror's library).

naive_runner.py zip ROOT SERIES_FILE OUT      getImage per series, whole ZIP in memory, unzip
naive_runner.py zip-md5 ROOT SERIES_FILE OUT  the same with getImage?IncludeMD5=Yes: each file's
                                              MD5 checked against md5hashes.csv before it is written
naive_runner.py single ROOT SERIES_FILE OUT   getSOPInstanceUIDs, then getSingleImage per file
naive_runner.py plan ROOT COLLECTION LIMIT    getSeries, then getSeriesSize + getSOPInstanceUIDs
                                              for the first LIMIT series (0: all), in turn
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import sys
import time
import zipfile

import aiohttp
from _common import Measured, emit, loopback_only, read_uids


def _base(root: str) -> str:
    return f"{root}/nbia-api/services/v4/"


async def _zip(root: str, uids: list[str], out: str, md5: bool = False) -> int:
    failed = 0
    async with aiohttp.ClientSession() as session:
        for uid in uids:
            params = {"SeriesInstanceUID": uid, **({"IncludeMD5": "Yes"} if md5 else {})}
            async with session.get(_base(root) + "getImage", params=params) as r:
                if r.status != 200:
                    failed += 1
                    continue
                data = await r.read()
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                if md5:
                    failed += _extract_checked(zf, os.path.join(out, uid))
                else:
                    zf.extractall(os.path.join(out, uid))
    return failed


def _extract_checked(zf: zipfile.ZipFile, folder: str) -> int:
    """Each file whose MD5 matches md5hashes.csv (zipfile checks the CRC-32 as it reads)."""
    listed = {}
    for line in zf.read("md5hashes.csv").decode().splitlines()[1:]:
        name, _, digest = line.partition(",")
        listed[name] = digest.strip().lower()
    os.makedirs(folder, exist_ok=True)
    failed = 0
    for info in zf.infolist():
        if info.filename == "md5hashes.csv" or info.is_dir():
            continue
        body = zf.read(info)
        want = listed.get(info.filename)
        if want is not None and hashlib.md5(body, usedforsecurity=False).hexdigest() != want:
            failed += 1
            continue
        with open(os.path.join(folder, os.path.basename(info.filename)), "wb") as fh:
            fh.write(body)
    return failed


async def _single(root: str, uids: list[str], out: str) -> int:
    failed = 0
    async with aiohttp.ClientSession() as session:
        for uid in uids:
            params = {"SeriesInstanceUID": uid}
            async with session.get(_base(root) + "getSOPInstanceUIDs", params=params) as r:
                sops = [row["SOPInstanceUID"] for row in await r.json(content_type=None)]
            folder = os.path.join(out, uid)
            os.makedirs(folder, exist_ok=True)
            for sop in sops:
                q = {"SeriesInstanceUID": uid, "SOPInstanceUID": sop}
                async with session.get(_base(root) + "getSingleImage", params=q) as r:
                    if r.status != 200:
                        failed += 1
                        continue
                    data = await r.read()
                with open(os.path.join(folder, f"{sop}.dcm"), "wb") as fh:
                    fh.write(data)
    return failed


async def _plan(root: str, collection: str, limit: int) -> dict[str, float]:
    requests = 0
    async with aiohttp.ClientSession() as session:

        async def rows(endpoint: str, **params: str) -> list[dict[str, object]]:
            nonlocal requests
            requests += 1
            async with session.get(_base(root) + endpoint, params=params) as r:
                r.raise_for_status()
                body = await r.read()
            return [] if not body else json.loads(body)

        t0 = time.perf_counter()
        series = await rows("getSeries", Collection=collection)
        t1 = time.perf_counter()
        todo = series[:limit] if limit else series
        for s in todo:
            uid = str(s["SeriesInstanceUID"])
            await rows("getSeriesSize", SeriesInstanceUID=uid)
            await rows("getSOPInstanceUIDs", SeriesInstanceUID=uid)
        t2 = time.perf_counter()
        return {
            "series": len(series),
            "planned": len(todo),
            "requests": requests,
            "list_wall": t1 - t0,
            "detail_wall": t2 - t1,
        }


def main(argv: list[str]) -> None:
    cmd = argv[0]
    if cmd == "plan":
        root, collection, limit = argv[1], argv[2], int(argv[3])
        with Measured() as m:
            info = asyncio.run(_plan(root, collection, limit))
        emit(exit=0, **info, **m.result())
        return
    root, uids, out = argv[1], read_uids(argv[2]), argv[3]
    with Measured() as m:
        if cmd in ("zip", "zip-md5"):
            failed = asyncio.run(_zip(root, uids, out, md5=cmd == "zip-md5"))
        else:
            failed = asyncio.run(_single(root, uids, out))
    emit(exit=1 if failed else 0, failed=failed, **m.result())


if __name__ == "__main__":
    loopback_only()
    main(sys.argv[1:])
