"""The pooled HTTP/1.1 upstream client against a scripted server on a real socket."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Callable

import pytest

from spendgate.errors import UpstreamTimeout, UpstreamUnavailable
from spendgate.proxy.http1 import Http1Transport
from spendgate.proxy.transport import UpstreamRequest

Reply = Callable[[bytes], bytes | None]  # request bytes -> response bytes (None: hang up)


class Server:
    """Answers each request on a connection with ``reply``; counts connections."""

    def __init__(self, reply: Reply, *, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after  # hang up after each answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def request(url: str, *, stream: bool = False, timeout: float = 5.0) -> UpstreamRequest:
    return UpstreamRequest(
        "POST", url, {"authorization": "Bearer up-key"}, b'{"x":1}', stream, timeout
    )


def whole(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\n%scontent-length: %d\r\n\r\n%s" % (head.encode(), len(body), body)


def chunked(pieces: list[bytes], *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\n%stransfer-encoding: chunked\r\n\r\n%s" % (head.encode(), body)


async def collect(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([c async for c in chunks])


async def test_calls_reuse_one_connection_and_send_the_request_as_given() -> None:
    async with Server(lambda _r: whole(b'{"ok":true}', "x-request-id: up-1")) as server:
        transport = Http1Transport()
        try:
            for _ in range(3):
                response = await transport.send(request(server.url() + "?api-version=1"))
                assert (response.status, response.body) == (200, b'{"ok":true}')
                assert response.headers["x-request-id"] == "up-1"
        finally:
            await transport.aclose()
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions?api-version=1 HTTP/1.1\r\n")
    assert b"\r\nauthorization: Bearer up-key\r\n" in first
    assert first.endswith(b'content-length: 7\r\n\r\n{"x":1}')


async def test_a_gzipped_chunked_body_is_decoded() -> None:
    packed = gzip.compress(b'{"usage":{"total_tokens":3}}')
    reply = chunked([packed[:10], packed[10:]], "content-encoding: gzip")
    async with Server(lambda _r: reply) as server:
        transport = Http1Transport()
        try:
            response = await transport.send(request(server.url()))
        finally:
            await transport.aclose()
    assert response.body == b'{"usage":{"total_tokens":3}}'


async def test_a_stream_arrives_in_pieces_and_its_connection_is_reused() -> None:
    events = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    async with Server(lambda _r: chunked(events, "content-type: text/event-stream")) as server:
        transport = Http1Transport()
        try:
            for _ in range(2):
                response = await transport.send(request(server.url(), stream=True))
                assert response.status == 200
                assert await collect(response.chunks) == b"".join(events)
                await response.close()
        finally:
            await transport.aclose()
    assert server.connections == 1


async def test_a_stream_left_unfinished_does_not_give_its_connection_to_the_next_call() -> None:
    events = [b"data: 1\n\n"]
    unfinished = chunked(events).removesuffix(b"0\r\n\r\n")  # more to come, never sent
    replies = iter([unfinished, chunked(events)])
    async with Server(lambda _r: next(replies)) as server:
        transport = Http1Transport()
        try:
            response = await transport.send(request(server.url(), stream=True))
            await response.close()  # the client left before the end
            again = await transport.send(request(server.url()))
            assert again.body == b"".join(events)
        finally:
            await transport.aclose()
    assert server.connections == 2


async def test_an_error_status_on_a_stream_is_read_whole() -> None:
    error = b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 9\r\n\r\nslow down"
    async with Server(lambda _r: error) as server:
        transport = Http1Transport()
        try:
            response = await transport.send(request(server.url(), stream=True))
        finally:
            await transport.aclose()
    assert (response.status, response.body) == (429, b"slow down")


async def test_a_body_cut_short_is_unavailable_and_the_connection_not_reused() -> None:
    async with Server(
        lambda _r: b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial"
    ) as server:
        transport = Http1Transport()
        try:
            # the server sends 7 of 100 bytes, then waits for a next request that never
            # comes: the call times out rather than returning a short body
            with pytest.raises(UpstreamTimeout):
                await transport.send(request(server.url(), timeout=0.3))
        finally:
            await transport.aclose()


async def test_a_body_without_a_length_ends_with_the_connection() -> None:
    answer = b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{"ok":1}'
    async with Server(lambda _r: answer, close_after=True) as server:
        transport = Http1Transport()
        try:
            response = await transport.send(request(server.url()))
        finally:
            await transport.aclose()
    assert response.body == b'{"ok":1}'


async def test_a_hang_up_before_the_answer_is_unavailable() -> None:
    async with Server(lambda _r: None) as server:
        transport = Http1Transport()
        try:
            with pytest.raises(UpstreamUnavailable):
                await transport.send(request(server.url()))
        finally:
            await transport.aclose()


async def test_nobody_listening_is_unavailable() -> None:
    async with Server(lambda _r: None) as server:
        url = server.url()
    transport = Http1Transport()
    with pytest.raises(UpstreamUnavailable):
        await transport.send(request(url))
    await transport.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    async with Server(lambda _r: whole(b"{}"), close_after=True) as server:
        transport = Http1Transport()
        try:
            for _ in range(2):
                assert (await transport.send(request(server.url()))).body == b"{}"
                await asyncio.sleep(0.05)  # the hang-up reaches the idle connection
        finally:
            await transport.aclose()
    assert server.connections == 2


async def test_a_stalled_stream_times_out() -> None:
    head_only = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
    async with Server(lambda _r: head_only) as server:
        transport = Http1Transport()
        try:
            response = await transport.send(request(server.url(), stream=True, timeout=0.3))
            with pytest.raises(UpstreamTimeout):
                await collect(response.chunks)
            await response.close()
        finally:
            await transport.aclose()
