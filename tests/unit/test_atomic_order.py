"""The order of a commit's durability steps: data written, fsynced, renamed, folder fsynced.

A rename that reaches the disk before the data it names leaves, after a power cut, a file under
its final name that is empty or partial. These tests record every step through the
:class:`~tcia_mirror.fs.atomic.FsOps` seam and the opener, and pin the order exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from tcia_mirror.errors import DiskError
from tcia_mirror.fs.atomic import AtomicWriter, FsOps


class Recorder:
    """Records writes and flushes (through the opener) and the FsOps calls, in one list."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.fileno: int | None = None

    def opener(self, path: Path, mode: str) -> BinaryIO:
        recorder = self
        f = open(path, mode)  # noqa: SIM115 (closed by the writer)
        self.fileno = f.fileno()

        class Recording:
            def write(self, data: bytes) -> int:
                recorder.log.append(("write", bytes(data)))
                return f.write(data)

            def flush(self) -> None:
                recorder.log.append(("flush", None))
                f.flush()

            def __getattr__(self, name: str) -> Any:
                return getattr(f, name)

        return Recording()  # type: ignore[return-value]

    def ops(self) -> FsOps:
        def fsync(fd: int) -> None:
            self.log.append(("fsync", fd))
            os.fsync(fd)

        def replace(src: Path, dst: Path) -> None:
            self.log.append(("replace", (Path(src).name, Path(dst).name)))
            os.replace(src, dst)

        def fsync_dir(path: Path) -> None:
            self.log.append(("fsync_dir", Path(path)))

        return FsOps(fsync=fsync, replace=replace, fsync_dir=fsync_dir)

    def steps(self) -> list[str]:
        return [step for step, _ in self.log]


def test_commit_writes_then_fsyncs_then_renames_then_fsyncs_the_folder(tmp_path: Path) -> None:
    rec = Recorder()
    dest = tmp_path / "series" / "1.2.3.dcm"
    with AtomicWriter(dest, opener=rec.opener, ops=rec.ops()) as w:
        temp = w.temp_path.name
        w.write(b"DICM")
        w.write(b"-data")
        assert rec.steps() == ["write", "write"]  # nothing durable or visible yet
        w.commit()
    assert rec.steps() == ["write", "write", "flush", "fsync", "replace", "fsync_dir"]
    assert rec.log[3] == ("fsync", rec.fileno)  # the data file itself, not some other fd
    assert rec.log[4] == ("replace", (temp, "1.2.3.dcm"))
    assert rec.log[5] == ("fsync_dir", dest.parent)
    assert dest.read_bytes() == b"DICM-data"


def test_a_batched_commit_still_fsyncs_the_data_before_the_rename(tmp_path: Path) -> None:
    rec = Recorder()
    with AtomicWriter(tmp_path / "a.dcm", opener=rec.opener, ops=rec.ops()) as w:
        w.write(b"x")
        w.commit(sync_dir=False)  # the caller fsyncs the folder once for many files
    assert rec.steps() == ["write", "flush", "fsync", "replace"]


@pytest.mark.parametrize("sync_dir", [None, False])
def test_fsync_off_means_no_fsync_at_all(tmp_path: Path, sync_dir: bool | None) -> None:
    rec = Recorder()
    with AtomicWriter(tmp_path / "a.dcm", fsync=False, opener=rec.opener, ops=rec.ops()) as w:
        w.write(b"x")
        w.commit(sync_dir=sync_dir)
    assert rec.steps() == ["write", "flush", "replace"]
    assert (tmp_path / "a.dcm").read_bytes() == b"x"


def test_a_failed_fsync_publishes_nothing(tmp_path: Path) -> None:
    rec = Recorder()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    ops = FsOps(fsync=broken_fsync, replace=rec.ops().replace, fsync_dir=rec.ops().fsync_dir)
    dest = tmp_path / "a.dcm"
    w = AtomicWriter(dest, ops=ops)
    w.write(b"x")
    with pytest.raises(DiskError, match="Input/output error"):
        w.commit()
    assert rec.steps() == [] and not dest.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_sync_ahead_of_a_batch_rename_keeps_data_before_name(tmp_path: Path) -> None:
    """A ZIP's files waiting for its MD5 list are synced as they complete, renamed later."""
    rec = Recorder()
    dest = tmp_path / "s" / "1.2.4.dcm"
    with AtomicWriter(dest, opener=rec.opener, ops=rec.ops()) as w:
        w.write(b"DICM")
        w.sync()
        assert rec.steps() == ["write", "flush", "fsync"]  # durable, not yet visible
        assert not dest.exists()
        w.commit(sync_dir=False)
    steps = rec.steps()
    assert steps.index("replace") > steps.index("fsync") and "fsync_dir" not in steps
    rec2 = Recorder()
    with AtomicWriter(tmp_path / "t.dcm", opener=rec2.opener, ops=rec2.ops(), fsync=False) as w2:
        w2.write(b"x")
        w2.sync()
        w2.commit()
    assert "fsync" not in rec2.steps()
