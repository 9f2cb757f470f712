"""The per-process memory of what Responses answers leave for the calls continuing them."""

from __future__ import annotations

from spendgate.core.usage import TokenUsage
from spendgate.proxy.contexts import ResponseContexts


def test_an_answer_leaves_its_input_and_output_and_the_oldest_is_forgotten_first() -> None:
    contexts = ResponseContexts(size=2)
    contexts.remember("resp_a", TokenUsage(input_tokens=100, output_tokens=20))
    contexts.remember("resp_b", TokenUsage(input_tokens=7, output_tokens=3, cache_read_tokens=5))
    assert (contexts.tokens("resp_a"), contexts.tokens("resp_b")) == (120, 10)
    contexts.remember("resp_a", TokenUsage(input_tokens=1, output_tokens=1))  # told again
    contexts.remember("resp_c", TokenUsage(input_tokens=1))
    assert contexts.tokens("resp_b") is None  # the oldest told
    assert (contexts.tokens("resp_a"), contexts.tokens("resp_c")) == (2, 1)
    assert contexts.tokens("resp_unknown") is None
