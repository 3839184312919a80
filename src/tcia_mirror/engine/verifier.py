"""Verifier: what is on disk now against what the archive promised.

Per series: object count and bytes against getSeriesSize, the SOP Instance UIDs against
getSOPInstanceUIDs, and each file's header (pixels skipped) against the series and SOP UIDs
it should hold; its MD5 against the archive's (md5hashes.csv, the per-image endpoint, an ETag)
where the archive stated one, else against the MD5 computed when it was fetched. A mismatch is
a reported problem, never silently accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tcia_mirror.errors import DataError
from tcia_mirror.fs.dicomio import file_md5, read_ids
from tcia_mirror.fs.layout import instance_filename
from tcia_mirror.records import Problem, ProblemKind, totals_problems
from tcia_mirror.sources.nbia.manifest import is_uid
from tcia_mirror.store.base import InstanceState, SeriesState


def _named_by(sop: str | None, name: str) -> bool:
    try:
        return sop is not None and instance_filename(sop) == name
    except DataError:
        return False


@dataclass(slots=True)
class SeriesCheck:
    uid: str
    problems: list[Problem] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # SOP UIDs whose file must be fetched again
    found_count: int = 0
    found_bytes: int = 0

    def add(self, kind: ProblemKind, expected: Any = None, found: Any = None, **extra: Any) -> None:
        self.problems.append(Problem(self.uid, kind, expected, found, extra))


def check_series(
    root: Path,
    series: SeriesState,
    instances: list[InstanceState],
    *,
    deep: bool = True,
) -> SeriesCheck:
    """Check one series folder. Pure disk work (safe to run in a thread).

    A series from a bucket is named by its SeriesInstanceUID, with its bucket folder beside
    it in each problem (``bucket_folder``)."""
    chk = _check(root, series, instances, deep=deep)
    if folder := series.fields.get("BucketFolder"):
        for problem in chk.problems:
            problem.extra.setdefault("bucket_folder", folder)
    return chk


def _check(
    root: Path,
    series: SeriesState,
    instances: list[InstanceState],
    *,
    deep: bool,
) -> SeriesCheck:
    chk = SeriesCheck(series.uid)
    if series.rel_dir is None:
        chk.add("not_downloaded", expected=series.expected_count, found=0)
        return chk
    folder = root / series.rel_dir
    on_disk = {p.name: p for p in folder.glob("*.dcm")} if folder.is_dir() else {}
    claimed: set[str] = set()
    expected_sops = {i.sop_uid for i in instances}
    for inst in instances:
        if not inst.done or inst.rel_path is None:
            chk.add("missing_instance", expected=inst.sop_uid, found=None)
            continue
        path = root / inst.rel_path
        claimed.add(path.name)
        try:
            size = path.stat().st_size
        except OSError:
            chk.add("missing_file", expected=inst.rel_path, found=None, sop=inst.sop_uid)
            chk.damaged.append(inst.sop_uid)
            continue
        if inst.size is not None and size != inst.size:
            chk.add("file_size", expected=inst.size, found=size, sop=inst.sop_uid)
            chk.damaged.append(inst.sop_uid)
            continue
        ids = read_ids(path)
        if ids is None:
            chk.add("not_dicom", expected=inst.sop_uid, found=inst.rel_path, sop=inst.sop_uid)
            chk.damaged.append(inst.sop_uid)
            continue
        # a key that is a SOP UID must be the header's; any file must be named by its header
        # (bucket objects are keyed by object key and named by the SOP UID they hold)
        named = _named_by(ids.sop_uid, path.name)
        if (
            not named
            or ids.series_uid != series.uid
            or (is_uid(inst.sop_uid) and ids.sop_uid != inst.sop_uid)
        ):
            chk.add(
                "header_mismatch",
                expected=f"{series.uid}/{inst.sop_uid}",
                found=f"{ids.series_uid}/{ids.sop_uid}",
                sop=inst.sop_uid,
            )
            chk.damaged.append(inst.sop_uid)
            continue
        # the archive's MD5 where it stated one (the root of trust), else the one we computed
        want, against = (
            (inst.expected_md5, inst.md5_source or "archive")
            if inst.expected_md5
            else (inst.md5, "local")
        )
        if deep and want and (got := file_md5(path)) != want:
            chk.add(
                "md5_mismatch", expected=want, found=got, sop=inst.sop_uid, checked_against=against
            )
            chk.damaged.append(inst.sop_uid)
            continue
        chk.found_count += 1
        chk.found_bytes += size
    for name in sorted(set(on_disk) - claimed):
        chk.add("unexpected_file", expected=None, found=f"{series.rel_dir}/{name}")
    chk.problems += totals_problems(
        series.uid,
        expected_count=series.expected_count,
        expected_bytes=series.expected_bytes,
        found_count=chk.found_count,
        found_bytes=chk.found_bytes,
    )
    if (
        series.expected_count is not None
        and expected_sops
        and len(expected_sops) != series.expected_count
    ):
        chk.add("sop_list", expected=series.expected_count, found=len(expected_sops))
    return chk
