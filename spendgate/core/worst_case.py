"""The most a call can cost, read from its request before it is forwarded (pure, no I/O).

A call is admitted only if its worst case fits every budget and wallet it counts
against, so the worst case has to bound what the provider will bill:

* **input**: the request body's bytes / 4. Tokens are at least ~4 bytes of text each
  and the JSON around the text adds bytes, so this over-estimates every prompt; the
  prompt is billed once whatever ``n`` is.
* **output**: the output cap per generated answer × the number of answers.

  - the cap: ``max_completion_tokens``, else ``max_tokens`` (Chat Completions, legacy
    Completions), ``max_output_tokens`` (Responses), ``max_tokens`` (Anthropic
    Messages). Reasoning ("thinking") tokens, tool-call arguments and structured output
    are all output tokens inside that cap on every one of these APIs.
  - no cap in the request: the route's ``default_max_tokens`` is assumed **and sent
    upstream** as the cap (``max_completion_tokens`` to OpenAI and Azure, ``max_tokens``
    to OpenAI-compatible servers and legacy Completions, ``max_output_tokens`` to
    Responses), so the assumption binds: a model cannot think or write past it.
    Anthropic requires ``max_tokens`` itself; a request without it is refused by the
    provider and not billed, so nothing is added.
  - answers: ``n`` (Chat Completions), ``max(n, best_of)`` (legacy Completions: the
    provider generates and bills ``best_of`` answers and returns ``n``); one for
    Responses and Anthropic, which have no such field.
* **cache writes**: an Anthropic Messages request that marks ``cache_control`` may have
  its whole prompt written to the cache, which Anthropic bills above the input price
  (1.25× for the 5-minute cache, 2× for the 1-hour one). Such a request also gets a
  ``cached`` worst case, every prompt token a 1-hour cache write, and is held at the
  dearer of the two prices (some models price cache writes below their input).
* **embeddings**: input only.
* at most ``MAX_TOKENS_PER_CALL`` output tokens, the most any call is recorded with.

Built-in tool fees billed per use (web search, code interpreter sessions) are not
token usage and are not in the price table; they are not part of the worst case.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spendgate.core.usage import MAX_TOKENS_PER_CALL, TokenUsage
from spendgate.core.value import Value

#: the most answers one request may ask for (OpenAI's own limit for ``n``)
MAX_CHOICES = 128
#: the most ``best_of`` legacy Completions accepts
MAX_BEST_OF = 20

#: the fields that cap output, in the order they are read, per request kind
CAP_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "completion": ("max_tokens",),
    "response": ("max_output_tokens",),
    "message": ("max_tokens",),
}


class BadField(ValueError):
    """A request field the worst case needs is not usable (the proxy answers 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class WorstCase(Value, frozen=True):
    """A call's worst-case usage, and the output cap to add to the request (None: the
    request caps its output itself, or the API needs none)."""

    usage: TokenUsage
    send_cap: tuple[str, int] | None = None
    #: the same call with its whole prompt written to the 1-hour cache (a request that
    #: asks for caching): the hold is the dearer of the two, since a model may price
    #: cache writes above its input (Anthropic: 1.25x, 2x) or below it
    cached: TokenUsage | None = None


def _whole(payload: Mapping[str, Any], field: str, low: int, high: int | None) -> int | None:
    """``payload[field]`` as a whole number in [low, high], None when absent; else 400."""
    value = payload.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(f"{field} must be an integer", field)
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise BadField(f"{field} must be {bound}", field)
    return value


def answers(payload: Mapping[str, Any], kind: str) -> int:
    """How many answers the provider generates (and bills) for this request."""
    if kind == "chat":
        return _whole(payload, "n", 1, MAX_CHOICES) or 1
    if kind == "completion":
        n = _whole(payload, "n", 1, MAX_CHOICES) or 1
        best_of = _whole(payload, "best_of", 1, MAX_BEST_OF) or 1
        return max(n, best_of)
    return 1


def cap_field(kind: str, provider_kind: str) -> str:
    """The field that carries an output cap the gateway adds to a request of ``kind``."""
    if kind == "chat" and provider_kind in ("openai", "azure"):
        return "max_completion_tokens"  # the only cap reasoning models accept
    return CAP_FIELDS[kind][-1]


def worst_case(
    payload: Mapping[str, Any],
    kind: str,
    request_bytes: int,
    default_max_tokens: int,
    provider_kind: str,
    *,
    cache_writes: bool = False,
) -> WorstCase:
    """The worst case of one request (see the module docstring); 400 for a cap, ``n`` or
    ``best_of`` that is not a whole number in range. ``cache_writes``: the request marks
    ``cache_control`` (only an Anthropic Messages request is billed for cache writes)."""
    prompt = request_bytes // 4
    if kind not in CAP_FIELDS:  # embeddings: no output
        return WorstCase(TokenUsage(input_tokens=prompt))
    cap = None
    for field in CAP_FIELDS[kind]:
        cap = _whole(payload, field, 0, None)
        if cap is not None:
            break
    send = None
    if cap is None:
        cap = default_max_tokens
        if kind != "message":
            send = (cap_field(kind, provider_kind), cap)
    # no call is ever recorded above MAX_TOKENS_PER_CALL (``usage.plausible``), so no
    # worst case needs to be: it keeps every hold far inside the counters' exact range
    output = min(cap * answers(payload, kind), MAX_TOKENS_PER_CALL)
    usage = TokenUsage(input_tokens=prompt, output_tokens=output)
    cached = None
    if cache_writes and kind == "message":
        cached = TokenUsage(
            input_tokens=prompt,
            output_tokens=output,
            cache_write_tokens=prompt,
            cache_write_1h_tokens=prompt,
        )
    return WorstCase(usage, send, cached)


def marks_cache(payload: Any, body: bytes) -> bool:
    """Whether a request asks for prompt caching: ``cache_control`` anywhere in it
    (top level, ``system``, a message's content block, a tool). The raw bytes answer
    at once; only a body with ``\\u`` escapes, which can spell the key another way,
    is walked. A mention inside text also counts: it can only make a worst case dearer."""
    if b'"cache_control"' in body:
        return True
    if b"\\u" not in body:
        return False
    pending = [payload]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if "cache_control" in node:
                return True
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return False
