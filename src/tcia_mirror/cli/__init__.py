"""The ``tcia-mirror`` command line: a thin shell over the library (never imported by it)."""

from tcia_mirror.cli.main import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
