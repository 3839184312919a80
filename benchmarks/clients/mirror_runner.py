"""tcia-mirror, measured in its own process.

mirror_runner.py download ROOT SERIES_FILE OUT CONCURRENCY MODE   the CLI's download command
mirror_runner.py plan ROOT COLLECTION OUT CONCURRENCY             the CLI's plan command
mirror_runner.py status OUT                                       the CLI's status command
mirror_runner.py remaining OUT                                    StateStore.remaining()
mirror_runner.py resume-dry OUT                                   Mirror.resume(dry_run=True)
mirror_runner.py load-work OUT                                    every unfinished series' instances
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from pathlib import Path

import anyio
from _common import Measured, emit, loopback_only

from tcia_mirror import cli
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.sources.nbia.profiles import load_profile
from tcia_mirror.store.sqlite import StateStore


def _connection(root: str) -> list[str]:
    return ["--api", "nbia-v4", "--base-url", f"{root}/nbia-api/services/v4"]


def _import_engine() -> None:
    """Import what the CLI's engine commands import on first use (the engine, the sources,
    aiohttp): every peer's runner imports its libraries before its measured call, and the
    tables exclude imports for every Python tool alike. Worker processes a run starts still
    start (and import) inside the measured call."""
    importlib.import_module("tcia_mirror.cli.commands")
    importlib.import_module("tcia_mirror.sources.routing")


def download(root: str, series_file: str, out: str, concurrency: str, mode: str) -> None:
    argv = ["download", *_connection(root), "--series-file", series_file, "--out", out]
    argv += ["--concurrency", concurrency, "--mode", mode, "--no-progress"]
    _import_engine()
    with Measured() as m:
        code = cli.main(argv)
    emit(exit=code, **m.result())


def plan(root: str, collection: str, out: str, concurrency: str) -> None:
    argv = ["plan", *_connection(root), "--collection", collection, "--out", out]
    argv += ["--concurrency", concurrency]
    _import_engine()
    with Measured() as m:
        code = cli.main(argv)
    with StateStore.open(Path(out), create=False) as store:
        summary = store.summary()
    emit(exit=code, series=summary["series"]["total"], **m.result())


def status(out: str) -> None:
    buf = io.StringIO()
    with Measured() as m, contextlib.redirect_stdout(buf):
        code = cli.main(["status", "--out", out])
    emit(exit=code, printed=buf.getvalue().strip(), **m.result())


def remaining(out: str) -> None:
    with Measured() as m, StateStore.open(Path(out), create=False) as store:
        rows = store.remaining()
    emit(exit=0, series=len(rows), instances=sum(n for _u, n in rows), **m.result())


def resume_dry(out: str) -> None:
    # Never contacted: a resume of a recorded plan makes no request in a dry run.
    cfg = ClientConfig(profile=load_profile("nbia-v4"), base_url="http://127.0.0.1:9/nbia-api")
    opts = DownloadOptions(dry_run=True, check_space=False)
    _import_engine()
    with Measured() as m:
        report = anyio.run(Mirror(out, cfg).resume, opts)
    todo = report.status["series"]["total"] - report.status["series"]["complete"]
    emit(exit=0, series=todo, **m.result())


def load_work(out: str) -> None:
    with Measured() as m, StateStore.open(Path(out), create=False) as store:
        missing = 0
        for s in store.series():
            if s.status == "complete":
                continue
            insts = store.instances(s.uid)
            missing += sum(1 for i in insts if not i.done)
    emit(exit=0, instances=missing, **m.result())


COMMANDS = {
    "download": download,
    "plan": plan,
    "status": status,
    "remaining": remaining,
    "resume-dry": resume_dry,
    "load-work": load_work,
}

if __name__ == "__main__":
    loopback_only()
    COMMANDS[sys.argv[1]](*sys.argv[2:])
