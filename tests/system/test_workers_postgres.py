"""Several workers on one plan in PostgreSQL (issue 11): real CLI processes against the simulator.

Skipped with one line on a machine without PostgreSQL binaries (see ``tests/pg.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from pg import Cluster, pg_cluster  # noqa: F401 - the session's PostgreSQL cluster fixture
from reliability_kit import (
    SimThread,
    _env,
    assert_final_files_correct,
    cli_argv,
    final_dicom_files,
    part_files,
    run_cli,
    truth_by_sop,
    wait_for,
)
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults

COLLECTION = "SIM-LUNG-CT"
BUDGET = 6  # --max-connections-total: three workers of --concurrency 4 would want 12
CONCURRENCY = 4


def dataset() -> Dataset:
    # 8 series of 8-12 instances of about 32 KB; with the bandwidth cap several seconds of work
    return Dataset(
        DatasetSpec(
            name="workers",
            collections=(COLLECTION,),
            patients=(4,),
            series_per_study=(2, 2),
            instances_per_series=(8, 12),
            rows=128,
            cols=128,
            seed=11,
        )
    )


def _worker(
    out: Path, db: str, base_url: str, concurrency: int = CONCURRENCY
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_argv(
            "worker", "--out", str(out), "--state", db, "--base-url", base_url,
            "--concurrency", str(concurrency), "--lease", "3", "--mode", "single",
            "--no-progress",
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip


@contextmanager
def _reaped() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes started in the block are killed and waited for, whatever happens."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()


def _done_sops(db: str) -> set[str]:
    with psycopg.connect(db, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT sop_uid FROM instance WHERE done")}


def _one(db: str, sql: str) -> object:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


@pytest.mark.slow
def test_three_workers_one_killed_and_replaced(tmp_path: Path, pg_cluster: Cluster) -> None:  # noqa: F811
    db = pg_cluster.new_database()
    out = tmp_path / "mirror"
    with SimThread(dataset(), faults=Faults(bandwidth=100_000)) as st, _reaped() as procs:
        base = st.base_url()
        plan = run_cli(
            cli_argv("plan", "--collection", COLLECTION, "--out", str(out), "--state", db,
                     "--base-url", base, "--max-connections-total", str(BUDGET))
        )  # fmt: skip
        assert plan.returncode == 0, plan.stderr
        workers = [_worker(out, db, base) for _ in range(3)]
        procs.extend(workers)
        # kill -9 a worker once it holds a series it has begun to commit
        busy = "SELECT lease_owner FROM series WHERE done_count > 0 AND status <> 'complete' "
        busy += "AND lease_owner IS NOT NULL LIMIT 1"
        wait_for(lambda: _one(db, busy) is not None, timeout=60)
        owner = str(_one(db, busy))
        victim = next(p for p in workers if f":{p.pid}:" in owner)
        held = _one(db, f"SELECT count(*) FROM slot WHERE owner LIKE '%:{victim.pid}:%'")
        holders = _one(db, "SELECT count(DISTINCT owner) FROM slot WHERE owner IS NOT NULL")
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        done_at_kill = _done_sops(db)
        # the budget: at most BUDGET slots exist, held by two workers (4 + 2); the third waits
        assert _one(db, "SELECT count(*) FROM slot") == BUDGET
        assert held in (2, 4) and holders <= 2, (held, holders)
        replacement = _worker(out, db, base)
        procs.append(replacement)
        results = []
        for p in [*(w for w in workers if w is not victim), replacement]:
            stdout, stderr = p.communicate(timeout=120)
            results.append((p.returncode, stdout, stderr))
        for code, stdout, stderr in results:
            assert code == 0, (stdout, stderr)
        truth = truth_by_sop(st.sim.dataset)
        assert set(final_dicom_files(out)) == set(truth)
        assert_final_files_correct(out, truth)  # byte-identical
        assert part_files(out) == []  # the killed worker's temp files were cleaned up
        # nothing committed was fetched again: only what the killed worker had between its
        # request and its record (bodies on its connections, files being checked, synced or
        # waiting in a group commit: at most one per job worker, two per connection)
        requests = st.image_requests()
        twice = {k: n for k, n in requests.items() if n > 1}
        assert not {sop for (_e, _s, sop) in twice} & done_at_kill, twice
        assert sum(n - 1 for n in twice.values()) <= 2 * CONCURRENCY, twice
        # the archive never saw more than BUDGET image requests at once, across all workers
        # (before the kill, after it, during the takeover), and the budget was used
        in_flight = st.max_images_in_flight()
        assert BUDGET - 1 <= in_flight <= BUDGET, in_flight
    status = run_cli(cli_argv("status", "--out", str(out), "--state", db, "--json"))
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["series"]["complete"] == summary["series"]["total"] == 8
    assert summary["instances"]["complete"] == len(truth)
    assert _one(db, "SELECT count(*) FROM series WHERE lease_owner IS NOT NULL") == 0
    assert _one(db, "SELECT count(*) FROM slot WHERE owner IS NOT NULL") == 0


def _terminate_others(db: str) -> int:
    """Terminate every other backend of the database (the workers' connections); how many."""
    sql = (
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return int(_one(db, sql))  # type: ignore[call-overload]


@pytest.mark.slow
def test_worker_carries_on_when_its_database_connection_drops(
    tmp_path: Path,
    pg_cluster: Cluster,  # noqa: F811
) -> None:
    db = pg_cluster.new_database()
    out = tmp_path / "mirror"
    with SimThread(dataset(), faults=Faults(bandwidth=150_000)) as st, _reaped() as procs:
        base = st.base_url()
        plan = run_cli(
            cli_argv("plan", "--collection", COLLECTION, "--out", str(out), "--state", db,
                     "--base-url", base)
        )  # fmt: skip
        assert plan.returncode == 0, plan.stderr
        worker = _worker(out, db, base, concurrency=2)
        procs.append(worker)
        done = "SELECT coalesce(sum(done_count), 0) FROM series"
        wait_for(lambda: int(_one(db, done)) > 0, timeout=60)  # type: ignore[call-overload]
        # the worker's connection is cut three times while it commits, heartbeats and leases
        dropped = []
        for _ in range(3):
            dropped.append(_terminate_others(db))
            time.sleep(0.7)
        assert all(n >= 1 for n in dropped), dropped  # each cut hit the worker's connection
        stdout, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, (stdout, stderr)
        truth = truth_by_sop(st.sim.dataset)
        assert set(final_dicom_files(out)) == set(truth)
        assert_final_files_correct(out, truth)  # byte-identical
        assert part_files(out) == []
        # every statement cut off was run again on the new connection: nothing fetched twice
        twice = {k: n for k, n in st.image_requests().items() if n > 1}
        assert twice == {}, twice
    status = run_cli(cli_argv("status", "--out", str(out), "--state", db, "--json"))
    assert status.returncode == 0, status.stderr
    summary = json.loads(status.stdout)
    assert summary["series"]["complete"] == summary["series"]["total"] == 8
    assert summary["instances"]["complete"] == len(truth)
    assert _one(db, "SELECT count(*) FROM series WHERE lease_owner IS NOT NULL") == 0


@pytest.mark.slow
def test_two_concurrent_plans_record_one(tmp_path: Path, pg_cluster: Cluster) -> None:  # noqa: F811
    db = pg_cluster.new_database()
    with SimThread(dataset()) as st:
        argv = [
            cli_argv("plan", "--collection", COLLECTION, "--out", str(tmp_path / host),
                     "--state", db, "--base-url", st.base_url())
            for host in ("a", "b")
        ]  # fmt: skip
        procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=_env()) for a in argv]  # fmt: skip
        for p in procs:
            stdout, stderr = p.communicate(timeout=120)
            assert p.returncode == 0, (stdout, stderr)
        expected = len(st.sim.dataset.series)
    assert _one(db, "SELECT count(*) FROM series") == expected
    assert _one(db, "SELECT count(DISTINCT uid) FROM series") == expected
    assert _one(db, "SELECT count(*) FROM instance") == sum(
        len(s.instances) for s in dataset().series
    )


def test_unreachable_database_exits_3_in_one_line_without_the_password(tmp_path: Path) -> None:
    env_pw = "env-s3cret-pw"
    env = {**_env(), "PGPASSWORD": env_pw}
    t0 = time.monotonic()
    done = subprocess.run(
        cli_argv("status", "--out", str(tmp_path), "--state",
                 "postgresql://me:url-s3cret-pw@127.0.0.1:1/mirror"),
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot reach the state database" in lines[0], done.stderr
    assert "url-s3cret-pw" not in done.stderr + done.stdout
    assert env_pw not in done.stderr + done.stdout
    assert time.monotonic() - t0 < 30
    assert os.environ.get("PGPASSWORD") != env_pw
