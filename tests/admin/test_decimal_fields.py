"""Every money and percentage field of the admin API takes extreme decimals calmly
(issue 22, item 2): a value is stored exactly as given or refused with a 422 that names
the field and states the allowed precision — never a 500 (nor the 503 PostgreSQL's
too-long text used to become).

The fields are found, not listed: every ``Decimal`` field of every admin input model
must use the one validator (``spendgate.admin.decimal_fields``), and the HTTP test posts
to each of them. Which values are acceptable is decided here independently of the code.
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from spendgate.admin.decimal_fields import ExactDecimal
from spendgate.admin.deps import admin_routes
from spendgate.security.credentials import new_id
from spendgate.store import schema
from tests.conftest import RunningGateway

MONEY = ("0", "1000000000", 9, False)
MONEY_OR_ZERO = ("0", "1000000000", 9, True)
PERCENT = ("0", "1000", 4, False)


@dataclass(frozen=True)
class Target:
    """One Decimal field of one route, with its rule: (low, high, places, low inclusive)."""

    method: str
    path: str
    field: str
    rule: tuple[str, str, int, bool]
    in_list: bool = False


TARGETS = [
    Target("POST", "/admin/budgets", "amount_usd", MONEY),
    Target("POST", "/admin/budgets", "soft_limit_percent", PERCENT),
    Target("POST", "/admin/budgets", "hard_limit_percent", PERCENT),
    Target("POST", "/admin/budgets", "alert_percentages", PERCENT, in_list=True),
    Target("PATCH", "/admin/budgets/{budget}", "amount_usd", MONEY),
    Target("PATCH", "/admin/budgets/{budget}", "soft_limit_percent", PERCENT),
    Target("PATCH", "/admin/budgets/{budget}", "hard_limit_percent", PERCENT),
    Target("PATCH", "/admin/budgets/{budget}", "alert_percentages", PERCENT, in_list=True),
    Target("POST", "/admin/budgets/{budget}/exceptions", "amount_usd", MONEY),
    Target("POST", "/admin/budgets/{budget}/exceptions", "percent", PERCENT),
    Target("POST", "/admin/wallets", "low_balance_usd", MONEY_OR_ZERO),
    Target("POST", "/admin/wallets", "initial_topup_usd", MONEY),
    Target("POST", "/admin/wallets/{wallet}/topups", "amount_usd", MONEY),
    Target("PATCH", "/admin/wallets/{wallet}", "low_balance_usd", MONEY_OR_ZERO),
    Target("POST", "/admin/wallets", "tickets_auto_approve_below_usd", MONEY),
    Target("PATCH", "/admin/wallets/{wallet}", "tickets_auto_approve_below_usd", MONEY),
    Target("POST", "/admin/tickets/{ticket}/approve", "amount_usd", MONEY),
    Target("POST", "/admin/rate-limits", "max_spend_usd", MONEY),
    Target("PATCH", "/admin/rate-limits/{limit}", "max_spend_usd", MONEY),
    Target("POST", "/admin/anomaly-actions", "max_spend_usd", MONEY),
]

EXTREMES: list[Any] = [
    "1e-30",
    1e-30,
    "99.123456789012345678",
    99.123456789012345678,
    "1e400",
    1e300,
    "-0",
    -0.0,
    "0",
    0,
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "1e5",
    "1E5",
    100000,
    "100000",
    "0.000000001",
    "0.0000000001",
    "0.0001",
    "0.00001",
    "1000",
    "1000.0001",
    "1000000000",
    "1000000000.000000001",
    "12.500000000000000000",
    " 12.5 ",
    "+5",
    "-5",
    "",
    " ",
    "12,50",
    "0x10",
    "١٢",  # Arabic-Indic digits
    "9" * 60,
    "0." + "0" * 39 + "1",
    True,
    None,
    [],
    {},
]


def _oracle(value: Any, rule: tuple[str, str, int, bool]) -> Decimal | None:
    """The value as stored if acceptable (decided here, not by the code), else None."""
    low, high, places, inclusive = Decimal(rule[0]), Decimal(rule[1]), rule[2], rule[3]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str):
        text = value.strip()
        body = text[1:] if text[:1] in "+-" else text
        whole, _, frac = body.partition(".")
        plain = (
            whole.isascii() and whole.isdigit() and (not _ or (frac.isascii() and frac.isdigit()))
        )
        if not plain:
            return None
        number = Decimal(text)
    else:
        try:
            number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        except InvalidOperation:
            return None
        if not number.is_finite():
            return None
    if number.normalize().as_tuple().exponent < -places:  # type: ignore[operator]
        return None
    if number < low or (number == low and not inclusive) or number > high:
        return None
    return number


def decimals() -> st.SearchStrategy[Any]:
    """Extreme and ordinary decimals as JSON numbers and strings."""
    big = st.decimals(allow_nan=True, allow_infinity=True)
    return st.one_of(
        st.sampled_from(EXTREMES),
        big.map(str),
        big.map(lambda d: format(d, "f") if d.is_finite() else str(d)),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.decimals(min_value=0, max_value=2000, places=6).map(str),
    )


class World:
    """Objects to aim the requests at, made once per backend."""

    def __init__(self, gw: RunningGateway) -> None:
        self.gw = gw
        org = gw.post("/admin/orgs", {"name": "o"})["id"]
        self.team = gw.post("/admin/teams", {"org_id": org, "name": "t"})["id"]
        self.ids = {
            "budget": gw.post(
                "/admin/budgets",
                {"scope_type": "team", "scope_id": self.team, "amount_usd": "10"},
            )["id"],
            "wallet": gw.post("/admin/wallets", {"scope_type": "team", "scope_id": self.team})[
                "id"
            ],
            "limit": gw.post(
                "/admin/rate-limits", {"scope_type": "team", "scope_id": self.team, "rpm": 5}
            )["id"],
        }
        self.org = org
        self.serial = itertools.count()
        self.ids["ticket"] = self._ticket()

    def _ticket(self) -> str:
        """An open cost ticket (stored directly): its approve route takes an amount."""
        key = self._key(10**6)
        wallet = self.gw.post(
            "/admin/wallets", {"scope_type": "key", "scope_id": key, "tickets": "on"}
        )["id"]
        ticket_id, now = new_id("tkt"), self.gw.clock.now()
        row = {
            "id": ticket_id,
            "org_id": self.org,
            "wallet_id": wallet,
            "key_id": key,
            "status": "open",
            "asked_nanos": 10**18,
            "refusals": 1,
            "created_at": now,
            "last_refused_at": now,
        }

        async def insert() -> None:
            async with self.gw.app.services.engine.begin() as conn:
                await conn.execute(sa.insert(schema.wallet_tickets).values(**row))

        self.gw.run(insert())
        return ticket_id

    def body(self, target: Target, value: Any) -> dict[str, Any]:
        n = next(self.serial)
        team = {"scope_type": "team", "scope_id": self.team}
        base: dict[str, Any] = {}
        if target.method == "POST" and target.path == "/admin/budgets":
            base = {**team, "amount_usd": "10"}
        elif target.path.endswith("/exceptions"):
            base = {"reason": "r", "expires_at": "2026-04-01T00:00:00Z"}
        elif target.path == "/admin/wallets":  # one wallet per scope: a fresh key each
            base = {"scope_type": "key", "scope_id": self._key(n)}
        elif target.method == "POST" and target.path == "/admin/rate-limits":
            base = {**team, "model": f"m{n}-*"}
        elif target.path == "/admin/anomaly-actions":
            base = {**team, "action": "rate_limit"}
        elif target.path.endswith("/approve"):
            base = {"reason": "r"}
        return {**base, target.field: [value] if target.in_list else value}

    def _key(self, n: int) -> str:
        key: str = self.gw.post("/admin/keys", {"name": f"k{n}", "org_id": self.org})["id"]
        return key


def _stored(answer: dict[str, Any], target: Target) -> Any:
    if target.path.endswith("/exceptions") or target.path.endswith("/topups"):
        return answer.get(target.field)
    found = answer.get(target.field)
    return found[0] if target.in_list and found else found


def _decimal_leaves(tp: Any, validated: bool = False) -> Iterator[bool]:
    """For each ``Decimal`` inside a type (optionals, lists, ``Annotated``): whether an
    ``Annotated`` around it carries a ``ExactDecimal`` (the one validator)."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        yield from _decimal_leaves(
            base, validated or any(isinstance(m, ExactDecimal) for m in meta)
        )
    elif tp is Decimal:
        yield validated
    else:
        for arg in typing.get_args(tp):
            yield from _decimal_leaves(arg, validated)


