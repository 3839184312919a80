"""IDC buckets against moto's S3 server: an independent S3 implementation, on loopback."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tcia_mirror.engine.mirror import Mirror
from tcia_mirror.selection import build_selection
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.idc.manifest import BucketRef, render_s5cmd
from tcia_mirror.sources.nbia.client import ClientConfig
from tcia_mirror.testing.simulator import Dataset, DatasetSpec
from tcia_mirror.testing.simulator.s3 import folder_uuid, with_ctp_collection

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

pytestmark = pytest.mark.anyio
BUCKET = "idc-open-data"


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def upload(endpoint: str) -> dict[str, tuple[str, bytes]]:
    """The test dataset as IDC lays it out; object key -> (collection, body)."""
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=BUCKET, ACL="public-read")  # anonymous, as IDC buckets are
    dataset = Dataset(DatasetSpec.preset("test"))
    out: dict[str, tuple[str, bytes]] = {}
    for s in dataset.series:
        for n, inst in enumerate(s.instances):
            body = with_ctp_collection(
                dataset.instance_bytes(s.series_uid, inst.sop_uid), s.collection
            )
            key = f"{folder_uuid(s.series_uid)}/{n:04d}.dcm"
            s3.put_object(Bucket=BUCKET, Key=key, Body=body, ACL="public-read")
            out[key] = (s.collection, body)
    return out


async def test_mirror_from_moto_is_byte_identical(tmp_path: Path, moto_endpoint: str) -> None:
    objects = upload(moto_endpoint)
    folders = sorted({k.split("/")[0] for k in objects})
    manifest = tmp_path / "m.s5cmd"
    manifest.write_text(render_s5cmd([BucketRef(BUCKET, f) for f in folders], "doi"))
    config = ClientConfig(
        base_url="http://127.0.0.1:9/unused",
        s3_endpoint=moto_endpoint,
        retry=RetryPolicy(attempts=3, base=0.01, cap=0.05, jitter=0.0),
    )
    mirror = Mirror(tmp_path / "out", config)
    report = await mirror.download(build_selection(manifests=[str(manifest)]))
    assert report.ok, report.problems
    files = [p for p in (tmp_path / "out").rglob("*.dcm") if ".tcia-mirror" not in p.parts]
    got = sorted(hashlib.md5(p.read_bytes()).hexdigest() for p in files)
    want = sorted(hashlib.md5(body).hexdigest() for _c, body in objects.values())
    assert got == want
    collections = {p.relative_to(tmp_path / "out").parts[0] for p in files}
    assert collections == {c for c, _b in objects.values()}  # from the CTP private tag
    assert (await mirror.verify()).ok
