"""How fast could series ZIPs go if the ZIP worker processes made the HTTP requests themselves?
A probe for issue 9, not a tool: it measures a lead, side by side with tcia-mirror.

    benchmarks/.venv/bin/python benchmarks/worker_http_probe.py [--level 0] [--repeats 3]

Starts the simulator (bench preset, 8 series x 80 CT instances, ZIPs at ``--level``), then runs,
interleaved, ``--repeats`` times each:

* **tcia-mirror**: ``tcia-mirror download --concurrency 8`` (the event loop receives the bytes
  with aiohttp and pipes them to 2 ZIP worker processes);
* **probe**: ``--procs`` processes, each fetching its share of the series one after another with
  blocking ``http.client`` on one connection and working the bytes with tcia-mirror's own
  ``ZipState`` (CRC-32, MD5, temp files), then fsync and rename of every file. It keeps no
  checkpoint, reads no header and handles no error: it shows what the byte path costs without
  the event loop in the middle, nothing more.

Prints wall, MB/s, client CPU (the tool's process tree) and the simulator's CPU per run, and
the medians.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(root: Path, base: str, uids: list[str]) -> None:
    """One probe process: its series one after another on one keep-alive connection."""
    from tcia_mirror.engine.zipentries import ZipState  # noqa: PLC0415
    from tcia_mirror.fs.atomic import AtomicWriter  # noqa: PLC0415
    from tcia_mirror.sources.nbia.zipstream import ZipLimits, ZipStreamReader  # noqa: PLC0415

    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port)
    for uid in uids:
        folder = root / uid
        folder.mkdir(parents=True, exist_ok=True)

        def writer(dest: Path) -> AtomicWriter:
            return AtomicWriter(dest, fsync=False, mirror_dir=root, owner="probe", token="0")

        zs = ZipState(ZipStreamReader(ZipLimits()), folder, writer, buffer_max=0)
        conn.request("GET", f"{url.path}/getImage?SeriesInstanceUID={uid}&IncludeMD5=Yes")
        resp = conn.getresponse()
        if resp.status != 200:
            raise SystemExit(f"probe: HTTP {resp.status} for {uid}")
        while chunk := resp.read(256 * 1024):
            zs.feed(chunk)
            while zs.complete:
                e = zs.complete.pop(0)
                if e.writer is None:
                    e.writer = zs.make_writer(e.temp_dest)
                    e.flush_chunks()
                temp = e.writer.release()
                fd = os.open(temp, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
                os.rename(temp, folder / f"{e.name.rsplit('/', 1)[-1]}.dcm")
        zs.reader.close()


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--level", type=int, default=0, help="ZIP level: 0 stored, 1 deflated")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2, help="probe processes")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="probe-"))
    listing = work / "listing.json"
    cfg = {"preset": "bench", "zip_level": args.level, "warm": True, "listing": str(listing)}
    sim = subprocess.Popen(
        [sys.executable, str(HERE / "simserver.py"), json.dumps(cfg)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sim.stdout is not None and sim.stdin is not None
    root = sim.stdout.readline().split()[1]
    base = f"{root}/nbia-api/services/v4"
    uids = [s["uid"] for s in json.loads(listing.read_text())["series"]]
    series_file = work / "series.txt"
    series_file.write_text("\n".join(uids) + "\n")
    results: dict[str, list[tuple[float, float, float, float]]] = {"tcia-mirror": [], "probe": []}
    try:
        for i in range(args.repeats):
            for tool in results:
                out = work / f"{tool}-{i}"
                if tool == "tcia-mirror":
                    cmds = [
                        [sys.executable, "-m", "tcia_mirror", "download", "--api", "nbia-v4",
                         "--base-url", base, "--series-file", str(series_file), "--out",
                         str(out), "--concurrency", "8", "--no-progress"],
                    ]  # fmt: skip
                else:
                    cmds = [
                        [
                            sys.executable,
                            __file__,
                            "--worker",
                            str(out),
                            base,
                            *uids[k :: args.procs],
                        ]
                        for k in range(args.procs)
                    ]
                cpu0, sim0, t0 = _children_cpu(), _proc_cpu(sim.pid), time.perf_counter()
                procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL) for c in cmds]
                codes = [p.wait() for p in procs]
                wall = time.perf_counter() - t0
                cpu, sim_cpu = _children_cpu() - cpu0, _proc_cpu(sim.pid) - sim0
                files = list(out.rglob("*.dcm"))
                mb = sum(p.stat().st_size for p in files) / 1e6
                if any(codes) or len(files) != 640:
                    raise SystemExit(f"{tool}: exit {codes}, {len(files)} files")
                results[tool].append((wall, mb / wall, cpu, sim_cpu))
                print(
                    f"run {i + 1} {tool:12s} wall {wall:5.2f} s  {mb / wall:6.1f} MB/s  "
                    f"client CPU {cpu:5.2f} s  simulator CPU {sim_cpu:5.2f} s",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)
    finally:
        sim.stdin.close()
        sim.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"median of {args.repeats}, ZIP level {args.level}, probe processes {args.procs}:")
    for tool, rows in results.items():
        wall, rate, cpu, sim_cpu = (statistics.median(col) for col in zip(*rows, strict=True))
        print(
            f"  {tool:12s} wall {wall:5.2f} s  {rate:6.1f} MB/s  client CPU {cpu:5.2f} s  "
            f"simulator CPU {sim_cpu:5.2f} s"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
    else:
        main()
