"""Money is exact: integer nano-dollars internally, decimal strings at the edges.

One nano-dollar is 1e-9 USD, fine enough that a single token of the cheapest cached
input price in the table (a few hundredths of a micro-dollar) is represented, and a
64-bit integer still holds nine billion dollars. A call's cost is rounded once, half
to even, when it is priced; sums of nanos are exact.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000
_NANO = Decimal("1e-9")


def usd_to_nanos(amount: Decimal | str | float) -> int:
    """Convert a USD amount to integer nanos (half-even); floats go through ``str``."""
    if isinstance(amount, float):
        amount = str(amount)
    try:
        value = Decimal(amount)
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"not a decimal amount: {amount!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {amount!r}")
    return int((value * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int) -> Decimal:
    return (Decimal(nanos) * _NANO).normalize()


def format_usd(nanos: int) -> str:
    """Decimal string with at least two places and no float noise: ``"12.50"``. Exact:
    the integer's own digits, the point put nine from the right. A response header on
    every call with a budget, and tens of thousands of figures in a usage report: str
    methods rather than format specs and ``divmod``, a third less time."""
    if nanos < 0:
        return "-" + format_usd(-nanos)
    digits = str(nanos).zfill(10)  # at least one digit before the point
    return digits[:-9] + "." + digits[-9:].rstrip("0").ljust(2, "0")