def _decimal_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, bool]]:
    for name, info in model.model_fields.items():
        tp = (
            typing.Annotated[(info.annotation, *info.metadata)]
            if info.metadata
            else info.annotation
        )
        for validated in _decimal_leaves(tp):
            yield prefix + name, validated
        for arg in (info.annotation, *typing.get_args(info.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                yield from _decimal_fields(arg, f"{prefix}{name}.")


def test_every_decimal_input_field_uses_the_one_validator(gateway: RunningGateway) -> None:
    """Walk every admin route's body model: each Decimal field (also inside lists,
    optionals and nested models) is an ``ExactDecimal`` — and each is one of the targets
    of the HTTP test below, so no field is left out of it."""
    found: set[tuple[str, str, str]] = set()
    for route in admin_routes(gateway.app.admin):
        if route.body_field is None:
            continue
        model = route.body_field.field_info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for name, validated in _decimal_fields(model):
            assert validated, f"{route.path} {name}: a Decimal not declared with ExactDecimal"
            found |= {(m, route.path, name) for m in route.methods or ()}
    renamed = {
        "{budget}": "{budget_id}",
        "{wallet}": "{wallet_id}",
        "{limit}": "{limit_id}",
        "{ticket}": "{ticket_id}",
    }
    expected = set()
    for t in TARGETS:
        path = t.path
        for old, new in renamed.items():
            path = path.replace(old, new)
        expected.add((t.method, path, t.field))
    assert found == expected


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_extreme_decimals_are_stored_exactly_or_refused_naming_the_field(
    gateway: RunningGateway, data: st.DataObject, world_cache: dict[str, World]
) -> None:
    """Post extreme decimals to every Decimal field over HTTP: acceptable values (by the
    oracle above) are stored exactly; others are a 422 naming the field, stating the
    allowed decimal places; nothing is ever a 5xx."""
    if gateway.url not in world_cache:  # once per backend (org names are unique)
        world_cache[gateway.url] = World(gateway)
    world = world_cache[gateway.url]
    target = data.draw(st.sampled_from(TARGETS), label="target")
    value = data.draw(decimals(), label="value")
    path = target.path.format(**world.ids)
    answer = gateway.admin.request(target.method, path, json=world.body(target, value))
    assert answer.status_code < 500, answer.text
    if value is None:  # "left out" or "no limit" where nullable, else 422: not a decimal
        return
    expected = _oracle(value, target.rule)
    if expected is None:
        assert answer.status_code == 422, (value, answer.text)
        error = answer.json()["error"]
        assert error["param"] in (target.field, f"{target.field}.0"), error
        assert f"at most {target.rule[2]} decimal places" in error["message"], error
        return
    if answer.status_code == 422:  # a business rule (soft above hard, amount vs percent)
        assert "decimal places" not in answer.json()["error"]["message"], answer.text
        return
    assert answer.status_code in (200, 201, 409), answer.text
    if answer.status_code != 409:
        stored = _stored(answer.json(), target)
        if stored is not None:
            assert Decimal(stored) == expected, (value, stored)


@pytest.fixture
def world_cache() -> dict[str, World]:
    return {}


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("1e-30", "hard_limit_percent"),
        ("99.123456789012345678", "hard_limit_percent"),
        ("1e-30", "soft_limit_percent"),
        (1e-30, "soft_limit_percent"),
        ("1e400", "amount_usd"),
        ("1e5", "amount_usd"),
        ("NaN", "amount_usd"),
        ("Infinity", "soft_limit_percent"),
        ("-0", "amount_usd"),
    ],
)
def test_the_issue_cases_are_422_naming_the_field(
    gateway: RunningGateway, value: Any, field: str
) -> None:
    """The exact inputs from the issue: 422, the field named, the precision stated."""
    org = gateway.post("/admin/orgs", {"name": "o"})["id"]
    body = {"scope_type": "org", "scope_id": org, "amount_usd": "10", field: value}
    answer = gateway.admin.post("/admin/budgets", json=body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["param"] == field
    assert error["message"].startswith(f"{field}: must be a")
    assert "decimal places" in error["message"]
