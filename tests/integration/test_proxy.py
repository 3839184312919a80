"""Downloads through an HTTP proxy (``--proxy``, ``HTTPS_PROXY``/``HTTP_PROXY``, ``NO_PROXY``):
the archive's requests, the OAuth token's, the buckets' and the ZIP workers' all go through it,
with the proxy's credentials in ``Proxy-Authorization`` only, and never in the mirror."""

from __future__ import annotations

import base64
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import config_for, dicom_files, ground_truth_files, pool_get, running_sim
from proxy_server import ForwardProxy
from tcia_mirror.engine import pipeline
from tcia_mirror.engine.mirror import DownloadOptions, Mirror
from tcia_mirror.errors import AuthError, UnreachableError
from tcia_mirror.selection import Selection, build_selection
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.clientconfig import ClientConfig
from tcia_mirror.sources.proxy import ProxyChoice
from tcia_mirror.testing.simulator import Dataset, DatasetSpec
from tcia_mirror.testing.simulator.s3 import S3Simulator

pytestmark = pytest.mark.anyio

USER, SECRET = "alice", "pr0xy-s3cret"
AUTH = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()


def through(proxy: ForwardProxy, password: str = SECRET) -> ProxyChoice:
    host = proxy.url.removeprefix("http://")
    return ProxyChoice.from_settings(f"http://{USER}:{password}@{host}", environ={})


def assert_no_secret(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert SECRET.encode() not in data and AUTH.encode() not in data, p


@pytest.fixture(params=["loop", "workers"])
def zips(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """ZIPs fetched by aiohttp on the event loop, or by the ZIP workers' ``http.client``."""
    if request.param == "loop":
        monkeypatch.setattr(pipeline, "ZIP_WORKER_MIN_MEAN", 1 << 62)
    return str(request.param)


async def test_a_download_goes_through_the_proxy_with_its_credentials(
    tmp_path: Path, zips: str
) -> None:
    async with running_sim() as sim, ForwardProxy(auth=AUTH) as proxy:
        coll = sim.dataset.series[0].collection
        uids = [s.series_uid for s in sim.dataset.series if s.collection == coll]
        oauth = Credentials(user="alice", password="wonderland")  # nbia-v2: an OAuth token
        cfg = config_for(sim, "nbia-v2", credentials=oauth, proxy=through(proxy))
        report = await Mirror(tmp_path, cfg).download(
            Selection(collection=coll), DownloadOptions(zip_workers=2)
        )
        assert report.ok, report.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim, uids)
        recorded = await Mirror(tmp_path).recorded()  # what resume and sync start from
    assert "proxy" not in recorded and proxy.url.split("//")[1] not in str(recorded)
    lines = proxy.requests
    # the OAuth token, the plan and every series' ZIP, each as an absolute URL
    assert any(line.startswith(f"POST {sim.root}") and "token" in line for line in lines)
    assert sum(line.startswith(f"GET {sim.root}") and "getImage" in line for line in lines) >= len(
        uids
    )
    assert proxy.refused == 0 and set(proxy.auth_seen) == {AUTH}
    assert_no_secret(tmp_path)


async def test_wrong_proxy_credentials_stop_the_run_with_one_line_and_no_secret(
    tmp_path: Path, zips: str
) -> None:
    async with running_sim() as sim, ForwardProxy(auth=AUTH) as proxy:
        uid = sim.dataset.series[0].series_uid
        cfg = config_for(sim, proxy=through(proxy, password="wrong-pa55"))
        with pytest.raises(AuthError) as caught:
            await Mirror(tmp_path, cfg).download(
                Selection(series=(uid,)), DownloadOptions(zip_workers=2)
            )
    message = str(caught.value)
    assert "407" in message and "--proxy" in message
    assert "\n" not in message and "wrong-pa55" not in message
    assert proxy.refused >= 1


async def test_an_unreachable_proxy_is_named_without_its_password(tmp_path: Path) -> None:
    async with running_sim() as sim:
        dead = ProxyChoice.from_settings(f"http://{USER}:{SECRET}@127.0.0.1:1", environ={})
        cfg = config_for(sim, proxy=dead)
        with pytest.raises(UnreachableError) as caught:
            await Mirror(tmp_path, cfg).plan(Selection(series=(sim.dataset.series[0].series_uid,)))
    message = str(caught.value)
    assert "through the proxy http://127.0.0.1:1" in message, message
    assert SECRET not in message and USER not in message


@pytest.mark.parametrize("objects", ["loop", "workers"])
async def test_bucket_objects_go_through_the_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objects: str
) -> None:
    """IDC: the listings and every object's GET, on the loop or in a ZIP worker."""
    monkeypatch.setattr(pipeline, "OBJECT_WORKER_MIN_MEAN", 0 if objects == "workers" else 1 << 62)
    s3 = S3Simulator(Dataset(DatasetSpec.preset("test")))
    async with s3, ForwardProxy(auth=AUTH) as proxy:
        manifest = s3.write_manifest(tmp_path / "m.s5cmd")
        cfg = dataclasses.replace(
            ClientConfig(base_url="http://127.0.0.1:9/unused", s3_endpoint=s3.endpoint),
            proxy=through(proxy),
        )
        out = tmp_path / "out"
        report = await Mirror(out, cfg).download(
            build_selection(manifests=[str(manifest)]), DownloadOptions(zip_workers=2)
        )
        assert report.ok, report.problems
        on_disk = sorted(p.read_bytes() for p in out.rglob("*.dcm"))
        assert on_disk == sorted(o.body for o in s3.objects.values())
    gets = [line for line in proxy.requests if line.startswith(f"GET {s3.endpoint}/")]
    assert any("list-type=2" in line for line in gets)
    assert sum("list-type=2" not in line for line in gets) >= len(s3.objects)
    assert proxy.refused == 0 and set(proxy.auth_seen) == {AUTH}
    assert_no_secret(out)


