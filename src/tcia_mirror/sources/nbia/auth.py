"""Credentials and OAuth tokens (password grant, refreshed before expiry and once on 401)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urljoin

import anyio

from tcia_mirror.errors import AuthError, ProtocolError, ServerError, UnreachableError, redact
from tcia_mirror.sources.proxy import PROXY_REFUSED, ProxyChoice, via

if TYPE_CHECKING:
    import aiohttp


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the archive may ask for. Secrets never show in repr."""

    api_key: str | None = field(default=None, repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def secrets(self) -> tuple[str | None, ...]:
        return (self.api_key, self.password)


def resolve_token_url(base_url: str, token_url: str | None) -> str:
    """A profile's token URL may be a path (``/nbia-api/oauth/token``) on the archive's host."""
    return urljoin(base_url, token_url or "/nbia-api/oauth/token")


@dataclass(slots=True)
class _Token:
    access: str = field(repr=False)
    refresh: str | None = field(repr=False)
    expires_at: float
    refresh_expires_at: float


class TokenManager:
    """Keeps one access token fresh for a whole run; concurrent callers share one refresh."""

    def __init__(
        self,
        token_url: str,
        credentials: Credentials,
        *,
        client_id: str = "NBIA",
        guest_user: str | None = "nbia_guest",
        clock: Callable[[], float] = time.monotonic,
        proxy: ProxyChoice | None = None,
    ) -> None:
        self.token_url = token_url
        self._proxy = proxy.for_url(token_url) if proxy is not None else None
        self._creds = credentials
        self._client_id = client_id
        self._user = credentials.user or guest_user or ""
        self._clock = clock
        self._token: _Token | None = None
        self._lock = anyio.Lock()
        self.grants = 0  # tokens obtained (password or refresh), for tests and reports

    def secrets(self) -> tuple[str | None, ...]:
        tok = self._token
        return (*self._creds.secrets(), tok.access if tok else None, tok.refresh if tok else None)

    def invalidate(self) -> None:
        if self._token is not None:
            self._token.expires_at = 0.0

    def _fresh(self, tok: _Token | None) -> bool:
        return tok is not None and self._clock() < tok.expires_at

    async def header(self, session: aiohttp.ClientSession) -> dict[str, str]:
        if not self._fresh(self._token):
            async with self._lock:
                if not self._fresh(self._token):
                    self._token = await self._obtain(session)
        assert self._token is not None
        return {"Authorization": f"Bearer {self._token.access}"}

    async def _obtain(self, session: aiohttp.ClientSession) -> _Token:
        tok = self._token
        if tok is not None and tok.refresh and self._clock() < tok.refresh_expires_at:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": tok.refresh,
                "client_id": self._client_id,
            }
            try:
                return await self._post(session, form)
            except AuthError:
                pass  # refresh token refused: fall back to the password grant
        form = {
            "grant_type": "password",
            "username": self._user,
            "password": self._creds.password or "",
            "client_id": self._client_id,
        }
        return await self._post(session, form)

    async def _post(self, session: aiohttp.ClientSession, form: dict[str, str]) -> _Token:
        import aiohttp  # noqa: PLC0415 - status and --version start without the HTTP stack

        started = self._clock()
        try:
            async with session.post(
                self.token_url, data=form, **via(self._proxy, self.token_url)
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UnreachableError(
                f"token endpoint {self.token_url} unreachable ({type(exc).__name__}); "
                "check --token-url and your network"
            ) from None
        if status == 407:
            raise AuthError(f"token endpoint {self.token_url}: {PROXY_REFUSED}", status=407)
        if status in (400, 401, 403):
            detail = _oauth_error(body)
            raise AuthError(
                redact(
                    f"the archive refused the credentials of user {self._user!r} ({status}"
                    f"{': ' + detail if detail else ''}); check --user/--password "
                    "(TCIA_USER/TCIA_PASSWORD)",
                    self.secrets(),
                ),
                status=status,
            )
        if status == 429 or status >= 500:
            raise ServerError(
                f"token endpoint {self.token_url} failed (HTTP {status}); try again later",
                status=status,
            )
        if status >= 300:
            raise AuthError(f"token endpoint answered HTTP {status}", status=status)
        try:
            data = json.loads(body)
            access = str(data["access_token"])
        except (ValueError, KeyError, TypeError):
            raise ProtocolError("token endpoint answered without an access_token") from None
        expires_in = _seconds(data.get("expires_in"), 7200.0)
        refresh_in = _seconds(data.get("refresh_expires_in"), expires_in)
        # refresh a little before expiry: 10% of the lifetime, at most a minute
        margin = min(60.0, expires_in * 0.1)
        self.grants += 1
        return _Token(
            access=access,
            refresh=data.get("refresh_token"),
            expires_at=started + expires_in - margin,
            refresh_expires_at=started + refresh_in - margin,
        )


def _seconds(value: object, default: float) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return seconds if seconds > 0 else default


def _oauth_error(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    if isinstance(data, dict):
        return str(data.get("error_description") or data.get("error") or "")[:200]
    return ""
