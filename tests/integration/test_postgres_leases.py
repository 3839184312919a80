"""PostgreSQL leases (issue 11): takeover after expiry, fencing of a lost lease, slots."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from pg import Cluster, pg_cluster  # noqa: F401 - the session's PostgreSQL cluster fixture
from tcia_mirror.errors import LeaseLostError
from tcia_mirror.store.base import SeriesPlan

pytestmark = pytest.mark.anyio


def plan(uid: str, n: int = 3) -> SeriesPlan:
    return SeriesPlan(uid, "C", "P", "1.9", n, n * 100, {}, tuple(f"{uid}.{i}" for i in range(n)))


async def test_expired_lease_is_taken_over_and_the_old_holder_fenced(
    tmp_path: Path,
    pg_cluster: Cluster,  # noqa: F811
) -> None:
    from tcia_mirror.store.postgres import PostgresStore

    url = pg_cluster.new_database()
    old = await PostgresStore.open(url, tmp_path)
    new = await PostgresStore.open(url, tmp_path)
    async with old, new:
        await old.record_plan([plan("1.1")])
        assert [s.uid for s in await old.claim("old", 1, 0.5)] == ["1.1"]
        assert await new.claim("new", 1, 60) == []  # a live lease is not taken
        assert await new.live_leases("new") == 1
        await anyio.sleep(0.7)  # the old holder stopped heartbeating
        assert await new.live_leases("new") == 0
        assert [s.uid for s in await new.claim("new", 1, 60)] == ["1.1"]
        with pytest.raises(LeaseLostError):  # a late commit does not move the counts
            await old.commit_instances("1.1", [("1.1.0", "d/0.dcm", 100, None)])
        s = await new.get_series("1.1")
        assert s is not None and s.done_count == 0
        await new.commit_instances("1.1", [("1.1.0", "d/0.dcm", 100, None)])
        assert (await new.get_series("1.1")).done_count == 1  # type: ignore[union-attr]


async def test_slots_never_exceed_the_budget_and_expire(
    tmp_path: Path,
    pg_cluster: Cluster,  # noqa: F811
) -> None:
    from tcia_mirror.store.postgres import PostgresStore

    url = pg_cluster.new_database()
    a = await PostgresStore.open(url, tmp_path)
    b = await PostgresStore.open(url, tmp_path)
    async with a, b:
        assert await a.acquire_slots("a", 3, 0.5, 4) == 3
        assert await b.acquire_slots("b", 3, 60, 4) == 1  # what is left of the budget
        await anyio.sleep(0.7)  # a stopped heartbeating: its slots expire
        assert await b.acquire_slots("b", 3, 60, 4) == 3
        await b.release_slots("b")
        assert await a.acquire_slots("a", 8, 60, 4) == 4


async def test_a_claim_whose_answer_was_lost_is_claimed_again_by_its_owner(
    tmp_path: Path,
    pg_cluster: Cluster,  # noqa: F811
) -> None:
    """The connection drops after the claim's UPDATE committed but before its rows came back:
    the store runs the claim again on a new connection. The series leased the first time is
    the owner's in the database but not in the store, and the live lease hid it from everyone:
    the owner itself must take it again (with a new fencing token), not leave it behind."""
    from tcia_mirror.store.postgres import PostgresStore

    url = pg_cluster.new_database()
    store = await PostgresStore.open(url, tmp_path)
    async with store:
        await store.record_plan([plan("1.1"), plan("1.2")])
        assert [s.uid for s in await store.claim("w", 1, 60)] == ["1.1"]
        # what the lost answer left: 1.2 leased to "w" in the database, unknown to the store
        await store._run(
            lambda conn: conn.execute(
                "UPDATE series SET lease_owner = 'w', lease_attempt = lease_attempt + 1, "
                "lease_until = now() + interval '60 seconds' WHERE uid = '1.2'"
            )
        )
        assert [s.uid for s in await store.claim("w", 1, 60)] == ["1.2"]
        assert await store.claim("w", 1, 60) == []  # what it holds is never handed out twice
        await store.commit_instances("1.2", [("1.2.0", "d/0.dcm", 100, None)])  # fenced: ours
        await store.release("1.1")
        await store.release("1.2")
        assert await store.live_leases("other") == 0


async def test_plan_and_verify_are_refused_while_workers_hold_leases(
    tmp_path: Path,
    pg_cluster: Cluster,  # noqa: F811
) -> None:
    """A re-plan could add instances to a series a worker holds, and verify would check and
    forget files a worker is writing: both wait until no worker holds a live lease."""
    from tcia_mirror.engine.mirror import Mirror
    from tcia_mirror.errors import StateError
    from tcia_mirror.selection import Selection
    from tcia_mirror.store.postgres import PostgresStore

    url = pg_cluster.new_database()
    worker = await PostgresStore.open(url, tmp_path)
    async with worker:
        await worker.record_plan([plan("1.1")])
        assert [s.uid for s in await worker.claim("w", 1, 60)] == ["1.1"]
        mirror = Mirror(tmp_path, open_store=PostgresStore.opener(url))
        with pytest.raises(StateError, match="1 series are leased by running workers"):
            await mirror.verify()
        with pytest.raises(StateError, match="`plan` waits"):
            await mirror.plan(Selection(collection="C"))
        assert (await worker.get_series("1.1")).status == "pending"  # type: ignore[union-attr]
        await worker.release("1.1")
        report = await mirror.verify()  # no live lease: verify runs (and finds nothing on disk)
        assert report.series_checked == 1
