"""A deterministic simulated LLM provider (pure, no I/O).

Used by ``spendgate serve --demo`` and by the fake upstream in ``spendgate.testing``.
Every answer is a function of the request body alone: the reply text and its length
come from a hash of the prompt, ``created`` is derived from that hash, never the clock.

Token counts: each text piece of the prompt costs ``estimate_tokens(piece)`` and each
image, file or audio part ``MEDIA_TOKENS`` (a provider makes tokens of them that their
bytes do not show); the reply is a list of pieces (``"Simulated"``, ``" reply:"``,
``" word"``…), one token each. A token count (``/v1/messages/count_tokens``,
``/v1/responses/input_tokens``) answers the prompt tokens the same request is billed.

Tools and structured output (``simulated_shapes``): a request that offers function tools
gets a call of one (``tool_calls`` / ``function_call`` / ``tool_use``, finish reason
``tool_calls`` / ``tool_use``) unless ``tool_choice`` says none; one that asks for a JSON
``response_format`` (``text.format``, ``output_config.format``) gets a JSON document that
fits its schema. Their text comes in pieces of four characters, a token each.

Test knobs, read from the prompt text and ignored otherwise:

* ``[[cached:N]]``       N prompt tokens were read from the cache (capped at the prompt).
* ``[[reasoning:N]]``    N reasoning tokens, counted inside the completion tokens.
* ``[[cache_write:N]]``  (Anthropic) N prompt tokens were written to the cache.
* ``[[cache_write_1h:N]]`` (Anthropic) N of those writes were to the 1-hour cache (capped at
  the writes; the rest went to the 5-minute one), reported in ``usage.cache_creation``.
* ``[[searches:N]]``     a request that offers a web search tool ran N web searches (at
  most its ``max_uses`` / ``max_tool_calls``): Anthropic reports them in
  ``usage.server_tool_use.web_search_requests``, the Responses API as ``web_search_call``
  items before the answer in its output.

``n`` (Chat Completions, Completions), ``best_of`` and a batch of prompts (Completions)
are honoured the way the provider bills them: every answer generated counts in the
completion tokens (the batch's text is one reply's, its answers as many as its prompts).

Bad input raises :class:`~spendgate.errors.InvalidRequest` inside the stream builders;
the ``*_response`` functions render it as the provider's error body instead.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import orjson

from spendgate.core.worst_case import expanding_parts, prompts, searches_bound, token_lists
from spendgate.errors import InvalidRequest
from spendgate.proxy.simulated_shapes import TEXT, Shape, document, shape_of

SIMULATED_MODELS: tuple[str, ...] = ("demo-small", "demo-large")

_BASE_CREATED = 1_700_000_000
_WORDS = (
    "budget", "token", "gateway", "ledger", "forecast", "cache", "model", "spend",
    "alert", "window", "quota", "price", "stream", "usage", "limit", "audit",
)  # fmt: skip
_KNOB = re.compile(r"\[\[(cached|reasoning|cache_write_1h|cache_write|searches):(\d+)\]\]")
_CHAT_PATHS = ("/chat/completions", "/completions")
#: the prompt tokens of an image, file or audio part (a 1024x1024 image at high detail
#: on gpt-4o)
MEDIA_TOKENS = 765


@dataclass(frozen=True, slots=True)
class Reply:
    """What the simulated model "says" for one prompt, and what it costs."""

    key: str
    model: str
    pieces: tuple[str, ...]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    truncated: bool
    #: the part of ``cache_write_tokens`` written to the 1-hour cache
    cache_write_1h_tokens: int = 0
    #: text, a JSON document, or a call of one of the request's tools (its arguments)
    shape: Shape = TEXT
    #: answers returned (``n``); completion tokens count every answer generated
    choices: int = 1
    #: the audio parts of the prompt and of the completion (Chat Completions)
    prompt_audio_tokens: int = 0
    completion_audio_tokens: int = 0
    #: web searches a server-side search tool ran
    web_searches: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def calls_tool(self) -> bool:
        return self.shape.kind == "tool"

    @property
    def call_id(self) -> str:
        return f"call_{self.key[24:48]}"

    @property
    def created(self) -> int:
        return _BASE_CREATED + int(self.key[:6], 16) % 10_000_000


def estimate_tokens(text: str) -> int:
    """Roughly four characters a token; 0 for the empty string."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def openai_error(
    message: str,
    *,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """An OpenAI-shaped error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def anthropic_error(message: str, *, kind: str = "invalid_request_error") -> dict[str, Any]:
    """An Anthropic-shaped error body."""
    return {"type": "error", "error": {"type": kind, "message": message}}


# ----------------------------------------------------------------------------- prompts


def _texts(content: Any) -> Iterator[str]:
    """The text pieces of a message content: a string, or a list of parts/blocks."""
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                yield part
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]
            elif isinstance(part, dict) and "content" in part:
                yield from _texts(part["content"])


def _require(body: dict[str, Any], field: str, kinds: type | tuple[type, ...]) -> Any:
    value = body.get(field)
    if not isinstance(value, kinds) or (isinstance(value, (list, str)) and not value):
        raise InvalidRequest(f"'{field}' is a required property", param=field)
    return value


def _messages_texts(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    if not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("each message must be an object", param="messages")
    return [t for m in messages for t in _texts(m.get("content"))]


def _openai_prompt(path: str, body: dict[str, Any]) -> list[str]:
    _require(body, "model", str)
    if path == "/chat/completions":
        return _messages_texts(body.get("messages"))
    if path == "/completions":
        prompt = _require(body, "prompt", (str, list))
        return list(_texts(prompt))
    if path == "/responses":
        given = _require(body, "input", (str, list))
        return [*_texts(body.get("instructions")), *_texts(given)]
    raise InvalidRequest(f"Unknown simulated endpoint {path!r}", code="unknown_url")


def _anthropic_prompt(body: dict[str, Any]) -> list[str]:
    _require(body, "model", str)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Field required", param="max_tokens")
    return [*_texts(body.get("system")), *_messages_texts(body.get("messages"))]


def _knob(texts: list[str], name: str) -> int:
    return sum(int(n) for t in texts for k, n in _KNOB.findall(t) if k == name)


def _cap(body: dict[str, Any]) -> int | None:
    for field in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _words(key: str, count: int) -> list[str]:
    return [_WORDS[int(key[i % 60 : i % 60 + 2], 16) % len(_WORDS)] for i in range(count)]


def _prompt_tokens(texts: list[str], media: int) -> int:
    """A prompt's tokens: its text pieces' estimates, and ``MEDIA_TOKENS`` a media part."""
    return sum(estimate_tokens(t) for t in texts) + media * MEDIA_TOKENS


def input_tokens(path: str, body: dict[str, Any]) -> int:
    """What a token count (``/v1/messages/count_tokens``, ``/responses/input_tokens``)
    answers: the prompt tokens the same request would be billed, counted as a reply's
    are (no ``max_tokens`` needed, and a Responses count may leave ``input`` out, as with
    ``previous_response_id``); raises ``InvalidRequest`` on bad input."""
    _require(body, "model", str)
    if path.endswith("/count_tokens"):
        texts = [*_texts(body.get("system")), *_messages_texts(body.get("messages"))]
        return _prompt_tokens(texts, expanding_parts(body, "message"))
    texts = [*_texts(body.get("instructions")), *_texts(body.get("input"))]
    return _prompt_tokens(texts, expanding_parts(body, "response"))


def anthropic_count(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, JSON) for ``POST /v1/messages/count_tokens``."""
    try:
        return 200, {"input_tokens": input_tokens("/messages/count_tokens", body)}
    except InvalidRequest as exc:
        return 400, anthropic_error(exc.message)


