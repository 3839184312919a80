"""Mirror-engine subcommands (plan, download, resume, verify, status, sync, demo)."""

from __future__ import annotations

import argparse
from typing import Any


def add_engine_commands(sub: Any, conn: argparse.ArgumentParser) -> None:
    """Registered once the engine lands."""
