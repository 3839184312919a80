"""``.s5cmd`` manifests (IDC portal, TCIA collection pages): read liberally, written exactly.

Every real line format is accepted::

    # s5cmd --no-sign-request --endpoint-url https://s3.amazonaws.com run manifest.s5cmd
    cp s3://idc-open-data/0c7b6c1e-.../* .
    cp s3://idc-open-data/0c7b6c1e-.../*  ./
    sync --show-progress s3://idc-open-data/0c7b6c1e-.../* "my folder"
    s3://idc-open-data/0c7b6c1e-.../*
    cp s3://idc-open-data/2f1e....dcm .

The destination written in a line is ignored (the mirror's layout decides). Blank lines and
``#`` comments are skipped; a comment naming ``--endpoint-url URL`` gives the endpoint. An
unknown line, or a ``gs://`` one, is reported by line number (:attr:`S5cmdManifest.skipped`)
and skipped: it never makes the run fail.

A line becomes a :class:`BucketRef`; its text form (:meth:`BucketRef.to_text`) is what a
:class:`~tcia_mirror.selection.Selection` records, so a recorded selection never depends on
the manifest file.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal
from urllib.parse import quote, unquote

from tcia_mirror.errors import InputError

__all__ = [
    "AWS_ENDPOINT",
    "BUCKET_ENDPOINTS",
    "GCS_ENDPOINT",
    "BucketRef",
    "S5cmdManifest",
    "collection_from_filename",
    "endpoint_for",
    "is_s5cmd",
    "parse_s5cmd",
    "render_s5cmd",
]

AWS_ENDPOINT = "https://s3.amazonaws.com"
GCS_ENDPOINT = "https://storage.googleapis.com"
BUCKET_ENDPOINTS = {
    "idc-open-data": AWS_ENDPOINT,
    "idc-open-data-two": AWS_ENDPOINT,
    "idc-open-data-cr": AWS_ENDPOINT,
    "public-datasets-idc": GCS_ENDPOINT,
    "idc-open-idc1": GCS_ENDPOINT,
    "idc-open-cr": GCS_ENDPOINT,
}

_BUCKET = r"[a-z0-9][a-z0-9.\-]{1,62}"
_SEGMENT = r"[A-Za-z0-9_\-][A-Za-z0-9._\-]*"
_FOLDER_URL = re.compile(rf"s3://(?P<bucket>{_BUCKET})/(?P<folder>{_SEGMENT})/\*?")
_OBJECT_URL = re.compile(rf"s3://(?P<bucket>{_BUCKET})/(?P<key>(?:{_SEGMENT}/)*{_SEGMENT}\.dcm)")
_COMMANDS = frozenset({"cp", "sync"})
# s5cmd cp/sync options that take a value as the next word (without "=")
_VALUE_OPTIONS = frozenset(
    {
        "--concurrency",
        "-c",
        "--part-size",
        "-p",
        "--storage-class",
        "--content-type",
        "--content-encoding",
        "--content-disposition",
        "--cache-control",
        "--expires",
        "--acl",
        "--exclude",
        "--include",
        "--metadata",
        "--metadata-directive",
        "--sse",
        "--sse-kms-key-id",
        "--source-region",
        "--destination-region",
        "--version-id",
    }
)
_ENDPOINT_OPTION = re.compile(r"--endpoint-url(?:=|\s+)(?P<url>\S+)")
_FILENAME = re.compile(r"(?P<collection>.+?)-idc_v\d+-(?:aws|gcs)\.s5cmd", re.IGNORECASE)
_URL_START = re.compile(r"(?:^|\s)(?:[a-z0-9]+://)")

RefKind = Literal["folder", "object"]
Style = Literal["portal", "portal-slash", "doi", "sync", "bare", "quoted", "legacy"]


def endpoint_for(bucket: str) -> str | None:
    """The public endpoint of a known IDC bucket, else None."""
    return BUCKET_ENDPOINTS.get(bucket)


def collection_from_filename(name: str) -> str | None:
    """``<collection>-idc_v<N>-<aws|gcs>.s5cmd`` -> ``<collection>``; None for other names."""
    m = _FILENAME.fullmatch(PurePath(name).name)
    return m.group("collection") if m else None


@dataclass(frozen=True, slots=True)
class BucketRef:
    """One manifest line: a series folder (``folder``: ``<uuid>``) or one object (legacy).

    ``endpoint`` is the one the manifest's header named (None: the bucket's own);
    ``collection`` the one its file name gave (None: unknown).
    """

    bucket: str
    path: str  # folder name (no slash) or object key
    kind: RefKind = "folder"
    endpoint: str | None = None
    collection: str | None = None

    @property
    def prefix(self) -> str:
        """The listing prefix: ``<uuid>/`` for a folder, the key itself for an object."""
        return f"{self.path}/" if self.kind == "folder" else self.path

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def to_text(self) -> str:
        """``s3://bucket/uuid/`` then optional ``endpoint=..`` and ``collection=..`` words."""
        words = [self.url]
        if self.endpoint:
            words.append(f"endpoint={quote(self.endpoint, safe=':/')}")
        if self.collection:
            words.append(f"collection={quote(self.collection, safe='')}")
        return " ".join(words)

    @classmethod
    def from_text(cls, text: str) -> BucketRef:
        url, *rest = text.split()
        ref = _ref_from_url(url)
        if ref is None:
            raise InputError(f"recorded bucket series {text!r} is unreadable")
        extra = dict(word.partition("=")[::2] for word in rest)
        endpoint = unquote(extra["endpoint"]) if extra.get("endpoint") else None
        collection = unquote(extra["collection"]) if extra.get("collection") else None
        return cls(ref.bucket, ref.path, ref.kind, endpoint, collection)


