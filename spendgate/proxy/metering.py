"""Usage out of provider responses, whole or streamed (pure, no I/O).

A ``StreamMeter`` sees every upstream byte of an SSE stream once, splits it into
events, remembers the usage the provider reports, and decides which events reach the
client (the usage chunk spendgate asked for on the client's behalf is dropped).
Only events that can carry usage are parsed, so a long stream costs a substring
search per event, not a JSON parse. The service tier or speed the provider reports it
ran the call at (``core.pricing.price_context``; the call is billed at it) is read from
what is parsed for the usage anyway: the answer, a chat stream's usage chunk, the event
that ends a Responses stream, an Anthropic ``usage``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from spendgate.core.pricing import PriceContextKey, price_context
from spendgate.core.usage import TokenUsage, from_anthropic, from_openai, searches_in


def usage_from_body(
    kind: str, body: bytes
) -> tuple[TokenUsage | None, str | None, PriceContextKey]:
    """Usage of a non-streaming response, ``None`` when the body carries none; the
    answer's id when it is a Responses answer (a later call may continue it); and the
    tier the provider reports it ran at (OpenAI's ``service_tier``, Anthropic's
    ``usage.service_tier`` and ``usage.speed``)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, ()
    if not isinstance(payload, dict):
        return None, None, ()
    if kind == "message":
        usage = payload.get("usage")
        reported = price_context(usage) if isinstance(usage, dict) else ()
        return from_anthropic(usage), None, reported
    if kind != "response":
        return from_openai(payload.get("usage")), None, price_context(payload)
    answer = payload.get("id")
    usage = from_openai(payload.get("usage"), searches_in(payload.get("output")))
    return usage, answer if isinstance(answer, str) else None, price_context(payload)


def _data(event: bytes) -> bytes | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def _loads(data: bytes | None) -> dict[str, Any] | None:
    if not data or data == b"[DONE]":
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


#: what an event that carries usage or ends the stream contains, per kind; a match is
#: only a candidate (the event is parsed), a miss is certain
_MARKERS = {
    # message_start, message_delta, message_stop; a search's ``server_tool_use`` block
    "message": (b"message_", b'"error"', b"server_tool_use"),
    "response": (
        b"response.completed", b"response.incomplete", b"response.failed", b'"error"',
        b"web_search_call",
    ),
}  # fmt: skip
_CHAT_MARKERS = (b'"usage":{', b'"usage": {', b"[DONE]", b'"error"')
#: the events that end a ``/v1/responses`` stream, each carrying the response (and the
#: usage the provider bills, when it reports it): ``response.incomplete`` is a normal end
#: (the output cap reached, as a chat's ``finish_reason: length``), ``response.failed``
#: says the call failed
_RESPONSE_ENDS = ("response.completed", "response.incomplete", "response.failed")


def _carries(data: bytes, markers: tuple[bytes, ...]) -> bool:
    # ``find``, not ``in``: on CPython 3.11 ``marker in data`` first tries the marker as
    # an integer and builds (and drops) a TypeError, ~2,500 instructions a test. A plain
    # loop, not any() over a generator expression, which would build a generator a chunk
    for marker in markers:  # noqa: SIM110
        if data.find(marker) >= 0:
            return True
    return False


def _is_error(payload: dict[str, Any]) -> bool:
    """Whether an event is the provider's error, which ends its stream: Anthropic's and
    the Responses API's ``{"type": "error", …}``, OpenAI's ``{"error": …}``, and the
    ``{"object": "error", …}`` some OpenAI-compatible servers (older vLLM) send."""
    return (
        payload.get("type") == "error"
        or payload.get("error") is not None
        or payload.get("object") == "error"
    )


