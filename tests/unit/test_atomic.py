from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from tcia_mirror.errors import DiskError
from tcia_mirror.fs.atomic import AtomicWriter, cleanup_temp_files


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


class FailingFile:
    """Wraps a real file; raises OSError(code) once more than ``budget`` bytes were written."""

    def __init__(self, f: BinaryIO, budget: int, code: int) -> None:
        self._f, self._budget, self._code = f, budget, code

    def write(self, data: bytes) -> int:
        if len(data) > self._budget:
            raise OSError(self._code, os.strerror(self._code))
        self._budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def failing_opener(budget: int, code: int = errno.ENOSPC) -> Any:
    def opener(path: Path, mode: str) -> Any:
        return FailingFile(open(path, mode), budget, code)  # noqa: SIM115 (closed by the writer)

    return opener


def test_write_commit(tmp_path: Path) -> None:
    dest = tmp_path / "series" / "1.2.3.dcm"  # the folder is created on demand
    with AtomicWriter(dest) as w:
        assert w.temp_path.parent == dest.parent
        assert w.temp_path.name.startswith(".1.2.3.dcm.") and w.temp_path.name.endswith(".part")
        assert str(os.getpid()) in w.temp_path.name
        w.write(b"DICM")
        w.write(b"-data")
        w.flush()
        assert w.temp_path.read_bytes() == b"DICM-data"  # the verifier reads it before commit
        assert not dest.exists()
        w.commit()
    assert dest.read_bytes() == b"DICM-data"
    assert w.size == 9
    assert leftovers(dest.parent) == []


def test_commit_to_a_name_learned_from_the_content(tmp_path: Path) -> None:
    with AtomicWriter(tmp_path / "entry-00000001.dcm") as w:
        w.write(b"DICM")
        w.commit(tmp_path / "1.2.3.dcm")
    assert (tmp_path / "1.2.3.dcm").read_bytes() == b"DICM"
    assert w.dest == tmp_path / "1.2.3.dcm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.2.3.dcm"]


def test_temp_names_are_unique(tmp_path: Path) -> None:
    a, b = AtomicWriter(tmp_path / "x"), AtomicWriter(tmp_path / "x")
    try:
        assert a.temp_path != b.temp_path
    finally:
        a.abort()
        b.abort()
    assert leftovers(tmp_path) == []


def test_exception_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "a.dcm"
    with pytest.raises(RuntimeError), AtomicWriter(dest) as w:
        w.write(b"partial")
        raise RuntimeError("stream broke")
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_exit_without_commit_publishes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "a.dcm"
    with AtomicWriter(dest) as w:
        w.write(b"unverified")
    assert not dest.exists() and leftovers(tmp_path) == []
    w.abort()  # idempotent


def test_commit_replaces_existing(tmp_path: Path) -> None:
    dest = tmp_path / "a.dcm"
    dest.write_bytes(b"old")
    with AtomicWriter(dest, fsync=False) as w:
        w.write(b"new")
        w.commit()
    assert dest.read_bytes() == b"new"
    with pytest.raises(ValueError):
        w.write(b"late")


def test_enospc_keeps_previous_file(tmp_path: Path) -> None:
    dest = tmp_path / "a.dcm"
    dest.write_bytes(b"previous committed content")
    with pytest.raises(DiskError) as info, AtomicWriter(dest, opener=failing_opener(10)) as w:
        w.write(b"0123456789")
        w.write(b"this write hits a full disk")
    message = str(info.value)
    assert message.startswith(f"disk full while writing {dest}")
    assert "tcia-mirror resume --out" in message
    assert isinstance(info.value.__cause__, OSError)
    assert dest.read_bytes() == b"previous committed content"
    assert leftovers(tmp_path) == []


def test_enospc_message_names_mirror(tmp_path: Path) -> None:
    w = AtomicWriter(tmp_path / "a", opener=failing_opener(0), mirror_dir=tmp_path)
    with pytest.raises(DiskError, match=f"resume --out {tmp_path}"):
        w.write(b"x")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EIO, "cannot write"),
    ],
)
def test_other_write_errors(tmp_path: Path, code: int, words: str) -> None:
    with (
        pytest.raises(DiskError, match=words),
        AtomicWriter(tmp_path / "a", opener=failing_opener(0, code)) as w,
    ):
        w.write(b"x")
    assert leftovers(tmp_path) == []


def test_open_failure(tmp_path: Path) -> None:
    def refuse(path: Path, mode: str) -> BinaryIO:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskError, match="disk full"):
        AtomicWriter(tmp_path / "a", opener=refuse)
    assert leftovers(tmp_path) == []


def test_commit_failure_cleans_up(tmp_path: Path) -> None:
    dest = tmp_path / "target"
    dest.mkdir()
    (dest / "occupied").write_text("x")  # os.replace onto a non-empty folder fails
    with pytest.raises(DiskError), AtomicWriter(dest) as w:
        w.write(b"data")
        w.commit()
    assert leftovers(tmp_path) == []
    assert (dest / "occupied").exists()


def test_long_names(tmp_path: Path) -> None:
    dest = tmp_path / ("9" * 250 + ".dcm")
    with AtomicWriter(dest) as w:
        assert len(w.temp_path.name) <= 255
        w.write(b"x")
        w.commit()
    assert dest.read_bytes() == b"x"


def test_cleanup_temp_files(tmp_path: Path) -> None:
    sub = tmp_path / "C" / "P" / "S"
    sub.mkdir(parents=True)
    stale = [sub / ".1.2.dcm.999999.0123abcd.part", tmp_path / ".x.12.deadbeef.part"]
    for p in stale:
        p.write_bytes(b"stale")
    keep = [
        sub / "1.2.dcm",
        sub / "notes.part",  # not our pattern
        sub / f".1.3.dcm.{os.getpid()}.0123abcd.part",  # this process: may be in flight
    ]
    for p in keep:
        p.write_bytes(b"keep")
    assert cleanup_temp_files(tmp_path) == 2
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)
    assert cleanup_temp_files(tmp_path) == 0
