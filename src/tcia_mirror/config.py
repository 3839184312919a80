"""Connection settings: profile defaults, then a TOML config file, then environment, then flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from tcia_mirror.errors import InputError
from tcia_mirror.sources.http import RetryPolicy
from tcia_mirror.sources.nbia.auth import Credentials
from tcia_mirror.sources.nbia.clientconfig import ClientConfig
from tcia_mirror.sources.nbia.profiles import DEFAULT_PROFILE, load_profile
from tcia_mirror.sources.proxy import ProxyChoice

ENV = {
    "api": "TCIA_API",
    "base_url": "TCIA_BASE_URL",
    "api_key": "TCIA_API_KEY",
    "user": "TCIA_USER",
    "password": "TCIA_PASSWORD",
    "token_url": "TCIA_TOKEN_URL",
    "retries": "TCIA_RETRIES",
    "s3_endpoint": "TCIA_S3_ENDPOINT",
    "proxy": "TCIA_PROXY",  # else HTTPS_PROXY / HTTP_PROXY (see sources/proxy.py)
    "state": "TCIA_STATE",  # the checkpoint store: postgresql://... (default DIR/.tcia-mirror)
}
KEYS = tuple(ENV)


def read_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(f"config file not found: {p}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {p} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise InputError(
            f"config file {p}: unknown key(s) {', '.join(unknown)}; known: {', '.join(KEYS)}"
        )
    return data


def resolve(
    flags: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge settings in order: defaults (e.g. what a mirror recorded) < config file <
    environment < flags. ``None`` means unset."""
    env = os.environ if environ is None else environ
    merged: dict[str, Any] = dict(defaults or {})
    if flags.get("config"):
        merged.update(read_config_file(flags["config"]))
    for key, var in ENV.items():
        if env.get(var):
            merged[key] = env[var]
    for key in KEYS:
        if flags.get(key) is not None:
            merged[key] = flags[key]
    return merged


def client_config(settings: Mapping[str, Any], **overrides: Any) -> ClientConfig:
    profile = load_profile(str(settings.get("api") or DEFAULT_PROFILE))
    base_url = settings.get("base_url")
    if base_url is not None and not str(base_url).startswith(("http://", "https://")):
        raise InputError(f"--base-url must start with http:// or https://, got {base_url!r}")
    s3_endpoint = settings.get("s3_endpoint")
    if s3_endpoint is not None and not str(s3_endpoint).startswith(("http://", "https://")):
        raise InputError(f"--s3-endpoint must start with http:// or https://, got {s3_endpoint!r}")
    creds = Credentials(
        api_key=settings.get("api_key"),
        user=settings.get("user"),
        password=settings.get("password"),
    )
    retry = RetryPolicy()
    if settings.get("retries") is not None:
        try:
            attempts = int(settings["retries"])
        except (TypeError, ValueError):
            raise InputError(
                f"retries must be a whole number, got {settings['retries']!r}"
            ) from None
        if attempts < 1:
            raise InputError("retries must be at least 1")
        retry = replace(retry, attempts=attempts)
    cfg = ClientConfig(
        retry=retry,
        profile=profile,
        base_url=base_url,
        token_url=settings.get("token_url"),
        credentials=creds,
        s3_endpoint=str(s3_endpoint).rstrip("/") if s3_endpoint else None,
        proxy=ProxyChoice.from_settings(settings.get("proxy")),
    )
    return replace(cfg, **overrides) if overrides else cfg
