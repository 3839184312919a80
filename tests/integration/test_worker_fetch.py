"""A ZIP worker process makes the series ZIP's request itself (issue 9): the ZIP's bytes never
pass through the event loop's process. The parent keeps the credentials, the connection slot and
the retry decision; the mirror, the checks and the clean-up are the same as on the loop."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pickle
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from helpers import config_for, dicom_files, ground_truth_files, pool_get, running_sim
from tcia_mirror.engine import pipeline, zipproc
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.engine.workerhttp import Pool, Request
from tcia_mirror.engine.zipworker import FETCH, FROM_WORKER, OPEN, TO_WORKER
from tcia_mirror.errors import UnreachableError
from tcia_mirror.progress import NullProgress
from tcia_mirror.selection import Selection
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.clientconfig import ClientConfig
from tcia_mirror.store.sqlite import SqliteStore
from tcia_mirror.testing.simulator.faults import ZIP_ENDPOINTS, Faults

pytestmark = pytest.mark.anyio


def image_tries(sim: Any, uid: str) -> int:
    return sum(n for (_e, series, _s), n in sim.image_requests.items() if series == uid)


def _parts(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".part")]


@pytest.fixture
def through_workers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every series ZIP, and every single image, goes to a worker (the test data's instances
    are tiny), and the loop must never be handed their bytes: a chunk fed by the loop fails
    the run. Returns the list of requests the workers were asked to make."""
    monkeypatch.setattr(pipeline, "ZIP_WORKER_MIN_MEAN", 0)
    monkeypatch.setattr(pipeline, "OBJECT_WORKER_MIN_MEAN", 0)
    fetches: list[int] = []
    real_get = zipproc.RemoteZip.get

    async def bytes_through_the_loop(self: object, chunk: bytes) -> object:
        raise AssertionError("a ZIP's or an image's bytes passed through the event loop")

    monkeypatch.setattr(pipeline._SingleFile, "take", bytes_through_the_loop)

    async def counted_get(self: zipproc.RemoteZip, url: str, **kw: Any) -> object:
        fetches.append(1)
        return await real_get(self, url, **kw)

    monkeypatch.setattr(zipproc.RemoteZip, "feed", bytes_through_the_loop)
    monkeypatch.setattr(zipproc.RemoteZip, "get", counted_get)
    return fetches


def _config(sim: Any, profile: str, key_in: str = "header") -> ClientConfig:
    if profile == "tcia-v3":
        cfg = config_for(sim, profile, credentials=Credentials(api_key="sim-key"))
        return dataclasses.replace(cfg, profile=dataclasses.replace(cfg.profile, api_key_in=key_in))
    if profile == "nbia-v2":
        return config_for(
            sim, profile, credentials=Credentials(user="alice", password="wonderland")
        )
    return config_for(sim, profile)


@pytest.mark.parametrize(
    ("profile", "key_in"),
    [("nbia-v4", ""), ("nbia-v2", ""), ("tcia-v3", "header"), ("tcia-v3", "query")],
)
async def test_the_workers_fetch_the_zips_with_the_parents_credentials(
    tmp_path: Path, through_workers: list[int], profile: str, key_in: str
) -> None:
    """No auth, an OAuth token, an API key in a header or in the query: the worker sends what
    the parent's client built, and the mirror is the archive's, byte for byte."""
    async with running_sim() as sim:
        coll = sim.dataset.series[0].collection
        uids = [s.series_uid for s in sim.dataset.series if s.collection == coll]
        report = await Mirror(tmp_path, _config(sim, profile, key_in)).download(
            Selection(collection=coll), DownloadOptions(zip_workers=2)
        )
        assert report.ok, report.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim, uids)
    assert len(through_workers) >= len(uids)
    assert not _parts(tmp_path)


