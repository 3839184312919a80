"""The progress sink without bars (not a terminal, or --no-progress): it never imports tqdm, so
a cron job's run starts without it."""

from __future__ import annotations

import sys
from typing import Any


class LineProgress:
    """No bars (not a terminal, or --no-progress): messages only, one line each."""

    def __init__(self, *, file: Any = None, quiet: bool = False) -> None:
        self._file = file or sys.stderr
        self._quiet = quiet

    def on_start(self, **_: int) -> None:
        pass

    def on_bytes(self, n: int) -> None:
        pass

    def on_series(self, uid: str, outcome: str) -> None:
        if outcome != "complete" and not self._quiet:
            print(f"series {uid}: {outcome}", file=self._file)

    def on_message(self, text: str) -> None:
        if not self._quiet:
            print(text, file=self._file)

    def close(self) -> None:
        pass
