"""Atomic files: a file under its final name is always complete.

:class:`AtomicWriter` writes into a temp file in the destination folder (so the final
``os.replace`` never crosses file systems), named ``.<name>.<pid>@<host>.<random>.part`` so two
processes (or two hosts on NFS, where file locks lie) never share one, and a cleanup knows whose
it is: :func:`cleanup_temp_files` never removes a temp file of a live process or of another host. Verify the temp file through
:attr:`AtomicWriter.temp_path`, then :meth:`~AtomicWriter.commit`; any other exit removes it::

    with AtomicWriter(dest) as out:
        for chunk in chunks:
            out.write(chunk)
        verify(out.temp_path)
        out.commit()

Disk failures (full, read-only, no permission ...) become :class:`~tcia_mirror.errors.DiskError`
with advice. The calls are synchronous; the engine runs them in worker threads.

The durability steps go through :class:`FsOps` (``fsync``, ``replace``, ``fsync_dir``), so a
test can record them and pin their order: data fsynced, then renamed, then the folder fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from tcia_mirror.errors import DiskError

__all__ = [
    "DEFAULT_OPS",
    "AtomicWriter",
    "FsOps",
    "cleanup_taken_over",
    "cleanup_temp_files",
    "disk_error",
    "fsync_dir",
]

# ".<name>.<pid>@<host>.<8 hex>.part"; names without "@<host>" are of earlier versions
_TEMP_RE = re.compile(r"^\..+\.(\d+)(?:@([A-Za-z0-9-]+))?\.[0-9a-f]{8}\.part$")
_MAX_TEMP_STEM = 160  # keeps ".<stem>.<pid>@<host>.<rand>.part" under the 255-byte name limit


@functools.cache
def host_tag() -> str:
    """This host's name as it appears in temp file names (letters, digits and ``-``)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, not ours to signal
    return True


def disk_error(exc: OSError, path: Path | str, mirror_dir: Path | str | None = None) -> DiskError:
    """Translate an OSError from writing ``path`` into a DiskError that says what to do next."""
    where = mirror_dir if mirror_dir is not None else "DIR"
    resume = f"run `tcia-mirror resume --out {where}`"
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        msg = f"disk full while writing {path}: free space and {resume}"
    elif code == errno.EROFS:
        msg = f"read-only file system while writing {path}: remount it writable or {resume} "
        msg += "with another --out"
    elif code in (errno.EACCES, errno.EPERM):
        msg = f"permission denied while writing {path}: fix the folder's permissions and {resume}"
    else:
        reason = exc.strerror or exc.__class__.__name__
        msg = f"cannot write {path}: {reason}; fix the cause and {resume}"
    error = DiskError(msg)
    error.__cause__ = exc
    return error


