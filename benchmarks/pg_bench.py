"""The PostgreSQL store's figures (issue 11), runnable on its own (``make bench-pg``)::

    python benchmarks/pg_bench.py [--series 10000] [--per-series 100] [--workers 1,2,4]
                                  [--skip plan,trips,workers] [--json PATH]

It starts a throwaway PostgreSQL cluster (``tests/pg.py``, as the ``postgres`` user when run as
root) with PostgreSQL's default durability (fsync and synchronous_commit on), and measures:

* ``plan``: ``PostgresStore.record_plan`` of 10,000 synthetic series x 100 instances (1,000,000
  rows, each with its size and MD5, as a bucket source states them; no network), the same plan
  recorded again (a second ``plan`` or a ``sync``: nothing new), then ``status`` on it: the
  store's ``summary()``, ``Mirror.status()`` (open, summary, per-source counts) and the
  ``tcia-mirror status --json`` process (interpreter start-up included), median of 3 each.
* ``trips``: database round trips (``PostgresStore.round_trips``: statements and transactions
  sent) per committed file in a small real download (8 series x 25 instances) by
  ``Mirror.plan`` then ``Mirror.work``, in ZIP and in single mode, against the in-process
  simulator.
* ``workers``: 1, 2 and 4 ``tcia-mirror worker`` processes, each ``--concurrency 2``, on one plan,
  against the simulator in its own process (``simserver.py``) with the WAN scenario's faults:
  the bench dataset (8 series x 80 CT instances, 336 MB), 50 ms before every answer, 4 MB/s per
  connection, ZIP entries stored. Timed from the workers' start to the moment the database says
  every series is complete (the throughput), and to the last worker's exit (a worker with
  nothing left waits lease/3 = 20 s between looks while others still hold leases). Every file
  is then hashed against the simulator's truth.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import simulator  # noqa: E402

from pg import MISSING, Cluster, cluster  # noqa: E402

MB = 1_000_000
CAP = 4_000_000  # bytes/s per connection, as scenario 1
LATENCY = 0.05


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tcia_mirror", *args]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TCIA_")}


def _median(fn: Callable[[], object], n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- (a) plan, status
def synthetic_plans(series: int, per_series: int) -> list[Any]:
    from tcia_mirror.store.base import SeriesPlan  # noqa: PLC0415

    plans = []
    for i in range(series):
        uid = f"1.3.6.1.4.1.14519.5.2.1.99.{i}"
        sops = tuple(f"{uid}.{j}" for j in range(per_series))
        fields = {
            "Collection": "SYNTH-CT",
            "PatientID": f"SYNTH-{i // 10:04d}",
            "StudyInstanceUID": f"1.3.6.1.4.1.14519.5.2.1.98.{i // 2}",
            "SeriesInstanceUID": uid,
            "Modality": "CT",
        }
        plans.append(
            SeriesPlan(
                uid,
                "SYNTH-CT",
                fields["PatientID"],
                fields["StudyInstanceUID"],
                per_series,
                per_series * 525_000,
                fields,
                sops,
                "idc:synth-bucket",
                {s: 525_000 for s in sops},
                {s: f"{i:016x}{j:016x}" for j, s in enumerate(sops)},
                "etag",
            )  # fmt: skip
        )
    return plans


def plan_figures(c: Cluster, series: int, per_series: int) -> dict[str, Any]:
    import anyio  # noqa: PLC0415

    from tcia_mirror.engine.mirror import Mirror  # noqa: PLC0415
    from tcia_mirror.store.postgres import PostgresStore  # noqa: PLC0415

    url = c.new_database()
    out = Path(tempfile.mkdtemp(prefix="pg-bench-plan-"))
    t0 = time.perf_counter()
    plans = synthetic_plans(series, per_series)
    build = time.perf_counter() - t0

    async def record() -> tuple[float, float, float]:
        store = await PostgresStore.open(url, out)
        async with store:
            t0 = time.perf_counter()
            await store.record_plan(plans)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            await store.record_plan(plans)
            again = time.perf_counter() - t0
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                summary = await store.summary()
                times.append(time.perf_counter() - t0)
            assert summary["series"]["total"] == series, summary
            assert summary["instances"]["total"] == series * per_series, summary
            return first, again, statistics.median(times)

    first, again, summary_s = anyio.run(record)
    mirror = Mirror(out, open_store=PostgresStore.opener(url))
    mirror_s = _median(lambda: anyio.run(mirror.status))
    argv = _cli("status", "--out", str(out), "--state", url, "--json")

    def cli_status() -> None:
        done = subprocess.run(argv, capture_output=True, text=True, env=_env(), timeout=120)
        assert done.returncode in (0, 1), done.stderr  # 1: not every series is complete
        assert json.loads(done.stdout)["instances"]["total"] == series * per_series

    cli_s = _median(cli_status)
    startup_s = _median(
        lambda: subprocess.run(_cli("--version"), capture_output=True, env=_env(), check=True)
    )
    return {
        "series": series,
        "instances": series * per_series,
        "build_plans_s": build,
        "record_plan_s": first,
        "record_again_s": again,
        "summary_s": summary_s,
        "mirror_status_s": mirror_s,
        "cli_status_s": cli_s,
        "cli_startup_s": startup_s,
    }


# --------------------------------------------------------------------------- (b) round trips
def trip_figures(c: Cluster) -> list[dict[str, Any]]:
    from tcia_mirror.testing.simulator import DatasetSpec  # noqa: PLC0415

    spec = DatasetSpec(
        name="trips", collections=("SIM-TRIPS",), patients=(4,), series_per_study=(2, 2),
        instances_per_series=(25, 25), rows=64, cols=64, seed=3,
    )  # fmt: skip
    return [_trips(c, spec, mode) for mode in ("zip", "single")]


def _trips(c: Cluster, spec: Any, mode: str) -> dict[str, Any]:
    import anyio  # noqa: PLC0415

    from tcia_mirror.engine.mirror import DownloadOptions, Mirror  # noqa: PLC0415
    from tcia_mirror.selection import Selection  # noqa: PLC0415
    from tcia_mirror.sources.nbia.client import ClientConfig  # noqa: PLC0415
    from tcia_mirror.sources.nbia.profiles import load_profile  # noqa: PLC0415
    from tcia_mirror.store.postgres import PostgresStore  # noqa: PLC0415
    from tcia_mirror.testing.simulator import Dataset, Simulator  # noqa: PLC0415

    url = c.new_database()
    _one(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    _statements(url)
    out = Path(tempfile.mkdtemp(prefix=f"pg-bench-trips-{mode}-"))
    opened: dict[str, list[PostgresStore]] = {"plan": [], "work": []}
    phase = "plan"

    async def open_store(root: Path, *, create: bool = True) -> PostgresStore:
        store = await PostgresStore.open(url, root, create=create)
        opened[phase].append(store)
        return store

    async def run() -> dict[str, Any]:
        nonlocal phase
        async with Simulator(Dataset(spec)) as sim:
            config = ClientConfig(profile=load_profile("nbia-v4"), base_url=sim.base_url("nbia-v4"))
            mirror = Mirror(out, config, open_store=open_store)
            await mirror.plan(Selection(collection="SIM-TRIPS"))
            plan_statements = _statements(url)
            phase = "work"
            report = await mirror.work(DownloadOptions(mode=mode, concurrency=4))  # type: ignore[arg-type]
            assert report.ok, report.problems
            summary = report.status
            work_statements = _statements(url)
        files = int(summary["instances"]["complete"])
        assert files == sum(len(s.instances) for s in Dataset(spec).series)
        work_trips = sum(s.round_trips for s in opened["work"])
        return {
            "mode": mode,
            "series": len(Dataset(spec).series),
            "files": files,
            "plan_trips": sum(s.round_trips for s in opened["plan"]),
            "work_trips": work_trips,
            "work_trips_per_file": work_trips / files,
            "plan_statements": plan_statements,
            "work_statements": work_statements,
            "work_statements_per_file": work_statements / files,
        }

    return anyio.run(run)


def _statements(url: str) -> int:
    """Statements the server ran for this database since the last call (pg_stat_statements,
    BEGIN and COMMIT included), then reset; this query and the reset are not counted."""
    n = _one(
        url,
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
        "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND query NOT LIKE '%pg_stat_statements%'",
    )
    _one(url, "SELECT pg_stat_statements_reset()")
    return int(n)


# --------------------------------------------------------------------------- (c) workers
def _one(url: str, sql: str) -> Any:
    import psycopg  # noqa: PLC0415

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        row = cur.fetchone() if cur.description else None
    return None if row is None else row[0]


def _md5s(out: Path) -> Counter[str]:
    got: Counter[str] = Counter()
    for p in out.rglob("*.dcm"):
        if ".tcia-mirror" in p.parts or p.name.startswith("."):
            continue
        h = hashlib.md5(usedforsecurity=False)
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        got[h.hexdigest()] += 1
    return got


@contextmanager
def _wan_simulator(work: Path) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    cfg = {
        "preset": "bench",
        "seed": 0,
        "faults": {"latency": LATENCY, "bandwidth": CAP, "seed": 1},
        "zip_level": 0,
        "zip_cache_bytes": 1 << 30,
        "warm": True,
        "truth": str(work / "truth.json"),
        "listing": str(work / "listing.json"),
    }
    with simulator(sys.executable, cfg, work / "sim.log") as root:
        truth = json.loads((work / "truth.json").read_text())
        listing = json.loads((work / "listing.json").read_text())
        yield root, truth, listing


def worker_figures(c: Cluster, counts: list[int], concurrency: int) -> list[dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="pg-bench-workers-"))
    rows = []
    with _wan_simulator(work) as (root, truth, listing):
        conn = ["--api", "nbia-v4", "--base-url", f"{root}/nbia-api/services/v4"]
        collection = listing["collections"][0]
        want: Counter[str] = Counter(md5 for rows_ in truth.values() for md5, _ in rows_)
        payload = sum(size for rows_ in truth.values() for _, size in rows_)
        for n in counts:
            url = c.new_database()
            out = work / f"out-{n}"
            plan = subprocess.run(
                _cli("plan", *conn, "--collection", collection, "--out", str(out),
                     "--state", url),
                capture_output=True, text=True, env=_env(), timeout=300,
            )  # fmt: skip
            assert plan.returncode == 0, plan.stderr
            argv = _cli("worker", *conn, "--out", str(out), "--state", url,
                        "--concurrency", str(concurrency), "--no-progress")  # fmt: skip
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            procs = [
                subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, env=_env())
                for _ in range(n)
            ]  # fmt: skip
            left = "SELECT count(*) FROM series WHERE status <> 'complete'"
            complete_s = None
            while any(p.poll() is None for p in procs):
                if complete_s is None and _one(url, left) == 0:
                    complete_s = time.perf_counter() - t0
                time.sleep(0.05)
            exit_s = time.perf_counter() - t0
            for p in procs:
                stdout, stderr = p.communicate()
                assert p.returncode == 0, (stdout, stderr)
            if complete_s is None:
                complete_s = exit_s
            correct = _md5s(out) == want
            rows.append(
                {
                    "workers": n,
                    "concurrency": concurrency,
                    "complete_s": complete_s,
                    "exit_s": exit_s,
                    "mb_s": payload / MB / complete_s,
                    "payload_mb": payload / MB,
                    "files": sum(want.values()),
                    "correct": correct,
                    "load_before": load,
                }
            )
    base = rows[0]["mb_s"] if rows else 1.0
    for r in rows:
        r["speedup"] = r["mb_s"] / base
        r["limit_fraction"] = r["mb_s"] * MB / (r["workers"] * r["concurrency"] * CAP)
    return rows


# --------------------------------------------------------------------------- the table
def table(res: dict[str, Any]) -> str:
    out = []
    if p := res.get("plan"):
        out += [
            f"Plan of {p['series']:,} series / {p['instances']:,} instances "
            "(synthetic, sizes and MD5s; PostgreSQL defaults: fsync on)",
            "",
            "| step | seconds | target |",
            "| --- | --- | --- |",
            f"| build the SeriesPlan records (Python, not the store) | {p['build_plans_s']:.2f} | |",
            f"| record_plan (COPY + set-based upserts) | {p['record_plan_s']:.2f} | < 30 |",
            f"| record_plan again (nothing new) | {p['record_again_s']:.2f} | |",
            f"| status: store.summary() | {p['summary_s']:.3f} | < 1 |",
            f"| status: Mirror.status() (open + summary + per source) | "
            f"{p['mirror_status_s']:.3f} | < 1 |",
            f"| status: `tcia-mirror status --json` process | {p['cli_status_s']:.3f} | |",
            f"| (of which interpreter + import: `tcia-mirror --version`) | "
            f"{p['cli_startup_s']:.3f} | |",
            "",
        ]
    if t := res.get("trips"):
        out += [
            "Database traffic per committed file (Mirror.plan, then Mirror.work, concurrency 4): "
            "store operations (PostgresStore.round_trips: one statement or one transaction "
            "each) and the statements the server ran (pg_stat_statements, BEGIN/COMMIT "
            "included; an upper bound on network round trips, as psycopg pipelines executemany)",
            "",
            "| mode | series | files | plan ops / statements | work ops | work statements | "
            "ops per file | statements per file |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        out += [
            f"| {r['mode']} | {r['series']} | {r['files']} | {r['plan_trips']} / "
            f"{r['plan_statements']} | {r['work_trips']} | {r['work_statements']} | "
            f"{r['work_trips_per_file']:.2f} | {r['work_statements_per_file']:.2f} |"
            for r in t
        ]
        out.append("")
    if w := res.get("workers"):
        out += [
            f"Worker processes on one plan, WAN simulator ({LATENCY * 1000:.0f} ms, "
            f"{CAP / MB:.0f} MB/s per connection), {w[0]['payload_mb']:.0f} MB in "
            f"{w[0]['files']} files",
            "",
            "| workers x concurrency | until complete s | until last exit s | MB/s | speedup | "
            "fraction of limit | correct | load before |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        out += [
            f"| {r['workers']} x {r['concurrency']} | {r['complete_s']:.2f} | {r['exit_s']:.2f} | "
            f"{r['mb_s']:.2f} | {r['speedup']:.2f}x | {r['limit_fraction']:.2f} | "
            f"{'ok' if r['correct'] else 'WRONG'} | {r['load_before']:.2f} |"
            for r in w
        ]
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--per-series", type=int, default=100)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma-separated: plan, trips, workers")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if MISSING:
        print(f"pg_bench: skipped: {MISSING}", file=sys.stderr)
        return 0
    skip = set(filter(None, args.skip.split(",")))
    res: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_at_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    t0 = time.perf_counter()
    with cluster(durable=True, settings="-c shared_preload_libraries=pg_stat_statements") as c:
        if "plan" not in skip:
            res["plan"] = plan_figures(c, args.series, args.per_series)
        if "trips" not in skip:
            res["trips"] = trip_figures(c)
        if "workers" not in skip:
            counts = [int(x) for x in args.workers.split(",") if x]
            res["workers"] = worker_figures(c, counts, args.concurrency)
    res["load_at_end"] = os.getloadavg()
    res["seconds"] = time.perf_counter() - t0
    print(
        f"pg_bench {res['started']} on {res['cpus']} CPUs; load average (1/5/15 min) at start "
        + "/".join(f"{x:.2f}" for x in res["load_at_start"])
        + ", at end "
        + "/".join(f"{x:.2f}" for x in res["load_at_end"])
        + f"; whole run {res['seconds']:.0f} s\n"
    )
    print(table(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    ok = all(r["correct"] for r in res.get("workers", []))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