class StreamMeter:
    """Splits an SSE byte stream into events and records usage as it passes."""

    def __init__(self, kind: str, *, strip_usage_chunk: bool) -> None:
        self.kind = kind
        self.strip_usage_chunk = strip_usage_chunk
        self.usage: TokenUsage | None = None
        #: ``usage`` is the provider's figure for the whole call (the usage chunk,
        #: ``response.completed``, ``message_delta``), not a partial one (``message_start``)
        self.final = False
        self.events = 0
        self.done = False
        #: the provider said the call failed: with an error event (``_is_error``), which
        #: ends the stream, and the client (the SDKs raise on it) may go at once; or with
        #: ``response.failed`` (then ``done`` too), which may carry the usage it bills
        self.failed = False
        #: where, in the bytes of the ``feed`` that saw the stream end, its cost is told:
        #: before the terminal event (``[DONE]``, ``message_stop``), or after the
        #: Responses event that ends the stream (``response.completed``, ``…incomplete``,
        #: ``…failed``: it carries the usage); before the provider's error event
        self.cost_at = 0
        #: a Responses stream's answer id, from the event that ended it
        self.response_id: str | None = None
        #: the web searches seen starting (a ``server_tool_use`` block, a
        #: ``web_search_call`` item): billed by a stream cut before its final usage
        self.searches = 0
        #: the tier the provider reports it ran the call at (``usage_from_body``), from
        #: the events parsed for their usage
        self.reported: PriceContextKey = ()
        self._pending = b""
        self._markers = _MARKERS.get(kind, _CHAT_MARKERS)

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the bytes to forward to the client now."""
        buffer = self._pending + chunk
        # a ``\r\n`` may be cut between two reads: the ``\r`` waits in ``_pending``
        if chunk.find(b"\r") >= 0 or self._pending.endswith(b"\r"):
            buffer = buffer.replace(b"\r\n", b"\n")
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._pending = buffer
            return b""
        self._pending = buffer[end + 2 :]
        complete = buffer[: end + 2]
        if not _carries(complete, self._markers):
            self.events += complete.count(b"\n\n")
            return complete
        out = []
        ended = self.done or self.failed
        for event in complete.split(b"\n\n")[:-1]:
            self.events += 1
            if self._inspect(event):
                out.append(event + b"\n\n")
            if (self.done or self.failed) and not ended:
                ended = True
                told = len(out) if self.kind == "response" and self.done else len(out) - 1
                self.cost_at = sum(map(len, out[:told]))
        return b"".join(out)

    @property
    def status(self) -> str:
        """The ledger status of the stream as far as it went: ``incomplete`` when the
        provider said the call failed (billed its final usage if it gave one, else an
        estimate) or the stream stopped before both its end and its final usage; else
        ``ok``."""
        return "ok" if (self.done or self.final) and not self.failed else "incomplete"

    def billed(self, prompt: int) -> tuple[TokenUsage, bool]:
        """The usage to bill and whether it is an estimate: the provider's final figure;
        else what it reported so far with the output counted from the events that went
        by (one token an event, at least what it reported); else both estimated, the input
        the request's prompt estimate (``prompt`` tokens). An estimate has the web searches
        seen starting, at least what the provider reported so far."""
        usage = self.usage
        if usage is None:
            estimate = TokenUsage(
                input_tokens=prompt, output_tokens=self.events, web_searches=self.searches
            )
            return estimate, True
        if self.final:
            return usage, False
        output = max(usage.output_tokens, self.events)
        searches = max(usage.web_searches, self.searches)
        return msgspec.structs.replace(usage, output_tokens=output, web_searches=searches), True

    def finish(self) -> bytes:
        """Whatever trailing bytes the upstream left without a closing blank line: the
        stream's last event when the upstream closed right after it (its usage counts, a
        usage chunk the client did not ask for is still dropped), else a broken piece,
        forwarded as it came."""
        rest, self._pending = self._pending, b""
        event = rest.rstrip(b"\n")
        if not event:
            return rest
        self.events += 1
        return rest if self._inspect(event) else b""

    def _inspect(self, event: bytes) -> bool:
        """Record usage from one event; ``False`` when the event must not be forwarded."""
        data = _data(event)
        if data == b"[DONE]":
            self.done = True
            return True
        payload = _loads(data)
        if payload is None:
            return True
        if _is_error(payload):
            self.failed = True
            return True
        if self.kind == "message":
            return self._anthropic(payload)
        if self.kind == "response":
            return self._responses(payload)
        usage = payload.get("usage")
        if usage is None:
            return True
        told = from_openai(usage)
        if told is not None:  # else not the provider's figure: the call is estimated
            self.usage, self.final = told, True
        # every chunk says it: the usage chunk, parsed for its usage, is read
        self.reported = price_context(payload) or self.reported
        choices = payload.get("choices")
        return not (self.strip_usage_chunk and not choices)

    def _responses(self, payload: dict[str, Any]) -> bool:
        kind = payload.get("type")
        if kind in _RESPONSE_ENDS:
            response = payload.get("response")
            if not isinstance(response, dict):
                response = {}
            usage = response.get("usage")
            answer = response.get("id")
            self.response_id = answer if isinstance(answer, str) else None
            told = from_openai(usage, searches_in(response.get("output")))
            if told is not None:
                self.usage, self.final = told, True
            self.reported = price_context(response)
            self.done = True
            self.failed = self.failed or kind == "response.failed"
        elif kind == "response.output_item.added":
            item = payload.get("item")
            if isinstance(item, dict) and item.get("type") == "web_search_call":
                self.searches += 1
        return True

    def _anthropic(self, payload: dict[str, Any]) -> bool:
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            told = from_anthropic(usage)
            if told is not None:
                self.usage = told
            self._report(usage)
        elif kind == "message_delta":
            # a delta that tells no figure keeps what message_start said, as a partial one
            usage = payload.get("usage")
            told = from_anthropic(usage, self.usage)
            if told is not None:
                self.usage, self.final = told, True
            self._report(usage)
        elif kind == "message_stop":
            self.done = True
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict) and block.get("type") == "server_tool_use":
                self.searches += block.get("name") == "web_search"
        return True

    def _report(self, usage: Any) -> None:
        """An Anthropic ``usage``'s tier and speed, each kept until a later one tells it
        again (as its figures are)."""
        if isinstance(usage, dict) and (told := price_context(usage)):
            self.reported = tuple({**dict(self.reported), **dict(told)}.items())
