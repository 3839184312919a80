"""``tcia-mirror demo``: a guided tour on the built-in simulator (no internet needed).

Starts the archive simulator on a free loopback port, mirrors a collection with progress
bars, interrupts itself part-way (as a dropped laptop lid would), resumes, verifies, and says
what happened.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import anyio

from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.errors import InputError
from tcia_mirror.progress import NullProgress, Progress
from tcia_mirror.selection import Selection
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.sources.nbia.profiles import load_profile
from tcia_mirror.store.base import STATE_DIR

MARKER = "demo-mirror"


class _Interrupting:
    """Passes events on; cancels the run once ``fraction`` of the series are complete."""

    def __init__(self, inner: Progress, scope: anyio.CancelScope, fraction: float) -> None:
        self.inner = inner
        self.scope = scope
        self.fraction = fraction
        self.total = 0
        self.done = 0

    def on_start(self, **kw: int) -> None:
        self.total = kw["series_total"]
        self.inner.on_start(**kw)

    def on_series(self, uid: str, outcome: str) -> None:
        self.done += 1
        self.inner.on_series(uid, outcome)
        if self.done >= max(1, self.total * self.fraction):
            self.scope.cancel()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _sink(progress: bool) -> Progress:
    if progress and sys.stderr.isatty():
        from tcia_mirror.cli.tqdm import TqdmProgress  # noqa: PLC0415

        return TqdmProgress()
    return NullProgress()


async def _demo(out: Path, progress: bool) -> int:
    from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults, Simulator  # noqa: PLC0415

    dataset = Dataset(DatasetSpec.preset("demo"))
    faults = Faults(latency=0.02, bandwidth=1_500_000, error_rate=0.05, seed=7)
    async with Simulator(dataset, faults=faults) as sim:
        base = sim.base_url("nbia-v4")
        collection = dataset.series[0].collection
        _say(f"1. Archive simulator running at {base}")
        _say("   (NBIA v4 dialect, 5% of requests answered 500 to show the retries)")
        cfg = ClientConfig(profile=load_profile("nbia-v4"), base_url=base)
        selection = Selection(collection=collection)

        _say(f"\n2. Mirroring collection {collection} into {out}/ ... and pulling the plug at 40%")
        sink = _sink(progress)
        with anyio.CancelScope() as scope:
            first = Mirror(out, cfg, progress=_Interrupting(sink, scope, 0.4))
            await first.download(selection, DownloadOptions(concurrency=4))
        sink.close()
        (out / STATE_DIR / MARKER).touch()
        st = await Mirror(out).status()
        _say(
            f"   interrupted: {st['instances']['complete']}/{st['instances']['total']} files "
            f"safely on disk; temp files of the broken transfers are never taken for real ones"
        )

        _say(f"\n3. Resuming: tcia-mirror resume --out {out}")
        sink = _sink(progress)
        report = await Mirror(out, cfg, progress=sink).resume(DownloadOptions(concurrency=4))
        sink.close()
        _say(f"   {report.summary()}")
        if report.retries:
            _say(f"   (retried {report.retries} failed requests along the way)")

        _say(f"\n4. Verifying every file: tcia-mirror verify --out {out}")
        verdict = await Mirror(out).verify()
        _say(
            f"   {verdict.series_checked} series checked against getSeriesSize, "
            f"getSOPInstanceUIDs, DICOM headers and MD5: "
            + ("all good" if verdict.ok else f"{len(verdict.problems)} problem(s)")
        )
        st = await Mirror(out).status()
        _say(
            f"\n5. Done. {st['series']['complete']} series, {st['instances']['complete']} DICOM "
            f"files, {st['bytes']['complete'] / 1e6:.1f} MB in {out}/<Collection>/<PatientID>/"
            "<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm"
        )
        _say(
            f"   Per-series report: {out}/.tcia-mirror/reports/last-run.json; index: {out}/metadata.csv"
        )
        _say(f"   Try: tcia-mirror status --out {out}   |   tcia-mirror verify --out {out} --json")
        return 0 if verdict.ok and report.ok else 1


def run_demo(*, out: str | None = None, progress: bool = True) -> int:
    root = Path(out or "demo-mirror")
    if root.exists():
        if (root / STATE_DIR / MARKER).exists():
            shutil.rmtree(root)
        elif any(root.iterdir()):
            raise InputError(f"{root} exists and is not a demo mirror; pass --out NEW_DIR")
    return anyio.run(_demo, root, progress)
