"""Token usage normalised across providers (pure, no I/O).

Convention (the same as ``genai-prices``): ``input_tokens`` is the *total* prompt,
including the cached part; ``cache_read_tokens`` and ``cache_write_tokens`` say how much
of it was read from / written to the provider's prompt cache. ``reasoning_tokens`` is
the part of ``output_tokens`` the model spent thinking (billed as output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def from_openai(usage: dict[str, Any] | None) -> TokenUsage | None:
    """Chat/completions (``prompt_tokens``…) and Responses (``input_tokens``…) shapes."""
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
    reasoning = _int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=output,
        cache_read_tokens=min(cached, prompt),
        reasoning_tokens=min(reasoning, output),
    )


def from_anthropic(
    usage: dict[str, Any] | None, base: TokenUsage | None = None
) -> TokenUsage | None:
    """Anthropic ``usage``: input excludes cache reads/writes, so they are added back.

    ``base`` is what an earlier stream event (``message_start``) reported; a later
    ``message_delta`` carries cumulative output and, sometimes, the input figures again.
    """
    if not isinstance(usage, dict):
        return base
    prev = base or TokenUsage()
    has_input = any(
        k in usage
        for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    )
    if has_input:
        read = _int(usage.get("cache_read_input_tokens"))
        write = _int(usage.get("cache_creation_input_tokens"))
        total_in = _int(usage.get("input_tokens")) + read + write
    else:
        read, write, total_in = prev.cache_read_tokens, prev.cache_write_tokens, prev.input_tokens
    output = _int(usage.get("output_tokens")) if "output_tokens" in usage else prev.output_tokens
    return TokenUsage(
        input_tokens=total_in,
        output_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )
