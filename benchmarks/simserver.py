"""Run the archive simulator in its own process, so its CPU and memory never count as the client's.

Usage (the harness does this)::

    python benchmarks/simserver.py '{"spec": {...}, "faults": {...}, "zip_level": 1, ...}'

The JSON config: ``preset`` (a ``DatasetSpec.preset`` name) or ``spec`` (``DatasetSpec`` keyword
arguments), ``seed``, ``faults`` (``Faults`` keyword arguments), ``zip_level``,
``zip_cache_bytes``, ``warm`` (compress every instance before serving), ``truth`` (a path: write
``{series uid: [[md5, size], ...]}`` of the DICOM files there) and ``listing`` (a path: write the
series UIDs, collection and SOP UIDs there). When ready it prints ``READY <root URL>`` and serves on
127.0.0.1 until its standard input closes or it is terminated.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
from typing import Any

from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults, Simulator


def build_dataset(cfg: dict[str, Any]) -> Dataset:
    if "preset" in cfg:
        return Dataset(DatasetSpec.preset(cfg["preset"], seed=int(cfg.get("seed", 0))))
    kw = dict(cfg["spec"])
    for key in ("collections", "patients", "studies_per_patient", "series_per_study"):
        if key in kw:
            kw[key] = tuple(kw[key])
    if "instances_per_series" in kw:
        kw["instances_per_series"] = tuple(kw["instances_per_series"])
    kw.setdefault("seed", int(cfg.get("seed", 0)))
    return Dataset(DatasetSpec(**kw))


def write_truth(dataset: Dataset, path: str) -> None:
    """MD5 and size of every DICOM file, computed from the dataset (the ground truth)."""
    out: dict[str, list[list[object]]] = {}
    for s in dataset.series:
        rows: list[list[object]] = []
        for inst in s.instances:
            data = dataset.instance_bytes(s.series_uid, inst.sop_uid)
            rows.append([hashlib.md5(data, usedforsecurity=False).hexdigest(), len(data)])
        out[s.series_uid] = rows
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(out, fh)


def write_listing(dataset: Dataset, path: str) -> None:
    data = {
        "collections": dataset.collections(),
        "series": [
            {
                "uid": s.series_uid,
                "collection": s.collection,
                "sops": [i.sop_uid for i in s.instances],
            }
            for s in dataset.series
        ],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh)


async def main(cfg: dict[str, Any]) -> None:
    dataset = build_dataset(cfg)
    faults = Faults(**cfg.get("faults", {}))
    sim = Simulator(
        dataset,
        faults=faults,
        zip_level=int(cfg.get("zip_level", 1)),
        zip_cache_bytes=int(cfg.get("zip_cache_bytes", 256 * 2**20)),
    )
    if cfg.get("truth"):
        write_truth(dataset, cfg["truth"])
    if cfg.get("listing"):
        write_listing(dataset, cfg["listing"])
    if cfg.get("warm"):
        await sim.warm()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    fd = sys.stdin.fileno()
    loop.add_reader(fd, lambda: None if os.read(fd, 4096) else stop.set())
    async with sim:
        print(f"READY {sim.root}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
