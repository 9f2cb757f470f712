"""Exact decimal input: the one validator behind every money and percentage field.

Every amount and percentage of the admin API is declared with :func:`exact_decimal`, so
each answers bad input the same way — a 422 naming the field, with the allowed range and
precision in the message — and none can reach the database or the core unchecked (an
over-long or over-precise value used to be a 500 or a 503 there):

    accepted                                   refused (422, the rule in the message)
    JSON numbers: 12, 12.5                     true / false, null where not nullable
    strings in plain notation: "12.50", "7"    "1e5", " ", "12,50", "0x10", "Infinity"
                                               NaN, ±Infinity, 1e400 (not finite)
                                               more decimal places than allowed
                                               (1e-30, 99.123456789012345678)
                                               outside the range (-0 counts as 0)

Nothing is rounded: a value is taken exactly as given or refused. Trailing zeros do not
count as places (``"12.500000000000"`` is 12.5). JSON numbers reach the server as binary
floats, so a number is read by its shortest round-trip text (``0.1`` is 0.1 exactly);
send a string to be sure of every digit.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

#: a decimal in plain notation: optional sign, ASCII digits, optional fraction (no
#: exponent; ``\d`` would take any script's digits)
_PLAIN = re.compile(r"[+-]?[0-9]{1,40}(?:\.[0-9]{1,40})?")


def _refuse(rule: str) -> PydanticCustomError:
    return PydanticCustomError("decimal_field", "{rule}", {"rule": rule})


def _as_decimal(value: Any, rule: str) -> Decimal:
    """``value`` as a finite Decimal, or the 422 stating ``rule``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise _refuse(rule)
    if isinstance(value, float) and not math.isfinite(value):
        raise _refuse(f"{rule}; got a value that is not finite")
    if isinstance(value, str):
        text = value.strip()
        if not _PLAIN.fullmatch(text):
            raise _refuse(f"{rule}, written in plain notation (no exponent); got {value[:40]!r}")
        value = text
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError) as exc:  # pragma: no cover - the pattern holds
        raise _refuse(rule) from exc
    if not number.is_finite():
        raise _refuse(f"{rule}; got a value that is not finite")
    return number


def _check(
    value: Any, *, places: int, low: Decimal, low_inclusive: bool, high: Decimal, rule: str
) -> Decimal:
    number = _as_decimal(value, rule)
    if number.is_zero():
        number = Decimal(0)  # -0 is 0
    exponent = number.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        raise _refuse(f"{rule}; got {-exponent} decimal places")
    too_low = number < low if low_inclusive else number <= low
    if too_low or number > high:
        raise _refuse(f"{rule}; got {number:f}"[:200])
    return number


def exact_decimal(
    *, what: str, places: int, high: Decimal, low: Decimal = Decimal(0), low_inclusive: bool
) -> Any:
    """An ``Annotated[Decimal, ...]`` for an input field: ``low < value <= high`` (or
    ``low <= value`` with ``low_inclusive``) with at most ``places`` decimal places."""
    bound = "at least" if low_inclusive else "greater than"
    rule = (
        f"must be {what}: a decimal {bound} {low} and at most {high}, "
        f"with at most {places} decimal places"
    )
    check = partial(
        _check, places=places, low=low, low_inclusive=low_inclusive, high=high, rule=rule
    )
    number_schema: dict[str, Any] = {"type": "number", "maximum": float(high)}
    number_schema["minimum" if low_inclusive else "exclusiveMinimum"] = float(low)
    digits = len(str(int(high)))
    schema = {
        "anyOf": [
            number_schema,
            {"type": "string", "pattern": rf"^[0-9]{{1,{digits}}}(\.[0-9]{{1,{places}}})?$"},
        ],
        "description": f"{what[0].upper()}{what[1:]}: {bound} {low}, at most {high}, "
        f"at most {places} decimal places (a JSON number or a decimal string)",
    }
    return Annotated[Decimal, PlainValidator(check), WithJsonSchema(schema)]


MAX_USD = Decimal(1_000_000_000)
#: money: nano-dollars are the unit inside (``spendgate.core.money``)
USD_PLACES = 9
#: percentages are stored as text of at most 20 characters: 4 places is ample
PERCENT_PLACES = 4
MAX_PERCENT = Decimal(1000)

#: a positive USD amount (budgets, top-ups, exceptions, spend limits)
Money = exact_decimal(what="an amount in USD", places=USD_PLACES, high=MAX_USD, low_inclusive=False)
#: a USD amount that may be zero (thresholds such as a wallet's low-balance warning)
MoneyOrZero = exact_decimal(
    what="an amount in USD", places=USD_PLACES, high=MAX_USD, low_inclusive=True
)
#: a positive percentage (alerts, soft and hard limits, exception raises)
Percent = exact_decimal(
    what="a percentage", places=PERCENT_PLACES, high=MAX_PERCENT, low_inclusive=False
)
