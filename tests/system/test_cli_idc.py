"""The command line with .s5cmd manifests: download, status, verify, resume, sync, as a user runs
them (subprocesses) against the simulator's S3 bucket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from tcia_mirror.engine.mirror import Mirror
from tcia_mirror.testing.simulator import Dataset, DatasetSpec
from tcia_mirror.testing.simulator.s3 import S3Simulator

# the archive is never asked for a bucket-only selection; were it asked, it would not be the internet
ENV = {"TCIA_BASE_URL": "http://127.0.0.1:9/nbia-api/services/v4"}


class BucketInThread:
    """The simulator's S3 bucket on its own event loop in a background thread."""

    def __init__(self) -> None:
        self.s3 = S3Simulator(Dataset(DatasetSpec.preset("test")))
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def run() -> None:
            self._stop = asyncio.Event()
            async with self.s3:
                self._ready.set()
                await self._stop.wait()

        loop.run_until_complete(run())
        loop.close()

    def __enter__(self) -> S3Simulator:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("bucket did not start")
        return self.s3

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


@pytest.fixture
def s3() -> Iterator[S3Simulator]:
    with BucketInThread() as s:
        yield s


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TCIA_")}
    return subprocess.run(
        [sys.executable, "-m", "tcia_mirror", *args],
        capture_output=True,
        text=True,
        env={**env, **ENV},
        timeout=120,
    )


def recorded(out: Path) -> dict[str, str | None]:
    return anyio.run(Mirror(out).recorded)


def dicom(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.dcm") if ".tcia-mirror" not in p.parts)


def test_download_status_verify_resume_with_s5cmd(s3: S3Simulator, tmp_path: Path) -> None:
    manifest = s3.write_manifest(tmp_path / "F.s5cmd", style="doi")
    out = tmp_path / "DIR"
    d = cli("download", "--manifest", str(manifest), "--out", str(out), "--s3-endpoint",
            s3.endpoint, "--no-progress")  # fmt: skip
    assert d.returncode == 0, (d.stdout, d.stderr)
    n, objects = len(s3.folders), len(s3.objects)
    assert f"{n}/{n} series complete" in d.stdout
    assert len(dicom(out)) == objects
    st = cli("status", "--out", str(out), "--json")
    assert st.returncode == 0
    summary = json.loads(st.stdout)
    assert summary["series"]["complete"] == n
    assert summary["sources"][f"idc:{s3.bucket}"]["complete"] == n
    assert f"idc:{s3.bucket} {n}/{n} series complete" in cli("status", "--out", str(out)).stdout
    v = cli("verify", "--out", str(out), "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["ok"] is True
    # a lost file: verify names the series and its bucket folder, resume (only --out) refetches it
    victim = dicom(out)[0]
    victim.unlink()
    v = cli("verify", "--out", str(out), "--json")
    assert v.returncode == 1
    problem = json.loads(v.stdout)["problems"][0]
    assert problem["kind"] == "missing_file" and problem["series"] == victim.parent.name
    assert problem["bucket_folder"] == f"s3://{s3.bucket}/{s3.folders[victim.parent.name]}/"
    s3.requests.clear()
    r = cli("resume", "--out", str(out), "--no-progress")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert len([q for q in s3.requests if q[0] == "GET" and q[1] != "?list"]) == 1
    assert victim.is_file() and len(dicom(out)) == objects
    assert cli("verify", "--out", str(out)).returncode == 0


def test_the_manifest_header_endpoint_is_recorded_and_a_flag_wins(
    s3: S3Simulator, tmp_path: Path
) -> None:
    manifest = s3.write_manifest(tmp_path / "F.s5cmd", endpoint=s3.endpoint)
    out = tmp_path / "DIR"
    p = cli("plan", "--manifest", str(manifest), "--out", str(out))  # no --s3-endpoint
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert recorded(out)["s3_endpoint"] == s3.endpoint
    r = cli("resume", "--out", str(out), "--no-progress")  # only --out
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert len(dicom(out)) == len(s3.objects)
    with BucketInThread() as other:  # the same objects at another endpoint
        s3.requests.clear()
        y = cli("sync", "--out", str(out), "--s3-endpoint", other.endpoint, "--no-progress")
        assert y.returncode == 0, (y.stdout, y.stderr)
        assert recorded(out)["s3_endpoint"] == other.endpoint
        assert other.requests and not s3.requests


def test_sync_with_a_newer_manifest_names_what_it_no_longer_lists(
    s3: S3Simulator, tmp_path: Path
) -> None:
    uids = list(s3.folders)
    old = s3.write_manifest(tmp_path / "old.s5cmd", series_uids=uids[:-1])
    new = s3.write_manifest(tmp_path / "new.s5cmd", series_uids=uids[1:])
    out = tmp_path / "DIR"
    conn = ("--s3-endpoint", s3.endpoint, "--no-progress")
    assert cli("download", "--manifest", str(old), "--out", str(out), *conn).returncode == 0
    y = cli("sync", "--manifest", str(new), "--out", str(out), *conn)
    assert y.returncode == 0, (y.stdout, y.stderr)
    assert "no longer listed, kept (1):" in y.stdout
    assert f"{uids[0]} (s3://{s3.bucket}/{s3.folders[uids[0]]}/)" in y.stdout
    assert len(dicom(out)) == len(s3.objects)  # the new series fetched, the dropped one kept


def test_a_folder_missing_in_the_bucket_is_named_and_exits_1(
    s3: S3Simulator, tmp_path: Path
) -> None:
    ghost = str(uuid.uuid4())
    manifest = s3.write_manifest(tmp_path / "F.s5cmd")
    manifest.write_text(
        manifest.read_text() + f"cp s3://{s3.bucket}/{ghost}/* .\n", encoding="utf-8"
    )
    out = tmp_path / "DIR"
    d = cli("download", "--manifest", str(manifest), "--out", str(out), "--s3-endpoint",
            s3.endpoint, "--no-progress")  # fmt: skip
    assert d.returncode == 1, (d.stdout, d.stderr)
    assert f"s3://{s3.bucket}/{ghost}/" in d.stdout
    assert "Traceback" not in d.stderr
    assert len(dicom(out)) == len(s3.objects)  # the rest is mirrored
