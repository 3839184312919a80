"""The ZIP worker's own HTTP: a series ZIP is fetched in the worker process that works its bytes,
so they never pass through the event loop's process (issue 9: that hop cost about 1.5 s of CPU
per 335 MB, measured by ``make bench-probe``).

Blocking ``http.client`` on one thread per stream; keep-alive connections are pooled per
origin. ``ssl`` is imported at the first https connection, not with ``http.client``: it costs a
worker about 4 MiB of resident memory (libssl and the module; measured), and an archive served
over plain http (a local mirror, the simulator) never needs it. The parent (:mod:`tcia_mirror.engine.zipproc`) still decides everything that is not
bytes: the URL and its credentials, the connection slot, and whether and when a failed request
is tried again (the shared retry layer, :mod:`tcia_mirror.sources.http`). So a request answers
its status, headers and (for an error) a short body before any byte of a 2xx body is worked.
"""

from __future__ import annotations

import socket
import sys
import threading
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING


def _import_http_client_without_ssl() -> None:
    """Import ``http.client`` without the ``ssl`` it imports at its top (it defines its
    HTTPS class only when that import succeeds; :class:`_TlsConnection` stands in for it).
    A ``None`` in ``sys.modules`` makes that import fail with ImportError (documented in the
    import system's reference), and is removed again at once, so a later ``import ssl`` works.
    Where ``ssl`` is loaded already (a test process), nothing is gained: a plain import."""
    if "http.client" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import http.client  # noqa: F401, PLC0415
    finally:
        del sys.modules["ssl"]


_import_http_client_without_ssl()

import http.client  # noqa: E402

from tcia_mirror.engine.zipwire import Request  # noqa: E402

if TYPE_CHECKING:
    import ssl

__all__ = [
    "CHUNK",
    "ERROR_BODY",
    "Answer",
    "HTTPConnection",
    "HTTPException",
    "IncompleteRead",
    "Pool",
    "Request",
    "shut",
]

HTTPConnection = http.client.HTTPConnection
HTTPException = http.client.HTTPException
IncompleteRead = http.client.IncompleteRead

CHUNK = 256 * 1024  # bytes per read of a body
ERROR_BODY = 64 * 1024  # bytes of an error answer's body kept for its message
MAX_REDIRECTS = 10  # aiohttp's default
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class _TlsConnection(http.client.HTTPConnection):
    """An https connection: what ``http.client.HTTPSConnection`` does for a GET without a
    proxy (that class exists only where ``ssl`` was importable when ``http.client`` was
    imported). The context verifies the certificate and the host name."""

    default_port = 443

    def __init__(
        self, host: str, port: int | None, *, timeout: float | None, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self._context = context

    def connect(self) -> None:
        super().connect()  # through a proxy: connects to it, then CONNECT (``set_tunnel``)
        host = self._tunnel_host or self.host  # type: ignore[attr-defined]
        self.sock = self._context.wrap_socket(self.sock, server_hostname=host)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port)


# (scheme, host, port, proxy): connections are pooled per origin and per proxy
_Key = tuple[str, str, int, str | None]


@dataclass(slots=True)
class Answer:
    """A response whose status and headers came; ``body`` is read by the stream's thread."""

    conn: http.client.HTTPConnection
    resp: http.client.HTTPResponse
    key: _Key

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.resp.getheaders())


@dataclass(eq=False)
class Pool:
    """Idle keep-alive connections per origin, shared by the worker's stream threads."""

    idle: dict[_Key, list[http.client.HTTPConnection]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _tls: ssl.SSLContext | None = None

    def _new(self, key: _Key, req: Request) -> http.client.HTTPConnection:
        """A connection to ``key``'s origin; through its proxy, to the proxy (an https origin
        is then tunnelled with ``CONNECT``, carrying the proxy's credentials)."""
        scheme, host, port, proxy = key
        timeout = req.connect_timeout
        to_host, to_port = host, port
        if proxy is not None:
            parts = urllib.parse.urlsplit(proxy)
            to_host, to_port = parts.hostname or "", parts.port or 80
        if scheme != "https":
            return http.client.HTTPConnection(to_host, to_port, timeout=timeout)
        if self._tls is None:
            import ssl  # noqa: PLC0415 - at the first https connection: see the module doc

            self._tls = ssl.create_default_context()  # verified, as the parent's session
        conn = _TlsConnection(to_host, to_port, timeout=timeout, context=self._tls)
        if proxy is not None:
            auth = {"Proxy-Authorization": req.proxy_auth} if req.proxy_auth else None
            conn.set_tunnel(host, port, headers=auth)
        return conn

    def _take(self, key: _Key) -> http.client.HTTPConnection | None:
        with self.lock:
            conns = self.idle.get(key)
            return conns.pop() if conns else None

    def give_back(self, answer: Answer) -> None:
        """A connection whose response was read to its end, for the next request."""
        if answer.resp.will_close or answer.conn.sock is None:
            answer.conn.close()
            return
        with self.lock:
            self.idle.setdefault(answer.key, []).append(answer.conn)

    def open(self, req: Request, started: list[http.client.HTTPConnection]) -> Answer:
        """Send ``req``; return once the status line and headers came. Redirects are followed
        (at most ``MAX_REDIRECTS``, as aiohttp does); one to another origin carries no
        credentials (only the User-Agent goes on). A pooled connection the server closed
        meanwhile is replaced once. ``started`` receives each connection as it is used (so
        another thread can shut it down to abort). Raises ``OSError`` or
        ``http.client.HTTPException``."""
        url, headers = req.url, req.headers
        for _ in range(MAX_REDIRECTS):
            answer = self._once(url, headers, req, started)
            location = answer.resp.getheader("Location")
            if answer.resp.status not in _REDIRECTS or not location:
                return answer
            answer.conn.close()
            target = urllib.parse.urljoin(url, location.strip())
            if _origin(target) != _origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() == "user-agent"}
            url = target
        return self._once(url, headers, req, started)  # the last hop's answer, whatever it is

    def _once(
        self,
        url: str,
        headers: dict[str, str],
        req: Request,
        started: list[http.client.HTTPConnection],
    ) -> Answer:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise http.client.InvalidURL(f"not an HTTP URL: {scheme}")
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, parts.hostname or "", port, req.proxy)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if req.proxy is not None and scheme == "http":  # the whole URL, to the proxy
            target = f"http://{parts.netloc.rpartition('@')[2]}{target}"
            if req.proxy_auth:
                headers = {**headers, "Proxy-Authorization": req.proxy_auth}
        pooled = self._take(key)
        while True:
            conn = pooled or self._new(key, req)
            started.append(conn)
            try:
                if conn.sock is None:
                    conn.connect()
                    if conn.sock is not None:
                        conn.sock.settimeout(req.read_timeout)
                        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.request("GET", target, headers=headers)
                return Answer(conn, conn.getresponse(), key)
            except (OSError, http.client.HTTPException):
                conn.close()
                if pooled is None:
                    raise
                pooled = None  # the server closed the idle connection: once more, fresh


def shut(conn: http.client.HTTPConnection) -> None:
    """Unblock a thread reading ``conn`` (abort): its next read fails at once."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
