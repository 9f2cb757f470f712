"""The worst-case rule (``core.worst_case``), one row per request shape (issue 23.1/23.2)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from spendgate.core.usage import TokenUsage
from spendgate.core.worst_case import BadField, marks_cache, worst_case

BYTES = 400  # a 400-byte body: at most 100 prompt tokens
DEFAULT = 4096

CASES: list[tuple[str, str, str, dict[str, Any], int, tuple[str, int] | None]] = [
    # (what, request kind, provider kind, fields, output tokens, cap sent upstream)
    ("chat max_tokens", "chat", "openai", {"max_tokens": 100}, 100, None),
    ("chat max_completion_tokens wins", "chat", "openai",
     {"max_completion_tokens": 300, "max_tokens": 100}, 300, None),
    ("chat n=8", "chat", "openai", {"n": 8, "max_tokens": 1000}, 8000, None),
    ("chat no cap, OpenAI: the reasoning-safe field is sent", "chat", "openai", {},
     DEFAULT, ("max_completion_tokens", DEFAULT)),
    ("chat no cap, Azure", "chat", "azure", {"n": 2}, 2 * DEFAULT,
     ("max_completion_tokens", DEFAULT)),
    ("chat no cap, OpenAI-compatible server", "chat", "openai_compatible", {}, DEFAULT,
     ("max_tokens", DEFAULT)),
    ("completion best_of beyond n", "completion", "openai",
     {"n": 2, "best_of": 5, "max_tokens": 10}, 50, None),
    ("completion n beyond best_of", "completion", "openai", {"n": 3, "max_tokens": 10}, 30, None),
    ("completion no cap", "completion", "openai", {}, DEFAULT, ("max_tokens", DEFAULT)),
    ("responses max_output_tokens", "response", "openai", {"max_output_tokens": 64}, 64, None),
    ("responses has no n: ignored", "response", "openai", {"n": 8, "max_output_tokens": 64},
     64, None),
    ("responses no cap", "response", "openai", {}, DEFAULT, ("max_output_tokens", DEFAULT)),
    ("responses max_tokens is not its cap", "response", "openai", {"max_tokens": 5}, DEFAULT,
     ("max_output_tokens", DEFAULT)),
    ("anthropic max_tokens (thinking inside it)", "message", "anthropic",
     {"max_tokens": 2048, "thinking": {"type": "enabled", "budget_tokens": 1024}}, 2048, None),
    ("anthropic without max_tokens: the provider refuses it, nothing sent",
     "message", "anthropic", {}, DEFAULT, None),
    ("embeddings: input only", "embedding", "openai", {"max_tokens": 100}, 0, None),
    ("a zero cap is a cap", "chat", "openai", {"max_tokens": 0}, 0, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "provider", "fields", "output", "sent"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_worst_case_table(
    kind: str, provider: str, fields: dict[str, Any], output: int, sent: tuple[str, int] | None
) -> None:
    """Output = the cap per answer × the answers generated; input = bytes / 4 (none
    counted per answer); the cap assumed is the one sent upstream."""
    worst = worst_case({"model": "m", **fields}, kind, BYTES, DEFAULT, provider)
    assert worst.usage == TokenUsage(input_tokens=BYTES // 4, output_tokens=output)
    assert worst.send_cap == sent


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"n": "8"}, "n"),
        ({"n": True}, "n"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"best_of": 21}, "best_of"),
    ],
)
def test_fields_out_of_range_are_named(fields: dict[str, Any], param: str) -> None:
    """A count or cap that is not a whole number in range is refused, naming the field."""
    with pytest.raises(BadField) as caught:
        worst_case({"model": "m", **fields}, "completion", BYTES, DEFAULT, "openai")
    assert caught.value.param == param


def test_an_absurd_cap_is_bounded_by_the_most_a_call_is_recorded_with() -> None:
    """max_tokens of 2^62 × n=128 reserves MAX_TOKENS_PER_CALL output tokens, not an
    overflowing figure: no call is ever recorded with more."""
    from spendgate.core.usage import MAX_TOKENS_PER_CALL

    worst = worst_case({"n": 128, "max_tokens": 2**62}, "chat", BYTES, DEFAULT, "openai")
    assert worst.usage.output_tokens == MAX_TOKENS_PER_CALL


def test_a_prompt_marked_for_caching_counts_as_one_hour_cache_writes() -> None:
    """Only the Anthropic Messages API bills cache writes; there the whole prompt may be
    written to the 1-hour cache: a second worst case counts it so, beside the plain one."""
    fields = {"model": "m", "max_tokens": 10}
    marked = worst_case(fields, "message", BYTES, DEFAULT, "anthropic", cache_writes=True)
    assert marked.usage == TokenUsage(input_tokens=BYTES // 4, output_tokens=10)
    assert marked.cached is not None
    assert marked.cached.cache_write_tokens == marked.cached.cache_write_1h_tokens == BYTES // 4
    assert marked.cached.input_tokens == BYTES // 4 and marked.cached.output_tokens == 10
    chat = worst_case(fields, "chat", BYTES, DEFAULT, "openai", cache_writes=True)
    assert chat.cached is None
    assert worst_case(fields, "message", BYTES, DEFAULT, "anthropic").cached is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"system": [{"cache_control": {}}]}', True),
        (b'{"messages": [{"content": [{"cache\\u005fcontrol": {}}]}]}', True),
        (b'{"messages": [{"content": "caf\\u00e9"}]}', False),
        (b'{"messages": [{"content": "plain"}]}', False),
    ],
)
def test_marks_cache_reads_the_parsed_request_when_the_bytes_may_hide_the_key(
    body: bytes, expected: bool
) -> None:
    assert marks_cache(orjson.loads(body), body) is expected
