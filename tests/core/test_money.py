"""Money formatting: integer nanos to a decimal string, exactly."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendgate.core.money import format_usd


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (0, "0.00"),
        (1, "0.000000001"),
        (-5, "-0.000000005"),
        (10_000_000, "0.01"),
        (12_500_000_000, "12.50"),
        (-1_000_000_000, "-1.00"),
        (999_999_999, "0.999999999"),
        (10**30 + 7, "1000000000000000000000.000000007"),
    ],
)
def test_format_usd_table(nanos: int, text: str) -> None:
    """Two places at least, no trailing zeros past them, the sign kept below a dollar."""
    assert format_usd(nanos) == text


@given(st.integers(-(10**40), 10**40))
def test_format_usd_is_exact(nanos: int) -> None:
    """The string reads back as the same nanos, whatever the size (no 28-digit context
    rounding), with two to nine places and none of them a trailing zero past two."""
    text = format_usd(nanos)
    with localcontext() as ctx:
        ctx.prec = 100
        assert Decimal(text) * 10**9 == nanos
    places = text.partition(".")[2]
    assert 2 <= len(places) <= 9
    assert len(places) == 2 or not places.endswith("0")
