"""What a run leaves behind: the run and verify reports, and ``metadata.csv``.

Reports are JSON under ``DIR/.tcia-mirror/reports/`` (one per run, plus ``last-run.json``);
anything a server message echoed is redacted before it is written.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tcia_mirror.errors import redact
from tcia_mirror.fs.atomic import AtomicWriter
from tcia_mirror.store.base import STATE_DIR, SeriesState

__all__ = [
    "RunReport",
    "VerifyReport",
    "human",
    "now",
    "stamp",
    "write_json",
    "write_metadata_csv",
    "write_run_report",
]


@dataclass(slots=True)
class RunReport:
    command: str
    out: str
    selection: str
    started: str
    finished: str = ""
    series: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    # sync: series of the mirror its selection no longer lists (kept, never deleted)
    no_longer_listed: list[str] = field(default_factory=list)
    planned_series: int = 0
    planned_instances: int = 0
    planned_bytes: int = 0
    bytes_received: int = 0
    files_committed: int = 0
    files_adopted: int = 0  # renamed into place by a killed run, recorded by this one
    retries: int = 0
    throttled: int = 0
    seconds: float = 0.0
    dry_run: bool = False
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [s["series"] for s in self.series if s["outcome"] != "complete"]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing and not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        st = self.status
        ser, inst, byt = st.get("series", {}), st.get("instances", {}), st.get("bytes", {})
        line = (
            f"{self.command}: {ser.get('complete', 0)}/{ser.get('total', 0)} series complete, "
            f"{inst.get('complete', 0)}/{inst.get('total', 0)} instances, "
            f"{human(byt.get('complete', 0))} of {human(byt.get('total', 0))}; "
            f"this run fetched {self.files_committed} files ({human(self.bytes_received)}) "
            f"in {self.seconds:.1f} s"
        )
        if self.failed:
            line += f"; INCOMPLETE: {', '.join(self.failed[:5])}"
            if len(self.failed) > 5:
                line += f" and {len(self.failed) - 5} more"
        if self.missing:
            line += f"; not on the archive: {', '.join(self.missing[:5])}"
        if self.no_longer_listed:
            gone = self.no_longer_listed
            line += f"; no longer listed (kept): {', '.join(gone[:5])}"
            if len(gone) > 5:
                line += f" and {len(gone) - 5} more"
        return line


@dataclass(slots=True)
class VerifyReport:
    ok: bool
    series_checked: int
    problems: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "series_checked": self.series_checked, "problems": self.problems}


def human(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json(
    root: Path, name: str, data: dict[str, Any], secrets: tuple[str | None, ...] = ()
) -> None:
    folder = root / STATE_DIR / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    # server messages quoted in a report may echo a key or token: never write them
    body = redact(json.dumps(data, indent=2, default=str), secrets).encode()
    with AtomicWriter(folder / name, fsync=False) as w:
        w.write(body)
        w.commit()


def write_run_report(root: Path, report: RunReport, secrets: tuple[str | None, ...]) -> None:
    data = report.to_dict()
    write_json(root, f"{report.command}-{stamp()}.json", data, secrets)
    write_json(root, "last-run.json", data, secrets)


def write_metadata_csv(root: Path, series: Iterable[SeriesState]) -> None:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(
        [
            "SeriesInstanceUID",
            "Collection",
            "PatientID",
            "StudyInstanceUID",
            "Modality",
            "SeriesDescription",
            "ExpectedCount",
            "FoundCount",
            "ExpectedBytes",
            "FoundBytes",
            "Status",
            "Path",
            "Source",
        ]
    )
    for s in series:
        out.writerow(
            [
                s.uid,
                s.collection or "",
                s.patient_id or "",
                s.study_uid or "",
                s.fields.get("Modality", ""),
                s.fields.get("SeriesDescription", ""),
                "" if s.expected_count is None else s.expected_count,
                s.done_count,
                "" if s.expected_bytes is None else s.expected_bytes,
                s.done_bytes,
                s.status,
                s.rel_dir or "",
                s.source,
            ]
        )
    with AtomicWriter(root / "metadata.csv", fsync=False) as w:
        w.write(buf.getvalue().encode("utf-8"))
        w.commit()


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
