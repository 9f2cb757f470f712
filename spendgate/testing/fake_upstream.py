"""A fake OpenAI + Anthropic upstream: a raw ASGI app answering from ``spendgate.proxy.simulated``.

The token counts (``/v1/messages/count_tokens``, ``/v1/responses/input_tokens``) answer
the prompt tokens the same request's answer reports (``simulated.input_tokens``).

Tests serve it with :func:`serve_in_thread`, point a client (or the gateway) at it, then
assert on ``requests``. The benchmark runs it on its own::

    python -m spendgate.testing.fake_upstream --port 9100

Knobs are plain attributes, set by the test that needs them:

* ``fail_status`` / ``fail_count``  answer the next ``fail_count`` requests (all of them
  when ``None``) with that status and a provider-shaped error body.
* ``fail_headers``                  extra headers on those failures (e.g. ``retry-after``).
* ``delay_seconds``                 wait before answering.
* ``stream_delay_seconds``          wait between stream events.
* ``drop_stream_after``             close the connection after N events, mid-stream,
  before any usage or ``[DONE]``.
* ``stream_error_after``            after N events (negative: all but the last -N, e.g.
  -1 after ``message_delta``), send the provider's own error event (Anthropic's
  ``event: error``, OpenAI's ``data: {"error": …}``, the Responses API's ``event:
  error``) and end the stream.
* ``stream_error_form``             how that error looks: ``"own"`` (the provider's, above),
  ``"vllm"`` (``data: {"object": "error", …}`` then ``data: [DONE]``, as older vLLM and
  other OpenAI-compatible servers send) or ``"failed"`` (the Responses API's
  ``response.failed``, carrying the usage it bills).
* ``required_api_key``              demand ``Authorization: Bearer``, ``x-api-key`` or
  ``api-key`` carrying it, else 401 (an OpenAI-style one shows the start and end of the
  key it got, as OpenAI's does).
* ``[[slow:S]]`` in a prompt          wait S seconds before answering that request (a
  knob a test can use on an upstream running in another process).
* ``redirect_to``                   answer every request with a 307 to this base URL
  (the same path), as a moved or misconfigured endpoint would.
* ``stream_gate``                   a ``threading.Event``: streams send their first event,
  then wait for it to be set before the rest (a call held open as long as a test likes).
* ``ignored_fields``                request fields answered as if absent, as a server that
  does not know them would (Ollama's OpenAI layer ignores ``max_completion_tokens``).
* ``answer_gate``                   a ``threading.Event``: a request with ``[[gated]]`` in
  its prompt waits for it to be set before it is answered (a call kept with the provider
  until the test lets it go, however slowly a loaded machine gets there).
* ``reported_usage``                when not ``AS_SIMULATED``: the usage every answer
  reports instead of its own (any JSON value, a malformed one included): a whole
  answer's ``usage``, a chat or completions stream's usage chunk, a Responses stream's
  final ``response.usage``, an Anthropic stream's ``message_delta`` usage.
* ``reported_tier``                 fields every answer reports its call ran at, as the
  provider does (e.g. ``{"service_tier": "priority"}``; Anthropic also ``"speed"``):
  OpenAI's on the answer and on every chat or completions chunk, the Responses object
  in the answer and in every stream event that carries it; Anthropic's in the answer's
  ``usage`` and in its stream's ``message_start`` and ``message_delta`` usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import re
import socket
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import uvicorn

from spendgate.errors import InvalidRequest
from spendgate.proxy import simulated

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
StreamErrorForm = Literal["own", "vllm", "failed"]

MAX_RECORDED = 1000
_SLOW = re.compile(rb"\[\[slow:([0-9]+(?:\.[0-9]+)?)\]\]")
_GATED = b"[[gated]]"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_OPENAI_PATHS = (
    "/chat/completions", "/completions", "/embeddings", "/responses", "/responses/input_tokens",
)  # fmt: skip
_ANTHROPIC_KINDS = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
    529: "overloaded_error",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the fake upstream received."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any
    #: the body's bytes as they came (``json`` is them parsed, a repeated key's last value)
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: which provider's wire format, and which simulated endpoint."""

    provider: str  # "openai" | "anthropic"
    endpoint: str  # "/chat/completions", "/models", "/messages", …
    deployment: str | None = None


