"""Token usage normalised across providers (pure, no I/O).

Convention (the same as ``genai-prices``): ``input_tokens`` is the *total* prompt,
including the cached part; ``cache_read_tokens`` and ``cache_write_tokens`` say how much
of it was read from / written to the provider's prompt cache, and
``cache_write_1h_tokens`` the part of those writes kept for an hour (Anthropic's
1-hour cache, priced above the 5-minute one; 0 where a provider reports no split).
``reasoning_tokens`` is
the part of ``output_tokens`` the model spent thinking (billed as output), also when a
provider reported it apart from its completion tokens. ``input_audio_tokens`` and
``output_audio_tokens`` are the parts of the prompt and of the output that were audio
(OpenAI's ``audio_tokens`` details), priced at a model's audio rates where it has them.
``web_searches`` counts the web searches a server-side search tool ran for the call,
which providers bill per search beside the tokens (Anthropic's
``server_tool_use.web_search_requests``; each ``web_search_call`` item of a Responses
answer's output, ``searches_in``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from spendgate.core.value import Value

#: More tokens than any model reads or writes in one call (the largest context windows
#: are a few million). A provider figure above it is a provider bug, not usage: it is
#: clamped to this and the call is marked ``implausible`` (see ``plausible``).
MAX_TOKENS_PER_CALL = 1_000_000_000


class TokenUsage(Value, frozen=True):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    #: the part of ``cache_write_tokens`` written to the 1-hour cache
    cache_write_1h_tokens: int = 0
    #: a reported figure was above ``MAX_TOKENS_PER_CALL`` and was clamped to it
    implausible: bool = False
    #: the audio part of ``input_tokens`` and of ``output_tokens``
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    #: web searches run by a server-side tool, billed per search
    web_searches: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def plausible(usage: TokenUsage) -> TokenUsage:
    """``usage`` with every figure clamped to ``MAX_TOKENS_PER_CALL`` (and marked
    ``implausible`` when one was above it), so that whatever a provider reports, the
    cost stays exact and every sum of it fits the ledger's 64-bit columns."""
    figures = (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        usage.cache_write_1h_tokens,
        usage.input_audio_tokens,
        usage.output_audio_tokens,
        usage.web_searches,
    )
    if max(figures) <= MAX_TOKENS_PER_CALL:
        return usage
    cap = MAX_TOKENS_PER_CALL
    return msgspec.structs.replace(
        usage,
        input_tokens=min(usage.input_tokens, cap),
        output_tokens=min(usage.output_tokens, cap),
        cache_read_tokens=min(usage.cache_read_tokens, cap),
        cache_write_tokens=min(usage.cache_write_tokens, cap),
        reasoning_tokens=min(usage.reasoning_tokens, cap),
        cache_write_1h_tokens=min(usage.cache_write_1h_tokens, cap),
        implausible=True,
        input_audio_tokens=min(usage.input_audio_tokens, cap),
        output_audio_tokens=min(usage.output_audio_tokens, cap),
        web_searches=min(usage.web_searches, cap),
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def searches_in(output: Any) -> int:
    """The web searches a Responses answer ran: its ``web_search_call`` output items
    (OpenAI bills each call; the usage object does not count them)."""
    if output.__class__ is not list:
        return 0
    return sum(
        1 for item in output if item.__class__ is dict and item.get("type") == "web_search_call"
    )


def from_openai(usage: dict[str, Any] | None, searches: int = 0) -> TokenUsage | None:
    """Chat/completions (``prompt_tokens``…) and Responses (``input_tokens``…) shapes;
    ``searches``: the web searches the answer ran (``searches_in`` its output)."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        prompt = _int(usage.get("prompt_tokens"))
        output = _int(usage.get("completion_tokens"))
        in_details = usage.get("prompt_tokens_details") or {}
        out_details = usage.get("completion_tokens_details") or {}
    else:
        prompt = _int(usage.get("input_tokens"))
        output = _int(usage.get("output_tokens"))
        in_details = usage.get("input_tokens_details") or {}
        out_details = usage.get("output_tokens_details") or {}
    cached = _int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else 0
    heard = _int(in_details.get("audio_tokens")) if isinstance(in_details, dict) else 0
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    spoken = _int(out_details.get("audio_tokens")) if isinstance(out_details, dict) else 0
    if reasoning and (
        reasoning > output or _int(usage.get("total_tokens")) == prompt + output + reasoning
    ):
        # some OpenAI-compatible servers (Gemini's thinking through such a layer) count
        # the reasoning apart from the completion; the figures say so: it is output too
        output += reasoning
    return plausible(
        TokenUsage(
            input_tokens=prompt,
            output_tokens=output,
            cache_read_tokens=min(cached, prompt),
            reasoning_tokens=min(reasoning, output),
            input_audio_tokens=min(heard, prompt),
            output_audio_tokens=min(spoken, output),
            web_searches=searches,
        )
    )


def from_anthropic(
    usage: dict[str, Any] | None, base: TokenUsage | None = None
) -> TokenUsage | None:
    """Anthropic ``usage``: input excludes cache reads/writes, so they are added back.

    ``base`` is what an earlier stream event (``message_start``) reported; a later
    ``message_delta`` carries cumulative output and, sometimes, input figures again. Each
    figure stands alone, as the anthropic SDK accumulates them: one the delta leaves out
    or sends as null keeps the earlier value (a delta with ``input_tokens`` alone must not
    drop the cache reads message_start reported). ``cache_creation``'s
    ``ephemeral_1h_input_tokens`` is the 1-hour part of the writes, kept the same way and
    held to the writes it is part of; ``server_tool_use.web_search_requests``, the web
    searches, the same way.
    """
    if not isinstance(usage, dict):
        return base
    prev = base or TokenUsage()
    read = _figure(usage, "cache_read_input_tokens", prev.cache_read_tokens)
    write = _figure(usage, "cache_creation_input_tokens", prev.cache_write_tokens)
    split = usage.get("cache_creation")
    one_hour = prev.cache_write_1h_tokens
    if isinstance(split, dict):
        one_hour = _figure(split, "ephemeral_1h_input_tokens", one_hour)
    uncached = prev.input_tokens - prev.cache_read_tokens - prev.cache_write_tokens
    uncached = _figure(usage, "input_tokens", uncached)
    searches = prev.web_searches
    tools = usage.get("server_tool_use")
    if isinstance(tools, dict):
        searches = _figure(tools, "web_search_requests", searches)
    return plausible(
        TokenUsage(
            input_tokens=uncached + read + write,
            output_tokens=_figure(usage, "output_tokens", prev.output_tokens),
            cache_read_tokens=read,
            cache_write_tokens=write,
            cache_write_1h_tokens=min(one_hour, write),
            implausible=prev.implausible,
            web_searches=searches,
        )
    )


def _figure(usage: dict[str, Any], name: str, earlier: int) -> int:
    """``usage[name]`` as a count, or ``earlier`` when it is absent or null."""
    value = usage.get(name)
    return earlier if value is None else _int(value)
