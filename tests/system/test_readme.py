"""README is tested: every command it shows parses, every setting it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tcia_mirror.cli import build_parser
from tcia_mirror.config import ENV
from tcia_mirror.fs.layout import PRESETS, Layout
from tcia_mirror.sources.nbia.profiles import available_profiles

README = (Path(__file__).parents[2] / "README.md").read_text()


def commands() -> list[str]:
    lines = []
    for block in re.findall(r"```\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("tcia-mirror "):
                lines.append(line)
    return lines


def test_quick_start_is_two_make_commands() -> None:
    assert "make demo" in README and "make test" in README


@pytest.mark.parametrize("line", commands())
def test_every_command_shown_parses(line: str) -> None:
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.func)


def test_cron_line_uses_a_real_command() -> None:
    cron = [ln for ln in README.splitlines() if "tcia-mirror sync" in ln and ln.startswith("15 ")]
    assert cron
    argv = shlex.split(cron[0].split("tcia-mirror", 1)[1].split(">>")[0])
    assert build_parser().parse_args(argv).command == "sync"


def test_settings_and_profiles_named_exist() -> None:
    for var in re.findall(r"`(TCIA_[A-Z_]+)`", README):
        assert var in ENV.values(), var
    for name in re.findall(r"\| `((?:nbia|tcia)-v\d)`", README):
        assert name in available_profiles(), name
    for preset in ("default", "nbia-classic", "nbia-descriptive", "flat"):
        assert preset in PRESETS
    Layout.parse("{Collection}/{Modality}/{SeriesInstanceUID}")
