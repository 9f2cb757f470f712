"""What a Responses answer leaves for the call that continues it (pure, no I/O).

A request with ``previous_response_id`` is billed the stored conversation as input: the
previous call's input and output (its own stored conversation included), then the new
request's. When this process served that previous answer it knows those tokens, so the
continuing call is held at them plus its own prompt instead of the model's whole context
window (``core.worst_case``). A process that did not serve it (another replica, a
restart) does not know them and holds the window.

An id is known per provider (an OpenAI-compatible server may let its client choose the
id, so one provider's answer must not stand for another's), and an id told twice is
forgotten for good: which of the two a later call continues cannot be known, and it is
held at the window.
"""

from __future__ import annotations

from spendgate.core.usage import TokenUsage

#: answers remembered per process, the oldest forgotten first (about 200 bytes each)
REMEMBERED = 20_000


class ResponseContexts:
    """The input + output tokens of the last ``size`` Responses answers, by provider
    and id."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._size = size
        #: None: the id was told twice
        self._tokens: dict[tuple[str, str], int | None] = {}

    def remember(self, provider: str, response_id: str, usage: TokenUsage) -> None:
        """``usage``: the provider's own figure for the answer (never an estimate)."""
        tokens = self._tokens
        key = (provider, response_id)
        tokens[key] = None if key in tokens else usage.input_tokens + usage.output_tokens
        if len(tokens) > self._size:
            del tokens[next(iter(tokens))]

    def tokens(self, provider: str, response_id: str) -> int | None:
        """What the answer ``response_id`` of ``provider`` leaves in the conversation;
        None: not known (never told, forgotten, or told twice)."""
        return self._tokens.get((provider, response_id))
