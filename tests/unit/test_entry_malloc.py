"""The console script tunes glibc's malloc (see ``_entry.tune_malloc``); a user's own
``MALLOC_*`` settings win."""

from __future__ import annotations

import platform
import sys

import pytest

from tcia_mirror._entry import tune_malloc

glibc = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not glibc, reason="mallopt is glibc's")
def test_tunes_glibc_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert tune_malloc() is True


@pytest.mark.parametrize("var", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"])
def test_a_users_malloc_settings_win(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "131072")
    assert tune_malloc() is False
