"""Exact decimal input: the one validator behind every money and percentage field.

Every amount and percentage of the admin API is declared with :class:`ExactDecimal`, so
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
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

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


@dataclass(frozen=True, slots=True)
class ExactDecimal:
    """``Annotated[Decimal, ExactDecimal(...)]``: an input decimal with ``low < value <=
    high`` (or ``low <= value`` with ``low_inclusive``) and at most ``places`` decimal
    places; pydantic validates with :meth:`check` and documents :meth:`json_schema`."""

    what: str
    places: int
    high: Decimal
    low: Decimal = Decimal(0)
    low_inclusive: bool = False

    @property
    def rule(self) -> str:
        bound = "at least" if self.low_inclusive else "greater than"
        return (
            f"must be {self.what}: a decimal {bound} {self.low} and at most {self.high}, "
            f"with at most {self.places} decimal places"
        )

    def check(self, value: Any) -> Decimal:
        number = _as_decimal(value, self.rule)
        if number.is_zero():
            number = Decimal(0)  # -0 is 0
        exponent = number.normalize().as_tuple().exponent
        if isinstance(exponent, int) and exponent < -self.places:
            raise _refuse(f"{self.rule}; got {-exponent} decimal places")
        too_low = number < self.low if self.low_inclusive else number <= self.low
        if too_low or number > self.high:
            raise _refuse(f"{self.rule}; got {number:f}"[:200])
        return number

    def json_schema(self) -> dict[str, Any]:
        bound = "minimum" if self.low_inclusive else "exclusiveMinimum"
        digits = len(str(int(self.high)))
        return {
            "anyOf": [
                {"type": "number", bound: float(self.low), "maximum": float(self.high)},
                {
                    "type": "string",
                    "pattern": rf"^[0-9]{{1,{digits}}}(\.[0-9]{{1,{self.places}}})?$",
                },
            ],
            "description": f"{self.what[0].upper()}{self.what[1:]}: {self.rule[len('must be ') :]}"
            " (a JSON number or a decimal string)",
        }

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(self.check)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return self.json_schema()


MAX_USD = Decimal(1_000_000_000)
#: money: nano-dollars are the unit inside (``spendgate.core.money``)
USD_PLACES = 9
#: percentages are stored as text of at most 20 characters: 4 places is ample
PERCENT_PLACES = 4
MAX_PERCENT = Decimal(1000)

#: a positive USD amount (budgets, top-ups, exceptions, spend limits)
Money = Annotated[Decimal, ExactDecimal("an amount in USD", USD_PLACES, MAX_USD)]
#: a USD amount that may be zero (thresholds such as a wallet's low-balance warning)
MoneyOrZero = Annotated[
    Decimal, ExactDecimal("an amount in USD", USD_PLACES, MAX_USD, low_inclusive=True)
]
#: a positive percentage (alerts, soft and hard limits, exception raises)
Percent = Annotated[Decimal, ExactDecimal("a percentage", PERCENT_PLACES, MAX_PERCENT)]
