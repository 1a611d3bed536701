"""A small HTTP/1.1 client for the upstream replicas: keep-alive pool, asyncio protocol, httptools parser.

The gateway sends one kind of request (POST a JSON body to a plain-http replica) and reads the answer either
whole or as a raw byte stream, so it needs none of a general client's machinery; httpx's pool alone cost more
than the rest of a request (it scans every pooled connection, quadratically, on each request and response).
Exceptions carry httpx's names, so the gateway's error messages read as before.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools
import httpx

Origin = tuple[str, int, bool]  # host, port, TLS


class UpstreamError(Exception):
    """Any failure talking to an upstream."""


class ConnectError(UpstreamError):
    """The connection could not be made: another replica may be tried."""


class ConnectTimeout(ConnectError):
    pass


class PoolTimeout(UpstreamError):
    pass


class RemoteProtocolError(UpstreamError):
    pass


class ReadError(UpstreamError):
    pass


class _Connection(asyncio.Protocol):
    """One upstream connection; answers are parsed as they arrive and buffered for the reader."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.keep_alive = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done: asyncio.Future[None] | None = None
        self.body: deque[bytes] = deque()
        self.complete = False
        self.error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    def send(self, request: bytes) -> asyncio.Future[None]:
        self._reset()
        self.parser = httptools.HttpResponseParser(self)
        self.head_done = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return self.head_done

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head_done is None:  # bytes while idle: the server broke the protocol; drop the connection
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"invalid HTTP from upstream: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        self._lost()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        self.closed = True
        if self.head_done is not None and not self.complete:
            framed = any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)
            if self.head_done.done() and not framed and self.error is None:
                self.complete = True  # a body without length or chunking ends with the connection
                self._wake()
            elif not self.head_done.done():
                self._fail(RemoteProtocolError("Server disconnected without sending a response."))
            else:
                self._fail(ReadError("upstream closed the connection mid-answer"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is complete
        if self.head_done is not None and not self.head_done.done():
            self.head_done.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        if len(self.body) > 64 and self.transport is not None and not self._paused:
            self._paused = True  # the reader is slow: stop reading the socket until it catches up
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        if self.head_done is not None and not self.head_done.done():
            self.head_done.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrived; None at its end."""
        while True:
            if self.body:
                if self._paused and len(self.body) < 16 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return self.body.popleft()
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """The status and headers of an answer whose body has not been read yet."""

    def __init__(self, client: UpstreamClient, origin: Origin, connection: _Connection) -> None:
        self._client, self._origin, self._connection = client, origin, connection
        self.status_code = connection.status
        self.headers = connection.headers
        self._released = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        while (chunk := await self._connection.next_chunk()) is not None:
            if chunk:
                yield chunk

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        """Return a fully read connection to the pool; close one that is not (that cancels the upstream)."""
        if self._released:
            return
        self._released = True
        conn = self._connection
        reusable = conn.complete and conn.error is None and not conn.closed and conn.keep_alive
        self._client._release(self._origin, conn, reusable)


class UpstreamClient:
    """Keep-alive connections per origin, at most `max_connections` in use at once."""

    def __init__(self, connect_timeout: float, max_connections: int = 1000, max_idle: int = 200,
                 idle_expiry_s: float = 4.0) -> None:
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle_expiry_s = idle_expiry_s
        self._idle: dict[Origin, list[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)
        self._origins: dict[str, tuple[Origin, bytes, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None

    def _parse(self, url: str) -> tuple[Origin, bytes, bytes]:
        parsed = self._origins.get(url)
        if parsed is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConnectError(f"unsupported upstream URL {url!r}")
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            parsed = ((parts.hostname, port, tls), target.encode(), f"{parts.hostname}:{port}".encode())
            self._origins[url] = parsed
        return parsed

    async def post(self, url: str, content: bytes, headers: dict[str, str]) -> UpstreamResponse:
        """Send the request and wait for the response head; the body is read from the response."""
        origin, target, host = self._parse(url)
        head = [b"POST ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\ncontent-length: ",
                str(len(content)).encode(), b"\r\n"]
        for name, value in headers.items():
            head += [name.encode(), b": ", value.encode("latin-1"), b"\r\n"]
        request = b"".join([*head, b"\r\n", content])
        if self._slots.locked():  # all slots busy: wait, at most the connect timeout (a timer costs; skip it else)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise PoolTimeout("no free upstream connection slot") from None
        else:
            await self._slots.acquire()
        try:
            conn = await self._connect(origin)
            try:
                await conn.send(request)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            self._slots.release()
            raise
        return UpstreamResponse(self, origin, conn)

    async def _connect(self, origin: Origin) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_expiry_s:
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        host, port, tls = origin
        if tls and self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # the same trust store as before (certifi, SSL_CERT_FILE)
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, conn = await loop.create_connection(
                    _Connection, host, port, ssl=self._ssl if tls else None, server_hostname=host if tls else None)
        except TimeoutError:
            raise ConnectTimeout(f"connect to {origin[0]}:{origin[1]} timed out") from None
        except OSError as exc:
            raise ConnectError(f"connect to {origin[0]}:{origin[1]} failed: {exc}") from None
        return conn

    def _release(self, origin: Origin, conn: _Connection, reusable: bool) -> None:
        self._slots.release()
        idle = self._idle.setdefault(origin, [])
        if reusable and len(idle) < self.max_idle:
            conn.head_done = None
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
