"""The benchmark harness runs end to end on tiny data (the real benchmarks: ``make bench``).

Runs ``benchmarks/run.py --smoke`` with this interpreter: every scenario, tcia-mirror and the
naive loop only (the peers live in the benchmarks' own venvs), one run each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINUX = Path("/proc/stat").exists()


@pytest.mark.slow
def test_bench_harness_smoke(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env["BENCH_TOOLS"] = "tcia-mirror,naive"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--repeats", "1"]
    cmd += ["--scenarios", "1,2,3,4,5,6,7", "--results", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    summary = json.loads((tmp_path / "latest.json").read_text())
    assert [s["id"] for s in summary["scenarios"]] == ["1", "2", "3", "4", "5", "6", "7"]
    for scenario in summary["scenarios"]:
        assert "error" not in scenario, scenario.get("error")
        keys = {row["key"] for row in scenario["rows"]}
        assert "tcia-mirror" in keys, scenario["id"]
        for row in scenario["rows"]:
            assert row["correct"], (scenario["id"], row["tool"], row["correctness"])
            assert row["wall_s"] > 0
            if LINUX:  # the hypervisor's share of the CPU while the tool ran (/proc/stat)
                assert 0 <= row["steal_pct"] <= 100, (scenario["id"], row["tool"])
    wan = summary["scenarios"][0]["rows"]
    assert all(r["fraction_of_limit"] > 0 for r in wan)

    table = (tmp_path / "latest.md").read_text()
    assert "### Scenario 1: WAN" in table and "| tool |" in table
    assert not (tmp_path / "work").exists()  # scratch data is removed


@pytest.mark.slow
def test_idc_bench_smoke(tmp_path: Path) -> None:
    """``benchmarks/idc_bench.py`` on a few objects: each row byte-identical, the bucket's
    serving CPU reported (s5cmd rows too when the machine has s5cmd on its PATH)."""
    out = tmp_path / "idc.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "idc_bench.py"), "--objects", "24"]
    cmd += ["--wan-objects", "8", "--large-objects", "6", "--workers", "4", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = json.loads(out.read_text())
    assert {(r["scenario"], r["tool"]) for r in rows} >= {
        ("wan", "tcia-mirror"),
        ("loopback", "tcia-mirror"),
        ("large", "tcia-mirror"),
    }
    for r in rows:
        assert r["byte_identical"] and r["exit"] == 0, r
        assert r["objects"] == {"wan": 8, "loopback": 24, "large": 6}[r["scenario"]]
        assert r["server_cpu_s"] >= 0 and r["cpu_s_per_GB"] > 0
        if LINUX:
            assert 0 <= r["cpu_stolen_pct"] <= 100, r
    assert "| scenario | tool |" in done.stdout
