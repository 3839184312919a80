"""Synthetic mirror states for benchmarks and tests (no network, no files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tcia_mirror.store.base import STATUSES
from tcia_mirror.store.sqlite import StateStore

__all__ = ["build_synthetic_store"]


def build_synthetic_store(
    path: Path, n_series: int, n_per_series: int, *, done_fraction: float = 0.5
) -> Path:
    """Create a mirror state with ``n_series`` x ``n_per_series`` instances (for benchmarks).

    Instances have realistic UID/path lengths. Series cycle through the four statuses:
    ``pending`` ones have nothing done, ``complete`` ones everything, ``partial`` and ``failed``
    ones the first ``done_fraction`` of their instances. Returns the mirror folder.
    """
    path = Path(path)
    done_by_status = {
        "pending": 0,
        "partial": int(n_per_series * done_fraction),
        "complete": n_per_series,
        "failed": int(n_per_series * done_fraction),
    }
    root = "1.3.6.1.4.1.14519.5.2.1.7695.4164"
    with StateStore.open(path) as store, store.transaction() as conn:
        series_rows = []
        for s in range(n_series):
            uid = f"{root}.{s:06d}.{s * 7919 % 1000003:07d}.1"
            status = STATUSES[s % 4]
            series_rows.append(
                (s + 1, uid, "SYNTH-COLL", f"SYNTH-{s // 10:05d}", f"{root}.{s // 3:06d}.2",
                 n_per_series, n_per_series * 525_000, status,
                 f"SYNTH-COLL/SYNTH-{s // 10:05d}/{root}.{s // 3:06d}.2/{uid}")
            )  # fmt: skip
        conn.executemany(
            "INSERT INTO series(id, uid, collection, patient_id, study_uid, expected_count, "
            "expected_bytes, status, rel_dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            series_rows,
        )

        def instance_rows() -> Iterator[tuple[Any, ...]]:
            for sid, uid, *_rest, status, rel_dir in series_rows:
                done = done_by_status[status]
                for i in range(n_per_series):
                    sop = f"{uid[:-2]}.{i:05d}.3"
                    if i < done:
                        yield (sid, sop, 1, f"{rel_dir}/{sop}.dcm", 525_000, f"{i:032x}")
                    else:
                        yield (sid, sop, 0, None, None, None)

        conn.executemany(
            "INSERT INTO instance(series_id, sop_uid, done, rel_path, size, md5) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            instance_rows(),
        )
    with StateStore.open(path, create=False) as store:
        store.recount()
    return path