def _reply(
    model: str, texts: list[str], cap: int | None, shape: Shape = TEXT, media: int = 0
) -> Reply:
    key = hashlib.sha256("\x1f".join([model, *texts]).encode()).hexdigest()
    prompt_tokens = _prompt_tokens(texts, media)
    natural, reasoning = 16 + int(key[:2], 16) % 33, _knob(texts, "reasoning")
    whole: tuple[str, ...] = ()
    if shape.kind != "text":  # a JSON document in pieces of four characters, a token each
        doc = document(shape, _words(key, 8))
        whole = tuple(doc[i : i + 4] for i in range(0, len(doc), 4))
        natural = len(whole)
    budget = natural + reasoning if cap is None else cap
    reasoning = min(reasoning, budget)
    visible = min(natural, budget - reasoning)
    if shape.kind == "text":
        whole = ("Simulated", " reply:", *(" " + w for w in _words(key, visible)))
    cached = min(_knob(texts, "cached"), prompt_tokens)
    writes = min(_knob(texts, "cache_write"), prompt_tokens - cached)
    return Reply(
        key=key, model=model, pieces=whole[:visible], prompt_tokens=prompt_tokens,
        completion_tokens=visible + reasoning, cached_tokens=cached,
        cache_write_tokens=writes,
        cache_write_1h_tokens=min(_knob(texts, "cache_write_1h"), writes),
        reasoning_tokens=reasoning,
        truncated=visible + reasoning < natural + _knob(texts, "reasoning"), shape=shape,
    )  # fmt: skip


