"""Usage normalisation across an Anthropic stream: message_start, then message_delta."""

from __future__ import annotations

from typing import Any

import pytest

from spendgate.core.usage import TokenUsage, from_anthropic, from_openai

#: message_start's usage: 100 uncached, 1,000 read from the cache, 200 written to it
START = {
    "input_tokens": 100,
    "cache_read_input_tokens": 1000,
    "cache_creation_input_tokens": 200,
    "output_tokens": 1,
}
WHOLE = TokenUsage(
    input_tokens=1300, output_tokens=50, cache_read_tokens=1000, cache_write_tokens=200
)


@pytest.mark.parametrize(
    "delta",
    [
        {"output_tokens": 50},
        {**START, "output_tokens": 50},
        # a figure a delta leaves out or sends as null keeps what message_start said,
        # one by one, as the anthropic SDK's own accumulation does
        {"input_tokens": 100, "output_tokens": 50},
        {"input_tokens": 100, "cache_read_input_tokens": None, "output_tokens": 50},
        {
            "input_tokens": None,
            "cache_read_input_tokens": None,
            "cache_creation_input_tokens": None,
            "output_tokens": 50,
        },
        {"cache_read_input_tokens": 1000, "output_tokens": 50},
    ],
)
def test_message_delta_keeps_the_figures_it_does_not_carry(delta: dict[str, Any]) -> None:
    """The cache reads and writes message_start reported are billed whatever the
    message_delta repeats of them, never dropped to 0 (cache reads are most of a long
    cached prompt's tokens)."""
    assert from_anthropic(delta, from_anthropic(START)) == WHOLE


def test_message_delta_may_correct_the_input() -> None:
    """Figures a delta does carry replace message_start's (they are cumulative)."""
    delta = {"input_tokens": 120, "cache_read_input_tokens": 900, "output_tokens": 50}
    assert from_anthropic(delta, from_anthropic(START)) == TokenUsage(
        input_tokens=1220, output_tokens=50, cache_read_tokens=900, cache_write_tokens=200
    )


@pytest.mark.parametrize(
    ("usage", "output", "reasoning"),
    [
        # OpenAI: completion_tokens includes the reasoning, total = prompt + completion
        (
            {
                "prompt_tokens": 20,
                "completion_tokens": 100,
                "total_tokens": 120,
                "completion_tokens_details": {"reasoning_tokens": 60},
            },
            100,
            60,
        ),
        # OpenAI-compatible servers that report thinking apart from the completion (the
        # total says so): Gemini through such a layer, 382 thought tokens
        (
            {
                "prompt_tokens": 20,
                "completion_tokens": 151,
                "total_tokens": 553,
                "completion_tokens_details": {"reasoning_tokens": 382},
            },
            533,
            382,
        ),
        # only thinking, no visible output, no total: more reasoning than completion
        (
            {
                "prompt_tokens": 21,
                "completion_tokens": 0,
                "completion_tokens_details": {"reasoning_tokens": 60},
            },
            60,
            60,
        ),
        # the Responses shape, the same way
        (
            {
                "input_tokens": 20,
                "output_tokens": 151,
                "total_tokens": 553,
                "output_tokens_details": {"reasoning_tokens": 382},
            },
            533,
            382,
        ),
    ],
)
def test_reasoning_reported_apart_from_the_output_is_billed_as_output(
    usage: dict[str, Any], output: int, reasoning: int
) -> None:
    """Reasoning is output: when the figures show a server left it out of
    ``completion_tokens``, it is added back rather than dropped (billed at $0)."""
    normalised = from_openai(usage)
    assert normalised is not None
    assert (normalised.output_tokens, normalised.reasoning_tokens) == (output, reasoning)
