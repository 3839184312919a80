"""The command line as a user runs it: subprocesses against a simulator, exit codes, no tracebacks."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import InThread, SimInThread
from proxy_server import ForwardProxy
from tcia_mirror.testing.simulator import Simulator


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with SimInThread() as s:
        yield s


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TCIA_API_KEY", None) if env is None else None
    return subprocess.run(
        [sys.executable, "-m", "tcia_mirror", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tcia-mirror")


def test_query_prints_body_in_each_format(sim: Simulator) -> None:
    base = sim.base_url("nbia-v4")
    coll = sim.dataset.series[0].collection
    out = cli("query", "getSeries", f"Collection={coll}", "--base-url", base)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {r["SeriesInstanceUID"] for r in rows} == {
        s.series_uid for s in sim.dataset.series if s.collection == coll
    }
    csv_out = cli("query", "getCollectionValues", "--format", "csv", "--base-url", base)
    assert csv_out.stdout.splitlines()[0] == "Collection"
    v3 = cli(
        "query",
        "getPatientStudy",
        "--metadata",
        "--api",
        "tcia-v3",
        "--base-url",
        sim.base_url("tcia-v3"),
        "--api-key",
        "sim-key",
    )
    assert v3.returncode == 0 and "PatientID" in v3.stdout


def test_query_bad_input_exits_2(sim: Simulator) -> None:
    base = sim.base_url("nbia-v4")
    assert_clean_error(cli("query", "getNothing", "--base-url", base), 2)
    assert_clean_error(cli("query", "getSeriesSize", "--base-url", base), 2)
    assert_clean_error(cli("query", "getSeries", "Collection", "--base-url", base), 2)
    assert_clean_error(cli("query", "getSeries", "--api", "nbia-v9", "--base-url", base), 2)
    assert_clean_error(cli("query", "getSeries", "--bogus-flag"), 2)


def test_refused_key_and_unreachable_exit_3(sim: Simulator) -> None:
    secret = "top-secret-key-123"
    proc = cli(
        "query",
        "getCollectionValues",
        "--api",
        "tcia-v3",
        "--base-url",
        sim.base_url("tcia-v3"),
        "--api-key",
        secret,
    )
    assert_clean_error(proc, 3)
    assert secret not in proc.stderr + proc.stdout
    proc = cli(
        "query",
        "getCollectionValues",
        "--retries",
        "2",
        "--base-url",
        "http://127.0.0.1:9/nbia-api/services/v4",
    )
    assert_clean_error(proc, 3)


def test_download_status_verify_json(sim: Simulator, tmp_path: Path) -> None:
    base = sim.base_url("nbia-v4")
    s = sim.dataset.series[0]
    out = tmp_path / "m"
    proc = cli(
        "download", "--series", s.series_uid, "--out", str(out), "--base-url", base, "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    assert "1/1 series complete" in proc.stdout
    st = json.loads(cli("status", "--out", str(out), "--json").stdout)
    assert st["series"] == {"total": 1, "complete": 1, "failed": 0, "pending": 0}
    assert st["instances"]["complete"] == len(s.instances)
    v = cli("verify", "--out", str(out), "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["ok"] is True
    # resume needs no connection flags: they were recorded (without secrets)
    r = cli("resume", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    next(out.rglob("*.dcm")).unlink()
    v = cli("verify", "--out", str(out), "--json")
    assert v.returncode == 1
    assert json.loads(v.stdout)["problems"][0]["kind"] == "missing_file"


def test_download_bad_input_exits_2_without_traceback(sim: Simulator, tmp_path: Path) -> None:
    base = sim.base_url("nbia-v4")
    assert_clean_error(cli("download", "--out", str(tmp_path / "a"), "--base-url", base), 2)
    assert_clean_error(
        cli("download", "--series", "../etc", "--out", str(tmp_path / "b"), "--base-url", base), 2
    )
    assert_clean_error(
        cli(
            "download",
            "--manifest",
            str(tmp_path / "nope.tcia"),
            "--out",
            str(tmp_path / "c"),
            "--base-url",
            base,
        ),
        2,
    )
    assert_clean_error(cli("resume", "--out", str(tmp_path / "never")), 2)
    assert_clean_error(cli("sync", "--out", str(tmp_path / "never"), "--since", "yesterday"), 2)
    f = tmp_path / "file"
    f.write_text("x")
    assert_clean_error(cli("download", "--series", "1.2.3", "--out", str(f), "--base-url", base), 2)


def test_unknown_collection_and_unreachable_download(sim: Simulator, tmp_path: Path) -> None:
    proc = cli(
        "download",
        "--collection",
        "NOPE",
        "--out",
        str(tmp_path / "x"),
        "--base-url",
        "http://127.0.0.1:9/nbia-api/services/v4",
        "--no-progress",
        "--retries",
        "2",
    )
    assert_clean_error(proc, 3)


def test_download_and_resume_through_a_proxy(sim: Simulator, tmp_path: Path) -> None:
    """``--proxy`` (and ``TCIA_PROXY``) carry the CLI's whole run through an authenticating
    proxy; its password is in no output and no file of the mirror."""
    auth = "Basic " + base64.b64encode(b"alice:pr0xy-s3cret").decode()
    base = sim.base_url("nbia-v4")
    coll = sim.dataset.series[0].collection
    out = tmp_path / "m"
    with InThread(ForwardProxy(auth=auth)) as proxy:
        url = proxy.url.replace("http://", "http://alice:pr0xy-s3cret@")
        r = cli("download", "--collection", coll, "--out", str(out), "--base-url", base,
                "--proxy", url, "--no-progress")  # fmt: skip
        assert r.returncode == 0, r.stderr
        again = cli("resume", "--out", str(out), "--no-progress", env={"TCIA_PROXY": url})
        assert again.returncode == 0, again.stderr
    series = [s for s in sim.dataset.series if s.collection == coll]
    assert len(list(out.rglob("*.dcm"))) == sum(len(s.instances) for s in series)
    assert sum("getImage" in line for line in proxy.requests) >= len(series)
    assert proxy.refused == 0 and set(proxy.auth_seen) == {auth}
    assert "pr0xy-s3cret" not in r.stdout + r.stderr + again.stdout + again.stderr
    for f in out.rglob("*"):
        if f.is_file():
            assert b"pr0xy-s3cret" not in f.read_bytes(), f