def _count(body: dict[str, Any], field: str) -> int:
    value = body.get(field, 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 128:
        raise InvalidRequest(f"{field} must be an integer from 1 to 128", param=field)
    return value


def openai_reply(path: str, body: dict[str, Any]) -> Reply:
    """The simulated answer to an OpenAI chat/completions/responses request."""
    texts = _openai_prompt(path, body)
    shape = TEXT
    if path in ("/chat/completions", "/responses"):
        shape = shape_of("chat" if path == "/chat/completions" else "responses", body)
    heard: list[tuple[bool, int]] = []
    media = expanding_parts(body, "response" if path == "/responses" else "chat", heard)
    reply = _reply(body.get("model", ""), texts, _cap(body), shape, media)
    modalities = body.get("modalities")
    spoken = isinstance(modalities, list) and "audio" in modalities
    if heard or spoken:  # an audio part is MEDIA_TOKENS of audio; a spoken answer all audio
        reply = replace(
            reply,
            prompt_audio_tokens=sum(audio for audio, _ in heard) * MEDIA_TOKENS,
            completion_audio_tokens=reply.completion_tokens if spoken else 0,
        )
    if path not in _CHAT_PATHS:
        return _searched(reply, texts, body, "response")
    n = _count(body, "n")
    # a batch of prompts (Completions) is answered, and billed, prompt by prompt
    generated = max(n, _count(body, "best_of")) * prompts(body) if path == "/completions" else n
    ids = sum(map(len, token_lists(body, "completion"))) if path == "/completions" else 0
    return replace(
        reply,
        choices=n,
        prompt_tokens=reply.prompt_tokens + ids,  # a prompt of token ids: a token an id
        completion_tokens=reply.completion_tokens * generated,
        reasoning_tokens=reply.reasoning_tokens * generated,
        completion_audio_tokens=reply.completion_audio_tokens * generated,
    )


def anthropic_reply(body: dict[str, Any]) -> Reply:
    """The simulated answer to an Anthropic Messages request."""
    texts = _anthropic_prompt(body)
    media = expanding_parts(body, "message")
    reply = _reply(body["model"], texts, _cap(body), shape_of("anthropic", body), media)
    return _searched(reply, texts, body, "message")


def _searched(reply: Reply, texts: list[str], body: dict[str, Any], kind: str) -> Reply:
    """``reply`` with the searches the ``[[searches:N]]`` knob asks for, as many as the
    request's web search tools allow."""
    searches = _knob(texts, "searches")
    return (
        replace(reply, web_searches=min(searches, searches_bound(body, kind)))
        if searches
        else reply
    )


# ----------------------------------------------------------------------------- OpenAI


def _chat_usage(r: Reply) -> dict[str, Any]:
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": r.cached_tokens, "audio_tokens": r.prompt_audio_tokens,
        },
        "completion_tokens_details": {
            "reasoning_tokens": r.reasoning_tokens, "audio_tokens": r.completion_audio_tokens,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }  # fmt: skip


def _responses_usage(r: Reply) -> dict[str, Any]:
    return {
        "input_tokens": r.prompt_tokens,
        "input_tokens_details": {"cached_tokens": r.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": r.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": r.reasoning_tokens},
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    }


def _finish(r: Reply) -> str:
    return "length" if r.truncated else "tool_calls" if r.calls_tool else "stop"


def _tool_call(r: Reply, arguments: str, index: int | None = None) -> dict[str, Any]:
    call = {"id": r.call_id, "type": "function",
            "function": {"name": r.shape.name, "arguments": arguments}}  # fmt: skip
    return call if index is None else {"index": index, **call}


def _chat_object(r: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if r.calls_tool else r.text,
        "refusal": None,
        "annotations": [],
    }
    if r.calls_tool:
        message["tool_calls"] = [_tool_call(r, r.text)]
    return {
        "id": f"chatcmpl-{r.key[:24]}", "object": "chat.completion", "created": r.created,
        "model": r.model, "system_fingerprint": "fp_simulated",
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": _finish(r)}
            for i in range(r.choices)
        ],
        "usage": _chat_usage(r),
    }  # fmt: skip


