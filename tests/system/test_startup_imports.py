"""Commands that never talk to the archive start without its HTTP stack: importing aiohttp takes
about 0.25 s (two TLS contexts are built at its import), which ``status`` in a cron job and
``--version`` have no use for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tcia_mirror.store.sqlite import StateStore

PROBE = """
import runpy, sys
sys.argv = ["tcia-mirror", *sys.argv[1:]]
try:
    runpy.run_module("tcia_mirror", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "pydicom", "tqdm"))
print("IMPORTED", code, ",".join(heavy))
"""


def _imported(*argv: str) -> tuple[int, set[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("IMPORTED"))
    _, code, mods = (line.split(" ", 2) + [""])[:3]
    return int(code), {m.split(".")[0] for m in mods.split(",") if m}


@pytest.mark.parametrize("argv", [("--version",), ("--help",), ("status", "--help")])
def test_version_and_help_do_not_import_the_http_stack(argv: tuple[str, ...]) -> None:
    code, heavy = _imported(*argv)
    assert code == 0
    assert "aiohttp" not in heavy


def test_status_of_a_mirror_does_not_import_the_http_stack(tmp_path: Path) -> None:
    with StateStore.open(tmp_path, create=True):
        pass
    code, heavy = _imported("status", "--out", str(tmp_path), "--json")
    assert code == 0
    assert "aiohttp" not in heavy


def test_the_main_process_does_not_load_the_zip_workers_http_stack() -> None:
    """The ZIP workers' own HTTP (http.client, ssl) is theirs: the engine and the worker pool
    import only the frames (zipwire)."""
    code = (
        "import sys, tcia_mirror.engine.run, tcia_mirror.engine.zipproc;"
        "print(sorted(m for m in sys.modules if m.startswith('tcia_mirror.engine.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "tcia_mirror.engine.zipwire" in out
    assert "tcia_mirror.engine.workerhttp" not in out
    assert "tcia_mirror.engine.zipworker" not in out


def test_the_inflater_is_loaded_where_a_zip_is_inflated() -> None:
    """ISA-L (about 1 MB a process) is imported at the first inflate: the main process of a
    run whose ZIPs go to workers never loads it; the process that inflates does."""
    code = (
        "import sys, zipfile, io, tcia_mirror.engine.run, tcia_mirror.engine.pipeline;"
        "from tcia_mirror.sources.nbia.zipstream import ZipStreamReader;"
        "print('before', 'isal' in sys.modules);"
        "b = io.BytesIO(); z = zipfile.ZipFile(b, 'w', zipfile.ZIP_DEFLATED);"
        "z.writestr('a.dcm', b'x' * 1000); z.close();"
        "ZipStreamReader().feed(b.getvalue());"
        "print('after', 'isal' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "before False" in out
    assert "after True" in out


def test_a_download_without_progress_bars_does_not_import_tqdm(tmp_path: Path) -> None:
    """--no-progress (and cron, where stderr is no terminal) never draws a bar: tqdm stays
    unimported (about 20 ms and 1.5 MB of a run)."""
    code, heavy = _imported(
        "download", "--api", "nbia-v4", "--base-url", "http://127.0.0.1:1/nbia-api/services/v4",
        "--series", "1.2.3", "--out", str(tmp_path / "m"), "--no-progress",
    )  # fmt: skip
    assert code != 0  # nothing listens there: the run stops with its one-line error
    assert "aiohttp" in heavy and "tqdm" not in heavy
