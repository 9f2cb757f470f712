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


#: a digit string longer than this is above ``MAX_TOKENS_PER_CALL`` (read as just above
#: it, so clamped and marked; Python will not convert past 4,300 digits)
_DIGITS = 18


def _count(value: Any) -> int | None:
    """A token figure as a provider sent it: a non-negative whole number, also written as
    an integral float (``1200.0``) or a string of digits (``"1200"``), which bill the
    same; None when it is none of these (absent, null, negative, fractional, text)."""
    if value.__class__ is int:
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value >= 0 and value.is_integer() else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value) if len(value) <= _DIGITS else MAX_TOKENS_PER_CALL + 1
    return None


def _detail(details: Any, name: str) -> int:
    """A breakdown figure (``cached_tokens``…) as a count, 0 when it is not one."""
    return (_count(details.get(name)) or 0) if isinstance(details, dict) else 0


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
    ``searches``: the web searches the answer ran (``searches_in`` its output).

    None when the usage is not the provider's figure: not an object, neither its input
    nor its output count there (``{}``), or one of them not a count (negative, text):
    such a call is billed on an estimate (``usage_estimated``), never at $0. A breakdown
    figure that is not a count is read as 0. ``cache_write_tokens`` in the input details
    (the OpenAI models priced for cache writes, and OpenRouter's) is the part of the
    prompt written to the cache, as ``genai-prices`` reads it."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        raw_prompt, raw_output = usage.get("prompt_tokens"), usage.get("completion_tokens")
        in_details = usage.get("prompt_tokens_details")
        out_details = usage.get("completion_tokens_details")
    else:
        raw_prompt, raw_output = usage.get("input_tokens"), usage.get("output_tokens")
        in_details = usage.get("input_tokens_details")
        out_details = usage.get("output_tokens_details")
    if raw_prompt is None and raw_output is None:
        return None
    prompt = 0 if raw_prompt is None else _count(raw_prompt)
    output = 0 if raw_output is None else _count(raw_output)
    if prompt is None or output is None:
        return None
    cached = _detail(in_details, "cached_tokens")
    written = _detail(in_details, "cache_write_tokens")
    heard = _detail(in_details, "audio_tokens")
    reasoning = _detail(out_details, "reasoning_tokens")
    spoken = _detail(out_details, "audio_tokens")
    if reasoning and (
        reasoning > output or _count(usage.get("total_tokens")) == prompt + output + reasoning
    ):
        # some OpenAI-compatible servers (Gemini's thinking through such a layer) count
        # the reasoning apart from the completion; the figures say so: it is output too
        output += reasoning
    cached = min(cached, prompt)
    return plausible(
        TokenUsage(
            input_tokens=prompt,
            output_tokens=output,
            cache_read_tokens=cached,
            cache_write_tokens=min(written, prompt - cached),
            reasoning_tokens=min(reasoning, output),
            input_audio_tokens=min(heard, prompt),
            output_audio_tokens=min(spoken, output),
            web_searches=searches,
        )
    )


#: the counts an Anthropic ``usage`` carries (the rest is breakdown)
_ANTHROPIC_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
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

    None when ``usage`` tells no figure: not an object, none of its counts there, or one
    of them not a count (negative, text); the caller keeps what it had (and, at the end
    of a call, bills an estimate rather than $0).
    """
    if not isinstance(usage, dict):
        return None
    told = False
    for name in _ANTHROPIC_COUNTS:
        value = usage.get(name)
        if value is not None:
            if _count(value) is None:
                return None
            told = True
    if not told:
        return None
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
    """``usage[name]`` as a count, or ``earlier`` when it is absent, null or not a count."""
    found = _count(usage.get(name))
    return earlier if found is None else found
