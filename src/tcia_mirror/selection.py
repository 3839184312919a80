"""What the user asked to mirror. Recorded in the state store so resume and sync need no flags."""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from tcia_mirror.errors import InputError
from tcia_mirror.sources.idc.manifest import BucketRef, is_s5cmd, parse_s5cmd
from tcia_mirror.sources.nbia.manifest import is_uid, parse_manifest, parse_series_file

_log = logging.getLogger("tcia_mirror")
_MERGED = (
    "shared_lists",
    "series",
    "sources",
    "bucket_series",
)  # fields a union merges; the rest must agree


@dataclass(frozen=True, slots=True)
class Selection:
    """A union of: one collection with filters, shared lists, and explicit series UIDs.

    Manifests and series files are read when the selection is built; their UIDs land in
    ``series`` (and their names in ``sources``) so a recorded selection never depends on a file.
    """

    collection: str | None = None
    patients: tuple[str, ...] = ()
    study: str | None = None
    modality: str | None = None
    body_part: str | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    shared_lists: tuple[str, ...] = ()
    series: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    # series folders in IDC buckets, from .s5cmd manifests (BucketRef.to_text of each line)
    bucket_series: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.collection or self.shared_lists or self.series or self.bucket_series)

    def s3_endpoint(self) -> str | None:
        """The endpoint a ``.s5cmd`` manifest's header comment named (the first), else None."""
        for text in self.bucket_series:
            if (endpoint := BucketRef.from_text(text).endpoint) is not None:
                return endpoint
        return None

    def describe(self) -> str:
        parts: list[str] = []
        if self.collection:
            filt = [
                f"{k}={v}"
                for k, v in (
                    ("patient", ",".join(self.patients)),
                    ("study", self.study),
                    ("modality", self.modality),
                    ("body-part", self.body_part),
                    ("manufacturer", self.manufacturer),
                    ("model", self.manufacturer_model),
                )
                if v
            ]
            parts.append(
                f"collection {self.collection}" + (f" ({', '.join(filt)})" if filt else "")
            )
        parts += [f"shared list {n}" for n in self.shared_lists]
        if self.series:
            src = f" from {', '.join(self.sources)}" if self.sources else ""
            parts.append(f"{len(self.series)} series UID(s){src}")
        if self.bucket_series:
            parts.append(f"{len(self.bucket_series)} bucket series folder(s)")
        return "; ".join(parts) or "nothing"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Selection:
        try:
            data: dict[str, Any] = json.loads(text)
            known = {f.name for f in fields(cls)}
            clean = {
                k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known
            }
            return cls(**clean)  # type: ignore[arg-type]
        except (ValueError, TypeError) as exc:
            raise InputError(f"recorded selection is unreadable: {exc}") from None

    def _filters(self) -> tuple[object, ...]:
        """The collection's filters (every field that is not merged by :meth:`union`)."""
        return tuple(
            tuple(sorted(v)) if isinstance(v, tuple) else v
            for f in fields(self)
            if f.name not in _MERGED and f.name != "collection"
            for v in (getattr(self, f.name),)
        )

    def union(self, other: Selection) -> Selection:
        """This (recorded) selection plus ``other``; a different collection or filter set is
        refused rather than silently narrowing or widening what the mirror follows."""
        changed = self.collection != other.collection or self._filters() != other._filters()
        if self.collection and other.collection and changed:
            raise InputError(
                f"this mirror follows {self.describe().split('; ')[0]}; "
                f"use another --out for {other.describe().split('; ')[0]}"
            )
        base = self if self.collection else other
        merged = {name: _merge(getattr(self, name), getattr(other, name)) for name in _MERGED}
        return replace(base, **merged)  # type: ignore[arg-type]


def _merge(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*a, *b)))


def _read_text(path: str, what: str) -> str:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{what} is a directory, not a file: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not a text file") from None


def build_selection(
    *,
    collection: str | None = None,
    patients: tuple[str, ...] | list[str] = (),
    study: str | None = None,
    modality: str | None = None,
    body_part: str | None = None,
    manufacturer: str | None = None,
    manufacturer_model: str | None = None,
    shared_lists: tuple[str, ...] | list[str] = (),
    manifests: tuple[str, ...] | list[str] = (),
    series: tuple[str, ...] | list[str] = (),
    series_files: tuple[str, ...] | list[str] = (),
) -> Selection:
    """Validate the user's selection options and read manifests / series files."""
    filters = {
        "--patient": patients,
        "--study": study,
        "--modality": modality,
        "--body-part": body_part,
        "--manufacturer": manufacturer,
        "--manufacturer-model": manufacturer_model,
    }
    if not collection and any(filters.values()):
        used = ", ".join(k for k, v in filters.items() if v)
        raise InputError(f"{used} filter(s) need --collection NAME")
    if study is not None and not is_uid(study):
        raise InputError(f"--study {study!r} is not a DICOM UID")
    uids: list[str] = []
    for uid in series:
        if not is_uid(uid.strip()):
            raise InputError(f"--series {uid!r} is not a DICOM UID (digits and dots)")
        uids.append(uid.strip())
    sources: list[str] = []
    buckets: list[str] = []
    for path in manifests:
        text = _read_text(path, "manifest")
        if is_s5cmd(text):  # recognised by content, whatever the extension
            s5 = parse_s5cmd(text, source=path)
            for message in s5.messages(path):
                _log.warning("%s", message)  # an odd line is reported, never fatal
            buckets.extend(ref.to_text() for ref in s5.refs)
        else:
            uids.extend(parse_manifest(text, source=path).series_uids)
        sources.append(Path(path).name)
    for path in series_files:
        uids.extend(parse_series_file(_read_text(path, "series file"), source=path))
        sources.append(Path(path).name)
    for name in shared_lists:
        if not name.strip():
            raise InputError("--shared-list needs a name")
    return Selection(
        collection=collection or None,
        patients=tuple(dict.fromkeys(patients)),
        study=study,
        modality=modality,
        body_part=body_part,
        manufacturer=manufacturer,
        manufacturer_model=manufacturer_model,
        shared_lists=tuple(dict.fromkeys(shared_lists)),
        series=tuple(dict.fromkeys(uids)),
        sources=tuple(sources),
        bucket_series=tuple(dict.fromkeys(buckets)),
    )


# the keyword arguments of build_selection: the CLI's selection options carry these names
SELECTORS = tuple(inspect.signature(build_selection).parameters)
