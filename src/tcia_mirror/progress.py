"""Progress is a callback protocol: the core reports, a sink (tqdm, a test recorder) listens."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def on_start(
        self, *, series_total: int, series_done: int, bytes_total: int, bytes_done: int
    ) -> None: ...

    def on_bytes(self, n: int) -> None:
        """``n`` bytes arrived (negative: a retry threw bytes away)."""

    def on_series(self, uid: str, outcome: str) -> None:
        """A series finished with outcome ``complete`` or ``failed``."""

    def on_message(self, text: str) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    def on_start(
        self, *, series_total: int, series_done: int, bytes_total: int, bytes_done: int
    ) -> None:
        pass

    def on_bytes(self, n: int) -> None:
        pass

    def on_series(self, uid: str, outcome: str) -> None:
        pass

    def on_message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingProgress(NullProgress):
    """Keeps every event; for tests and notebooks."""

    def __init__(self) -> None:
        self.bytes = 0
        self.series: list[tuple[str, str]] = []
        self.messages: list[str] = []
        self.started: dict[str, int] = {}

    def on_start(
        self, *, series_total: int, series_done: int, bytes_total: int, bytes_done: int
    ) -> None:
        self.started = {
            "series_total": series_total,
            "series_done": series_done,
            "bytes_total": bytes_total,
            "bytes_done": bytes_done,
        }

    def on_bytes(self, n: int) -> None:
        self.bytes += n

    def on_series(self, uid: str, outcome: str) -> None:
        self.series.append((uid, outcome))

    def on_message(self, text: str) -> None:
        self.messages.append(text)
