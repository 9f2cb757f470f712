"""Budgets edited mid-period count what their new rule counts: a budget's live counter
follows its period's bounds and its categories, so narrowing the categories or moving
the zone of a running budget neither keeps spend it no longer counts nor misses spend
it now does (on SQLite+memory and PostgreSQL+Redis)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import openai

from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "same prompt every time"}]


def call(gw: RunningGateway, key: str, model: str = "demo-small") -> Decimal:
    raw = openai.OpenAI(
        base_url=gw.url + "/v1", api_key=key, max_retries=0
    ).chat.completions.with_raw_response.create(model=model, messages=MSG, max_tokens=30)
    return Decimal(raw.headers["x-spendgate-cost-usd"])


def status(gw: RunningGateway, made: dict[str, Any]) -> dict[str, Any]:
    gw.run(gw.app.services.drain())
    return gw.get(f"/admin/budgets/{made['id']}/status")


def patch(gw: RunningGateway, made: dict[str, Any], **fields: Any) -> None:
    response = gw.admin.patch(f"/admin/budgets/{made['id']}", json=fields)
    assert response.status_code == 200, response.text


def test_narrowed_categories_stop_counting_the_spend_they_leave_out(
    gateway: RunningGateway,
) -> None:
    """A key budget at 100 % from demo-small calls is narrowed to demo-large and given a
    hard cap at that amount: none of its spend counts any more, so the status says $0
    spent and a demo-large call passes (it kept the old counter: blocked, 429)."""
    key = gateway.create_key()
    cost = call(gateway, key["key"])
    made = gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd=f"{cost * 2:f}")
    call(gateway, key["key"])
    assert Decimal(status(gateway, made)["spent_usd"]) == cost * 2
    patch(gateway, made, categories={"models": ["demo-large"]}, hard_limit=True)
    narrowed = status(gateway, made)
    assert Decimal(narrowed["spent_usd"]) == 0 and narrowed["state"] == "ok"
    patch(gateway, made, amount_usd="1")
    large = call(gateway, key["key"], "demo-large")
    assert Decimal(status(gateway, made)["spent_usd"]) == large
    # widened again: every call of the period counts, none twice
    patch(gateway, made, categories={})
    assert Decimal(status(gateway, made)["spent_usd"]) == cost * 2 + large


def test_a_zone_moved_mid_period_counts_the_new_periods_spend_only(
    gateway: RunningGateway,
) -> None:
    """A daily UTC budget spends at 03:00Z on March 10; at 15:30Z its zone becomes
    America/Los_Angeles, whose March 10 began at 07:00Z: that call was spent on the 9th
    there, so the budget's day holds nothing yet (it kept the UTC day's counter, whose
    period key, 2026-03-10, is the same)."""
    key = gateway.create_key()
    made = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="1", period="daily", timezone="UTC"
    )
    gateway.clock.set(datetime(2026, 3, 10, 3, 0, tzinfo=UTC))
    early = call(gateway, key["key"])
    assert Decimal(status(gateway, made)["spent_usd"]) == early
    gateway.clock.set(datetime(2026, 3, 10, 15, 30, tzinfo=UTC))
    patch(gateway, made, timezone="America/Los_Angeles")
    moved = status(gateway, made)
    assert moved["period_key"] == "2026-03-10" and moved["period_start"] == "2026-03-10T07:00:00Z"
    assert Decimal(moved["spent_usd"]) == 0
    late = call(gateway, key["key"])
    assert Decimal(status(gateway, made)["spent_usd"]) == late