def _completion_object(r: Reply) -> dict[str, Any]:
    return {
        "id": f"cmpl-{r.key[:24]}", "object": "text_completion", "created": r.created,
        "model": r.model,
        "choices": [{"index": 0, "text": r.text, "logprobs": None, "finish_reason": _finish(r)}],
        "usage": _chat_usage(r),
    }  # fmt: skip


def _output_message(r: Reply, done: bool) -> dict[str, Any]:
    status = "completed" if done else "in_progress"
    if r.calls_tool:
        arguments = r.text if done else ""
        return {"type": "function_call", "id": f"fc_{r.key[:24]}", "call_id": r.call_id,
                "name": r.shape.name, "arguments": arguments, "status": status}  # fmt: skip
    part = {"type": "output_text", "text": r.text, "annotations": [], "logprobs": []}
    return {
        "type": "message", "id": f"msg_{r.key[:24]}", "role": "assistant",
        "status": status, "content": [part] if done else [],
    }  # fmt: skip


def _searches(r: Reply) -> list[dict[str, Any]]:
    """The ``web_search_call`` items of a Responses answer that searched."""
    return [
        {"type": "web_search_call", "id": f"ws_{r.key[:20]}{n:04d}", "status": "completed",
         "action": {"type": "search", "query": "simulated"}}
        for n in range(r.web_searches)
    ]  # fmt: skip


def _response_object(r: Reply, body: dict[str, Any], done: bool = True) -> dict[str, Any]:
    status = ("incomplete" if r.truncated else "completed") if done else "in_progress"
    incomplete = {"reason": "max_output_tokens"} if done and r.truncated else None
    return {
        "id": f"resp_{r.key[:24]}", "object": "response", "created_at": r.created,
        "status": status, "error": None, "incomplete_details": incomplete,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": r.model, "output": [*_searches(r), _output_message(r, True)] if done else [],
        "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None},
        "temperature": 1.0, "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
        "top_p": 1.0, "truncation": "disabled", "metadata": {},
        "usage": _responses_usage(r) if done else None,
    }  # fmt: skip


def _embedding(text: str, index: int, dims: int, as_base64: bool) -> dict[str, Any]:
    raw = hashlib.shake_256(text.encode()).digest(dims)
    vector = [round(b / 127.5 - 1.0, 6) for b in raw]
    value: Any = vector
    if as_base64:
        value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
    return {"object": "embedding", "index": index, "embedding": value}


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    model = _require(body, "model", str)
    given = _require(body, "input", (str, list))
    inputs = [given] if isinstance(given, str) else given
    if not all(isinstance(i, (str, list)) and i for i in inputs):
        raise InvalidRequest("'input' must be a string or an array of strings", param="input")
    dims = body.get("dimensions") or 8
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 8192:
        raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
    texts = [i if isinstance(i, str) else " ".join(map(str, i)) for i in inputs]
    as_b64 = body.get("encoding_format") == "base64"
    tokens = sum(
        estimate_tokens(t) if isinstance(i, str) else len(i)
        for t, i in zip(texts, inputs, strict=True)
    )
    return {
        "object": "list", "model": model,
        "data": [_embedding(t, n, dims, as_b64) for n, t in enumerate(texts)],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }  # fmt: skip


def _openai_body(path: str, body: dict[str, Any]) -> dict[str, Any]:
    if path == "/embeddings":
        return _embeddings(body)
    if path == "/responses/input_tokens":
        return {"object": "response.input_tokens", "input_tokens": input_tokens(path, body)}
    reply = openai_reply(path, body)
    if path == "/chat/completions":
        return _chat_object(reply)
    if path == "/completions":
        return _completion_object(reply)
    return _response_object(reply, body)


