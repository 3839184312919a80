"""Benchmark plumbing: the simulator process, measured tool processes, verification, tables.

Every tool runs in a process of its own, the simulator in another. For each tool run we keep:

* ``wall``: the measured section as the runner reports it (imports excluded), else the process's
  wall time (aria2c: start-up is negligible);
* ``cpu``: user+system seconds of the measured section (the runner's own ``getrusage`` of itself
  and its waited-for children), else of the whole process from ``wait4``;
* ``peak_rss_mb``: the larger of ``wait4``'s ``ru_maxrss`` (the biggest single process of the
  tree) and, when psutil is installed, the peak of the sampled sum over the process tree
  (what a tool with worker processes holds in all);
* ``steal_pct``: the share of the machine's CPU time the hypervisor took from it (``steal`` in
  ``/proc/stat``, all CPUs) while the tool ran: on a shared virtual machine the same run of the
  same code is slower when it is high, so compare rows of one run;
* ``correctness``: every DICOM file the tool wrote (or, for raw ZIPs, every entry) hashed and
  compared, as a multiset of MD5s, with the simulator's ground truth for the series asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # the smoke run uses the project's venv, which has no psutil
    psutil = None

HERE = Path(__file__).resolve().parent
CLIENTS = HERE / "clients"
NOT_DICOM = {"LICENSE", "md5hashes.csv", "metadata.csv"}


# --------------------------------------------------------------------------- the simulator
@contextmanager
def simulator(python: str, config: dict[str, Any], log: Path) -> Iterator[str]:
    """Start ``simserver.py`` with ``config``; yield its root URL; stop it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [python, str(HERE / "simserver.py"), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY "):
                proc.kill()
                raise RuntimeError(f"the simulator did not start; see {log}")
            yield line.split()[1]
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --------------------------------------------------------------------------- a measured run
@dataclass
class Run:
    wall: float
    cpu: float
    peak_rss_mb: float
    exit: int
    data: dict[str, Any] = field(default_factory=dict)
    log: str = ""


def cpu_ticks() -> tuple[int, int] | None:
    """(all, steal) clock ticks of every CPU since boot, from ``/proc/stat`` (Linux)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(ticks), ticks[7]


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share (%) of CPU time stolen between two :func:`cpu_ticks` readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    return 100.0 * (after[1] - before[1]) / (after[0] - before[0])


class _TreeSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        if psutil is None:
            return
        try:
            top = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.done.is_set():
            try:
                procs = [top, *top.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            self.done.wait(self.interval)


def compile_sources(*trees: Path | str | None) -> None:
    """Write the bytecode of tcia-mirror's sources before anything is timed.

    pip compiles an installed package's bytecode, the peers' included. This checkout is
    installed editable, so its modules are compiled on first import, and in a shell with
    ``PYTHONDONTWRITEBYTECODE=1`` (this machine's) on every import of every run: about 0.25 s
    per run, and more in each ZIP worker process, that no installed user pays."""
    import compileall

    for tree in (HERE.parent / "src", *trees):
        if tree:
            compileall.compile_dir(str(tree), quiet=1)


def run_tool(
    cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None, timeout: float = 1200
) -> Run:
    """Run ``cmd``; read its ``RESULT {json}`` line if it prints one."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log, "w") as out:
        ticks = cpu_ticks()
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=full_env)
        sampler = _TreeSampler(proc.pid)
        sampler.start()
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            sampler.done.set()
        wall = time.perf_counter() - t0
        stolen = steal_pct(ticks, cpu_ticks())
        proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.join()
    text = log.read_text(errors="replace")
    data: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("RESULT "):
            data = json.loads(line[7:])
    maxrss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    return Run(
        wall=float(data.get("wall", wall)),
        cpu=float(data.get("cpu", usage.ru_utime + usage.ru_stime)),
        peak_rss_mb=max(maxrss_mb, sampler.peak / 2**20),
        exit=int(data.get("exit", proc.returncode)) if proc.returncode == 0 else proc.returncode,
        data={
            **data,
            "process_wall": wall,
            "wait4_maxrss_mb": maxrss_mb,
            "tree_peak_rss_mb": sampler.peak / 2**20,
            "steal_pct": stolen,
        },
        log=str(log),
    )


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- correctness
def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _found_digests(out: Path, zipped: bool) -> Counter[str]:
    found: Counter[str] = Counter()
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames[:] = [d for d in dirnames if d != ".tcia-mirror"]
        for name in filenames:
            if name in NOT_DICOM or name.startswith(".") or name.endswith(".part"):
                continue
            path = Path(dirpath) / name
            if zipped and name.endswith(".zip"):
                try:
                    with zipfile.ZipFile(path) as zf:
                        for info in zf.infolist():
                            if info.filename.rsplit("/", 1)[-1] in NOT_DICOM:
                                continue
                            h = hashlib.md5(zf.read(info), usedforsecurity=False)
                            found[h.hexdigest()] += 1
                except (zipfile.BadZipFile, OSError):
                    found[f"bad-zip:{name}"] += 1
                continue
            found[_md5_file(path)] += 1
    return found


def verify(
    out: Path, truth: dict[str, list[list[Any]]], uids: Sequence[str], *, zipped: bool = False
) -> dict[str, Any]:
    """Compare what is on disk under ``out`` with the truth for ``uids``."""
    expected: Counter[str] = Counter(md5 for uid in uids for md5, _size in truth[uid])
    found = _found_digests(out, zipped)
    missing = sum((expected - found).values())
    extra = sum((found - expected).values())
    total = sum(expected.values())
    if not missing and not extra:
        text = f"ok {total}/{total}"
    else:
        parts = []
        if missing:
            parts.append(f"MISSING {missing}/{total}")
        if extra:
            parts.append(f"{extra} extra/corrupt")
        text = ", ".join(parts)
    return {"ok": not missing and not extra, "text": text, "missing": missing, "extra": extra}


# --------------------------------------------------------------------------- results
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}f}"
    return str(value)


COLUMNS = (
    ("tool", "tool"),
    ("wall_s", "wall s"),
    ("repeats", "runs"),
    ("mb_s", "MB/s"),
    ("fraction_of_limit", "fraction of limit"),
    ("time_vs_mirror", "time ÷ tcia-mirror"),
    ("peak_rss_mb", "peak RSS MB"),
    ("cpu_s_per_gb", "CPU s/GB"),
    ("steal_pct", "CPU stolen %"),
    ("correctness", "correctness"),
)


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]] = COLUMNS) -> str:
    keep = [(k, h) for k, h in columns if any(r.get(k) is not None for r in rows)]
    lines = ["| " + " | ".join(h for _k, h in keep) + " |"]
    lines.append("|" + "|".join(" --- " for _ in keep) + "|")
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(k)) for k, _h in keep) + " |")
    return "\n".join(lines)


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": sys.version.split()[0],
        "platform": sys.platform,
    }
