"""The library surface: exported names, blocking helpers (also inside a running loop), no tqdm in core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import tcia_mirror as tm
from helpers import SimInThread, config_for, dicom_files, ground_truth_files

EXPECTED = {
    "ArchiveClient",
    "ClientConfig",
    "Credentials",
    "DownloadOptions",
    "Mirror",
    "RunReport",
    "VerifyReport",
    "Selection",
    "build_selection",
    "connect",
    "download",
    "resume",
    "status",
    "sync",
    "verify",
    "load_profile",
    "available_profiles",
    "TciaMirrorError",
    "InputError",
    "RemoteError",
    "AuthError",
    "UnreachableError",
    "DataError",
    "DiskError",
    "StateError",
    "MirrorLockedError",
    "Progress",
    "RecordingProgress",
    "NullProgress",
    "run_sync",
}


def test_public_surface() -> None:
    assert set(tm.__all__) >= EXPECTED
    for name in tm.__all__:
        assert hasattr(tm, name), name
    assert issubclass(tm.AuthError, tm.RemoteError) and issubclass(
        tm.RemoteError, tm.TciaMirrorError
    )
    assert set(tm.available_profiles()) >= {"tcia-v3", "nbia-v1", "nbia-v2", "nbia-v4"}


def test_core_never_imports_tqdm_or_the_cli() -> None:
    # tqdm itself may arrive through pydicom; our core must not reach for it or for the CLI
    code = (
        "import sys, tcia_mirror, tcia_mirror.engine.mirror, tcia_mirror.engine.pipeline;"
        "bad = [m for m in sys.modules if m.startswith('tcia_mirror.cli') "
        "or m == 'tcia_mirror.cli.tqdm' or m == 'tcia_mirror.cli.commands' "
        "or m.startswith('tcia_mirror.testing.simulator')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    src = Path(tm.__file__).parent
    for module in src.glob("_*.py"):
        if module.name in ("_tqdm.py", "_commands.py", "_demo.py"):
            continue
        text = module.read_text()
        assert "from tqdm" not in text and "import tqdm" not in text, module.name


@pytest.mark.anyio
async def test_blocking_helpers_work_inside_a_running_loop(tmp_path: Path) -> None:
    # a notebook cell: this loop is running, yet the blocking API must work (the archive,
    # like a real one, is elsewhere: a simulator on its own loop)
    with SimInThread() as sim:
        s = sim.dataset.series[0]
        cfg = config_for(sim)
        report = tm.download(tmp_path, config=cfg, series=[s.series_uid], concurrency=2)
        assert report.ok and report.files_committed == len(s.instances)
        assert tm.status(tmp_path)["series"]["complete"] == 1
        assert tm.verify(tmp_path).ok
        assert dicom_files(tmp_path) == ground_truth_files(sim, [s.series_uid])
        with pytest.raises(tm.InputError):
            tm.download(tmp_path / "x", config=cfg, series=["not-a-uid"])
