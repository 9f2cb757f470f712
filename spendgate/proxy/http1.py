"""A small pooled HTTP/1.1 client for the providers: the ``Transport`` real calls use.

    Http1Transport.send(UpstreamRequest) -> UpstreamResponse

One keep-alive pool per (scheme, host, port); a connection goes back to its pool only
after its response was read to the end and the server allows keep-alive; one idle longer
than ``IDLE_SECONDS`` (servers close idle connections after a while) is dropped rather
than reused. Responses are parsed by httptools (chunked framing undone there); a
``content-encoding`` of gzip or deflate is undone here. No redirects, cookies or proxies:
a provider's API answers where it is called. Driver errors become ``UpstreamUnavailable``
/ ``UpstreamTimeout`` here, at the boundary.

Why not aiohttp: against the same local upstream, one call at a time, its client took
~380,000 instructions per call (callgrind) and this one ~90,000; httpx ~2,500,000
(``bench/README.md``, "Upstream client").
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

from spendgate.errors import UpstreamTimeout
from spendgate.proxy.transport import UpstreamRequest, UpstreamResponse, unavailable

#: an idle connection older than this is closed, not reused: servers time idle ones out
#: (uvicorn after 5 s, nginx 75 s), and a request written as the server hangs up fails
IDLE_SECONDS = 4.0
CONNECT_SECONDS = 10.0
_Origin = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One connection; one response at a time, its body as a queue of pieces."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        #: its pool slot was given back (closed, never to be used again)
        self.discarded = False
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head: asyncio.Future[None] | None = None
        self._pieces: deque[bytes] = deque()
        self._ready: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.complete = False
        self.keep_alive = False

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        if self._parser is None:  # bytes nobody asked for: this connection is not reusable
            self.lost = True
            if self.transport is not None:
                self.transport.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._parser is None or self.complete:
            return
        if exc is None and self.status and self._until_close():
            self.complete = True  # a body without a length ends where the connection does
            self._wake()
        else:
            self._fail(exc or ConnectionResetError("the upstream closed the connection"))

    def _until_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        self.status = self._parser.get_status_code()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._pieces.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        assert self._parser is not None
        # asked now: once the message is over, llhttp has reset and answers False
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    # -- the client's side -------------------------------------------------------------------
    def _wake(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def time_out(self) -> None:
        """A deadline passed: whoever waits gets ``TimeoutError``; the connection is closed."""
        self._fail(TimeoutError())

    def _fail(self, exc: Exception) -> None:
        self._error = exc
        for future in (self._head, self._ready):
            if future is not None and not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def request(self, data: bytes) -> asyncio.Future[None]:
        """Send a request; the future is done when the response's head has arrived."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._parser = httptools.HttpResponseParser(self)
        self._head = loop.create_future()
        self._pieces.clear()
        self._error = None
        self.status, self.headers, self.complete, self.keep_alive = 0, {}, False, False
        self.transport.write(data)
        return self._head

    async def read(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        while not self._pieces:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._ready = asyncio.get_running_loop().create_future()
            try:
                await self._ready
            finally:
                self._ready = None
        return self._pieces.popleft()

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.lost

    def done_with(self) -> None:
        self._parser = None

    def close(self) -> None:
        self.lost = True
        self._parser = None
        if self.transport is not None:
            self.transport.close()


class _Decoder:
    """Undoes a gzip or deflate ``content-encoding`` (zlib or raw deflate both taken)."""

    def __init__(self, encoding: str) -> None:
        self._raw = encoding == "deflate"
        self._z = zlib.decompressobj(-zlib.MAX_WBITS if self._raw else 47)
        self._first = True

    def feed(self, data: bytes) -> bytes:
        if self._first and self._raw and data:
            self._first = False
            if data[0] & 0x0F == 8:  # zlib-wrapped "deflate", as most servers send it
                self._z = zlib.decompressobj(zlib.MAX_WBITS)
        return self._z.decompress(data)

    def finish(self) -> bytes:
        return self._z.flush()


class Http1Transport:
    """Pooled keep-alive connections to every provider."""

    def __init__(self, *, limit: int = 1000) -> None:
        self._limit = limit
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._slots: asyncio.Semaphore | None = None

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        parts = urlsplit(request.url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        origin = (parts.scheme, host, port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        data = self._encode(request, target, parts.netloc.rpartition("@")[2])
        try:
            conn = await self._connection(origin, secure)
        except TimeoutError as exc:
            raise UpstreamTimeout("the upstream provider did not answer in time") from exc
        except OSError as exc:
            raise unavailable("the upstream provider could not be reached", request, exc) from exc
        # one timer that fails the connection: cheaper than asyncio.timeout / wait_for
        timer = asyncio.get_running_loop().call_later(request.timeout, conn.time_out)
        try:
            await conn.request(data)
            if not request.stream:
                decoder = _decoder(conn.headers)
                pieces = []
                while piece := await conn.read():
                    pieces.append(decoder.feed(piece) if decoder else piece)
                if decoder:
                    pieces.append(decoder.finish())
                timer.cancel()
                self._release(origin, conn)
                body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                return UpstreamResponse(conn.status, conn.headers, body)
        except TimeoutError as exc:
            self._discard(conn)
            raise UpstreamTimeout("the upstream provider did not answer in time") from exc
        except (OSError, httptools.HttpParserError, zlib.error) as exc:
            self._discard(conn)
            raise unavailable("the upstream connection failed", request, exc) from exc
        except BaseException:
            self._discard(conn)
            raise
        finally:
            timer.cancel()
        if conn.status >= 300:  # an error on a streaming call: read it whole
            return await self._read_rest(origin, conn, request)
        return self._streamed(origin, conn, request)

    async def _read_rest(
        self, origin: _Origin, conn: _Connection, request: UpstreamRequest
    ) -> UpstreamResponse:
        pieces = []
        timer = asyncio.get_running_loop().call_later(request.timeout, conn.time_out)
        try:
            while piece := await conn.read():
                pieces.append(piece)
        except TimeoutError as exc:
            self._discard(conn)
            raise UpstreamTimeout("the upstream provider did not answer in time") from exc
        except (OSError, httptools.HttpParserError) as exc:
            self._discard(conn)
            raise unavailable("the upstream connection failed", request, exc) from exc
        finally:
            timer.cancel()
        self._release(origin, conn)
        decoder = _decoder(conn.headers)
        body = b"".join(pieces)
        try:
            body = decoder.feed(body) + decoder.finish() if decoder else body
        except zlib.error as exc:
            raise unavailable("the upstream connection failed", request, exc) from exc
        return UpstreamResponse(conn.status, conn.headers, body)

    def _streamed(
        self, origin: _Origin, conn: _Connection, request: UpstreamRequest
    ) -> UpstreamResponse:
        decoder = _decoder(conn.headers)

        async def chunks() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            try:
                while True:
                    timer = loop.call_later(request.timeout, conn.time_out)  # per read
                    try:
                        piece = await conn.read()
                    finally:
                        timer.cancel()
                    if not piece:
                        break
                    out = decoder.feed(piece) if decoder else piece
                    if out:
                        yield out
                if decoder and (tail := decoder.finish()):
                    yield tail
            except TimeoutError as exc:
                self._discard(conn)
                raise UpstreamTimeout("the upstream stream stalled") from exc
            except (OSError, httptools.HttpParserError, zlib.error) as exc:
                self._discard(conn)
                raise unavailable("the upstream stream broke", request, exc) from exc

        async def close() -> None:
            if conn.complete:
                self._release(origin, conn)
            else:  # the stream was left unread: the connection cannot carry another call
                self._discard(conn)

        return UpstreamResponse(conn.status, conn.headers, chunks=chunks(), close=close)

    @staticmethod
    def _encode(request: UpstreamRequest, target: str, host: str) -> bytes:
        body = request.body or b""
        lines = [f"{request.method} {target} HTTP/1.1", f"host: {host}"]
        lines += [f"{k}: {v}" for k, v in request.headers.items() if k != "content-length"]
        lines.append(f"content-length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def _connection(self, origin: _Origin, secure: bool) -> _Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.lost and now - conn.idle_since < IDLE_SECONDS:
                return conn
            self._discard(conn)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        await self._slots.acquire()
        try:
            loop = asyncio.get_running_loop()
            if secure and self._ssl is None:
                self._ssl = ssl.create_default_context()
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    _Connection,
                    origin[1],
                    origin[2],
                    ssl=self._ssl if secure else None,
                    server_hostname=origin[1] if secure else None,
                ),
                CONNECT_SECONDS,
            )
        except BaseException:
            self._slots.release()
            raise
        return conn

    def _release(self, origin: _Origin, conn: _Connection) -> None:
        if conn.reusable():
            conn.done_with()
            conn.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        """Close ``conn`` for good and give its pool slot back (once)."""
        if not conn.discarded:
            conn.discarded = True
            conn.close()
            if self._slots is not None:
                self._slots.release()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                self._discard(conn)
        self._idle.clear()


def _decoder(headers: dict[str, str]) -> _Decoder | None:
    encoding = headers.get("content-encoding", "").strip().lower()
    return _Decoder(encoding) if encoding in ("gzip", "deflate") else None
