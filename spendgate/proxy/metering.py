"""Usage out of provider responses, whole or streamed (pure, no I/O).

A ``StreamMeter`` sees every upstream byte of an SSE stream once, splits it into
events, remembers the usage the provider reports, and decides which events reach the
client (the usage chunk spendgate asked for on the client's behalf is dropped).
Only events that can carry usage are parsed, so a long stream costs a substring
search per event, not a JSON parse.
"""

from __future__ import annotations

from typing import Any

import orjson

from spendgate.core.usage import TokenUsage, from_anthropic, from_openai


def usage_from_body(kind: str, body: bytes) -> TokenUsage | None:
    """Usage of a non-streaming response, or ``None`` when the body carries none."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    if kind == "message":
        return from_anthropic(payload.get("usage"))
    return from_openai(payload.get("usage"))


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


class StreamMeter:
    """Splits an SSE byte stream into events and records usage as it passes."""

    def __init__(self, kind: str, *, strip_usage_chunk: bool) -> None:
        self.kind = kind
        self.strip_usage_chunk = strip_usage_chunk
        self.usage: TokenUsage | None = None
        self.events = 0
        self.done = False
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the bytes to forward to the client now."""
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buffer = self._pending + chunk
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._pending = buffer
            return b""
        self._pending = buffer[end + 2 :]
        complete = buffer[: end + 2]
        if not self._needs_inspection(complete):
            self.events += complete.count(b"\n\n")
            return complete
        out = []
        for event in complete.split(b"\n\n")[:-1]:
            self.events += 1
            if self._inspect(event):
                out.append(event + b"\n\n")
        return b"".join(out)

    def finish(self) -> bytes:
        """Whatever trailing bytes the upstream left without a closing blank line."""
        rest, self._pending = self._pending, b""
        return rest

    def _needs_inspection(self, data: bytes) -> bool:
        if self.kind == "message":
            return b"message_start" in data or b"message_delta" in data or b"message_stop" in data
        if self.kind == "response":
            return (
                b"response.completed" in data
                or b"response.incomplete" in data
                or b"response.failed" in data
            )
        return b'"usage":{' in data or b'"usage": {' in data or b"[DONE]" in data

    def _inspect(self, event: bytes) -> bool:
        """Record usage from one event; ``False`` when the event must not be forwarded."""
        data = _data(event)
        if data == b"[DONE]":
            self.done = True
            return True
        payload = _loads(data)
        if payload is None:
            return True
        if self.kind == "message":
            return self._anthropic(payload)
        if self.kind == "response":
            response = payload.get("response")
            if isinstance(response, dict) and response.get("usage") is not None:
                self.usage = from_openai(response["usage"])
                self.done = True
            return True
        usage = payload.get("usage")
        if usage is None:
            return True
        self.usage = from_openai(usage)
        choices = payload.get("choices")
        return not (self.strip_usage_chunk and not choices)

    def _anthropic(self, payload: dict[str, Any]) -> bool:
        kind = payload.get("type")
        if kind == "message_start":
            message = payload.get("message") or {}
            self.usage = from_anthropic(message.get("usage"), self.usage)
        elif kind == "message_delta":
            self.usage = from_anthropic(payload.get("usage"), self.usage)
        elif kind == "message_stop":
            self.done = True
        return True
