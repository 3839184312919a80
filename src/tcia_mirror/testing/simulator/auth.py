"""OAuth tokens of the simulated ``/nbia-api/oauth/token`` endpoint (api-notes §2.2).

A password grant (or a refresh grant) issues an opaque access token valid ``ttl`` seconds and a
refresh token valid ``refresh_ttl`` seconds; the answer mimics Keycloak's token response.
``nbia_guest`` is accepted with any password, like the real server.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = ["GUEST_USER", "TokenStore"]

GUEST_USER = "nbia_guest"
TokenState = Literal["ok", "expired", "invalid"]


@dataclass(frozen=True, slots=True)
class _Grant:
    username: str
    expires: float


def _seconds(value: float) -> float | int:
    """expires_in as Keycloak writes it (an int); fractional TTLs (tests) stay fractional."""
    return int(value) if float(value).is_integer() else value


class TokenStore:
    def __init__(
        self,
        users: Mapping[str, str],
        ttl: float,
        refresh_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = dict(users)
        self.ttl = ttl
        self.refresh_ttl = refresh_ttl
        self._clock = clock
        self._access: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self.issued = 0

    def password_grant(self, username: str, password: str) -> dict[str, object] | None:
        if username != GUEST_USER and (
            username not in self.users or self.users[username] != password
        ):
            return None
        return self._issue(username)

    def refresh_grant(self, refresh_token: str) -> dict[str, object] | None:
        grant = self._refresh.get(refresh_token)  # reusable until it expires, as Keycloak's
        if grant is None or grant.expires <= self._clock():
            return None
        return self._issue(grant.username)

    def check(self, access_token: str) -> TokenState:
        grant = self._access.get(access_token)
        if grant is None:
            return "invalid"
        return "ok" if grant.expires > self._clock() else "expired"

    def revoke(self, access_token: str) -> None:
        self._access.pop(access_token, None)

    def _issue(self, username: str) -> dict[str, object]:
        now = self._clock()
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self._access[access] = _Grant(username, now + self.ttl)
        self._refresh[refresh] = _Grant(username, now + self.refresh_ttl)
        self.issued += 1
        return {
            "access_token": access,
            "expires_in": _seconds(self.ttl),
            "refresh_expires_in": _seconds(self.refresh_ttl),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "id_token": secrets.token_urlsafe(32),
            "not-before-policy": 0,
            "session_state": str(uuid.uuid4()),
            "scope": "openid email profile",
        }
