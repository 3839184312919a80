"""tqdm progress sink for the command line (the core never imports this module)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class TqdmProgress:
    def __init__(self, *, file: Any = None) -> None:
        self._file = file or sys.stderr
        self._bytes: tqdm | None = None
        self._series: tqdm | None = None

    def on_start(
        self, *, series_total: int, series_done: int, bytes_total: int, bytes_done: int
    ) -> None:
        self.close()
        self._series = tqdm(
            total=series_total,
            initial=series_done,
            unit="series",
            desc="series",
            file=self._file,
            position=0,
            dynamic_ncols=True,
        )
        self._bytes = tqdm(
            total=bytes_total or None,
            initial=bytes_done,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            desc="bytes ",
            file=self._file,
            position=1,
            dynamic_ncols=True,
            mininterval=0.2,
        )

    def on_bytes(self, n: int) -> None:
        if self._bytes is not None:
            self._bytes.update(n)

    def on_series(self, uid: str, outcome: str) -> None:
        if self._series is not None:
            self._series.update(1)
            if outcome != "complete":
                self._series.write(f"series {uid}: {outcome}", file=self._file)

    def on_message(self, text: str) -> None:
        tqdm.write(text, file=self._file)

    def close(self) -> None:
        for bar in (self._bytes, self._series):
            if bar is not None:
                bar.close()
        self._bytes = self._series = None
