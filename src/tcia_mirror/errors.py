"""The one exception tree of tcia-mirror.

Split by what the caller can do about it::

    TciaMirrorError                 base: catch this to catch everything we raise
    +-- InputError                  fix the command line, a manifest, a series file (exit 2)
    |   +-- UnknownEndpointError
    +-- StateError                  the mirror folder or its state store (exit 2)
    |   +-- MirrorLockedError       another process holds the mirror
    |   +-- LeaseLostError          another worker took over a series whose lease ran out
    |   +-- StoreUnreachableError   the state database cannot be reached (exit 3)
    +-- RemoteError                 the archive stopped the run (exit 3)
    |   +-- UnreachableError        connection refused, DNS, timeouts after retries
    |   +-- AuthError               key/token refused (401/403) or token endpoint refused
    |   +-- NotFoundError           404
    |   +-- BadRequestError         400 with the server's message
    |   +-- ServerError             5xx after retries
    |   +-- RateLimitedError        429 after retries
    |   +-- ProtocolError           a body we cannot make sense of (HTML instead of ZIP ...)
    |   +-- TransferError           a body that broke off mid-way (retried by the engine)
    +-- DataError                   what arrived is not what was promised (investigate data)
    +-- DiskError                   local disk full / not writable

Messages say what happened and what to do next. They never contain secrets: every message
passes through :func:`redact` with the secrets the client knows.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager


class TciaMirrorError(Exception):
    """Base class of every error tcia-mirror raises on purpose."""

    exit_code: int = 1


class InputError(TciaMirrorError):
    """Bad usage or bad input: fix the command, manifest or file and run again."""

    exit_code = 2


class UnknownEndpointError(InputError):
    """The endpoint is not part of the selected API profile."""


class StateError(TciaMirrorError):
    """The mirror folder or its state store cannot be used as it is."""

    exit_code = 2


class MirrorLockedError(StateError):
    """Another tcia-mirror process is working on this mirror."""


class LeaseLostError(StateError):
    """A series' lease ran out and another worker took it over: leave the series to it."""


class StoreUnreachableError(StateError):
    """The state database (``--state postgresql://...``) cannot be reached: like the archive
    being unreachable, try again later (exit 3)."""

    exit_code = 3


class RemoteError(TciaMirrorError):
    """The archive refused, failed or could not be reached."""

    exit_code = 3

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UnreachableError(RemoteError):
    """No answer from the archive (connection refused, DNS failure, timeout)."""


class AuthError(RemoteError):
    """The archive refused the API key, credentials or token."""


class NotFoundError(RemoteError):
    """The archive answered 404."""


class BadRequestError(RemoteError):
    """The archive answered 400; the message is the server's own."""


class ServerError(RemoteError):
    """The archive answered 5xx, still after retrying."""


class RateLimitedError(RemoteError):
    """The archive answered 429, still after retrying."""

    def __init__(
        self, message: str, *, status: int | None = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ProtocolError(RemoteError):
    """The archive answered with a body we cannot interpret (e.g. HTML instead of a ZIP)."""


class TransferError(RemoteError):
    """A response body broke off mid-transfer (connection dropped, payload incomplete)."""


class BodyCut(TransferError):
    """An object's body broke off and the transport kept what came: a continuation (``Range``
    from the bytes it holds) can finish it."""


class DataError(TciaMirrorError):
    """Downloaded data does not match what the archive promised."""

    exit_code = 1


class DiskError(TciaMirrorError):
    """The local disk refused a write (full, read-only, missing folder)."""

    exit_code = 2


# scheme://user:PASSWORD@host: the password runs to the last "@" before a "/" or a space
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s]*@")


def url_passwords(text: str) -> list[str]:
    """The password part of every ``scheme://user:password@host`` URL in ``text``."""
    return [m.group(0)[len(m.group("head")) : -1] for m in _URL_PASSWORD.finditer(text)]


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every non-trivial secret in ``text``, and every URL's password, by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception to report from a task group's exception group: our own errors first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for kind in (TciaMirrorError, KeyboardInterrupt, Exception):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0] if leaves else group


@asynccontextmanager
async def one_error() -> AsyncIterator[None]:
    """Around a task group: raise its first real error, not the exception group."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise first_error(group) from None
