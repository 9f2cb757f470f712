"""Upstream transports, passed in: real HTTP (aiohttp) or the in-process simulator.

Transport.send(UpstreamRequest) -> UpstreamResponse
  AiohttpTransport    real providers; driver errors become UpstreamUnavailable /
                      UpstreamTimeout here, at the boundary
  SimulatedTransport  ``--demo``: deterministic replies, no network
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

from spendgate.core.value import Value
from spendgate.errors import UpstreamTimeout, UpstreamUnavailable
from spendgate.proxy import simulated

log = logging.getLogger("spendgate.proxy")


class UpstreamRequest(Value, frozen=True):
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
    log.warning("%s: %s %s: %s", what, request.method, _address(request.url), _described(exc))
    return UpstreamUnavailable(f"{what} ({type(exc).__name__})")


def _described(exc: Exception) -> str:
    """The driver's error for the log. Not its ``repr``: a ``ClientResponseError`` (an
    answer that does not parse, a redirect) holds the request with its headers, the
    provider key among them, and its ``str`` the full URL."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__}(status={exc.status}, message={exc.message!r})"
    return f"{type(exc).__name__}({exc})"


def _delivered(upload: aiohttp.UploadTracker) -> bool:
    """Whether the request's body was written in full (after its headers) before it
    failed: not when it failed connecting (connect timeout, refused, DNS), nor while
    the body was still going out (the write not finished, or cut short)."""
    done = upload.upload_complete
    return done.done() and not done.cancelled() and done.exception() is None


def _address(url: str) -> str:
    """Scheme, host, port and path of ``url``, never user-info or query (which may hold a key)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class AiohttpTransport:
    """Pooled keep-alive connections to every provider."""

    def __init__(self, *, limit: int = 1000) -> None:
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit, ttl_dns_cache=300, enable_cleanup_closed=True
            )
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
            )
        return self._session

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def _timeout(seconds: float, stream: bool) -> aiohttp.ClientTimeout:
        """Streams time out per read (a long answer is fine, a stalled one is not)."""
        if stream:
            return aiohttp.ClientTimeout(total=None, connect=10, sock_read=seconds)
        return aiohttp.ClientTimeout(total=seconds, connect=10)

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        timeout = self._timeout(request.timeout, request.stream)
        # whether the whole request reached the provider before a timeout: then it is
        # generating (and bills the call) whether or not its answer ever arrives
        upload = aiohttp.UploadTracker()
        try:
            resp = await self._client().request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
                # a redirect would carry the provider key to another host (aiohttp drops
                # only Authorization there, not x-api-key or api-key): never followed
                allow_redirects=False,
                upload_tracker=upload,
            )
        except TimeoutError as exc:
            if _delivered(upload):
                raise UpstreamTimeout("the upstream provider did not answer in time") from exc
            raise UpstreamTimeout(
                "the upstream provider could not be reached in time (nothing reached it)",
                billable=False,
            ) from exc
        except aiohttp.ClientError as exc:
            raise unavailable("the upstream provider could not be reached", request, exc) from exc
        if 300 <= resp.status < 400:
            resp.release()
            log.warning(
                "the upstream provider redirected %s %s (HTTP %d); check its base_url",
                request.method,
                _address(request.url),
                resp.status,
            )
            raise UpstreamUnavailable(
                f"the upstream provider answered with a redirect (HTTP {resp.status}), "
                "which spendgate does not follow"
            )
        headers = {k.lower(): v for k, v in resp.headers.items()}
        if not request.stream or resp.status >= 300:
            try:
                body = await resp.read()
            except TimeoutError as exc:
                # an error answer (its body stalled) is not a call the provider bills
                if resp.status < 300:
                    raise UpstreamTimeout("the upstream provider did not answer in time") from exc
                raise UpstreamTimeout(
                    f"the upstream provider's error answer (HTTP {resp.status}) did not "
                    "arrive in time",
                    billable=False,
                ) from exc
            except aiohttp.ClientError as exc:
                raise unavailable("the upstream connection failed", request, exc) from exc
            finally:
                resp.release()
            return UpstreamResponse(resp.status, headers, body)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in resp.content.iter_any():
                    yield chunk
            except TimeoutError as exc:
                raise UpstreamTimeout("the upstream stream stalled") from exc
            except aiohttp.ClientError as exc:
                raise unavailable("the upstream stream broke", request, exc) from exc

        async def close() -> None:
            resp.release()

        return UpstreamResponse(resp.status, headers, chunks=chunks(), close=close)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


SIMULATED_HEADER = {"x-spendgate-simulated": "true"}


class SimulatedTransport:
    """The built-in simulated provider (``--demo``): answers in-process, deterministically."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        path = urlsplit(request.url).path
        body = orjson.loads(request.body or b"{}")
        headers = {"content-type": "application/json", **SIMULATED_HEADER}
        if path == "/v1/messages/count_tokens":
            status, payload = simulated.anthropic_count(body)
        elif path == "/v1/messages":
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