async def test_environment_proxies_skip_loopback_hosts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY`` naming a dead proxy does not break a mirror of a loopback archive (a
    proxy could not reach it), as Go's HTTP client rules; ``--proxy`` would be used."""
    env = {"HTTP_PROXY": "http://127.0.0.1:1", "HTTPS_PROXY": "http://127.0.0.1:1"}
    async with running_sim() as sim:
        uid = sim.dataset.series[0].series_uid
        cfg = config_for(sim, proxy=ProxyChoice.from_settings(None, environ=env))
        report = await Mirror(tmp_path, cfg).download(Selection(series=(uid,)))
        assert report.ok, report.problems
        assert dicom_files(tmp_path) == ground_truth_files(sim, [uid])


def test_the_cli_takes_proxy_and_refuses_other_schemes(tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "tcia_mirror", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    done = cli("query", "getCollectionValues", "--base-url", "http://127.0.0.1:9/x",
               "--proxy", f"http://{USER}:{SECRET}@127.0.0.1:1", "--retries", "1")  # fmt: skip
    assert done.returncode != 0
    err = done.stderr.strip()
    assert len(err.splitlines()) == 1 and "through the proxy http://127.0.0.1:1" in err, err
    assert SECRET not in done.stderr + done.stdout
    done = cli("plan", "--collection", "X", "--out", str(tmp_path / "m"),
               "--proxy", "socks5://127.0.0.1:1080")  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "only http:// proxies are supported" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for ``localhost`` only (cryptography comes with moto, a test
    dependency): the proxy is reached as 127.0.0.1, so a TLS check against the proxy's name
    fails."""
    import datetime  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem, key_pem = folder / "cert.pem", folder / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_pem, key_pem


async def test_the_workers_reach_an_https_archive_through_a_connect_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ZIP workers' ``http.client`` opens ``CONNECT`` with the proxy's credentials, then
    verifies the archive's certificate for the archive's name (not the proxy's)."""
    import asyncio  # noqa: PLC0415
    import ssl  # noqa: PLC0415

    import anyio  # noqa: PLC0415

    from tcia_mirror.engine.workerhttp import Request  # noqa: PLC0415

    cert, key = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the worker's verified context trusts it
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        await writer.drain()
        writer.close()

    archive = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_ctx)
    port = archive.sockets[0].getsockname()[1]
    try:
        async with ForwardProxy(auth=AUTH) as proxy:
            req = Request(f"https://localhost:{port}/x?y=1", {}, 5.0, 5.0, proxy.url, AUTH)
            status, body = await anyio.to_thread.run_sync(pool_get, req)
    finally:
        archive.close()
    assert (status, body) == (200, b"hello")
    assert proxy.requests == [f"CONNECT localhost:{port}"] and proxy.auth_seen == [AUTH]
    assert seen and seen[0].startswith(b"GET /x?y=1 HTTP/1.1")
    assert b"Proxy-Authorization" not in seen[0]  # the credentials never enter the tunnel
