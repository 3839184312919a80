"""tcia-mirror: asynchronous, resumable, verified bulk downloader for The Cancer Imaging Archive."""

from __future__ import annotations

__version__ = "0.1.0"
