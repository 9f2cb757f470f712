"""Raw ASGI plumbing for the hot path: bodies in, JSON and errors out, per wire format."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from spendgate.core.money import format_usd
from spendgate.errors import PayloadTooLarge, SpendgateError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def header_dict(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The whole request body, refusing anything over ``limit`` bytes (413)."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
    parts, _ = await _chunks(receive, limit)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def _chunks(receive: Receive, limit: int) -> tuple[list[bytes], bool]:
    """The body's chunks as they arrive, up to ``limit`` bytes in all (413 past it), and
    whether it came whole (False: the client left first)."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return parts, False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        parts.append(chunk)
        if not message.get("more_body", False):
            return parts, True


async def buffered(receive: Receive, limit: int) -> Receive | None:
    """For a request that declared no length (chunked): its body read whole here, up to
    ``limit`` bytes (413 past it), and a ``receive`` that replays it; ``None`` when the
    client left before sending all of it."""
    parts, whole = await _chunks(receive, limit)
    if not whole:
        return None
    pending: list[Message] = [{"type": "http.request", "body": b"".join(parts)}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def error_body(err: SpendgateError, wire: str) -> bytes:
    extra = err.extra()
    if wire == "anthropic":
        return orjson.dumps(
            {
                "type": "error",
                "error": {"type": err.anthropic_kind, "message": err.message, **extra},
            }
        )
    return orjson.dumps(
        {
            "error": {
                "message": err.message,
                "type": err.kind,
                "code": err.code,
                "param": err.param,
                **extra,
            }
        }
    )


def stream_error_event(err: SpendgateError, wire: str) -> bytes:
    """``err`` as the last event of a stream that cannot go on, in the wire's own form
    (what the providers send and the SDKs raise on): Anthropic ``event: error``, OpenAI
    a ``data:`` line holding ``{"error": …}``."""
    event = b"event: error\n" if wire == "anthropic" else b""
    return event + b"data: " + error_body(err, wire) + b"\n\n"


def cost_figure(nanos: int | None) -> str:
    """A call's cost as the client is shown it, in ``x-spendgate-cost-usd`` and in a
    stream's cost comment: the ledger's exact figure in USD (``"0.000123"``), or
    ``"unknown"`` when its price is unknown."""
    return "unknown" if nanos is None else format_usd(nanos)


def cost_comment(nanos: int | None, status: str, estimated: bool) -> bytes:
    """A streamed call's cost as an SSE comment, which conforming parsers (the SDKs
    among them) skip: ``: x-spendgate-cost-usd <figure>``, then `` status=<ledger
    status>`` unless ``ok`` and `` usage=estimated`` when the usage is an estimate."""
    line = b": x-spendgate-cost-usd " + cost_figure(nanos).encode()
    if status != "ok":
        line += b" status=" + status.encode()
    if estimated:
        line += b" usage=estimated"
    return line + b"\n\n"


def _raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


async def send_bytes(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = _raw_headers(headers)
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: SpendgateError, wire: str, request_id: str) -> None:
    headers = {"content-type": "application/json", "x-request-id": request_id, **err.headers()}
    await send_bytes(send, err.status, error_body(err, wire), headers)


async def start_stream(send: Send, headers: dict[str, str]) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _raw_headers(headers)})