async def test_the_workers_fetch_through_5xx_429_dropped_and_truncated_zips(
    tmp_path: Path, through_workers: list[int]
) -> None:
    """The shared retry layer decides on the worker's answers as on aiohttp's: every fault
    kind is met and retried, and the mirror is still the archive's."""
    faults = Faults(
        error_rate=0.3, rate_limit_rate=0.2, retry_after=0.01, drop_rate=0.3,
        truncate_rate=0.4, endpoints=ZIP_ENDPOINTS, seed=3,
    )  # fmt: skip
    async with running_sim(faults=faults) as sim:
        uids = [s.series_uid for s in sim.dataset.series]
        report = await Mirror(tmp_path, config_for(sim)).download(
            Selection(series=tuple(uids)), DownloadOptions(zip_workers=2, concurrency=4)
        )
        assert report.ok, report.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim, uids)
        injected = sim.faults_injected
    for kind in ("5xx", "429", "drop", "truncate"):
        assert injected[kind] >= 1, injected
    assert not _parts(tmp_path)


async def test_an_archive_a_worker_cannot_reach_is_retried_then_named(
    tmp_path: Path, through_workers: list[int]
) -> None:
    """A worker that cannot connect says why; the parent retries as for aiohttp's errors,
    then stops the run with the one-line error of an archive that does not answer."""
    async with running_sim() as sim:
        uid = sim.dataset.series[0].series_uid
        cfg = config_for(sim)
        await Mirror(tmp_path, cfg).plan(Selection(series=(uid,)))
        port = sim.root.rsplit(":", 1)[1]
    dead = dataclasses.replace(cfg, base_url=cfg.base_url.replace(port, "1"))
    with pytest.raises(UnreachableError, match=r"did not answer \(ConnectionRefusedError\)"):
        await Mirror(tmp_path, dead).resume(DownloadOptions(zip_workers=1))
    assert len(through_workers) == cfg.retry.attempts  # every try went through the worker
    assert not _parts(tmp_path)


def test_a_worker_whose_parent_dies_mid_fetch_removes_its_entry_and_exits(
    tmp_path: Path,
) -> None:
    """kill -9 of the parent while a worker's thread is blocked reading a slow body: the
    worker shuts the socket, removes the temp file of the entry it had not handed over, and
    exits at once."""

    async def main() -> None:
        faults = Faults(bandwidth=400_000.0, endpoints=ZIP_ENDPOINTS)  # a 100 s body
        async with running_sim("bench", faults=faults) as sim:
            uid = sim.dataset.series[0].series_uid
            url = f"{sim.base_url('nbia-v4')}/getImage?SeriesInstanceUID={uid}"
            await anyio.to_thread.run_sync(_kill_the_parent_mid_fetch, tmp_path, url)

    anyio.run(main)


def _kill_the_parent_mid_fetch(tmp_path: Path, url: str) -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    # unbuffered: select() sees the pipe, not what a buffered reader already pulled out of it
    # (a reply read ahead into a buffer would never wake select())
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcia_mirror.engine.zipworker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    args = (
        str(tmp_path),
        str(tmp_path),
        True,
        "1@host",
        "0123abcd",
        (2**30, 200.0, 100_000),
        False,
    )
    opened = pickle.dumps(args)
    req = pickle.dumps(dataclasses.astuple(Request(url, {}, 5.0, 60.0)))
    proc.stdin.write(TO_WORKER.pack(OPEN, 1, len(opened)) + opened)
    proc.stdin.write(TO_WORKER.pack(FETCH, 1, len(req)) + req)
    proc.stdin.flush()
    sid, length = FROM_WORKER.unpack(proc.stdout.read(FROM_WORKER.size))
    status = pickle.loads(proc.stdout.read(length))
    assert (sid, status[0], status[1]) == (1, "status", 200)
    deadline = time.monotonic() + 20
    while not _parts(tmp_path):  # the first entry is being written
        assert time.monotonic() < deadline, "no entry was started"
        time.sleep(0.05)
    before = time.monotonic()
    proc.stdin.close()  # what the worker sees of a parent killed by -9
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - before < 5, "the blocked read held the worker"
    handed = set()
    rest = proc.stdout.read()
    proc.stdout.close()
    while rest:
        _sid, length = FROM_WORKER.unpack(rest[: FROM_WORKER.size])
        msg = pickle.loads(rest[FROM_WORKER.size : FROM_WORKER.size + length])
        rest = rest[FROM_WORKER.size + length :]
        assert msg[0] == "fed"
        handed |= {Path(temp).name for _n, temp, *_ in msg[2]}
    # what the worker had handed over is the (dead) parent's, left for the next run to
    # adopt or remove; the entry it was writing is gone
    assert {p.name for p in _parts(tmp_path)} <= handed


