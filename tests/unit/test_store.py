from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tcia_mirror.errors import DiskError, MirrorLockedError, StateError
from tcia_mirror.store.base import STATUSES, SeriesPlan
from tcia_mirror.store.sqlite import StateStore
from tcia_mirror.testing.synthetic import build_synthetic_store


def plan(
    uid: str, n: int | None = 3, *, sops: bool = True, nbytes: int | None = None
) -> SeriesPlan:
    return SeriesPlan(
        uid=uid,
        collection="COLL",
        patient_id="P1",
        study_uid="1.1",
        expected_count=n,
        expected_bytes=nbytes if nbytes is not None else (None if n is None else n * 100),
        fields={"Collection": "COLL", "SeriesNumber": 3, "Modality": "CT"},
        sop_uids=tuple(f"{uid}.{i}" for i in range(n or 0)) if sops else (),
    )


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    s = StateStore.open(tmp_path / "mirror")
    yield s  # type: ignore[misc]
    s.close()


def test_open_missing_without_create(tmp_path: Path) -> None:
    with pytest.raises(StateError) as info:
        StateStore.open(tmp_path, create=False)
    message = str(info.value)
    assert f"{tmp_path} is not a tcia-mirror mirror (no .tcia-mirror/state.sqlite)" in message
    assert f"tcia-mirror download ... --out {tmp_path}" in message


def test_file_layout_and_pragmas(store: StateStore) -> None:
    assert store.path == store.mirror_dir / ".tcia-mirror" / "state.sqlite"
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        conn.close()


def test_a_schema_1_mirror_is_migrated_and_keeps_its_progress(tmp_path: Path) -> None:
    """A mirror written by the previous release (schema 1) opens, keeps what was done, and
    records the source's MD5s from then on."""
    from tcia_mirror.store import sqlite as backend

    v1_schema = backend._SCHEMA.replace(",\n    source TEXT NOT NULL DEFAULT 'nbia'", "").replace(
        "    expected_size INTEGER,\n    expected_md5 TEXT,\n    md5_source TEXT,\n", ""
    )
    assert "expected_md5" not in v1_schema and "source TEXT" not in v1_schema
    path = tmp_path / ".tcia-mirror" / "state.sqlite"
    path.parent.mkdir()
    conn = sqlite3.connect(path)
    conn.executescript(
        v1_schema + f"PRAGMA application_id={backend._APPLICATION_ID}; PRAGMA user_version=1;"
    )
    conn.execute(
        "INSERT INTO series(id, uid, expected_count, status) VALUES (1, '1.1', 2, 'partial')"
    )
    conn.execute(
        "INSERT INTO instance(series_id, sop_uid, done, rel_path, size, md5) VALUES (1, 'a', 1, 'd/a.dcm', 5, 'x')"
    )
    conn.execute("INSERT INTO instance(series_id, sop_uid) VALUES (1, 'b')")
    conn.commit()
    conn.close()
    with StateStore.open(tmp_path, create=False) as store:
        (a, b) = sorted(store.instances("1.1"), key=lambda i: i.sop_uid)
        assert a.done and a.rel_path == "d/a.dcm" and a.md5 == "x" and not b.done
        assert store.get_series("1.1").source == "nbia"  # type: ignore[union-attr]
        store.set_expected_md5("1.1", {"b": "AB" * 16}, "md5hashes.csv")
        b2 = {i.sop_uid: i for i in store.instances("1.1")}["b"]
        assert (b2.expected_md5, b2.md5_source) == ("ab" * 16, "md5hashes.csv")
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 2
    check.close()


def test_meta(store: StateStore) -> None:
    assert store.get_meta("layout") is None
    store.set_meta("layout", "default")
    store.set_meta("layout", "flat")
    assert store.get_meta("layout") == "flat"


