"""Fetching one series (ZIP) or one instance (getSingleImage), streamed to disk, committed atomically.

Every DICOM file is written to a temp name in its series folder; its header is read (pixels
skipped) to learn its SOP Instance UID and to check it belongs to the series asked for; only
then is it renamed to ``<SOPInstanceUID>.dcm`` and recorded in the store. ZIP entry names are
never used as paths.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import anyio
from anyio.abc import TaskGroup

from tcia_mirror.engine.committer import GroupCommitter
from tcia_mirror.engine.zipentries import HEAD, Fed, ZipEntry, ZipState, is_dicom_entry
from tcia_mirror.engine.zipproc import LocalZip, RemoteZip, ZipWorkers
from tcia_mirror.errors import TransferError, one_error
from tcia_mirror.fs.atomic import AtomicWriter, disk_error, fsync_dir
from tcia_mirror.fs.dicomio import ids_from_head, read_ids
from tcia_mirror.fs.layout import instance_filename, sanitize_component
from tcia_mirror.progress import Progress
from tcia_mirror.records import Problem, ProblemKind
from tcia_mirror.sources.base import FetchUnit, SeriesView, Source
from tcia_mirror.sources.nbia.formats import parse_md5_csv
from tcia_mirror.sources.nbia.zipstream import ZipLimits, ZipStreamReader, crc32
from tcia_mirror.store.base import Store

_PIPELINE = 8  # entries of one ZIP being finalised in worker threads at once
# ... handed to a thread in groups of at most this many: one task and one thread hop a group,
# not an entry (each cost the event loop's process about 0.3 ms a file)
_GROUP = 4
# a series' mean instance size from which its ZIP's byte work goes to a worker process
ZIP_WORKER_MIN_MEAN = 64 * 1024
# ... and from which each of its objects is fetched, written and hashed in a worker process
# (measured, loopback, 1 GB from the simulator's bucket: objects of 2 MiB 15-24 % faster at
# the same CPU, of 8 MiB 20-32 % faster for 10 % less CPU; of 0.5 MB 11 % faster for 25 %
# more CPU, and 3 % slower on the WAN-like link, where a worker's start is not amortised)
OBJECT_WORKER_MIN_MEAN = 1 << 20
SPILL = 1 << 20  # bytes of a single object gathered on the loop before a worker thread writes them


@dataclass(slots=True)
class SeriesWork:
    """One series' bookkeeping during a run (mutable, owned by the engine)."""

    uid: str
    collection: str | None
    rel_dir: str
    expected: frozenset[str]  # SOP UIDs from getSOPInstanceUIDs (may be empty)
    expected_count: int | None
    expected_bytes: int | None
    done: dict[str, tuple[str, int, str | None]] = field(default_factory=dict)
    attempts: int = 0  # ZIP fetches started in this run
    earlier_attempts: int = 0  # ZIP fetches started by earlier (perhaps killed) runs
    stalls: int = 0
    outstanding: int = 0
    archive_md5: dict[str, str] = field(default_factory=dict)  # SOP -> MD5 the archive stated
    md5_source: dict[str, str] = field(default_factory=dict)  # SOP -> where that MD5 came from
    zip_untrusted: bool = False  # a ZIP of this series had entries we refused (unsafe names)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # file path -> the key whose file it is: committed (see mark_done) or being committed by
    # this run (reserved under the Fetcher's claim lock). A lookup, not a walk of ``done``: a
    # worker thread checks names while the loop commits (and a walk was O(n) a file)
    names: dict[str, str] = field(default_factory=dict)

    def mark_done(self, key: str, rel: str, size: int, md5: str | None) -> None:
        """``key``'s file is in the mirror at ``rel`` (on the event loop's thread)."""
        self.done[key] = (rel, size, md5)
        self.names[rel] = key

    def forget(self, key: str) -> None:
        """``key``'s file is no longer in the mirror."""
        gone = self.done.pop(key, None)
        if gone is not None and self.names.get(gone[0]) == key:
            del self.names[gone[0]]

    def missing(self) -> list[str]:
        return sorted(self.expected - self.done.keys())

    def view(self) -> SeriesView:
        """A snapshot for the source's choice of units."""
        return SeriesView(
            uid=self.uid,
            expected=self.expected,
            done=frozenset(self.done),
            expected_count=self.expected_count,
            expected_bytes=self.expected_bytes,
            archive_tries=self.attempts + self.earlier_attempts,
            archive_untrusted=self.zip_untrusted,
        )

    def problem(
        self, kind: ProblemKind, expected: Any = None, found: Any = None, **extra: Any
    ) -> None:
        self.problems.append(Problem(self.uid, kind, expected, found, extra))