def openai_response(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, JSON) for a non-streaming OpenAI request; ``path`` has no ``/v1``."""
    if path not in (*_CHAT_PATHS, "/embeddings", "/responses", "/responses/input_tokens"):
        return 404, openai_error(f"Invalid URL (POST /v1{path})", code="unknown_url")
    try:
        return 200, _openai_body(path, body)
    except InvalidRequest as exc:
        return 400, openai_error(exc.message, param=exc.param, code=exc.code)


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _chunk(r: Reply, path: str, delta: str | None, finish: str | None, usage: bool) -> Any:
    if path == "/completions":
        choice: dict[str, Any] = {"index": 0, "text": delta or "", "logprobs": None}
        head = {"id": f"cmpl-{r.key[:24]}", "object": "text_completion"}
    else:
        content = {"content": delta} if delta is not None else {}
        role = {"role": "assistant", "refusal": None} if delta == "" else {}
        choice = {"index": 0, "delta": {**role, **content}, "logprobs": None}
        head = {"id": f"chatcmpl-{r.key[:24]}", "object": "chat.completion.chunk"}
    chunk = {**head, "created": r.created, "model": r.model,
             "choices": [{**choice, "finish_reason": finish}]}  # fmt: skip
    if path == "/chat/completions":
        chunk["system_fingerprint"] = "fp_simulated"
    return {**chunk, "usage": None} if usage else chunk


def _tool_chunks(r: Reply, usage: bool) -> list[dict[str, Any]]:
    """A streamed tool call: the call's id and name first, then its arguments in pieces."""
    head = _chunk(r, "/chat/completions", None, None, usage)
    deltas = [{"role": "assistant", "content": None, "tool_calls": [_tool_call(r, "", 0)]}]
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in r.pieces]
    return [{**head, "choices": [{**head["choices"][0], "delta": delta}]} for delta in deltas]


def _chat_stream(path: str, body: dict[str, Any]) -> list[bytes]:
    r = openai_reply(path, body)
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    deltas: list[str] = ([""] if path == "/chat/completions" else []) + list(r.pieces)
    if r.calls_tool:
        events = [_sse(chunk) for chunk in _tool_chunks(r, usage)]
    else:
        events = [_sse(_chunk(r, path, d, None, usage)) for d in deltas]
    events.append(_sse(_chunk(r, path, None, _finish(r), usage)))
    if usage:
        final = {**_chunk(r, path, None, None, False), "choices": [], "usage": _chat_usage(r)}
        events.append(_sse(final))
    return [*events, b"data: [DONE]\n\n"]


def _responses_events(r: Reply, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    searches = _searches(r)
    at = len(searches)  # the answer's item follows the searches'
    ids = {"item_id": f"msg_{r.key[:24]}", "output_index": at, "content_index": 0}
    item = {"output_index": at}
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    full = {**empty, "text": r.text}
    yield {"type": "response.created", "response": _response_object(r, body, False)}
    yield {"type": "response.in_progress", "response": _response_object(r, body, False)}
    for n, search in enumerate(searches):  # each search as it runs, then done
        yield {"type": "response.output_item.added", "output_index": n,
               "item": {**search, "status": "in_progress"}}  # fmt: skip
        yield {"type": "response.output_item.done", "output_index": n, "item": search}
    yield {"type": "response.output_item.added", **item, "item": _output_message(r, False)}
    if r.calls_tool:
        call = {"item_id": f"fc_{r.key[:24]}", "output_index": at}
        for piece in r.pieces:
            yield {"type": "response.function_call_arguments.delta", **call, "delta": piece}
        yield {"type": "response.function_call_arguments.done", **call, "arguments": r.text}
    else:
        yield {"type": "response.content_part.added", **ids, "part": empty}
        for piece in r.pieces:
            yield {"type": "response.output_text.delta", **ids, "delta": piece, "logprobs": []}
        yield {"type": "response.output_text.done", **ids, "text": r.text, "logprobs": []}
        yield {"type": "response.content_part.done", **ids, "part": full}
    yield {"type": "response.output_item.done", **item, "item": _output_message(r, True)}
    final = "response.incomplete" if r.truncated else "response.completed"
    yield {"type": final, "response": _response_object(r, body)}


def responses_failed(body: dict[str, Any], sequence_number: int) -> bytes:
    """The ``response.failed`` event that ends a Responses stream for ``body`` which the
    provider failed (a server error), as its ``sequence_number``-th event: it carries the
    usage the provider bills, here the whole reply's."""
    r = openai_reply("/responses", body)
    error = {"code": "server_error", "message": "Overloaded"}
    failed = {**_response_object(r, body), "status": "failed", "error": error, "output": []}
    event = {"type": "response.failed", "response": failed, "sequence_number": sequence_number}
    return _sse(event, "response.failed")


def openai_stream(path: str, body: dict[str, Any]) -> list[bytes]:
    """The SSE events of a streaming OpenAI request; raises ``InvalidRequest`` on bad input."""
    if path in _CHAT_PATHS:
        return _chat_stream(path, body)
    if path != "/responses":
        raise InvalidRequest(f"Streaming is not supported on {path!r}", param="stream")
    events = _responses_events(openai_reply(path, body), body)
    return [_sse({**e, "sequence_number": n}, e["type"]) for n, e in enumerate(events)]


# ----------------------------------------------------------------------------- Anthropic


def _anthropic_usage(r: Reply, output_tokens: int, done: bool = True) -> dict[str, Any]:
    usage = {
        "input_tokens": r.prompt_tokens - r.cached_tokens - r.cache_write_tokens,
        "cache_creation_input_tokens": r.cache_write_tokens,
        "cache_read_input_tokens": r.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": r.cache_write_tokens - r.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": r.cache_write_1h_tokens,
        },
        "output_tokens": output_tokens,
    }
    return {**usage, **_server_tools(r, done)}