@dataclass(frozen=True, slots=True)
class S5cmdManifest:
    refs: tuple[BucketRef, ...]
    endpoint: str | None = None  # from a header comment
    skipped: tuple[tuple[int, str, str], ...] = field(default_factory=tuple)  # line, text, why

    def messages(self, source: str = "manifest") -> list[str]:
        return [
            f"{source} line {n}: skipped {text[:80]!r} ({why})" for n, text, why in self.skipped
        ]


def _ref_from_url(url: str) -> BucketRef | None:
    m = _FOLDER_URL.fullmatch(url)
    if m:
        return BucketRef(m.group("bucket"), m.group("folder"), "folder")
    m = _OBJECT_URL.fullmatch(url)
    if m and ".." not in m.group("key").split("/"):
        return BucketRef(m.group("bucket"), m.group("key"), "object")
    return None


def _url_of_line(words: list[str]) -> str | None:
    """The source URL of a command line, or None when the line is not one we know."""
    if not words:
        return None
    if "://" in words[0]:
        return words[0] if len(words) == 1 else None
    if words[0] not in _COMMANDS:
        return None
    i = 1
    while i < len(words) and words[i].startswith("-"):
        if words[i] in _VALUE_OPTIONS:
            i += 1
        i += 1
    return words[i] if i < len(words) else None


def is_s5cmd(text: str) -> bool:
    """True when ``text`` reads as an s5cmd manifest (some line names an ``s3://`` or ``gs://``
    URL), whatever the file is called."""
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#") and ("s3://" in s or "gs://" in s):
            return True
    return False


def parse_s5cmd(text: str, *, source: str = "manifest") -> S5cmdManifest:
    """Read an s5cmd manifest. Raises :class:`InputError` only when no line names a series."""
    refs: list[BucketRef] = []
    skipped: list[tuple[int, str, str]] = []
    endpoint: str | None = None
    collection = collection_from_filename(source)
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip().lstrip("\ufeff")
        if not line:
            continue
        if line.startswith("#"):
            m = _ENDPOINT_OPTION.search(line)
            if m and m.group("url").startswith(("http://", "https://")):
                endpoint = m.group("url").rstrip("/")
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            skipped.append((n, line, "unbalanced quotes"))
            continue
        url = _url_of_line(words)
        if url is None:
            skipped.append((n, line, "not an s5cmd cp/sync line"))
            continue
        if url.startswith("gs://"):
            skipped.append((n, line, "gs:// URLs are not supported; use the s3:// manifest"))
            continue
        ref = _ref_from_url(url)
        if ref is None:
            skipped.append((n, line, "not s3://<bucket>/<uuid>/* nor s3://<bucket>/<key>.dcm"))
            continue
        refs.append(ref)
    refs = [BucketRef(r.bucket, r.path, r.kind, endpoint, collection) for r in refs]
    if not refs:
        raise InputError(f"{source}: no s3:// series folder in this s5cmd manifest")
    return S5cmdManifest(tuple(dict.fromkeys(refs)), endpoint, tuple(skipped))


def render_s5cmd(
    refs: list[BucketRef] | tuple[BucketRef, ...],
    style: Style = "portal",
    *,
    endpoint: str | None = None,
) -> str:
    """A manifest in one of the real formats (for the simulator and tests)."""
    lines: list[str] = []
    if endpoint is not None:
        lines.append(f"# s5cmd --no-sign-request --endpoint-url {endpoint} run manifest.s5cmd")
    for r in refs:
        src = r.url + ("*" if r.kind == "folder" else "")
        lines.append(
            {
                "portal": f"cp {src} .",
                "portal-slash": f"cp {src} ./",
                "doi": f"cp {src}  .",
                "sync": f"sync --show-progress {src} .",
                "bare": src,
                "quoted": f'cp {src} "./my series folder"',
                "legacy": f"cp {src} .",
            }[style]
        )
    return "\n".join(lines) + "\n"