def route(method: str, path: str) -> Route | None:
    """Map a URL path to a :class:`Route`, or ``None`` for 404."""
    if method == "GET" and path == "/v1/models":
        return Route("openai", "/models")
    if method != "POST":
        return None
    if path == "/v1/messages":
        return Route("anthropic", "/messages")
    if path == "/v1/messages/count_tokens":
        return Route("anthropic", "/messages/count_tokens")
    if path.startswith("/v1/") and path[3:] in _OPENAI_PATHS:
        return Route("openai", path[3:])
    parts = path.split("/", 4)  # "", "openai", "deployments", name, rest
    if len(parts) == 5 and parts[1:3] == ["openai", "deployments"] and parts[3]:
        rest = "/" + parts[4]
        if rest in _OPENAI_PATHS[:3]:
            return Route("openai", rest, deployment=parts[3])
    return None


def error_body(provider: str, status: int, message: str) -> dict[str, Any]:
    """A provider-shaped error body for ``status``."""
    if provider == "anthropic":
        kind = _ANTHROPIC_KINDS.get(status, "api_error")
        return simulated.anthropic_error(message, kind=kind)
    kind = "invalid_request_error" if status < 500 and status != 429 else "server_error"
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    return simulated.openai_error(message, kind="requests" if status == 429 else kind, code=code)


def _presented_keys(headers: dict[str, str]) -> set[str]:
    auth = headers.get("authorization", "")
    bearer = auth[7:] if auth[:7].lower() == "bearer " else None
    return {k for k in (bearer, headers.get("x-api-key"), headers.get("api-key")) if k}


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(
    send: Send, status: int, body: Any, extra: dict[str, str] | None = None
) -> None:
    raw = orjson.dumps(body)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(raw)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": raw})


#: ``FakeUpstream.reported_usage`` when answers report their own simulated usage
AS_SIMULATED: Any = object()
_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")


def _parsed(event: bytes) -> tuple[bytes, dict[str, Any]] | None:
    """One SSE event's lines but its ``data:``, and its data's object (None: none)."""
    lines = event.rstrip(b"\n").split(b"\n")
    head = b"".join(line + b"\n" for line in lines if not line.startswith(b"data: "))
    data = [line[6:] for line in lines if line.startswith(b"data: ")]
    try:
        payload = orjson.loads(data[0]) if data else None
    except orjson.JSONDecodeError:
        return None
    return (head, payload) if isinstance(payload, dict) else None


def with_usage(event: bytes, usage: Any) -> bytes:
    """``event`` (one SSE event) with ``usage`` as the final usage it reports, if it
    reports one; else unchanged."""
    parsed = _parsed(event)
    if parsed is None:
        return event
    head, payload = parsed
    kind = payload.get("type")
    if kind in _RESPONSE_ENDS and isinstance(payload.get("response"), dict):
        payload["response"]["usage"] = usage
    elif kind == "message_delta" or (kind is None and payload.get("usage") is not None):
        payload["usage"] = usage
    else:
        return event
    return head + _data(payload)


def with_tier(event: bytes, tier: dict[str, str]) -> bytes:
    """``event`` (one SSE event) with the ``tier`` fields where the provider reports the
    tier it ran the call at (``FakeUpstream.reported_tier``), if the event carries it."""
    parsed = _parsed(event)
    if parsed is None:
        return event
    head, payload = parsed
    kind = payload.get("type")
    message = payload.get("message")
    if kind == "message_start" and isinstance(message, dict):
        target = message.get("usage")
    elif kind == "message_delta":
        target = payload.get("usage")
    elif isinstance(payload.get("response"), dict):
        target = payload["response"]
    elif "choices" in payload:
        target = payload
    else:
        return event
    if not isinstance(target, dict):
        return event
    target.update(tier)
    return head + _data(payload)