async def test_what_a_worker_recorded_of_each_file_is_the_files(
    tmp_path: Path, through_workers: list[int]
) -> None:
    """The size and MD5 the worker computed while writing are what the store records, and
    they are the bytes on disk; verify agrees."""
    async with running_sim() as sim:
        uid = sim.dataset.series[0].series_uid
        m = Mirror(tmp_path, config_for(sim, "nbia-v1"))
        report = await m.download(Selection(series=(uid,)), DownloadOptions(zip_workers=1))
        assert report.ok, report.problems
        verified = await m.verify()
    assert verified.ok
    store = await SqliteStore.open(tmp_path, create=False)
    async with store:
        insts = await store.instances(uid)
    assert insts and all(i.done for i in insts)
    for i in insts:
        assert i.rel_path is not None
        data = (tmp_path / i.rel_path).read_bytes()
        assert (i.size, i.md5) == (len(data), hashlib.md5(data).hexdigest())


async def test_a_worker_follows_redirects_and_drops_credentials_across_origins() -> None:
    """An archive behind a redirect: the worker follows it, as aiohttp does. The credentials
    go on within the origin and never to another one."""
    from aiohttp import web  # noqa: PLC0415

    seen: dict[str, dict[str, str]] = {}

    async def final(request: web.Request) -> web.Response:
        seen[request.path] = dict(request.headers)
        return web.Response(body=b"the ZIP")

    other = web.Application()
    other.router.add_get("/zip", final)
    async with _serving(other) as other_url:

        async def first(request: web.Request) -> web.Response:
            seen[request.path] = dict(request.headers)
            raise web.HTTPFound("/second")  # same origin

        async def second(request: web.Request) -> web.Response:
            seen[request.path] = dict(request.headers)
            raise web.HTTPTemporaryRedirect(f"{other_url}/zip")  # another origin

        app = web.Application()
        app.router.add_get("/first", first)
        app.router.add_get("/second", second)
        async with _serving(app) as url:
            req = Request(f"{url}/first", {"User-Agent": "t", "api_key": "k3y"}, 5.0, 5.0)
            assert await anyio.to_thread.run_sync(pool_get, req) == (200, b"the ZIP")
    assert seen["/first"]["api_key"] == seen["/second"]["api_key"] == "k3y"
    assert "api_key" not in seen["/zip"] and seen["/zip"]["User-Agent"] == "t"


@contextlib.asynccontextmanager
async def _serving(app: Any) -> AsyncIterator[str]:
    from aiohttp import web  # noqa: PLC0415

    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_worker_killed_mid_fetch_costs_a_retry_and_loses_nothing(
    tmp_path: Path, through_workers: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of a ZIP worker while its thread streams a body: the parent sees a cut
    transfer, starts another worker and fetches the series again; the mirror is whole and
    the dead worker's temp files are removed."""
    procs: list[Any] = []
    real = zipproc._spawn

    async def spawned() -> Any:
        procs.append(await real())
        return procs[-1]

    monkeypatch.setattr(zipproc, "_spawn", spawned)

    class KillOnce(NullProgress):
        killed = False

        def on_bytes(self, n: int) -> None:
            if n > 0 and not self.killed and procs:
                self.killed = True
                procs[0].kill()

    progress = KillOnce()
    # a series ZIP of several worker reads (256 KiB each), paced: the kill lands mid-body
    faults = Faults(bandwidth=300_000.0, endpoints=ZIP_ENDPOINTS)
    async with running_sim("demo", faults=faults) as sim:
        uid = max(sim.dataset.series, key=lambda s: len(s.instances)).series_uid
        m = Mirror(tmp_path, config_for(sim), progress=progress)
        report = await m.download(Selection(series=(uid,)), DownloadOptions(zip_workers=1))
        assert report.ok, report.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim, [uid])
        assert image_tries(sim, uid) == 2  # the killed ZIP and the whole one
    assert progress.killed and len(procs) == 2
    assert report.series[0]["notes"] == [
        "TransferError: getImage: the ZIP worker process ended unexpectedly"
    ]
    assert len(through_workers) >= 2
    assert not _parts(tmp_path)


