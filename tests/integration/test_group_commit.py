"""Two workers per connection, one group committer: bodies in flight never exceed
``--concurrency``, and files are committed in batches while every file is still recorded."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from aiohttp import web

from tcia_mirror.engine.committer import GroupCommitter
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.selection import build_selection
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.testing.simulator import Dataset, DatasetSpec, Faults
from tcia_mirror.testing.simulator.s3 import S3Simulator

pytestmark = pytest.mark.anyio
FAST = RetryPolicy(attempts=6, base=0.01, cap=0.05, jitter=0.0, max_retry_after=0.05)


class CountingBucket(S3Simulator):
    """Counts whole-object bodies being served at once (a GET holds its slot until its body
    ends); ranged reads are the planner's header reads, made before any fetch.

    Until ``target`` bodies have been in flight together, each GET waits (up to
    ``HOLD`` seconds, once) for the others: whether the client ever has ``target`` bodies in
    flight then does not hang on how fast a loaded machine leases the next series (CI
    twice saw only 2 of 3 overlap when each answer simply took 0.01 s, then 0.1 s)."""

    HOLD = 10.0

    def __init__(self, *args: object, target: int, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.in_flight = 0
        self.most = 0
        self.reached = anyio.Event()
        self.target = target

    async def _object(self, request: web.Request) -> web.StreamResponse:
        if "Range" in request.headers:
            return await super()._object(request)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            if self.most >= self.target:
                self.reached.set()
            with anyio.move_on_after(self.HOLD):
                await self.reached.wait()
            self.reached.set()  # reached, or given up on: hold no other body
            return await super()._object(request)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_bodies_in_flight_never_exceed_concurrency_and_files_commit_in_groups(
    tmp_path: Path, concurrency: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    flush = GroupCommitter._flush

    async def counted(self: GroupCommitter, batch: list) -> None:  # type: ignore[type-arg]
        batches.append(sum(len(t.items) for t in batch))
        await flush(self, batch)

    monkeypatch.setattr(GroupCommitter, "_flush", counted)
    faults = Faults(latency=0.01, bandwidth=2e6)
    s3 = CountingBucket(Dataset(DatasetSpec.preset("test")), faults=faults, target=concurrency)
    async with s3:
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        cfg = ClientConfig(
            base_url="http://127.0.0.1:9/unused", s3_endpoint=s3.endpoint, retry=FAST
        )
        with anyio.fail_after(120):
            report = await Mirror(tmp_path / "out", cfg).download(
                build_selection(manifests=[str(manifest)]),
                DownloadOptions(concurrency=concurrency),
            )
    assert report.ok, report.problems
    assert report.files_committed == len(s3.objects)
    assert sum(batches) == len(s3.objects)  # every file through the committer, once
    assert s3.most == concurrency  # reached, never passed, with 2 workers per connection
    if concurrency > 1:
        assert len(batches) < len(s3.objects)  # some batches held more than one file