def fsync_dir(path: Path) -> None:
    """Make a rename/creation in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on directories
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class FsOps:
    """The file-system calls that make a commit durable (a seam: tests record their order)."""

    fsync: Callable[[int], None] = os.fsync
    replace: Callable[[Path, Path], None] = os.replace
    fsync_dir: Callable[[Path], None] = fsync_dir


DEFAULT_OPS = FsOps()


class AtomicWriter:
    """Write ``dest`` through a unique temp file in its folder; :meth:`commit` publishes it."""

    def __init__(
        self,
        dest: Path,
        *,
        fsync: bool = True,
        opener: Callable[..., BinaryIO] = open,
        mirror_dir: Path | None = None,
        ops: FsOps = DEFAULT_OPS,
        owner: str | None = None,
        token: str | None = None,
    ) -> None:
        """``owner``: the ``pid@host`` in the temp name, when another process (a ZIP worker)
        writes on this one's behalf: the temp file is then this process's to clean up.
        ``token``: the temp name's 8 hex digits (random unless given; a ZIP worker's are its
        stream's, so the parent can find what a worker that died left)."""
        self.dest = Path(dest)
        self._fsync = fsync
        self._ops = ops
        self._mirror_dir = mirror_dir
        stem = self.dest.name
        if len(stem.encode("utf-8", errors="surrogatepass")) > _MAX_TEMP_STEM:
            stem = stem[: _MAX_TEMP_STEM // 4]
        owner = owner or f"{os.getpid()}@{host_tag()}"
        name = f".{stem}.{owner}.{token or secrets.token_hex(4)}.part"
        self._temp = self.dest.with_name(name)
        self._done = False
        self._external = False  # written by another process (see written())
        self._synced = False  # (such a file) fsynced already
        self.size = 0
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
            self._file: BinaryIO | None = opener(self._temp, "xb")
        except OSError as exc:
            self._done = True
            raise disk_error(exc, self.dest, mirror_dir) from exc

    @classmethod
    def written(
        cls,
        temp: Path,
        dest: Path,
        *,
        fsync: bool = True,
        mirror_dir: Path | None = None,
        ops: FsOps = DEFAULT_OPS,
    ) -> AtomicWriter:
        """A writer for a temp file another process wrote and closed: it can be synced (the
        data reaches the disk before the rename), committed or aborted."""
        self = cls.__new__(cls)
        self.dest, self._temp = dest, temp
        self._fsync, self._ops, self._mirror_dir = fsync, ops, mirror_dir
        self._done, self._file, self._external, self._synced = False, None, True, False
        self.size = 0
        return self

    def _sync_path(self) -> None:
        """fsync a file written by another process (once)."""
        if self._synced:
            return
        try:
            fd = os.open(self._temp, os.O_RDONLY)
            try:
                self._ops.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self.abort()
            raise disk_error(exc, self.dest, self._mirror_dir) from exc
        self._synced = True

    def release(self) -> Path:
        """Close the temp file and hand it over (a worker process to its parent): it is no
        longer this writer's to commit or remove. Returns its path."""
        f, self._file = self._file, None
        self._done = True
        if f is not None:
            try:
                f.close()
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(self._temp)
                raise disk_error(exc, self.dest, self._mirror_dir) from exc
        return self._temp

    @property
    def temp_path(self) -> Path:
        return self._temp

    def write(self, data: bytes | memoryview) -> None:
        if self._file is None:
            raise ValueError(f"{self.dest}: write after commit/abort")
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise disk_error(exc, self.dest, self._mirror_dir) from exc
        self.size += len(data)

    def flush(self) -> None:
        """Push buffered bytes to the OS (e.g. before reading :attr:`temp_path`)."""
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self.abort()
                raise disk_error(exc, self.dest, self._mirror_dir) from exc

    def sync(self) -> None:
        """Make the written bytes durable now (fsync), ahead of a later :meth:`commit` whose own
        fsync then finds nothing left to write: a batch of files can be synced in parallel as
        they complete and renamed together."""
        f = self._file
        if self._external and self._fsync and not self._done:
            self._sync_path()
            return
        if f is None or not self._fsync:
            return
        try:
            f.flush()
            self._ops.fsync(f.fileno())
        except OSError as exc:
            self.abort()
            raise disk_error(exc, self.dest, self._mirror_dir) from exc

    def commit(self, dest: Path | None = None, *, sync_dir: bool | None = None) -> None:
        """fsync the data, rename it to ``dest`` (replacing it), fsync the folder.

        ``dest`` (same folder) may be given now when the final name was unknown at creation,
        e.g. a ZIP entry whose SOP Instance UID is read from its header.

        ``sync_dir=False`` skips the folder fsync so a batch of commits can share one
        :func:`fsync_dir` call.
        """
        f = self._file
        if f is None and (self._done or not self._external):
            raise ValueError(f"{self.dest}: commit after commit/abort")
        if dest is not None:
            self.dest = Path(dest)
        try:
            if f is not None:
                f.flush()
                if self._fsync:
                    self._ops.fsync(f.fileno())
                f.close()
                self._file = None
            elif self._fsync:
                self._sync_path()
            self._ops.replace(self._temp, self.dest)
        except OSError as exc:
            self.abort()
            raise disk_error(exc, self.dest, self._mirror_dir) from exc
        self._done = True
        if self._fsync if sync_dir is None else sync_dir:
            self._ops.fsync_dir(self.dest.parent)

    def abort(self) -> None:
        """Drop the temp file (idempotent; a no-op after commit)."""
        if self._done:
            return
        self._done = True
        f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass  # closing a file whose writes failed may fail again
        try:
            os.unlink(self._temp)
        except FileNotFoundError:
            pass
        except OSError:
            pass  # best effort: cleanup_temp_files removes it on the next run

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()  # no-op after commit; an uncommitted file is never published

    def __del__(self) -> None:
        if not getattr(self, "_done", True):
            self.abort()


def cleanup_temp_files(root: Path) -> int:
    """Remove temp files left under ``root`` by crashed runs; return how many were removed.

    Only our temp names are touched: those of a process of this host that is gone (and those
    of earlier versions, which named no host), never one of another host (its writer may be
    alive: see :func:`cleanup_taken_over`) nor of the current process (in flight).
    """
    removed = 0
    own, host = str(os.getpid()), host_tag()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            m = _TEMP_RE.match(name)
            if m is None or m.group(1) == own:
                continue
            if m.group(2) is not None and (m.group(2) != host or _alive(int(m.group(1)))):
                continue
            try:
                os.unlink(os.path.join(folder, name))
                removed += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise disk_error(exc, os.path.join(folder, name)) from exc
    return removed


def cleanup_taken_over(folder: Path) -> int:
    """Remove every temp file in one series folder but this process's own: the caller holds
    the series' lease, so whoever wrote them (on any host) lost it. Returns how many."""
    removed = 0
    own = f"{os.getpid()}@{host_tag()}"
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise disk_error(exc, folder) from exc
    for name in names:
        m = _TEMP_RE.match(name)
        if m is None or f"{m.group(1)}@{m.group(2)}" == own:
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise disk_error(exc, os.path.join(folder, name)) from exc
    return removed