def _server_tools(r: Reply, done: bool = True) -> dict[str, Any]:
    """The ``server_tool_use`` usage of a reply that searched (none without searches);
    not ``done``: as ``message_start`` reports it, before any search ran."""
    searches = r.web_searches if done else 0
    return {"server_tool_use": {"web_search_requests": searches}} if r.web_searches else {}


def _search_blocks(r: Reply) -> list[dict[str, Any]]:
    """The stream events of a reply's searches: each a ``server_tool_use`` block (the
    query) and its ``web_search_tool_result`` block, before the answer's block."""
    events: list[dict[str, Any]] = []
    for n in range(r.web_searches):
        use = f"srvtoolu_{r.key[:16]}{n:04d}"
        blocks = (
            {"type": "server_tool_use", "id": use, "name": "web_search", "input": {}},
            {"type": "web_search_tool_result", "tool_use_id": use, "content": []},
        )
        for index, block in enumerate(blocks, 2 * n):
            events += [
                {"type": "content_block_start", "index": index, "content_block": block},
                {"type": "content_block_stop", "index": index},
            ]
    return events


def _stop_reason(r: Reply) -> str:
    return "max_tokens" if r.truncated else "tool_use" if r.calls_tool else "end_turn"


def _block(r: Reply, done: bool) -> dict[str, Any]:
    """The answer's content block: text, or a ``tool_use`` with its input (empty until
    streamed, or when ``max_tokens`` cut the arguments short)."""
    if not r.calls_tool:
        return {"type": "text", "text": r.text if done else ""}
    whole = done and not r.truncated
    return {"type": "tool_use", "id": f"toolu_{r.key[:24]}", "name": r.shape.name,
            "input": orjson.loads(r.text) if whole else {}}  # fmt: skip


def _message(r: Reply, done: bool) -> dict[str, Any]:
    return {
        "id": f"msg_{r.key[:24]}", "type": "message", "role": "assistant", "model": r.model,
        "content": [_block(r, True)] if done else [],
        "stop_reason": _stop_reason(r) if done else None, "stop_sequence": None,
        "usage": _anthropic_usage(r, r.completion_tokens if done else 1, done),
    }  # fmt: skip


def anthropic_response(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, JSON) for a non-streaming Anthropic Messages request."""
    try:
        return 200, _message(anthropic_reply(body), True)
    except InvalidRequest as exc:
        return 400, anthropic_error(exc.message)


def anthropic_stream(body: dict[str, Any]) -> list[bytes]:
    """The SSE events of a streaming Messages request; raises ``InvalidRequest`` on bad input."""
    r = anthropic_reply(body)
    at = 2 * r.web_searches  # the answer's block follows the searches'
    block = {"type": "content_block_start", "index": at, "content_block": _block(r, False)}
    delta = "input_json_delta" if r.calls_tool else "text_delta"
    field = "partial_json" if r.calls_tool else "text"
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": _message(r, False)}, *_search_blocks(r), block,
        {"type": "ping"},
        *({"type": "content_block_delta", "index": at, "delta": {"type": delta, field: p}}
          for p in r.pieces),
        {"type": "content_block_stop", "index": at},
        {"type": "message_delta", "delta": {"stop_reason": _stop_reason(r), "stop_sequence": None},
         "usage": {"output_tokens": r.completion_tokens, **_server_tools(r)}},
        {"type": "message_stop"},
    ]  # fmt: skip
    return [_sse(e, e["type"]) for e in events]


def models_list(models: Iterable[str]) -> dict[str, Any]:
    """An OpenAI ``GET /v1/models`` body listing ``models``."""
    data = [{"id": m, "object": "model", "created": _BASE_CREATED, "owned_by": "spendgate"}
            for m in models]  # fmt: skip
    return {"object": "list", "data": data}