def test_plan_commit_summary(store: StateStore) -> None:
    store.record_plan([plan("1.2.1"), plan("1.2.2", 2), plan("1.2.3", None, sops=False)])
    assert [s.uid for s in store.series()] == ["1.2.1", "1.2.2", "1.2.3"]
    first = store.get_series("1.2.1")
    assert first is not None
    assert (first.status, first.instance_count, first.done_count) == ("pending", 3, 0)
    assert first.fields == {"Collection": "COLL", "SeriesNumber": 3, "Modality": "CT"}
    assert store.get_series("nope") is None

    store.commit_instances("1.2.1", [("1.2.1.0", "C/P/1.2.1/1.2.1.0.dcm", 120, "ab" * 16)])
    first = store.get_series("1.2.1")
    assert first is not None
    assert (first.status, first.done_count, first.done_bytes) == ("partial", 1, 120)
    done = store.done_instances("1.2.1")
    assert list(done) == ["1.2.1.0"] and done["1.2.1.0"].md5 == "ab" * 16
    assert [i.done for i in store.instances("1.2.1")] == [True, False, False]

    store.commit_instances("1.2.2", [("1.2.2.0", "a", 10, None), ("1.2.2.1", "b", 20, None)])
    store.set_series_status("1.2.2", "complete", rel_dir="C/P/1.1/1.2.2")
    store.set_series_status("1.2.3", "failed", error="404 from getImage", attempt=True)

    assert store.summary() == {
        "series": {"total": 3, "complete": 1, "failed": 1, "pending": 1},
        "instances": {"total": 5, "complete": 3, "archive_md5": 0, "local_md5": 3},
        "bytes": {"total": 300 + 200, "complete": 150},
    }
    assert store.remaining() == [("1.2.1", 2), ("1.2.3", 0)]
    failed = store.series({"failed"})
    assert [(s.uid, s.attempts, s.error) for s in failed] == [("1.2.3", 1, "404 from getImage")]
    assert store.get_series("1.2.2").rel_dir == "C/P/1.1/1.2.2"  # type: ignore[union-attr]
    assert store.series(()) == []


def test_commit_unknown_sop_is_inserted_done(store: StateStore) -> None:
    store.record_plan([plan("1.5", 2, sops=False)])
    store.commit_instances("1.5", [("1.5.9", "x.dcm", 5, None)])
    s = store.get_series("1.5")
    assert s is not None and (s.instance_count, s.done_count) == (1, 1)
    assert store.remaining() == [("1.5", 1)]  # expected 2, one done


def test_resume_keeps_progress(tmp_path: Path) -> None:
    mirror = tmp_path / "m"
    with StateStore.open(mirror) as store:
        store.record_plan([plan("1.1"), plan("1.2")])
        store.commit_instances("1.1", [(f"1.1.{i}", f"f{i}", 100, None) for i in range(3)])
        store.set_series_status("1.1", "complete", attempt=True)
        store.commit_instances("1.2", [("1.2.0", "g", 100, None)])
    with StateStore.open(mirror, create=False) as store:
        store.record_plan([plan("1.1"), plan("1.2")])  # same plan again: nothing changes
        s1, s2 = store.series()
        assert (s1.status, s1.done_count, s1.attempts, s1.error) == ("complete", 3, 1, None)
        assert (s2.status, s2.done_count) == ("partial", 1)
        assert store.remaining() == [("1.2", 2)]


def test_changed_expected_size_resets_status(store: StateStore) -> None:
    store.record_plan([plan("1.1"), plan("1.2")])
    for uid in ("1.1", "1.2"):
        store.commit_instances(uid, [(f"{uid}.{i}", "f", 100, None) for i in range(3)])
        store.set_series_status(uid, "complete")
    store.record_plan([plan("1.1", nbytes=999), plan("1.2", None)])  # None: unknown, no change
    s1, s2 = store.series()
    assert s1.status == "pending" and "expected_bytes 300 -> 999" in (s1.error or "")
    assert s1.done_count == 3  # the files are still there
    assert (s2.status, s2.expected_count, s2.error) == ("complete", 3, None)

    store.record_plan([plan("1.2", 4)])  # a new instance appeared on the archive
    s2b = store.get_series("1.2")
    assert s2b is not None and s2b.status == "pending"
    assert "expected_count 3 -> 4" in (s2b.error or "") and "1 new instances" in (s2b.error or "")
    assert store.remaining()[-1] == ("1.2", 1)


def test_plan_fills_unknowns_without_reset(store: StateStore) -> None:
    store.record_plan([plan("1.1", None, sops=False)])
    store.set_series_status("1.1", "complete")
    store.record_plan([plan("1.1", 3, sops=False)])  # first time the count is known: no change
    s = store.get_series("1.1")
    assert s is not None and (s.status, s.expected_count) == ("complete", 3)


def test_set_instances(store: StateStore) -> None:
    store.record_plan([plan("1.1", 2, sops=False)])
    store.set_instances("1.1", ["a", "b", "c"])
    store.commit_instances("1.1", [("a", "a.dcm", 1, None)])
    store.set_instances("1.1", ["b", "d", "d"])  # "c" dropped; done "a" stays (its file exists)
    assert sorted((i.sop_uid, i.done) for i in store.instances("1.1")) == [
        ("a", True),
        ("b", False),
        ("d", False),
    ]
    s = store.get_series("1.1")
    assert s is not None and (s.instance_count, s.done_count) == (3, 1)
    with pytest.raises(StateError, match="not in the plan"):
        store.set_instances("9.9", ["x"])


