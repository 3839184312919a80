"""The engine's typed domain: problems, their kinds, a series' outcome, and the totals check.

A :class:`Problem` is what a check found wrong with a series; its JSON form (``to_dict``) is the
shape the run report, ``verify --json`` and ``status`` have always used::

    {"series": UID, "kind": KIND, "expected": ..., "found": ..., <extra keys>}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

__all__ = ["Outcome", "Problem", "ProblemKind", "totals_problems"]

ProblemKind = Literal[
    "archive_changed",  # verify --remote: the archive's count, bytes or SOP list changed
    "archive_refused",  # the archive answered 400/404 for the series
    "crc_mismatch",  # a ZIP entry whose CRC-32 was wrong
    "duplicate_sop",  # two objects of one bucket folder hold the same SOP Instance UID
    "file_size",  # a file on disk whose size is not the recorded one
    "header_mismatch",  # a file whose header names another series or instance
    "md5_mismatch",  # content whose MD5 is not the one the archive listed (or recorded)
    "missing_file",  # a recorded file that is gone
    "missing_instance",  # verify: an expected instance never committed
    "missing_instances",  # a run ended with expected instances still missing
    "not_dicom",  # content that is not DICOM
    "not_downloaded",  # a planned series with no folder yet
    "object_count",  # found count differs from the expected count
    "sop_list",  # the archive's SOP list and its count disagree
    "total_bytes",  # found bytes differ from the expected bytes
    "unexpected_file",  # a .dcm file in a series folder that no instance claims
    "unexpected_instance",  # an instance the plan did not list
    "unsafe_entry_names",  # ZIP entries whose names are paths (refused)
    "wrong_instance",  # a single image that is another instance
    "wrong_series",  # an instance of another series
]


class Outcome(StrEnum):
    """How a series ended in a run."""

    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Problem:
    series: str
    kind: ProblemKind
    expected: Any = None
    found: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "kind": self.kind,
            "expected": self.expected,
            "found": self.found,
            **self.extra,
        }


def totals_problems(
    series: str,
    *,
    expected_count: int | None,
    expected_bytes: int | None,
    found_count: int,
    found_bytes: int,
) -> list[Problem]:
    """The one count-and-bytes check, used by the engine at the end of a series and by verify."""
    out: list[Problem] = []
    if expected_count is not None and found_count != expected_count:
        out.append(Problem(series, "object_count", expected_count, found_count))
    if expected_bytes is not None and found_bytes != expected_bytes:
        out.append(Problem(series, "total_bytes", expected_bytes, found_bytes))
    return out
