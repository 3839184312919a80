"""How to reach the archive (:class:`ClientConfig`), without the HTTP stack: commands that do
not talk to the archive (``status``, ``--version``, ``--help``) start without importing aiohttp."""

from __future__ import annotations

from dataclasses import dataclass, field

from tcia_mirror.errors import InputError
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.profiles import DEFAULT_PROFILE, Profile, load_profile
from tcia_mirror.sources.proxy import ProxyChoice

__all__ = ["ClientConfig", "validate_param_pairs"]


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How to reach the archive. Frozen; secrets live in ``credentials`` and never print."""

    profile: Profile = field(default_factory=lambda: load_profile(DEFAULT_PROFILE))
    base_url: str | None = None  # overrides the profile's base URL (e.g. the simulator)
    token_url: str | None = None  # overrides the profile's token URL
    credentials: Credentials = field(default_factory=Credentials)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connect_timeout: float = 30.0
    read_timeout: float = 300.0  # between two reads of one response
    max_connections: int = 16  # also the initial request concurrency; lowered on 429
    s3_endpoint: str | None = None  # overrides every IDC bucket's endpoint (--s3-endpoint)
    proxy: ProxyChoice = field(default_factory=ProxyChoice)  # --proxy, HTTP(S)_PROXY, NO_PROXY

    @property
    def root(self) -> str:
        return (self.base_url or self.profile.base_url).rstrip("/") + "/"


def validate_param_pairs(pairs: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings from the command line."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"malformed parameter {pair!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out
