"""days_to_empty: the wallet page's runway figure."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendgate.core.runway import days_to_empty

USD = 1_000_000_000


@pytest.mark.parametrize(
    ("balance", "spent", "days", "expected"),
    [
        (70 * USD, 7 * USD, 7, Decimal("70.0")),  # $1/day, $70 left
        (10 * USD, 3 * USD, 7, Decimal("23.3")),  # rounded down
        (0, 3 * USD, 7, Decimal(0)),
        (-USD, 3 * USD, 7, Decimal(0)),
        (10 * USD, 0, 7, None),  # nothing spent: never empties
    ],
)
def test_days_to_empty_table(balance: int, spent: int, days: int, expected: Decimal | None) -> None:
    """Balance over mean daily spend, to a tenth of a day, rounded down."""
    assert days_to_empty(balance, spent, days) == expected


@given(st.integers(1, 10**15), st.integers(1, 10**15), st.integers(1, 366))
def test_never_promises_more_than_the_balance_buys(balance: int, spent: int, days: int) -> None:
    """Spending at the window's rate for the days promised never exceeds the balance."""
    result = days_to_empty(balance, spent, days)
    assert result is not None
    assert result * Decimal(spent) / days <= balance


def test_a_window_must_have_days() -> None:
    """A zero-day window is a programming error, said as such."""
    with pytest.raises(ValueError):
        days_to_empty(1, 1, 0)
