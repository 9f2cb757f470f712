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


def crossed(gw: RunningGateway, made: dict[str, Any]) -> list[dict[str, Any]]:
    """The budget's ``budget.threshold_crossed`` events, oldest first."""
    gw.run(gw.app.services.drain())
    found = gw.get("/admin/events", type="budget.threshold_crossed", limit=1000)
    mine = (e for e in found if e["data"]["budget_id"] == made["id"])
    return sorted(mine, key=lambda e: (e["timestamp"], Decimal(e["data"]["percent"])))


def test_a_zone_moved_to_a_new_window_fires_its_thresholds_in_it(
    gateway: RunningGateway,
) -> None:
    """A daily UTC budget of two calls crosses 50 % at 03:00Z on March 10. At 15:30Z its
    zone becomes America/Los_Angeles: its day is now [07:00Z, 07:00Z next day), a window
    of its own that holds nothing yet, under the same date (2026-03-10). A call there
    crosses 50 % of that window: it fires (the thresholds were keyed by the date, so the
    UTC day's 50 % kept the new window's from ever firing)."""
    key = gateway.create_key()
    gateway.clock.set(datetime(2026, 3, 10, 3, 0, tzinfo=UTC))
    cost = call(gateway, key["key"])
    made = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd=f"{cost * 4:f}", period="daily"
    )
    call(gateway, key["key"])  # 50 % of the UTC day
    assert [e["data"]["period_start"] for e in crossed(gateway, made)] == [
        "2026-03-10T00:00:00+00:00"
    ]
    gateway.clock.set(datetime(2026, 3, 10, 15, 30, tzinfo=UTC))
    patch(gateway, made, timezone="America/Los_Angeles")
    assert status(gateway, made)["thresholds_fired"] == []  # nothing spent in this window
    call(gateway, key["key"])
    call(gateway, key["key"])  # 50 % of the Los Angeles day
    fired = crossed(gateway, made)
    assert [(e["data"]["period_start"], e["data"]["percent"]) for e in fired] == [
        ("2026-03-10T00:00:00+00:00", "50"),
        ("2026-03-10T07:00:00+00:00", "50"),
    ]
    assert status(gateway, made)["thresholds_fired"] == ["alert:50"]
    # back to UTC: its day holds 4 calls (100 %); its 50 % fired already, 75 and 90 fire
    # now (``already_past``), and a call more fires nothing again
    patch(gateway, made, timezone="UTC")
    call(gateway, key["key"])
    fired = crossed(gateway, made)
    assert [(e["data"]["period_start"], e["data"]["percent"]) for e in fired[2:]] == [
        ("2026-03-10T00:00:00+00:00", "75"),
        ("2026-03-10T00:00:00+00:00", "90"),
    ]
    assert sorted(status(gateway, made)["thresholds_fired"]) == [
        "alert:50",
        "alert:75",
        "alert:90",
        "soft:75",
    ]


def test_a_zone_moved_to_the_same_window_under_another_date_fires_nothing_twice(
    gateway: RunningGateway,
) -> None:
    """Honolulu (UTC-10) and Kiritimati (UTC+14) are a day apart: Honolulu's March 10
    and Kiritimati's March 11 are the same 24 hours, [10:00Z, 10:00Z). A budget moved
    from one to the other keeps its window, so its 50 % already fired does not fire
    again (it did, under the new date, marked ``already_past``)."""
    key = gateway.create_key()
    cost = call(gateway, key["key"])  # 15:30Z: 05:30 in Honolulu
    made = gateway.create_budget(
        scope_type="key",
        scope_id=key["id"],
        amount_usd=f"{cost * 2:f}",
        period="daily",
        timezone="Pacific/Honolulu",
    )
    assert [e["data"]["percent"] for e in crossed(gateway, made)] == ["50"]
    patch(gateway, made, timezone="Pacific/Kiritimati")
    moved = status(gateway, made)
    assert moved["period_key"] == "2026-03-11"
    assert moved["period_start"] == "2026-03-10T10:00:00Z"
    assert moved["thresholds_fired"] == ["alert:50"]
    assert [e["data"]["percent"] for e in crossed(gateway, made)] == ["50"]
