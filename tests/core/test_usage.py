"""Usage normalisation across an Anthropic stream: message_start, then message_delta."""

from __future__ import annotations

from typing import Any

import pytest

from spendgate.core.usage import (
    MAX_TOKENS_PER_CALL,
    TokenUsage,
    from_anthropic,
    from_openai,
    searches_in,
)

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


#: message_start's usage with its cache writes split: 150 of the 200 for an hour
START_1H = {
    **START,
    "cache_creation": {"ephemeral_5m_input_tokens": 50, "ephemeral_1h_input_tokens": 150},
}
WHOLE_1H = TokenUsage(
    input_tokens=1300,
    output_tokens=50,
    cache_read_tokens=1000,
    cache_write_tokens=200,
    cache_write_1h_tokens=150,
)


def test_the_one_hour_cache_writes_are_counted() -> None:
    """``cache_creation.ephemeral_1h_input_tokens`` is the part of the cache writes kept
    for an hour (priced higher than the 5-minute ones)."""
    assert from_anthropic({**START_1H, "output_tokens": 50}) == WHOLE_1H


@pytest.mark.parametrize(
    "delta",
    [
        {"output_tokens": 50},
        {**START_1H, "output_tokens": 50},
        {"cache_creation_input_tokens": 200, "output_tokens": 50},
        {"cache_creation": None, "output_tokens": 50},
        {"cache_creation": {}, "output_tokens": 50},
        {"cache_creation": {"ephemeral_1h_input_tokens": None}, "output_tokens": 50},
        {"cache_creation": {"ephemeral_5m_input_tokens": 50}, "output_tokens": 50},
    ],
)
def test_message_delta_keeps_the_one_hour_writes_it_does_not_carry(delta: dict[str, Any]) -> None:
    """The 1-hour writes message_start reported stay billed at their own rate whatever a
    message_delta repeats or leaves out, like the other cache figures."""
    assert from_anthropic(delta, from_anthropic(START_1H)) == WHOLE_1H


@pytest.mark.parametrize(
    ("usage", "writes", "one_hour"),
    [
        # more 1-hour writes than writes: a provider bug, held to the writes
        (
            {
                "input_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_1h_input_tokens": 30},
            },
            10,
            10,
        ),
        ({"input_tokens": 1, "cache_creation": {"ephemeral_1h_input_tokens": 30}}, 0, 0),
        (
            {
                "input_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_1h_input_tokens": -3},
            },
            10,
            0,
        ),
        ({"input_tokens": 1, "cache_creation_input_tokens": 10, "cache_creation": "bad"}, 10, 0),
        (
            {
                "input_tokens": 1,
                "cache_creation_input_tokens": 10,
                "cache_creation": {"ephemeral_1h_input_tokens": True},
            },
            10,
            0,
        ),
    ],
)
def test_one_hour_writes_are_part_of_the_writes(
    usage: dict[str, Any], writes: int, one_hour: int
) -> None:
    """The 1-hour figure never exceeds the cache writes it is part of, and odd values
    count as 0, as every other figure does."""
    normalised = from_anthropic(usage)
    assert normalised is not None
    assert (normalised.cache_write_tokens, normalised.cache_write_1h_tokens) == (writes, one_hour)


def test_a_delta_lowering_the_writes_lowers_the_one_hour_part() -> None:
    """A delta that corrects the writes below message_start's 1-hour figure holds it there."""
    usage = from_anthropic({"cache_creation_input_tokens": 100}, from_anthropic(START_1H))
    assert usage is not None
    assert (usage.cache_write_tokens, usage.cache_write_1h_tokens) == (100, 100)


def test_openai_shapes_have_no_one_hour_writes() -> None:
    """OpenAI-style routes report no cache-write split."""
    usage = from_openai({"prompt_tokens": 10, "completion_tokens": 2})
    assert usage is not None
    assert usage.cache_write_1h_tokens == 0


def test_an_implausible_one_hour_figure_is_clamped() -> None:
    """A 1-hour figure above the per-call maximum is clamped with the rest."""
    huge = 10**12
    usage = from_anthropic(
        {
            "input_tokens": 1,
            "cache_creation_input_tokens": huge,
            "cache_creation": {"ephemeral_1h_input_tokens": huge},
        }
    )
    assert usage is not None
    assert usage.implausible
    assert usage.cache_write_1h_tokens == usage.cache_write_tokens == MAX_TOKENS_PER_CALL


