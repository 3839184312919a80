"""API dialects as data: TOML profiles in ``configs/`` describe paths, parameter spellings and auth.

A profile may ``inherits = "<other>"``; tables are merged key by key (endpoint by endpoint).
Endpoint and parameter names used by the rest of the code are the seed document's (``getSeries``,
``PatientsByModality``, ``PatientID``, ``Date`` ...); a profile maps them to what its archive expects.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tcia_mirror.errors import InputError, UnknownEndpointError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
DEFAULT_PROFILE = "nbia-v4"
ALL_FORMATS: tuple[str, ...] = ("json", "csv", "xml", "html")

Kind = Literal["rows", "zip", "dicom"]
AuthKind = Literal["none", "api_key", "oauth"]


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    name: str
    path: str
    params: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict)
    kind: Kind = "rows"
    formats: tuple[str, ...] = ALL_FORMATS
    date_format: str | None = None

    def wire_name(self, param: str) -> str:
        return self.rename.get(param, param)

    def wire_params(self, params: Mapping[str, str]) -> dict[str, str]:
        """Translate seed spellings to this dialect's; check required parameters."""
        out: dict[str, str] = {}
        for key, value in params.items():
            out[self.wire_name(key)] = value
        missing = [p for p in self.required if self.wire_name(p) not in out and p not in out]
        if missing:
            raise InputError(
                f"{self.name} needs parameter(s) {', '.join(missing)} "
                f"(e.g. {missing[0]}=VALUE); it takes: {', '.join(self.params) or 'none'}"
            )
        return out


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    base_url: str
    endpoints: Mapping[str, EndpointSpec]
    auth: AuthKind = "none"
    api_key_name: str = "api_key"
    api_key_in: Literal["header", "query"] = "header"
    token_url: str | None = None
    client_id: str = "NBIA"
    guest_user: str | None = None
    date_format: str = "%Y-%m-%d"
    metadata: bool = False
    strict_params: bool = False
    md5_endpoint: str | None = None
    md5_params: Mapping[str, str] = field(default_factory=dict)
    image_md5_endpoint: str | None = None  # one instance's MD5 (getM5HashForImage ...)

    def endpoint(self, name: str) -> EndpointSpec:
        """Look an endpoint up by its seed name or by this dialect's path name, case-insensitively."""
        if name in self.endpoints:
            return self.endpoints[name]
        wanted = name.strip().strip("/").lower()
        for spec in self.endpoints.values():
            if wanted in (spec.name.lower(), spec.path.rsplit("/", 1)[-1].lower()):
                return spec
        raise UnknownEndpointError(
            f"unknown endpoint {name!r} for API profile {self.name}; "
            f"known: {', '.join(sorted(self.endpoints))}"
        )

    def has(self, name: str) -> bool:
        try:
            self.endpoint(name)
        except UnknownEndpointError:
            return False
        return True

    def date_format_for(self, spec: EndpointSpec) -> str:
        return spec.date_format or self.date_format


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(f"API profile file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"API profile {path} is not valid TOML: {exc}") from None


def _raw_profile(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    if name_or_path in seen:
        raise InputError(f"API profile inheritance loops: {' -> '.join((*seen, name_or_path))}")
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = CONFIG_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise InputError(
                f"unknown API profile {name_or_path!r}; choose one of: "
                f"{', '.join(available_profiles())} (or give a .toml file)"
            )
    data = _read_toml(path)
    parent = data.pop("inherits", None)
    if parent is None:
        return data
    base = _raw_profile(str(parent), (*seen, name_or_path))
    merged = {**base, **{k: v for k, v in data.items() if k != "endpoints"}}
    endpoints = {k: dict(v) for k, v in base.get("endpoints", {}).items()}
    for ep_name, ep in data.get("endpoints", {}).items():
        endpoints[ep_name] = {**endpoints.get(ep_name, {}), **ep}
    merged["endpoints"] = endpoints
    return merged


def _endpoint(name: str, raw: Mapping[str, Any]) -> EndpointSpec:
    if "path" not in raw:
        raise InputError(f"endpoint {name} has no path")
    return EndpointSpec(
        name=name,
        path=str(raw["path"]),
        params=tuple(raw.get("params", ())),
        required=tuple(raw.get("required", ())),
        rename=dict(raw.get("rename", {})),
        kind=raw.get("kind", "rows"),
        formats=tuple(raw.get("formats", ALL_FORMATS)),
        date_format=raw.get("date_format"),
    )


def load_profile(name_or_path: str = DEFAULT_PROFILE) -> Profile:
    """Load a profile by name (``nbia-v4``) or from a ``.toml`` file."""
    raw = _raw_profile(name_or_path)
    try:
        endpoints = {k: _endpoint(k, v) for k, v in raw.get("endpoints", {}).items()}
        return Profile(
            name=str(raw["name"]),
            description=str(raw.get("description", "")),
            base_url=str(raw["base_url"]).rstrip("/"),
            endpoints=endpoints,
            auth=raw.get("auth", "none"),
            api_key_name=raw.get("api_key_name", "api_key"),
            api_key_in=raw.get("api_key_in", "header"),
            token_url=raw.get("token_url"),
            client_id=raw.get("client_id", "NBIA"),
            guest_user=raw.get("guest_user"),
            date_format=raw.get("date_format", "%Y-%m-%d"),
            metadata=bool(raw.get("metadata", False)),
            strict_params=bool(raw.get("strict_params", False)),
            md5_endpoint=raw.get("md5_endpoint"),
            md5_params=dict(raw.get("md5_params", {})),
            image_md5_endpoint=raw.get("image_md5_endpoint"),
        )
    except KeyError as exc:
        raise InputError(f"API profile {name_or_path} lacks required key {exc}") from None