def _data(payload: Any) -> bytes:
    """``payload`` as one SSE event's ``data:`` line (and the blank line that ends it)."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def stream_events(where: Route, body: dict[str, Any]) -> list[bytes]:
    """The SSE events of the simulated stream ``body`` asks ``where`` for; raises
    ``InvalidRequest`` on bad input."""
    if where.provider == "anthropic":
        return simulated.anthropic_stream(body)
    return simulated.openai_stream(where.endpoint, body)


def failing_stream(
    where: Route, body: dict[str, Any], after: int, form: StreamErrorForm = "own"
) -> list[bytes]:
    """That stream's first ``after`` events, then the provider's error in ``form`` (see
    ``stream_error_form``), which ends it."""
    kept = stream_events(where, body)[:after]
    if form == "failed":
        return [*kept, simulated.responses_failed(body, len(kept))]
    if form == "vllm":
        error = {"object": "error", "message": "Overloaded", "type": "ServiceUnavailableError",
                 "param": None, "code": 503}  # fmt: skip
        return [*kept, _data(error), b"data: [DONE]\n\n"]
    if where.endpoint == "/responses":
        error = {"type": "error", "code": "server_error", "message": "Overloaded",
                 "param": None, "sequence_number": len(kept)}  # fmt: skip
        return [*kept, b"event: error\n" + _data(error)]
    event = b"event: error\n" if where.provider == "anthropic" else b""
    return [*kept, event + _data(error_body(where.provider, 529, "Overloaded"))]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class FakeUpstream:
    """ASGI app faking OpenAI, Azure OpenAI and Anthropic; see the module docstring."""

    def __init__(self, models: tuple[str, ...] = simulated.SIMULATED_MODELS) -> None:
        self.models = models
        self.requests: list[RecordedRequest] = []
        self.fail_status: int | None = None
        self.fail_count: int | None = None
        self.fail_headers: dict[str, str] = {}
        self.delay_seconds: float = 0.0
        self.stream_delay_seconds: float = 0.0
        self.drop_stream_after: int | None = None
        self.stream_error_after: int | None = None
        self.stream_error_form: StreamErrorForm = "own"
        self.required_api_key: str | None = None
        self.stream_gate: threading.Event | None = None
        self.answer_gate: threading.Event | None = None
        self.redirect_to: str | None = None
        self.reported_usage: Any = AS_SIMULATED
        self.reported_tier: dict[str, str] = {}
        self.ignored_fields: frozenset[str] = frozenset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    def _record(self, scope: Scope, raw: bytes) -> RecordedRequest:
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        seen = RecordedRequest(scope["method"], scope["path"], query, headers, body, raw)
        self.requests.append(seen)
        if len(self.requests) > MAX_RECORDED:
            del self.requests[: len(self.requests) - MAX_RECORDED]
        return seen

    def _refusal(self, where: Route, seen: RecordedRequest) -> tuple[int, str] | None:
        """An injected or authentication failure for this request, if any."""
        key = self.required_api_key
        if key is not None and key not in _presented_keys(seen.headers):
            if where.provider == "anthropic":
                return 401, "invalid x-api-key"
            # as OpenAI says it: the start and the end of the key it was given
            shown = [f"{k[:8]}{'*' * (len(k) - 12)}{k[-4:]}" for k in _presented_keys(seen.headers)]
            return 401, f"Incorrect API key provided: {', '.join(shown) or 'none'}."
        if self.fail_status is None or self.fail_count == 0:
            return None
        if self.fail_count is not None:
            self.fail_count -= 1
        return self.fail_status, f"Simulated upstream failure ({self.fail_status})."

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        seen = self._record(scope, raw)
        where = route(seen.method, seen.path)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        slow = _SLOW.search(raw)
        if slow:
            await asyncio.sleep(float(slow.group(1)))
        if self.answer_gate is not None and _GATED in raw:
            await asyncio.to_thread(self.answer_gate.wait)
        if self.redirect_to is not None:
            location = (self.redirect_to + seen.path).encode("latin-1")
            headers = [(b"location", location), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 307, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        if where is None:
            await _send_json(send, 404, error_body("openai", 404, f"Unknown URL {seen.path}"))
            return
        refusal = self._refusal(where, seen)
        if refusal is not None:
            extra = self.fail_headers if refusal[0] == self.fail_status else None
            await _send_json(send, refusal[0], error_body(where.provider, *refusal), extra)
        elif where.endpoint == "/models":
            await _send_json(send, 200, simulated.models_list(self.models))
        elif not isinstance(seen.json, dict):
            message = "We could not parse the JSON body of your request."
            await _send_json(send, 400, error_body(where.provider, 400, message))
        else:
            await self._answer(where, seen.json, send)

    async def _answer(self, where: Route, body: dict[str, Any], send: Send) -> None:
        if where.deployment is not None:
            body = {**body, "model": where.deployment}
        if self.ignored_fields:
            body = {k: v for k, v in body.items() if k not in self.ignored_fields}
        if where.endpoint == "/messages/count_tokens":  # never streams
            await _send_json(send, *simulated.anthropic_count(body))
            return
        if body.get("stream") is True:
            cut = self.stream_error_after
            try:
                events = (
                    stream_events(where, body)
                    if cut is None
                    else failing_stream(where, body, cut, self.stream_error_form)
                )
            except InvalidRequest as exc:
                await _send_json(send, 400, error_body(where.provider, 400, exc.message))
                return
            if self.reported_usage is not AS_SIMULATED:
                events = [with_usage(event, self.reported_usage) for event in events]
            if self.reported_tier:
                events = [with_tier(event, self.reported_tier) for event in events]
            await self._send_stream(send, events)
            return
        if where.provider == "anthropic":
            status, answer = simulated.anthropic_response(body)
        else:
            status, answer = simulated.openai_response(where.endpoint, body)
        if self.reported_usage is not AS_SIMULATED and "usage" in answer:
            answer["usage"] = self.reported_usage
        if self.reported_tier and status == 200:
            where_told = answer.get("usage") if where.provider == "anthropic" else answer
            if isinstance(where_told, dict):
                where_told.update(self.reported_tier)
        await _send_json(send, status, answer)

    async def _send_stream(self, send: Send, events: list[bytes]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        drop = self.drop_stream_after
        for n, event in enumerate(events):
            if drop is not None and n >= drop:
                return  # no final body message: the server closes the connection mid-stream
            if n == 1 and self.stream_gate is not None:
                await asyncio.to_thread(self.stream_gate.wait)
            if n and self.stream_delay_seconds:
                await asyncio.sleep(self.stream_delay_seconds)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@dataclass(frozen=True, slots=True)
class ServerHandle:
    """A uvicorn server running in a daemon thread; ``stop()`` shuts it down."""

    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if isinstance(self.server, _PromptServer):
            self.server.wake()
        self.thread.join(timeout)
        self.sock.close()


class _PromptServer(uvicorn.Server):
    """uvicorn's server, stopping as soon as it is told: uvicorn looks at
    ``should_exit`` every 0.1 s, then sleeps 0.1 s more before it waits for the
    connections to close, and the tests stop thousands of servers (0.17 s each). The
    same steps in the same order: stop accepting, shut the connections down, wait for
    them and for the request tasks, then the app's lifespan shutdown."""

    _loop: asyncio.AbstractEventLoop | None = None
    _woken: asyncio.Event | None = None

    def wake(self) -> None:
        """Have the main loop look at ``should_exit`` now (from any thread)."""
        loop, woken = self._loop, self._woken
        if loop is not None and woken is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended: it stopped already
                loop.call_soon_threadsafe(woken.set)

    async def main_loop(self) -> None:
        self._woken = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        # uvicorn sets no event when the last connection or request task is gone
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()


def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> ServerHandle:
    """Serve ``app`` with uvicorn on a socket bound here (no port race); wait until up."""
    # IPPROTO_TCP (not 0) so asyncio sets TCP_NODELAY on accepted connections; without
    # it every response waits ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, loop="asyncio", lifespan="on", log_level="warning")
    server = _PromptServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    handle = ServerHandle(server=server, thread=thread, sock=sock, host=host)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("uvicorn exited before it started listening")
        thread.join(0.005)
    return handle


def main(argv: list[str] | None = None) -> None:
    """Serve a :class:`FakeUpstream` in the foreground (used by the benchmark)."""
    parser = argparse.ArgumentParser(description="Fake OpenAI/Anthropic upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args(argv)
    fast = all(importlib.util.find_spec(m) for m in ("uvloop", "httptools"))
    uvicorn.run(
        FakeUpstream(), host=args.host, port=args.port, log_level="warning", access_log=False,
        loop="uvloop" if fast else "asyncio", http="httptools" if fast else "auto",
    )  # fmt: skip


if __name__ == "__main__":
    main()