def test_uncommit_reopens_complete_series(store: StateStore) -> None:
    store.record_plan([plan("1.1", 2)])
    store.commit_instances("1.1", [("1.1.0", "a", 1, None), ("1.1.1", "b", 1, None)])
    store.set_series_status("1.1", "complete")
    store.uncommit_instances("1.1", ["1.1.1"])
    s = store.get_series("1.1")
    assert s is not None and (s.status, s.done_count, s.done_bytes) == ("partial", 1, 1)
    store.uncommit_instances("1.1", ["1.1.0"])
    assert store.get_series("1.1").status == "pending"  # type: ignore[union-attr]


def test_status_validation(store: StateStore) -> None:
    store.record_plan([plan("1.1")])
    with pytest.raises(ValueError, match="unknown series status"):
        store.set_series_status("1.1", "done")
    with pytest.raises(StateError):
        store.set_series_status("9.9", "complete")
    with pytest.raises(StateError):
        store.commit_instances("9.9", [("x", "x", 1, None)])
    assert STATUSES == ("pending", "partial", "complete", "failed")


def test_usable_from_worker_threads(store: StateStore) -> None:
    store.record_plan([plan(f"1.{t}", 50) for t in range(4)])

    def work(t: int) -> None:
        for i in range(50):
            store.commit_instances(f"1.{t}", [(f"1.{t}.{i}", "f", 1, None)])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    inst = store.summary()["instances"]
    assert (inst["total"], inst["complete"], inst["archive_md5"]) == (200, 200, 0)


# --- lock -----------------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tcia_mirror.store.sqlite import StateStore
    with StateStore.open(Path(sys.argv[1])) as store, store.lock():
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    mirror = tmp_path / "m"
    StateStore.open(mirror).close()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mirror)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with StateStore.open(mirror) as store:
            with pytest.raises(MirrorLockedError) as info, store.lock():
                pass
            assert str(info.value) == (
                f"another tcia-mirror process (pid {child.pid}) is working on {mirror}; "
                "wait for it to finish or stop it"
            )
            assert child.stdin is not None
            child.stdin.write("\n")
            child.stdin.close()
            assert child.wait(timeout=20) == 0
            with store.lock():  # free again
                assert (mirror / ".tcia-mirror" / "lock").read_text().strip() == str(os.getpid())
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()


# --- damage ---------------------------------------------------------------------------------------


def test_corrupt_file(tmp_path: Path) -> None:
    state = tmp_path / ".tcia-mirror"
    state.mkdir()
    (state / "state.sqlite").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StateError, match="is damaged.*rename or delete it"):
        StateStore.open(tmp_path)


def test_busy_database_is_not_called_damaged(store: StateStore) -> None:
    store.record_plan([plan("1.1")])
    other = sqlite3.connect(store.path, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # a foreign writer holds the write lock
    try:
        store._conn.execute("PRAGMA busy_timeout = 50")
        with pytest.raises(StateError, match="is busy"):
            store.set_meta("k", "v")
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.set_meta("k", "v")  # usable again


def test_newer_schema_refused(tmp_path: Path) -> None:
    StateStore.open(tmp_path).close()
    conn = sqlite3.connect(tmp_path / ".tcia-mirror" / "state.sqlite")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StateError, match="newer tcia-mirror"):
        StateStore.open(tmp_path)


def test_foreign_sqlite_refused(tmp_path: Path) -> None:
    (tmp_path / ".tcia-mirror").mkdir()
    conn = sqlite3.connect(tmp_path / ".tcia-mirror" / "state.sqlite")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    with pytest.raises(StateError, match="another program"):
        StateStore.open(tmp_path)


def test_mirror_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DiskError, match="cannot create"):
        StateStore.open(tmp_path / "file" / "mirror")


# --- scale ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_million_instances_summary_timing(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    build_synthetic_store(tmp_path, 10_000, 100)
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    with StateStore.open(tmp_path, create=False) as store:
        summary = store.summary()
        remaining = store.remaining()
    elapsed = time.perf_counter() - t0
    print(
        f"\nsynthetic store: 1,000,000 instances built in {built:.1f} s; "
        f"open+summary+remaining in {elapsed * 1000:.0f} ms"
    )
    assert (summary["instances"]["total"], summary["instances"]["complete"]) == (1_000_000, 500_000)
    assert summary["series"] == {"total": 10_000, "complete": 2500, "failed": 2500, "pending": 5000}
    assert len(remaining) == 7500 and sum(n for _, n in remaining) == 500_000
    assert elapsed < 10