def _crc_failures(files: list[_Committed]) -> list[str]:
    """Worker thread: the SOP UIDs of ``files`` whose bytes on disk fail the CRC-32 their ZIP
    stated (an unreadable file fails too)."""
    bad = []
    for c in files:
        crc = 0
        try:
            with open(c.writer.temp_path, "rb") as f:
                while block := f.read(1 << 20):
                    crc = crc32(block, crc)
        except OSError:
            crc = -1
        if crc != c.crc_stated:
            bad.append(c.sop)
    return bad


def _worth_a_worker(work: SeriesWork) -> bool:
    """A ZIP worker pays off where bytes cost more than files: not for a series of tiny
    instances (measured: 3,000 files of 1 KB took 7.1 s through a worker, 5.8 s on the loop).
    A series whose size the plan does not know goes to a worker."""
    if not work.expected_bytes or not work.expected_count:
        return True
    return work.expected_bytes >= ZIP_WORKER_MIN_MEAN * work.expected_count


def _objects_worth_a_worker(work: SeriesWork) -> bool:
    """Objects pay for a worker process's round trips only when large (see
    ``OBJECT_WORKER_MIN_MEAN``); a series whose sizes the plan does not know stays here."""
    if not work.expected_bytes or not work.expected_count:
        return False
    return work.expected_bytes >= OBJECT_WORKER_MIN_MEAN * work.expected_count


@dataclass(frozen=True, slots=True)
class _Committed:
    sop: str
    rel_path: str
    size: int
    md5: str
    writer: AtomicWriter = field(repr=False, compare=False)
    pending: bool = False  # checked, kept as a temp file until the archive's MD5 list came
    stated: str | None = None  # where the archive's MD5 came from, when it is still to be stored
    # pending, its CRC-32 not computed (its MD5 is to be checked): the CRC the ZIP stated
    crc_stated: int | None = None


