"""Adopting files a killed run renamed into place but never recorded.

A file under its final name is complete (fsynced, then renamed: see :mod:`._atomic`), but a run
killed between the rename and the store's checkpoint leaves one the store does not know. The next
run that fetches adopts it instead of fetching it again, when

* its header names the series and a SOP UID the series expects and has not recorded (when the
  series has no known SOP list, any SOP UID of the series will do);
* its file name is that SOP UID's (:func:`~._layout.instance_filename`);
* its size, and its MD5 where the store or the archive knows one, are the known ones.

A series keyed by object key (bucket objects: the SOP UID is learnt from the header) names no
file by its keys: every unrecorded file of its folder is examined, and one is adopted as the
missing object whose listed size it has and whose MD5 matches the listing's ETag where that is
a plain MD5 (without one, only when its size singles out one object).

A file named like a missing instance that fails a check is left alone and reported: it is not
ours to delete, and the refetch of that instance replaces it atomically. Other files are not
looked at (a layout may put several series in one folder: their files are not this series').

:func:`unrecorded_files` costs one directory listing; :func:`examine` reads headers and whole
files, so it runs in a worker thread.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tcia_mirror.errors import DataError
from tcia_mirror.fs.dicomio import DicomIds, ids_from_head, read_ids
from tcia_mirror.fs.layout import instance_filename
from tcia_mirror.sources.nbia.manifest import is_uid
from tcia_mirror.store.base import InstanceState

__all__ = ["Adoption", "examine", "unrecorded_files"]

_HEAD = 16 * 1024  # bytes read for the fast header check (as the fetcher does)
_CHUNK = 1 << 20


@dataclass(slots=True)
class Adoption:
    """What :func:`examine` decided about the files of one series folder."""

    adopted: list[tuple[str, str, int, str]] = field(default_factory=list)  # sop, rel, size, md5
    refused: list[tuple[str, str]] = field(default_factory=list)  # file name, why


class _Foreign(Exception):
    """The file belongs to another series (possible in a folder several series share)."""


def unrecorded_files(
    root: Path, rel_dir: str, recorded: Iterable[str], missing: Iterable[str] | None
) -> list[str]:
    """Names of files in the series folder that may be instances the store has not recorded.

    ``missing``: SOP UIDs of the series not recorded as done; only their file names qualify.
    None when the series has no known SOP list: then every ``*.dcm`` file whose path is not in
    ``recorded`` (relative paths of done instances). One ``os.scandir`` of the folder; the
    other arguments are only read when it holds a ``*.dcm`` file. Temp files (dot names) and
    symlinks are skipped.
    """
    try:
        with os.scandir(root / rel_dir) as it:
            names = [
                e.name
                for e in it
                if e.name.endswith(".dcm")
                and not e.name.startswith(".")
                and e.is_file(follow_symlinks=False)
            ]
    except OSError:  # no folder yet (nothing fetched); other errors surface when fetching
        return []
    if not names:
        return []
    if missing is not None:
        keys = list(missing)
        if all(is_uid(k) for k in keys):  # every missing key is a SOP UID: it names its file
            wanted = {_filename(sop) for sop in keys}
            return sorted(n for n in names if n in wanted)
        # keys that name no file (bucket objects, named by their header): any unrecorded file
    done = set(recorded)
    return sorted(n for n in names if f"{rel_dir}/{n}" not in done)


def examine(
    root: Path,
    rel_dir: str,
    series_uid: str,
    names: Iterable[str],
    instances: Iterable[InstanceState],
    archive_md5: Mapping[str, str] | None = None,
) -> Adoption:
    """Check each named file of the series folder: which to adopt, which to leave (and why).

    ``instances`` is the store's instance list of the series (done ones included, so an
    instance recorded at another path is never adopted twice); ``archive_md5``: MD5s the
    archive listed. Blocking: run it in a worker thread.
    """
    known = {i.sop_uid: i for i in instances}
    done = {sop for sop, i in known.items() if i.done}
    out = Adoption()
    for name in names:
        path = root / rel_dir / name
        try:
            why = _refusal(path, rel_dir, series_uid, known, done, archive_md5 or {}, out)
        except _Foreign as exc:
            if not known:
                continue  # no SOP list: the name did not single it out, nothing to report
            why = str(exc)
        except OSError as exc:
            why = f"unreadable ({exc.strerror or type(exc).__name__})"
        if why is not None:
            out.refused.append((name, why))
    return out


def _refusal(
    path: Path,
    rel_dir: str,
    series_uid: str,
    known: Mapping[str, InstanceState],
    done: Collection[str],
    archive_md5: Mapping[str, str],
    out: Adoption,
) -> str | None:
    """Why ``path`` is not adopted, or None after adding it to ``out.adopted``."""
    name = path.name
    ids = _ids(path)
    if ids is None or ids.sop_uid is None:
        return "not a DICOM file"
    sop = ids.sop_uid
    if ids.series_uid != series_uid:
        raise _Foreign(f"its header names series {ids.series_uid}")
    if _filename(sop) != name:
        return f"its header names SOP {sop}"
    if known and sop not in known:
        if all(is_uid(k) for k in known):  # keyed by SOP UID: not one of the series'
            return "its SOP UID is not in the series' instance list"
        return _adopt_object(path, rel_dir, known, done, archive_md5, out)
    if sop in done:
        return "its SOP UID is recorded at another path"
    inst = known.get(sop)
    size = path.stat().st_size
    if inst is not None and inst.size is not None and size != inst.size:
        return f"{size} bytes where {inst.size} are known"
    md5, hashed = _md5(path)
    if hashed != size:
        return "it changed while being read"
    want = archive_md5.get(sop) or (inst.md5 if inst is not None else None)
    if want is not None and md5 != want:
        return f"MD5 {md5} where {want} is known"
    out.adopted.append((sop, f"{rel_dir}/{name}", size, md5))
    return None


def _adopt_object(
    path: Path,
    rel_dir: str,
    known: Mapping[str, InstanceState],
    done: Collection[str],
    archive_md5: Mapping[str, str],
    out: Adoption,
) -> str | None:
    """A file of a series keyed by object key (its SOP UID is known only from its header):
    adopted as the one missing object whose listed size it has and whose MD5 it has where the
    listing stated one (a plain-MD5 ETag). Without a stated MD5, only when its size singles out
    one object; else it is left, and the refetch replaces it."""
    size = path.stat().st_size
    taken = {a[0] for a in out.adopted}
    fits = [
        k for k, i in known.items() if k not in done and k not in taken and i.expected_size == size
    ]
    if not fits:
        return f"no missing object of the series is {size} bytes"
    md5, hashed = _md5(path)
    if hashed != size:
        return "it changed while being read"
    stated = {k: archive_md5.get(k) or known[k].expected_md5 for k in fits}
    same = [k for k in fits if stated[k] == md5]
    if len(same) == 1:
        key = same[0]
    elif not same and len(fits) == 1 and not stated[fits[0]]:
        key = fits[0]
    elif same:
        return f"its MD5 {md5} is stated for {len(same)} objects"
    else:
        return f"no missing object of its size has its MD5 ({md5}), or its size is not unique"
    out.adopted.append((key, f"{rel_dir}/{path.name}", size, md5))
    return None


def _filename(sop: str) -> str:
    """The file name of an instance; "" for a UID that cannot name a file (matches none)."""
    try:
        return instance_filename(sop)
    except DataError:
        return ""


def _ids(path: Path) -> DicomIds | None:
    with path.open("rb") as fh:
        head = fh.read(_HEAD)
    return ids_from_head(head) or read_ids(path)


def _md5(path: Path) -> tuple[str, int]:
    h = hashlib.md5(usedforsecurity=False)
    n = 0
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n