def test_a_fetch_that_fails_unexpectedly_still_answers_the_parent(tmp_path: Path) -> None:
    """The parent waits for an answer to every request: a failure the worker did not foresee
    (here a port out of range) ends the stream with a one-line error naming only its type,
    never the URL (it may carry an API key)."""
    src = Path(__file__).resolve().parents[2] / "src"
    # unbuffered: select() sees the pipe, not what a buffered reader already pulled out of it
    # (a reply read ahead into a buffer would never wake select())
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcia_mirror.engine.zipworker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    args = (
        str(tmp_path),
        str(tmp_path),
        True,
        "1@host",
        "0123abcd",
        (2**30, 200.0, 100_000),
        False,
    )
    opened = pickle.dumps(args)
    url = "http://127.0.0.1:99999/getImage?api_key=s3cret"
    req = pickle.dumps(dataclasses.astuple(Request(url, {}, 5.0, 5.0)))
    try:
        proc.stdin.write(TO_WORKER.pack(OPEN, 7, len(opened)) + opened)
        proc.stdin.write(TO_WORKER.pack(FETCH, 7, len(req)) + req)
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "the worker never answered"
        sid, length = FROM_WORKER.unpack(proc.stdout.read(FROM_WORKER.size))
        answer = pickle.loads(proc.stdout.read(length))
        proc.stdin.close()
        # exits cleanly: its thread had just written that answer (regression: the
        # interpreter's shutdown found stdout's lock held by it and aborted, -6)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert sid == 7
    assert answer == ("error", "TransferError", "ZIP worker: ValueError while fetching", 0)


def _self_signed(tmp_path: Path) -> Any:
    """A TLS server context for 127.0.0.1 with a certificate nobody signed (``cert.pem`` is
    left in ``tmp_path``)."""
    import datetime  # noqa: PLC0415
    import ipaddress  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return tls


@contextlib.asynccontextmanager
async def _serving_tls(tls: Any) -> AsyncIterator[int]:
    """An https server on 127.0.0.1 answering ``/zip`` with ``PK``; yields its port."""
    from aiohttp import web  # noqa: PLC0415

    async def zip_(request: web.Request) -> web.Response:
        return web.Response(body=b"PK")

    app = web.Application()
    app.router.add_get("/zip", zip_)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_a_worker_verifies_the_archives_certificate(tmp_path: Path) -> None:
    """Over https the worker trusts what the parent's session trusts (the system's CAs): an
    archive whose certificate nobody signed is refused, as aiohttp refuses it."""
    import ssl  # noqa: PLC0415

    async with _serving_tls(_self_signed(tmp_path)) as port:
        req = Request(f"https://127.0.0.1:{port}/zip", {}, 5.0, 5.0)

        def fetch() -> None:
            Pool().open(req, [])

        with pytest.raises(ssl.SSLCertVerificationError):
            await anyio.to_thread.run_sync(fetch)


_FRESH_WORKER = """
import sys
import tcia_mirror.engine.zipworker
from tcia_mirror.engine.workerhttp import Pool, Request
print("ssl at start:", "ssl" in sys.modules)
for url in sys.argv[1:]:
    answer = Pool().open(Request(url, {}, 5.0, 5.0), [])
    print(url.split(":")[0], answer.resp.status, answer.resp.read(), "ssl" in sys.modules)
"""


async def test_a_worker_loads_tls_only_for_an_https_archive(tmp_path: Path) -> None:
    """A worker process starts without ``ssl`` (about 4 MiB of its memory) and fetches over
    plain http without it; its first https request loads it, and verifies the certificate
    against the CAs the system names (here ``SSL_CERT_FILE``: the test's own)."""
    from aiohttp import web  # noqa: PLC0415

    async def plain(request: web.Request) -> web.Response:
        return web.Response(body=b"plain")

    app = web.Application()
    app.router.add_get("/zip", plain)
    async with _serving(app) as base, _serving_tls(_self_signed(tmp_path)) as port:
        env = {**os.environ, "SSL_CERT_FILE": str(tmp_path / "cert.pem")}
        argv = [f"{base}/zip", f"https://127.0.0.1:{port}/zip"]
        done = await anyio.run_process(
            [sys.executable, "-c", _FRESH_WORKER, *argv], env=env, check=False
        )
    lines = done.stdout.decode().splitlines()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert lines == [
        "ssl at start: False",
        "http 200 b'plain' False",
        "https 200 b'PK' True",
    ]