class _SingleFile:
    """A single object's temp file. The loop only gathers its chunks (:meth:`take`); it is
    opened, written and hashed in worker threads, ``SPILL`` bytes (or the whole of a small
    object) at a time, so the second core does the byte work."""

    __slots__ = ("_fetcher", "_dest", "writer", "digest", "head", "size", "_batch", "_batched")

    def __init__(self, fetcher: Fetcher, dest: Path) -> None:
        self._fetcher = fetcher
        self._dest = dest
        self.writer: AtomicWriter | None = None
        self.digest = hashlib.md5(usedforsecurity=False)
        self.head = bytearray()
        self.size = 0  # bytes received
        self._batch: list[bytes] = []
        self._batched = 0

    async def take(self, chunk: bytes) -> None:
        """On the loop: gather ``chunk``; every ``SPILL`` bytes a worker thread writes them."""
        self.size += len(chunk)
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= SPILL:
            spill, self._batch, self._batched = self._batch, [], 0
            await anyio.to_thread.run_sync(self.write, spill)

    def write_rest(self) -> AtomicWriter:
        """Worker thread: write what is still gathered (opening the file if nothing was)."""
        rest, self._batch, self._batched = self._batch, [], 0
        return self.write(rest)

    def write(self, chunks: list[bytes]) -> AtomicWriter:
        """Worker thread: append ``chunks`` (opening the temp file on the first call)."""
        if self.writer is None:
            self.writer = self._fetcher._writer(self._dest)
        for chunk in chunks:
            self.writer.write(chunk)
            self.digest.update(chunk)
            if len(self.head) < HEAD:
                self.head += chunk[: HEAD - len(self.head)]
        return self.writer

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class Fetcher:
    def __init__(
        self,
        source: Source,
        store: Store,
        root: Path,
        progress: Progress,
        *,
        md5: bool = True,
        fsync: bool = True,
        limits: ZipLimits | None = None,
        after_rename: Callable[[Path], None] | None = None,
        opener: Callable[..., BinaryIO] = open,
        connections: int = 8,
        zip_workers: ZipWorkers | None = None,
    ) -> None:
        self.source = source
        # bodies streaming at once: a worker holds a slot while its bytes arrive, not while
        # its file is checked, synced and committed (the engine runs more workers than slots,
        # so a connection never waits for a disk)
        self._net = anyio.CapacityLimiter(max(1, connections))
        self._opener = opener  # how temp files are opened (tests inject ENOSPC, EROFS)
        # ZIP byte work in worker processes; on the loop when None, or when a test injects
        # faults into file writes (they happen in this process only)
        self._zip_workers = zip_workers if opener is open else None
        self.store = store
        self.root = root
        self.progress = progress
        self.md5 = md5
        self.fsync = fsync
        self.limits = limits or ZipLimits()
        self.files_committed = 0
        self.bytes_received = 0  # DICOM bytes, those of discarded transfers taken back
        self._claim_lock = threading.Lock()
        # collection -> the LICENSE text this run wrote or found in its folder: every ZIP of a
        # collection carries it, and looking each time cost a thread hop a series
        self._licenses: dict[str | None, bytes] = {}
        # a test seam: called (in a worker thread) with each file just renamed into place,
        # before the store records it, i.e. in the window a kill -9 can hit
        self._after_rename = after_rename
        # every file enters the mirror through here: renamed and recorded in batches
        self._committer: GroupCommitter[tuple[SeriesWork, _Committed]] = GroupCommitter(
            self._publish_batch, self._record_batch, self._drop_batch, self._store_stated
        )

    # -- shared ----------------------------------------------------------------------------
    def _bytes(self, n: int) -> None:
        self.bytes_received += n
        self.progress.on_bytes(n)

    def _series_dir(self, work: SeriesWork) -> Path:
        d = self.root / work.rel_dir
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise disk_error(exc, d, self.root) from exc
        return d

    def _writer(self, dest: Path) -> AtomicWriter:
        return AtomicWriter(dest, fsync=self.fsync, mirror_dir=self.root, opener=self._opener)

    def _check(
        self,
        writer: AtomicWriter,
        work: SeriesWork,
        md5: str,
        size: int,
        want_sop: str | None,
        head: bytes = b"",
        claimed: set[str] | None = None,
        key: str | None = None,
    ) -> _Committed | None:
        """Worker thread: every check the file can pass before its archive MD5 is known
        (header, series, instance, the MD5 where it is known). A refused file is discarded.

        ``key``: the store key of an object whose SOP UID was not known before (a bucket
        object); it is recorded under that key, named by its header's SOP UID."""
        writer.flush()
        ids = ids_from_head(head) if head else None
        if ids is None:
            ids = read_ids(writer.temp_path)
        if ids is None or ids.sop_uid is None:
            writer.abort()
            work.problem("not_dicom", expected="DICOM", found=f"{size} bytes that are not DICOM")
            return None
        if ids.series_uid != work.uid:
            writer.abort()
            work.problem("wrong_series", expected=work.uid, found=ids.series_uid, sop=ids.sop_uid)
            return None
        if want_sop is not None and ids.sop_uid != want_sop:
            writer.abort()
            work.problem("wrong_instance", expected=want_sop, found=ids.sop_uid)
            return None
        record = key or ids.sop_uid  # the store's key of this file
        listed = work.archive_md5.get(record)
        if listed is not None and listed != md5:  # the archive stated another MD5
            writer.abort()
            work.problem(
                "md5_mismatch", expected=listed, found=md5, sop=ids.sop_uid,
                checked_against=work.md5_source.get(record, "archive"),
            )  # fmt: skip
            return None
        if work.expected and record not in work.expected:
            writer.abort()
            work.problem("unexpected_instance", expected=None, found=record)
            return None
        name = instance_filename(ids.sop_uid)
        rel = f"{work.rel_dir}/{name}"
        with self._claim_lock:
            taken = record in work.done or (claimed is not None and record in claimed)
            if not taken and claimed is not None:
                claimed.add(record)
            # an object named by its header must not take the name of another object's file,
            # committed or being committed at the same time (names are reserved under the lock)
            twin = key is not None and work.names.get(rel, record) != record
            if key is not None and not twin:
                work.names[rel] = record
        if twin:
            writer.abort()
            work.problem("duplicate_sop", expected=record, found=ids.sop_uid)
            return None
        if taken:
            writer.abort()  # already committed (or arriving twice): the file on disk stays
            return None
        return _Committed(record, rel, size, md5, writer)

    def _publish_batch(self, items: list[tuple[SeriesWork, _Committed]]) -> None:
        """Worker thread: rename checked, fsynced files into place, then fsync each folder
        once (durable before they are recorded). On a failure nothing more is renamed; the
        files renamed already are left for the next run to adopt."""
        folders: dict[Path, None] = {}
        try:
            for _w, c in items:
                c.writer.commit(self.root / c.rel_path, sync_dir=False)
                folders[c.writer.dest.parent] = None
        except BaseException:
            for _w, c in items:
                c.writer.abort()  # a no-op for those renamed
            raise
        if self.fsync:
            for folder in folders:
                fsync_dir(folder)
        if self._after_rename is not None:
            for _w, c in items:
                self._after_rename(c.writer.dest)

    async def _store_stated(self, items: list[tuple[SeriesWork, _Committed]]) -> None:
        """Before a batch is renamed: the MD5s the archive stated for its files, so a file
        renamed before a kill is adopted on resume only if it matches them."""
        by_key: dict[tuple[str, str], dict[str, str]] = {}
        for w, c in items:
            if c.stated is not None:
                by_key.setdefault((w.uid, c.stated), {})[c.sop] = w.archive_md5[c.sop]
        for (uid, where), md5s in by_key.items():
            await self.store.set_expected_md5(uid, md5s, where)

    async def _record_batch(self, items: list[tuple[SeriesWork, _Committed]]) -> None:
        """Record a published batch: one store transaction per series."""
        by_series: dict[str, tuple[SeriesWork, list[_Committed]]] = {}
        for w, c in items:
            by_series.setdefault(w.uid, (w, []))[1].append(c)
        for w, cs in by_series.values():
            await self.store.commit_instances(
                w.uid, [(c.sop, c.rel_path, c.size, c.md5) for c in cs]
            )
            for c in cs:
                w.mark_done(c.sop, c.rel_path, c.size, c.md5)
            self.files_committed += len(cs)

    @staticmethod
    def _drop_batch(items: list[tuple[SeriesWork, _Committed]]) -> None:
        for _w, c in items:
            c.writer.abort()

    def _finalize_entry(
        self, entry: ZipEntry, work: SeriesWork, claimed: set[str], defer: bool
    ) -> _Committed | None:
        """Worker thread: a small entry is written in one go here, a large one was streamed.

        ``defer``: the archive's MD5 of this ZIP's files comes at its end; a file whose MD5 is
        not known yet is checked and kept as a temp file on disk, renamed once the list came.
        """
        writer = entry.writer
        if writer is None:
            writer = entry.writer = self._writer(entry.temp_dest)
            try:
                entry.flush_chunks()
            except BaseException:
                writer.abort()
                raise
        args = (writer, work, entry.digest.hexdigest(), entry.size, None, bytes(entry.head))
        c = self._check(*args, claimed)
        if c is None:
            return None
        writer.sync()  # durable now, in parallel with the stream: the batch rename is quick
        if defer and c.sop not in work.archive_md5:
            return replace(c, pending=True, crc_stated=entry.crc_stated)
        return c

    def _write_license(self, work: SeriesWork, text: bytes) -> None:
        folder = self.root / sanitize_component(work.collection or "unknown-collection")
        dest = folder / "LICENSE"
        try:
            if dest.read_bytes() == text:
                return
        except OSError:
            pass
        with self._writer(dest) as w:
            w.write(text)
            w.commit()

    # -- ZIP -------------------------------------------------------------------------------
    async def fetch(self, work: SeriesWork, unit: FetchUnit) -> None:
        """Fetch one unit of the series: an archive (ZIP) or one object."""
        if unit.kind == "archive":
            await self.fetch_zip(work, unit)
        else:
            assert unit.key is not None
            await self.fetch_single(work, unit)

    async def fetch_zip(self, work: SeriesWork, unit: FetchUnit) -> int:
        """Fetch the series ZIP; commit every complete entry. Returns files newly committed.

        Entries are finalised (header check, rename, record) in worker threads while the
        stream goes on, at most ``_PIPELINE`` at once. Raises on a broken stream, after
        committing every entry that was complete, so the engine retries.
        """
        series_dir = self._series_dir(work)
        # the archive states this ZIP's MD5s in its last entry: files whose MD5 is not known
        # yet wait on disk as temp files and count only once the list confirmed them. Their
        # CRC-32 is not computed: the MD5 checks them (or, one the list leaves out, the CRC
        # the ZIP stated, read back from disk)
        defer = self.source.states_md5(unit, md5=self.md5) is not None
        zs: LocalZip | RemoteZip
        if self._zip_workers is not None and _worth_a_worker(work):
            zs = await self._zip_workers.stream(series_dir, md5_stated=defer)
        else:
            reader = ZipStreamReader(self.limits, skip_crc=is_dicom_entry if defer else None)
            zs = LocalZip(ZipState(reader, series_dir, self._writer))
        by_name: dict[str, _Committed] = {}
        archive_md5: dict[str, str] | None = None
        claimed: set[str] = set()
        before = len(work.done)
        slots = anyio.Semaphore(_PIPELINE)
        stream_error: Exception | None = None
        pending: dict[str, _Committed] = {}
        completed = False  # the task group ended without being cancelled
        counted = 0  # of zs.received

        def finalize_group(group: list[ZipEntry]) -> list[_Committed | BaseException | None]:
            """Worker thread: each entry of the group, in order; one entry's failure does
            not stop the others (each is finished as if alone)."""
            done: list[_Committed | BaseException | None] = []
            for e in group:
                try:
                    done.append(self._finalize_entry(e, work, claimed, defer))
                except BaseException as exc:  # noqa: BLE001 - raised on the loop, below
                    done.append(exc)
            return done

        async def finish(group: list[ZipEntry]) -> None:
            results: list[_Committed | BaseException | None] = []
            try:
                # shielded: a cancelled run still records what it renamed into place
                with anyio.CancelScope(shield=True):
                    results = await anyio.to_thread.run_sync(finalize_group, group)
                    ready: list[tuple[ZipEntry, _Committed]] = []
                    for e, c in zip(group, results, strict=True):
                        if c is None:
                            self._bytes(-e.size)  # rejected: take its bytes back
                        elif isinstance(c, _Committed):
                            if c.pending:
                                pending[e.name] = c
                            else:
                                ready.append((e, c))
                    if ready:
                        await self._committer.commit([(work, c) for _e, c in ready])
                        for e, c in ready:
                            by_name[e.name] = c
            finally:
                for i, e in enumerate(group):
                    c = results[i] if i < len(results) else None
                    if isinstance(c, _Committed) and c.pending:
                        e.chunks = []  # its temp file now belongs to the pending record
                    else:
                        e.discard()
                for _e in group:
                    slots.release()
            failed = next((c for c in results if isinstance(c, BaseException)), None)
            if failed is not None:
                raise failed

        async def take(fed: Fed, tg: TaskGroup) -> None:
            """What a chunk (or the stream's end) completed: bytes, entries, the list."""
            nonlocal counted, archive_md5
            if zs.received > counted:
                self._bytes(zs.received - counted)
                counted = zs.received
            for bad, size in fed.crc_bad:
                self._bytes(-size)
                work.problem("crc_mismatch", found=bad)
            if fed.license is not None and self._licenses.get(work.collection) != fed.license:
                await anyio.to_thread.run_sync(self._write_license, work, fed.license)
                self._licenses[work.collection] = fed.license
            if fed.md5_list is not None:
                archive_md5 = parse_md5_csv(fed.md5_list)
            group: list[ZipEntry] = []
            while zs.complete:
                try:
                    slots.acquire_nowait()  # no checkpoint (a trip round the loop) an entry
                except anyio.WouldBlock:
                    if group:  # finished meanwhile
                        tg.start_soon(finish, group)
                        group = []
                    await slots.acquire()
                group.append(zs.complete.pop(0))
                if len(group) == _GROUP:
                    tg.start_soon(finish, group)
                    group = []
            if group:
                tg.start_soon(finish, group)

        try:
            async with one_error(), anyio.create_task_group() as tg:
                # a ZIP worker makes the request itself when the source lets it: then what
                # comes is what the worker completed, not bytes for the loop to pass on
                via = {"transport": zs} if isinstance(zs, RemoteZip) else {}
                try:
                    async with self._net, self.source.open(unit, md5=self.md5, **via) as body:
                        async for item in body:
                            await take(item if isinstance(item, Fed) else await zs.feed(item), tg)
                        await take(await zs.close(), tg)
                except Exception as exc:  # let the finishers commit what was complete
                    stream_error = exc
            completed = True
        finally:
            # the entry the stream broke inside, and complete ones never handed on (the bytes
            # of a chunk whose feed failed were never counted)
            with anyio.CancelScope(shield=True):
                dropped = await zs.discard()
            self._bytes(zs.received - counted - dropped)
            if stream_error is not None or not completed:
                for c in pending.values():  # unconfirmed: never counted, never left behind
                    c.writer.abort()
                    self._bytes(-c.size)
                pending.clear()
        if stream_error is not None:
            raise stream_error
        if pending:
            await self._confirm(work, pending, archive_md5 or {}, by_name)
        if zs.rejected:
            work.zip_untrusted = True
            work.notes.append(f"rejected {len(zs.rejected)} ZIP entr(ies) with unsafe names")
            work.problem("unsafe_entry_names", found=zs.rejected[:5])
        if archive_md5 is not None:
            await self._check_md5(work, by_name, archive_md5)
        return len(work.done) - before

    async def _confirm(
        self,
        work: SeriesWork,
        pending: dict[str, _Committed],
        archive_md5: dict[str, str],
        by_name: dict[str, _Committed],
    ) -> None:
        """The ZIP's MD5 list came (or the ZIP ended without one): check every waiting file
        against it, then rename the good ones and record them in one batch.

        The archive's MD5s are stored first, so a file renamed before a kill is adopted on
        resume only if it matches them."""
        stated = {c.sop: archive_md5[n] for n, c in pending.items() if n in archive_md5}
        if stated:
            try:
                await self.store.set_expected_md5(work.uid, stated, "md5hashes.csv")
            except BaseException:  # cancelled or failed: no waiting file is left behind
                for c in pending.values():
                    c.writer.abort()
                    self._bytes(-c.size)
                raise
            for sop, md5 in stated.items():
                work.archive_md5[sop] = md5
                work.md5_source[sop] = "md5hashes.csv"
        # a file the list leaves out, whose CRC-32 was spared for its MD5: its CRC, from disk
        unlisted = [c for c in pending.values() if c.sop not in stated and c.crc_stated is not None]
        crc_bad = (
            set(await anyio.to_thread.run_sync(_crc_failures, unlisted)) if unlisted else set()
        )
        good: list[tuple[str, _Committed]] = []
        for n, c in pending.items():
            want = stated.get(c.sop)
            if c.sop in crc_bad:
                c.writer.abort()
                self._bytes(-c.size)
                work.problem("crc_mismatch", found=n)
            elif want is not None and want != c.md5:
                c.writer.abort()
                self._bytes(-c.size)
                work.problem(
                    "md5_mismatch", expected=want, found=c.md5, sop=c.sop,
                    checked_against="md5hashes.csv",
                )  # fmt: skip
            else:
                good.append((n, c))
        await self._committer.commit([(work, c) for _n, c in good])
        for n, c in good:
            by_name[n] = c

    async def _check_md5(
        self, work: SeriesWork, by_name: dict[str, _Committed], archive_md5: dict[str, str]
    ) -> None:
        for n, c in by_name.items():
            if n in archive_md5:
                work.archive_md5[c.sop] = archive_md5[n]
        bad = [(n, c) for n, c in by_name.items() if n in archive_md5 and archive_md5[n] != c.md5]
        if bad:  # the store forgets them first: it must never claim a file that is gone
            # and it keeps the archive's MD5, so a file left by a kill before the unlink below
            # is not adopted on resume
            await self.store.uncommit_instances(
                work.uid, [c.sop for _n, c in bad], md5={c.sop: archive_md5[n] for n, c in bad}
            )
        for n, c in bad:
            work.problem("md5_mismatch", expected=archive_md5[n], found=c.md5, sop=c.sop)
            (self.root / c.rel_path).unlink(missing_ok=True)
            work.forget(c.sop)
            self._bytes(-c.size)

    # -- single instances --------------------------------------------------------------------
    async def fetch_single(self, work: SeriesWork, unit: FetchUnit) -> bool:
        """Fetch one object (an instance). True when it was committed.

        ``unit.sop`` None: the SOP UID is learnt from the file's header (a bucket object,
        recorded under ``unit.key``)."""
        sop = unit.key
        assert sop is not None
        want = unit.sop
        stated: list[tuple[str, str] | None] = []

        async def ask_md5() -> None:  # in flight beside the body: one round trip, not two
            stated.append(await self.source.object_md5(unit))

        temp = (
            instance_filename(want)
            if want
            else f"object-{hashlib.sha1(sop.encode()).hexdigest()[:16]}.dcm"
        )
        if self._zip_workers is not None and _objects_worth_a_worker(work):
            return await self._fetch_single_remote(work, unit, temp)
        out = _SingleFile(self, self.root / work.rel_dir / temp)
        c: _Committed | None = None
        handed = False
        try:
            async with one_error(), anyio.create_task_group() as tg:
                if self.md5 and sop not in work.archive_md5:
                    tg.start_soon(ask_md5)
                async with self._net, self.source.open(unit, md5=self.md5) as body:
                    async for chunk in body:
                        self._bytes(len(chunk))
                        await out.take(chunk)
            where = None
            if stated and stated[0] is not None:  # stored with the batch, before its renames
                md5, where = stated[0]
                work.archive_md5[sop], work.md5_source[sop] = md5, where

            def finish() -> _Committed | None:
                writer = out.write_rest()
                c = self._check(
                    writer, work, out.digest.hexdigest(), out.size, want, bytes(out.head),
                    None, None if want else sop,
                )  # fmt: skip
                if c is not None:
                    writer.sync()
                return c

            c = await anyio.to_thread.run_sync(finish)
            if c is None and where is not None:  # refused: the archive's MD5 binds later runs
                await self.store.set_expected_md5(work.uid, {sop: work.archive_md5[sop]}, where)
            if c is not None:
                handed = True  # the committer owns the file now: it publishes or drops it
                await self._committer.commit([(work, replace(c, stated=where))])
        except BaseException:
            if not handed:
                out.abort()
            self._bytes(-out.size)
            raise
        if c is None:
            self._bytes(-out.size)
            return False
        return True

    async def _hand_single(
        self, work: SeriesWork, sop: str, c: _Committed | None, where: str | None
    ) -> None:
        """A checked object to the committer (it publishes or drops it from here on); a
        refused one leaves the archive's MD5 binding later runs."""
        if c is None:
            if where is not None:
                await self.store.set_expected_md5(work.uid, {sop: work.archive_md5[sop]}, where)
            return
        await self._committer.commit([(work, replace(c, stated=where) if where else c)])

    async def _fetch_single_remote(self, work: SeriesWork, unit: FetchUnit, temp: str) -> bool:
        """:meth:`fetch_single` with a ZIP worker making the request, writing and hashing the
        body (its bytes never pass through this process, as a ZIP's do not); a cut body is
        continued by the source through the same worker, which kept what came. Here: the
        header and MD5 checks, the fsync and the commit, as for any file."""
        sop, want = unit.key, unit.sop
        assert sop is not None and self._zip_workers is not None
        stated: list[tuple[str, str] | None] = []

        async def ask_md5() -> None:  # in flight beside the body: one round trip, not two
            stated.append(await self.source.object_md5(unit))

        rz = await self._zip_workers.stream(self.root / work.rel_dir, object_name=temp)
        counted = 0  # of rz.received
        entry: ZipEntry | None = None
        c: _Committed | None = None
        try:
            async with one_error(), anyio.create_task_group() as tg:
                if self.md5 and sop not in work.archive_md5:
                    tg.start_soon(ask_md5)
                async with self._net, self.source.open(unit, md5=self.md5, transport=rz) as body:
                    async for _fed in body:
                        if rz.received != counted:
                            self._bytes(rz.received - counted)
                            counted = rz.received
            if rz.received != counted:
                self._bytes(rz.received - counted)
                counted = rz.received
            if not rz.complete:
                raise TransferError(f"{sop}: the ZIP worker handed over no file")
            entry = rz.complete.pop()
            where = None
            if stated and stated[0] is not None:  # stored with the batch, before its renames
                md5, where = stated[0]
                work.archive_md5[sop], work.md5_source[sop] = md5, where
            got = entry
            assert got.writer is not None

            def finish() -> _Committed | None:
                assert got.writer is not None
                c = self._check(
                    got.writer, work, got.digest.hexdigest(), got.size, want, bytes(got.head),
                    None, None if want else sop,
                )  # fmt: skip
                if c is not None:
                    got.writer.sync()
                return c

            c = await anyio.to_thread.run_sync(finish)
            entry = None  # checked: refused (and removed) or the committer's from here on
            await self._hand_single(work, sop, c, where)
        except BaseException:
            with anyio.CancelScope(shield=True):
                if entry is not None:
                    entry.discard()
                await rz.discard()
            self._bytes(-counted)
            raise
        await rz.discard()  # the stream ended: this only closes its reply queue
        if c is None:
            self._bytes(-counted)
            return False
        return True
