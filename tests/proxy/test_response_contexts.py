"""The per-process memory of what Responses answers leave for the calls continuing them."""

from __future__ import annotations

from spendgate.core.usage import TokenUsage
from spendgate.proxy.contexts import ResponseContexts


def test_an_answer_leaves_its_input_and_output_and_the_oldest_is_forgotten_first() -> None:
    contexts = ResponseContexts(size=2)
    contexts.remember("openai", "resp_a", TokenUsage(input_tokens=100, output_tokens=20))
    contexts.remember(
        "openai", "resp_b", TokenUsage(input_tokens=7, output_tokens=3, cache_read_tokens=5)
    )
    assert (contexts.tokens("openai", "resp_a"), contexts.tokens("openai", "resp_b")) == (120, 10)
    contexts.remember("openai", "resp_c", TokenUsage(input_tokens=1))
    assert contexts.tokens("openai", "resp_a") is None  # the oldest told
    assert contexts.tokens("openai", "resp_c") == 1
    assert contexts.tokens("openai", "resp_unknown") is None


def test_an_id_is_known_per_provider_and_one_told_twice_is_forgotten() -> None:
    """A server that lets its client choose the id must not make another provider's
    conversation look small: ids are per provider, and an id told twice (which one a
    later call continues cannot be known) is forgotten for good."""
    contexts = ResponseContexts()
    contexts.remember("openai", "resp_x", TokenUsage(input_tokens=90_000, output_tokens=10))
    contexts.remember("vllm", "resp_x", TokenUsage(input_tokens=3))
    assert contexts.tokens("openai", "resp_x") == 90_010
    assert contexts.tokens("vllm", "resp_x") == 3
    contexts.remember("vllm", "resp_x", TokenUsage(input_tokens=3))
    assert contexts.tokens("vllm", "resp_x") is None
    contexts.remember("vllm", "resp_x", TokenUsage(input_tokens=3))
    assert contexts.tokens("vllm", "resp_x") is None
