"""A forwarding HTTP proxy on an ephemeral loopback port, for tests: absolute-form requests
(``GET http://host:port/path``) are forwarded with ``Connection: close`` and their answer piped
back; ``CONNECT host:port`` opens a tunnel. It records each request line and the
``Proxy-Authorization`` it came with, and answers 407 when ``auth`` is set and not matched."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit

__all__ = ["ForwardProxy"]


class ForwardProxy:
    def __init__(self, *, auth: str | None = None) -> None:
        self.auth = auth  # the Proxy-Authorization value required, if any
        self.requests: list[str] = []  # "GET http://...", "POST http://...", "CONNECT h:p"
        self.auth_seen: list[str | None] = []
        self.refused = 0
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = [tuple(x.strip() for x in ln.split(":", 1)) for ln in lines[1:] if ln]
                given = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
                self.requests.append(f"{method} {target}")
                self.auth_seen.append(given)
                if self.auth is not None and given != self.auth:
                    self.refused += 1
                    writer.write(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                    )
                    await writer.drain()
                    continue
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    up_r, up_w = await asyncio.open_connection(host.strip("[]"), int(port))
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    await _pipe_both(reader, writer, up_r, up_w)
                    return
                await self._forward(method, target, headers, reader, writer)
                return
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    async def _forward(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, ...]],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname:
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        up_r, up_w = await asyncio.open_connection(url.hostname, url.port or 80)
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        keep = [
            (k, v)
            for k, v in headers
            if not k.lower().startswith("proxy-") and k.lower() != "connection"
        ]
        out = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in keep)
        up_w.write((out + "Connection: close\r\n\r\n").encode("latin-1"))
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        if length:
            up_w.write(await reader.readexactly(length))
        await up_w.drain()
        try:
            while chunk := await up_r.read(1 << 16):
                writer.write(chunk)
                await writer.drain()
        finally:
            up_w.close()


async def _pipe_both(
    a_r: asyncio.StreamReader,
    a_w: asyncio.StreamWriter,
    b_r: asyncio.StreamReader,
    b_w: asyncio.StreamWriter,
) -> None:
    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while chunk := await r.read(1 << 16):
                w.write(chunk)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.write_eof()

    try:
        await asyncio.gather(pipe(a_r, b_w), pipe(b_r, a_w))
    finally:
        b_w.close()
