"""How long a prepaid balance lasts at the current rate of spend — pure arithmetic.

The rate is the mean daily spend over a recent window (the wallet page uses the last
seven days, or the wallet's life if shorter), so one expensive day moves it but does
not dominate it. Money stays in integer nano-dollars; only the answer is a Decimal.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal


def days_to_empty(
    balance_nanos: int, spent_in_window_nanos: int, window_days: int
) -> Decimal | None:
    """Days until ``balance_nanos`` is gone at the window's mean daily spend, to a tenth
    of a day (rounded down: never promise more than is there). ``None`` when nothing was
    spent (it never empties at this rate); ``0`` when the balance is already gone."""
    if window_days <= 0:
        raise ValueError("window_days must be positive")
    if balance_nanos <= 0:
        return Decimal(0)
    if spent_in_window_nanos <= 0:
        return None
    days = Decimal(balance_nanos) * window_days / Decimal(spent_in_window_nanos)
    return days.quantize(Decimal("0.1"), rounding=ROUND_DOWN)
