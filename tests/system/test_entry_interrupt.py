"""Ctrl-C while the command is still importing its modules: one line, exit 130, no traceback.

The heavy imports (aiohttp, anyio, pydicom, the CLI) take a few hundred milliseconds; the console
script and ``python -m tcia_mirror`` enter ``tcia_mirror._entry.main``, whose guard is in place
before any of them starts. To hit that window every time, the child runs with
``PYTHONPROFILEIMPORTTIME=1``: it reports each finished import on stderr, and SIGINT is sent
once the first heavy module (anyio, aiohttp, pydicom) has been imported, while the rest are still
coming. (The interpreter's own start-up, before any of our code runs, is not ours to guard.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCRIPT = Path(sys.executable).parent / "tcia-mirror"
DELAYS = (0.0, 0.02, 0.05, 0.1)
HEAVY = {"anyio", "aiohttp", "pydicom"}


def _finished_heavy_import(line: str) -> bool:
    if not line.startswith("import time:"):
        return False
    module = line.rsplit("|", 1)[-1].strip()
    return module.split(".")[0] in HEAVY


def interrupt_during_heavy_imports(cmd: list[str], delay: float) -> tuple[int, list[str], str]:
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    try:
        seen: list[str] = []
        while True:
            line = proc.stderr.readline()
            if not line:
                raise AssertionError(f"no heavy import seen: {''.join(seen)}")
            seen.append(line)
            if _finished_heavy_import(line):
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [ln for ln in err.splitlines() if not ln.startswith("import time:")]
    return proc.returncode, lines, out


@pytest.mark.parametrize(
    "cmd",
    [[str(SCRIPT), "--version"], [sys.executable, "-m", "tcia_mirror", "--version"]],
    ids=["console-script", "python-m"],
)
def test_ctrl_c_during_import_prints_one_line_and_exits_130(cmd: list[str]) -> None:
    if not Path(cmd[0]).exists():
        pytest.skip("console script not installed (pip install -e .)")
    results = [interrupt_during_heavy_imports(cmd, delay) for delay in DELAYS]
    for delay, (code, lines, out) in zip(DELAYS, results, strict=True):
        assert not any("Traceback" in ln for ln in lines), (delay, lines)
        if code == 130:
            assert lines == ["tcia-mirror: interrupted"], (delay, lines)
        else:  # the imports were done before the signal: the command ran and finished
            assert code == 0 and lines == [] and out.startswith("tcia-mirror "), (delay, code)
    assert results[0][0] == 130  # interrupted at once, the imports were surely still going on


def test_importing_the_package_or_the_entry_point_imports_nothing_heavy() -> None:
    code = (
        "import sys, tcia_mirror, tcia_mirror._entry;"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r} "
        "or (m.startswith('tcia_mirror.') and m != 'tcia_mirror._entry'));"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ctrl_c_while_a_network_command_imports_the_http_stack(tmp_path: Path) -> None:
    """The CLI imports aiohttp lazily (``status`` and ``--version`` do without it); for a
    command that talks to the archive it is imported inside the guard all the same. SIGINT is
    sent as soon as an import of aiohttp's own dependencies is reported."""
    cmd = [
        sys.executable, "-m", "tcia_mirror", "plan", "--api", "nbia-v4",
        "--base-url", "http://127.0.0.1:9/nbia-api/services/v4", "--collection", "X",
        "--out", str(tmp_path / "m"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    env.pop("PYTHONWARNINGS", None)
    for _ in range(3):
        proc = subprocess.Popen(
            cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stderr is not None
        try:
            while True:
                line = proc.stderr.readline()
                assert line, "aiohttp was never imported"
                if line.startswith("import time:") and line.rsplit("|", 1)[-1].strip() in (
                    "multidict",
                    "yarl",
                ):
                    break
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = [ln for ln in err.splitlines() if not ln.startswith("import time:")]
        assert proc.returncode == 130, (proc.returncode, lines)
        assert lines == ["tcia-mirror: interrupted"]