def test_anthropic_web_searches_are_read_and_kept_by_a_later_delta() -> None:
    """``server_tool_use.web_search_requests`` is the searches; a ``message_delta``
    without it keeps what ``message_start`` said, one with it replaces it; a figure that
    is not a count keeps the earlier one, as the token figures do."""
    start = from_anthropic({"input_tokens": 10, "server_tool_use": {"web_search_requests": 2}})
    assert start is not None and start.web_searches == 2
    kept = from_anthropic({"output_tokens": 5}, start)
    assert kept is not None and kept.web_searches == 2
    raised = from_anthropic(
        {"output_tokens": 6, "server_tool_use": {"web_search_requests": 3}}, start
    )
    assert raised is not None and raised.web_searches == 3
    bad = from_anthropic(
        {"output_tokens": 7, "server_tool_use": {"web_search_requests": -1}}, start
    )
    assert bad is not None and bad.web_searches == 2
    huge = from_anthropic(
        {"input_tokens": 1, "server_tool_use": {"web_search_requests": MAX_TOKENS_PER_CALL + 1}}
    )
    assert huge is not None and huge.web_searches == MAX_TOKENS_PER_CALL and huge.implausible


def test_responses_web_search_calls_are_counted_from_the_output() -> None:
    """Each ``web_search_call`` item of a Responses answer's output is a search; other
    items, and an output that is not a list, count none."""
    output = [
        {"type": "web_search_call", "status": "completed"},
        {"type": "message", "content": []},
        {"type": "web_search_call", "status": "completed"},
        "junk",
    ]
    assert searches_in(output) == 2
    assert searches_in({"type": "web_search_call"}) == 0
    usage = from_openai({"input_tokens": 5, "output_tokens": 1}, searches_in(output))
    assert usage is not None and usage.web_searches == 2


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 1200.0, "completion_tokens": 30.0, "total_tokens": 1230.0},
        {"prompt_tokens": "1200", "completion_tokens": "30"},
        {"input_tokens": 1200.0, "output_tokens": "30"},
    ],
)
def test_counts_written_as_floats_or_digit_strings_are_counts(usage: dict[str, Any]) -> None:
    """``1200.0`` and ``"1200"`` are 1,200 tokens, billed as such (they read as 0 before:
    the call cost $0)."""
    normalised = from_openai(usage)
    assert normalised is not None
    assert (normalised.input_tokens, normalised.output_tokens) == (1200, 30)
    assert from_anthropic({"input_tokens": "1200", "output_tokens": 30.0}) == TokenUsage(
        input_tokens=1200, output_tokens=30
    )


@pytest.mark.parametrize(
    "usage",
    [
        {},
        {"total_tokens": 50},
        {"prompt_tokens": None, "completion_tokens": None},
        {"prompt_tokens": "lots", "completion_tokens": 30},
        {"prompt_tokens": -5, "completion_tokens": 30},
        {"input_tokens": 12.5, "output_tokens": 30},
        {"input_tokens": [], "output_tokens": 30},
        {"input_tokens": 100, "output_tokens": float("nan")},
    ],
)
def test_a_usage_without_readable_counts_is_not_the_providers_figure(
    usage: dict[str, Any],
) -> None:
    """No count, or a count that is none (negative, fractional, text): not a figure to
    bill (None: the call is billed on an estimate), where it used to read as 0 tokens."""
    assert from_openai(usage) is None
    anthropic = {"input_tokens", "output_tokens"}
    shaped = {k.replace("prompt_", "input_").replace("completion_", "output_"): v
              for k, v in usage.items()}  # fmt: skip
    if set(shaped) & anthropic or not shaped:
        assert from_anthropic(shaped) is None
        assert from_anthropic(shaped, from_anthropic(START)) is None


def test_openai_cache_writes_are_part_of_the_prompt() -> None:
    """``cache_write_tokens`` in the input details (OpenAI models priced for cache writes,
    OpenRouter) is read, held to what the cache reads leave of the prompt."""
    chat = from_openai(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300},
        }
    )
    responses = from_openai(
        {
            "input_tokens": 1000,
            "output_tokens": 5,
            "input_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 900},
        }
    )
    assert chat is not None and responses is not None
    assert (chat.cache_read_tokens, chat.cache_write_tokens) == (600, 300)
    assert (responses.cache_read_tokens, responses.cache_write_tokens) == (600, 400)
