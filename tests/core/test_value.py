"""The values a proxied call builds: immutable, and compared and hashed by their fields."""

from __future__ import annotations

import pytest

from spendgate.core.budget_rules import Subject
from spendgate.core.pricing import Priced
from spendgate.core.rate_checks import Granted
from spendgate.core.usage import TokenUsage
from spendgate.core.value import Value
from spendgate.core.worst_case import WorstCase
from spendgate.proxy.app import Call
from spendgate.proxy.transport import UpstreamRequest

PER_CALL = (Call, Subject, UpstreamRequest, WorstCase, TokenUsage, Priced, Granted)


@pytest.mark.parametrize("cls", PER_CALL, ids=lambda c: c.__name__)
def test_every_per_call_value_is_frozen(cls: type[Value]) -> None:
    """Each one is a ``Value`` and stays frozen (a subclass could say ``frozen=False``)."""
    assert issubclass(cls, Value)
    assert cls.__struct_config__.frozen


def test_a_field_cannot_be_set() -> None:
    """What the guard held for is what the ledger books: a value never changes."""
    usage = TokenUsage(input_tokens=10, output_tokens=5)
    with pytest.raises(AttributeError):
        usage.output_tokens = 0  # type: ignore[misc]
    assert usage == TokenUsage(10, 5)


def test_equal_subjects_are_one_key() -> None:
    """The guard caches what applies to a caller by ``Subject``."""
    a = Subject("org", "team", None, None, "key", ("prod",), "openai", "gpt-4o", "chat")
    b = Subject("org", "team", None, None, "key", ("prod",), "openai", "gpt-4o", "chat")
    assert a is not b and {a: 1}[b] == 1
    assert a != Subject("org", "team", None, None, "key", (), "openai", "gpt-4o", "chat")
