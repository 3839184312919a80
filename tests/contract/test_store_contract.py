"""The Store protocol, as the engine relies on it, for every store backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcia_mirror.store.base import SeriesPlan

pytestmark = pytest.mark.anyio


def plan(uid: str, n: int = 3, nbytes: int = 300) -> SeriesPlan:
    return SeriesPlan(
        uid=uid,
        collection="C",
        patient_id="P",
        study_uid="1.9",
        expected_count=n,
        expected_bytes=nbytes,
        fields={"Modality": "CT"},
        sop_uids=tuple(f"{uid}.{i}" for i in range(n)),
    )


async def test_plan_commit_uncommit_and_summary(open_store, mirror_dir: Path) -> None:
    store = await open_store(mirror_dir, create=True)
    async with store, store.lock():
        await store.record_plan([plan("1.1"), plan("1.2", n=2, nbytes=200)])
        assert [s.uid for s in await store.series()] == ["1.1", "1.2"]
        await store.commit_instances("1.1", [("1.1.0", "d/1.1.0.dcm", 100, "a" * 32)])
        s = await store.get_series("1.1")
        assert s is not None and s.status == "partial" and s.done_count == 1
        assert s.done_bytes == 100 and s.instance_count == 3
        # committing the same file again moves no counter (idempotent)
        await store.commit_instances("1.1", [("1.1.0", "d/1.1.0.dcm", 100, "a" * 32)])
        assert (await store.get_series("1.1")).done_count == 1  # type: ignore[union-attr]
        await store.commit_instances(
            "1.1", [("1.1.1", "d/1.1.1.dcm", 100, None), ("1.1.2", "d/1.1.2.dcm", 100, None)]
        )
        await store.set_series_status("1.1", "complete")
        summary = await store.summary()
        assert summary["series"] == {"total": 2, "complete": 1, "failed": 0, "pending": 1}
        assert summary["instances"]["total"] == 5 and summary["instances"]["complete"] == 3
        assert summary["bytes"] == {"total": 500, "complete": 300}
        # a damaged file is forgotten: the series is no longer complete
        await store.uncommit_instances("1.1", ["1.1.2"])
        s = await store.get_series("1.1")
        assert s is not None and s.status == "partial" and s.done_count == 2
        done = {i.sop_uid for i in await store.instances("1.1") if i.done}
        assert done == {"1.1.0", "1.1.1"}


async def test_meta_and_reopen_keep_everything(open_store, mirror_dir: Path) -> None:
    store = await open_store(mirror_dir, create=True)
    async with store:
        assert await store.get_meta("selection") is None
        await store.set_meta("selection", '{"series": ["1.1"]}')
        await store.set_meta("selection", '{"series": ["1.2"]}')
        await store.record_plan([plan("1.2")])
        await store.commit_instances("1.2", [("1.2.0", "d/1.2.0.dcm", 100, None)])
    again = await open_store(mirror_dir, create=False)
    async with again:
        assert await again.get_meta("selection") == '{"series": ["1.2"]}'
        s = await again.get_series("1.2")
        assert s is not None and s.done_count == 1
        assert await again.get_series("9.9") is None


async def test_replanning_keeps_done_instances(open_store, mirror_dir: Path) -> None:
    store = await open_store(mirror_dir, create=True)
    async with store:
        await store.record_plan([plan("1.1")])
        await store.commit_instances("1.1", [("1.1.0", "d/1.1.0.dcm", 100, None)])
        await store.record_plan([plan("1.1")])
        s = await store.get_series("1.1")
        assert s is not None and s.done_count == 1 and s.instance_count == 3


async def test_replanning_records_stated_sizes_and_md5s_and_new_instances(
    open_store, mirror_dir: Path
) -> None:
    """What a bucket listing states per object is recorded, changed on a re-plan only where a
    new value is stated, and new instances in a complete series send it back to pending."""

    def stated(uid: str, n: int, md5s: dict[int, str], sizes: dict[int, int]) -> SeriesPlan:
        sops = tuple(f"{uid}.{i}" for i in range(n))
        return SeriesPlan(
            uid, "C", "P", "1.9", n, 100 * n, {"Modality": "CT"}, sops, "idc:b",
            {sops[i]: v for i, v in sizes.items()}, {sops[i]: v for i, v in md5s.items()}, "etag",
        )  # fmt: skip

    def expected(rows) -> dict[str, tuple]:
        return {r.sop_uid: (r.expected_size, r.expected_md5, r.md5_source) for r in rows}

    store = await open_store(mirror_dir, create=True)
    async with store:
        await store.record_plan([stated("1.1", 2, {0: "a" * 32}, {0: 100, 1: 100})])
        assert expected(await store.instances("1.1")) == {
            "1.1.0": (100, "a" * 32, "etag"),
            "1.1.1": (100, None, None),
        }
        await store.commit_instances(
            "1.1", [("1.1.0", "d/0.dcm", 100, "a" * 32), ("1.1.1", "d/1.dcm", 100, None)]
        )
        await store.set_series_status("1.1", "complete")
        # again: 1.1.0's MD5 changed, 1.1.1 stated nothing, 1.1.2 is new
        await store.record_plan([stated("1.1", 3, {0: "b" * 32}, {0: 100, 2: 50})])
        assert expected(await store.instances("1.1")) == {
            "1.1.0": (100, "b" * 32, "etag"),
            "1.1.1": (100, None, None),
            "1.1.2": (50, None, None),
        }
        s = await store.get_series("1.1")
        assert s is not None and s.status == "pending" and "1 new instances" in (s.error or "")
        assert (s.done_count, s.instance_count) == (2, 3)


async def test_two_holders_never_work_the_same_series(open_store, mirror_dir: Path) -> None:
    """SQLite refuses the second holder; PostgreSQL leases each series to one of them."""
    from tcia_mirror.errors import MirrorLockedError

    first = await open_store(mirror_dir, create=True)
    second = await open_store(mirror_dir, create=False)
    async with first, second, first.lock():
        await first.record_plan([plan(f"1.{i}") for i in range(1, 6)])
        await first.commit_instances(
            "1.1", [(f"1.1.{i}", f"d/{i}.dcm", 100, None) for i in range(3)]
        )
        await first.set_series_status("1.1", "complete")
        mine = await first.claim("w1", 2, 60)
        theirs = []
        try:
            async with second.lock():
                theirs = await second.claim("w2", 10, 60)
        except MirrorLockedError:
            pass
        assert {s.uid for s in mine}.isdisjoint({s.uid for s in theirs})
        taken = {s.uid for s in mine} | {s.uid for s in theirs}
        assert taken == {"1.2", "1.3", "1.4", "1.5"}  # every unfinished series, once
        assert await first.claim("w1", 10, 60) == []  # nothing is left to take
        assert await first.live_leases("w1") == (2 if theirs else 0)


async def test_count_attempt_keeps_status_and_error(open_store, mirror_dir: Path) -> None:
    store = await open_store(mirror_dir, create=True)
    async with store, store.lock():
        await store.record_plan([plan("1.1")])
        await store.set_series_status("1.1", "failed", error="missing_instances")
        await store.count_attempt("1.1")
        await store.count_attempt("1.1")
        s = await store.get_series("1.1")
        assert s is not None and s.attempts == 2
        assert s.status == "failed" and s.error == "missing_instances"
        with pytest.raises(Exception, match="not in the plan"):
            await store.count_attempt("9.9")
