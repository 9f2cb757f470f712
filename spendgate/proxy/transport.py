"""Upstream transports, passed in: real HTTP (``http1.Http1Transport``) or the
in-process simulator.

Transport.send(UpstreamRequest) -> UpstreamResponse
  Http1Transport      real providers (``proxy/http1.py``); driver errors become
                      UpstreamUnavailable / UpstreamTimeout at the boundary
  SimulatedTransport  ``--demo``: deterministic replies, no network
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import orjson

from spendgate.errors import UpstreamUnavailable
from spendgate.proxy import simulated

log = logging.getLogger("spendgate.proxy")


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    stream: bool
    timeout: float


async def _no_chunks() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    #: the whole body (non-streaming, or an error status on a streaming call)
    body: bytes = b""
    #: the body in pieces, when streaming a 2xx
    chunks: AsyncIterator[bytes] = field(default_factory=_no_chunks)
    close: Callable[[], Awaitable[None]] = _nothing


class Transport(Protocol):
    async def send(self, request: UpstreamRequest) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


def unavailable(what: str, request: UpstreamRequest, exc: Exception) -> UpstreamUnavailable:
    """The client learns what failed and the kind of error; the provider's address (and
    the driver's text, which names it) goes to the log only."""
    log.warning("%s: %s %s: %r", what, request.method, _address(request.url), exc)
    return UpstreamUnavailable(f"{what} ({type(exc).__name__})")


def _address(url: str) -> str:
    """Scheme, host, port and path of ``url``, never user-info or query (which may hold a key)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


SIMULATED_HEADER = {"x-spendgate-simulated": "true"}


class SimulatedTransport:
    """The built-in simulated provider (``--demo``): answers in-process, deterministically."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        path = urlsplit(request.url).path
        body = orjson.loads(request.body or b"{}")
        headers = {"content-type": "application/json", **SIMULATED_HEADER}
        if path == "/v1/messages":
            if request.stream:
                return self._stream(simulated.anthropic_stream(body))
            status, payload = simulated.anthropic_response(body)
        else:
            sub = path.removeprefix("/v1")
            if request.stream and sub in ("/chat/completions", "/completions", "/responses"):
                return self._stream(simulated.openai_stream(sub, body))
            status, payload = simulated.openai_response(sub, body)
        return UpstreamResponse(status, headers, orjson.dumps(payload))

    def _stream(self, events: list[bytes]) -> UpstreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for event in events:
                await asyncio.sleep(0)
                yield event

        headers = {"content-type": "text/event-stream", **SIMULATED_HEADER}
        return UpstreamResponse(200, headers, chunks=chunks())

    async def aclose(self) -> None:
        return None