def _read_exactly(pipe: Any, n: int) -> bytes:
    got = b""
    while len(got) < n:
        part = pipe.read(n - len(got))
        if not part:
            raise EOFError("the worker closed its end")
        got += part
    return got


def _fetch_replies(tmp_path: Path, url: str, seconds: float) -> list[tuple[float, Any]]:
    """Start a worker, have it fetch ``url`` and read its replies, each with when it came,
    until its ``done`` (or ``error``) or ``seconds`` passed."""
    src = Path(__file__).resolve().parents[2] / "src"
    # unbuffered: select() sees the pipe, not what a buffered reader already pulled out of it
    # (a reply read ahead into a buffer would never wake select())
    proc = subprocess.Popen(
        [sys.executable, "-m", "tcia_mirror.engine.zipworker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
        env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    args = (
        str(tmp_path),
        str(tmp_path),
        False,
        "1@host",
        "0123abcd",
        (2**30, 200.0, 100_000),
        True,
    )
    opened = pickle.dumps(args)
    req = pickle.dumps(dataclasses.astuple(Request(url, {}, 5.0, 60.0)))
    proc.stdin.write(TO_WORKER.pack(OPEN, 1, len(opened)) + opened)
    proc.stdin.write(TO_WORKER.pack(FETCH, 1, len(req)) + req)
    proc.stdin.flush()
    replies: list[tuple[float, Any]] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            _sid, length = FROM_WORKER.unpack(_read_exactly(proc.stdout, FROM_WORKER.size))
            msg = pickle.loads(_read_exactly(proc.stdout, length))
            replies.append((time.monotonic(), msg))
            if msg[0] in ("done", "error"):
                break
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        proc.stdout.close()
    return replies


def test_a_worker_hands_over_several_entries_a_reply_yet_reports_a_slow_link_often(
    tmp_path: Path,
) -> None:
    """Each reply costs the parent a wake-up: on a fast link a reply carries several entries
    (measured: one entry a reply cost 6 % more CPU). On a slow link the bytes are still
    reported at least every quarter second, so progress keeps moving."""

    async def main() -> tuple[list[tuple[float, Any]], list[tuple[float, Any]], int]:
        async with running_sim("bench") as sim:
            uid = sim.dataset.series[0].series_uid
            n = len(sim.dataset.series[0].instances)
            url = f"{sim.base_url('nbia-v4')}/getImage?SeriesInstanceUID={uid}&IncludeMD5=Yes"
            fast = await anyio.to_thread.run_sync(_fetch_replies, tmp_path / "fast", url, 60.0)
        faults = Faults(bandwidth=400_000.0, endpoints=ZIP_ENDPOINTS)
        async with running_sim("bench", faults=faults) as sim:
            url = f"{sim.base_url('nbia-v4')}/getImage?SeriesInstanceUID={uid}&IncludeMD5=Yes"
            slow = await anyio.to_thread.run_sync(_fetch_replies, tmp_path / "slow", url, 2.5)
        return fast, slow, n

    (tmp_path / "fast").mkdir()
    (tmp_path / "slow").mkdir()
    fast, slow, n = anyio.run(main)
    assert fast[-1][1] == ("done",), fast[-1][1]
    assert any(msg[6] is not None for _t, msg in fast if msg[0] == "fed")  # the MD5 list came
    handed = [len(msg[2]) for _t, msg in fast if msg[0] == "fed"]
    assert sum(handed) == n
    assert max(handed) >= 3, handed  # a 256 KiB read completes at most two of these entries
    fed = [(t, msg[1]) for t, msg in slow if msg[0] == "fed"]
    # 2.5 s at 400 KB/s on the wire: about 2.5 MB of DICOM, under the 4 MiB and the four
    # entries that make a reply on a fast link; the simulator sends in bursts, so a reply
    # follows each burst (about 0.65 s apart here)
    assert len(fed) >= 3, fed
    gaps = [b[0] - a[0] for a, b in zip(fed, fed[1:], strict=False)]
    assert max(gaps) < 1.0, gaps
    assert all(b[1] > a[1] for a, b in zip(fed, fed[1:], strict=False))  # bytes move on
