"""Which HTTP proxy a request goes through: ``--proxy URL`` (``TCIA_PROXY``, config key ``proxy``)
for every host, else the standard environment variables (``HTTPS_PROXY``, ``HTTP_PROXY``, either
case); ``NO_PROXY`` exempts hosts from both, as curl and requests do. As Go's HTTP client does,
the environment's proxies never apply to ``localhost`` or a loopback address (a proxy could not
reach them); ``--proxy`` applies to every host ``NO_PROXY`` does not name.

Both HTTP stacks ask here: the event loop's aiohttp session (per request) and the ZIP workers'
``http.client`` (the parent decides and sends the proxy with each request). A proxy's
credentials (``http://user:password@host:port``) are a secret: they travel only in the
``Proxy-Authorization`` header to the proxy, and never print (:attr:`Proxy.url` has none).

Only ``http://`` proxies are supported (aiohttp speaks plain HTTP to a proxy, and tunnels
``https://`` targets through it with ``CONNECT``): any other scheme given to ``--proxy`` is a
one-line error; in an environment variable (shared with other tools) it is warned about and
not used.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

from tcia_mirror.errors import InputError

__all__ = ["PROXY_REFUSED", "Proxy", "ProxyChoice", "parse_proxy", "through", "via"]

PROXY_REFUSED = (
    "the HTTP proxy refused the request (407 Proxy Authentication Required); check the user "
    "and password of --proxy (or HTTPS_PROXY/HTTP_PROXY)"
)

_ENV_NAMES = {"http": ("http_proxy", "HTTP_PROXY"), "https": ("https_proxy", "HTTPS_PROXY")}


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP proxy: ``url`` without credentials; ``authorization`` the value of the
    ``Proxy-Authorization`` header when the proxy URL carried a user (never printed)."""

    url: str
    authorization: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)  # for redaction only

    def headers(self) -> dict[str, str]:
        return {"Proxy-Authorization": self.authorization} if self.authorization else {}


def via(proxy: Proxy | None, url: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``proxy`` and ``headers`` keyword arguments of an aiohttp request to ``url``. The
    proxy's credentials go with the ``CONNECT`` of an https URL (``proxy_headers``), and with
    the request itself to an http URL (aiohttp sends ``proxy_headers`` only with a CONNECT)."""
    kw: dict[str, Any] = {"headers": dict(headers or {})}
    if proxy is None:
        return kw
    kw["proxy"] = proxy.url
    if proxy.authorization:
        if url.lower().startswith("https:"):
            kw["proxy_headers"] = proxy.headers()
        else:
            kw["headers"].update(proxy.headers())
    return kw


def through(proxy: Proxy | None) -> str:
    """For a message about a request that failed: which proxy it went through (no secret)."""
    return f" through the proxy {proxy.url} (check --proxy)" if proxy is not None else ""


def parse_proxy(text: str, what: str = "--proxy") -> Proxy:
    """``http://[user[:password]@]host[:port]`` -> :class:`Proxy`; InputError otherwise. The
    message names ``what`` and never repeats the credentials."""
    raw = text.strip()
    if "://" not in raw:
        raw = "http://" + raw  # "host:3128", as curl and the environment variables allow
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise InputError(f"{what} is not a proxy URL (expected http://host:port)") from None
    if parts.scheme.lower() != "http":
        raise InputError(
            f"{what}: only http:// proxies are supported, got {parts.scheme}:// "
            "(https:// targets are tunnelled through an http:// proxy)"
        )
    if not parts.hostname:
        raise InputError(f"{what} names no host (expected http://host:port)")
    host = parts.hostname
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    url = f"http://{host}:{port or 80}"
    if parts.username is None:
        return Proxy(url)
    user, password = unquote(parts.username), unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return Proxy(url, f"Basic {token}", password or None)


@dataclass(frozen=True, slots=True)
class ProxyChoice:
    """The proxy settings of a run: an explicit proxy, the environment's, and ``NO_PROXY``."""

    explicit: Proxy | None = None
    by_scheme: Mapping[str, Proxy] = field(default_factory=dict)
    no_proxy: tuple[str, ...] = ()

    @classmethod
    def from_settings(
        cls, proxy: str | None, environ: Mapping[str, str] | None = None, *, warn: bool = True
    ) -> ProxyChoice:
        env = os.environ if environ is None else environ
        by_scheme: dict[str, Proxy] = {}
        for scheme, names in _ENV_NAMES.items():
            name = next((n for n in names if env.get(n, "").strip()), None)
            if name is None:
                continue
            try:
                by_scheme[scheme] = parse_proxy(env[name], name)
            except InputError as exc:  # set for other tools (socks5://...): said, not fatal
                if warn:
                    import logging  # noqa: PLC0415

                    logging.getLogger("tcia_mirror").warning("%s; connecting directly", exc)
        no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
        entries = tuple(e.strip().lower() for e in no_proxy.split(",") if e.strip())
        explicit = parse_proxy(proxy) if proxy else None
        return cls(explicit, by_scheme, entries)

    def __bool__(self) -> bool:
        return self.explicit is not None or bool(self.by_scheme)

    def for_url(self, url: str) -> Proxy | None:
        """The proxy for a request to ``url``, or None (a direct connection)."""
        if not self:
            return None
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if _exempt(self.no_proxy, host, parts.port):
            return None
        if self.explicit is not None:
            return self.explicit
        return None if _loopback(host) else self.by_scheme.get(parts.scheme.lower())

    def secrets(self) -> tuple[str | None, ...]:
        """What must never print: each proxy's password and ``Proxy-Authorization`` value."""
        proxies = [p for p in (self.explicit, *self.by_scheme.values()) if p is not None]
        return tuple(s for p in proxies for s in (p.password, p.authorization))


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    import ipaddress  # noqa: PLC0415 - only when the environment names a proxy

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=64)
def _exempt(entries: tuple[str, ...], host: str, port: int | None) -> bool:
    """``NO_PROXY``: ``*``, a host, a domain (``example.org`` or ``.example.org`` also covers its
    subdomains), optionally with ``:port``."""
    for entry in entries:
        if entry == "*":
            return True
        name, _, want_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if want_port and (not want_port.isdigit() or port != int(want_port)):
            continue
        name = name.strip("[]").lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False
