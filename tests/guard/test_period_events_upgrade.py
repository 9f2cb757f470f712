"""Events a budget fired under the period's date before the upgrade to keys named by
the window's bounds (``period_events``) still count on the settle path: a level the
period fired before it does not fire again after it — on SQLite+memory and
PostgreSQL+Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import openai
import pytest
import sqlalchemy as sa

from spendgate.core.budget_windows import window_at
from spendgate.store.events import dated_name
from tests.admin.test_budgets import budget, events, one_call_cost
from tests.conftest import RunningGateway


async def _dated(
    gateway: RunningGateway, budget_id: str, without_rule: bool = False, period: str = "monthly"
) -> None:
    """The budget's events as the old code stored them: under the period's key (a date;
    a week's is its first day then ``/P1W``), and a refusal named by its cap alone
    (``without_rule``)."""
    window = window_at(gateway.clock.now(), period, "UTC")  # type: ignore[arg-type]
    async with gateway.app.services.engine.begin() as conn:
        await conn.execute(
            sa.text(
                "UPDATE events SET dedup_key = REPLACE(dedup_key, :span, :key) "
                "WHERE dedup_key LIKE :mine"
            ),
            {"span": window.span, "key": window.key, "mine": f"budget:{budget_id}:%"},
        )
        if not without_rule:
            return
        mine = sa.text("SELECT dedup_key FROM events WHERE dedup_key LIKE :refused")
        for (old,) in await conn.execute(mine, {"refused": f"budget:{budget_id}:%:refused:%"}):
            await conn.execute(
                sa.text("UPDATE events SET dedup_key = :new WHERE dedup_key = :old"),
                {"new": old.rsplit(":", 1)[0], "old": old},
            )


@pytest.mark.parametrize("period", ["monthly", "weekly"])
def test_a_threshold_fired_under_the_date_before_the_upgrade_is_not_crossed_again(
    gateway: RunningGateway, period: str
) -> None:
    """50 % fired before the upgrade (a date key; a weekly budget's ``2026-03-02/P1W``,
    whose slash is not a span's). An exception doubles the amount, and the next call
    crosses 50 % of it: before, that was the same key, so nothing fired; the settle must
    still find the dated one and fire nothing (the sweeper does), and the status counts
    it as fired."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(
        gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 2), period=period
    )
    assert [e["data"]["percent"] for e in events(gateway, "budget.threshold_crossed")] == ["50"]
    gateway.run(_dated(gateway, made["id"], period=period))
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert status["thresholds_fired"] == ["alert:50"]
    expires = gateway.clock.now() + timedelta(hours=1)
    gateway.post(
        f"/admin/budgets/{made['id']}/exceptions",
        {"percent": 100, "reason": "launch", "expires_at": expires.isoformat()},
    )
    one_call_cost(gateway, key["key"])  # 25 % -> 50 % of the raised amount
    assert [e["data"]["percent"] for e in events(gateway, "budget.threshold_crossed")] == ["50"]
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert status["thresholds_fired"] == ["alert:50"]


def test_a_refusal_fired_under_the_date_before_the_upgrade_is_not_told_again(
    gateway: RunningGateway,
) -> None:
    """The cap refused a call before the upgrade (``refused:<cap>``, under the date, and
    no counting rule in the key then): a call refused at the same cap after it is the
    same refusal, told once a period, not again under the new key."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(
        gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 3), hard_limit=True
    )
    refused = 0
    for _ in range(6):
        try:
            one_call_cost(gateway, key["key"])
        except openai.RateLimitError:
            refused += 1
            break
    assert refused == 1
    [told] = events(gateway, "budget.calls_refused")
    gateway.run(_dated(gateway, made["id"], without_rule=True))
    gateway.app.services.events._announced.clear()  # the upgrade restarted the process
    with pytest.raises(openai.RateLimitError):
        one_call_cost(gateway, key["key"])
    assert [e["id"] for e in events(gateway, "budget.calls_refused")] == [told["id"]]
    assert gateway.get(f"/admin/budgets/{made['id']}/status")["state"] == "refusing"


def test_an_event_under_a_date_counts_for_the_window_its_data_names() -> None:
    """The one rule the status, the sweeper and recording read old keys by
    (``dated_name``): a date key of the window the data names gives its name (a
    refusal's too); a span key, another budget's or another window's gives none."""
    march = window_at(datetime(2026, 3, 10, tzinfo=UTC), "monthly", "UTC")
    bounds = (march.start.isoformat(), march.end.isoformat())
    data = {"period_start": bounds[0], "period_end": bounds[1]}
    assert dated_name("budget:b_1:2026-03:alert:50", "budget:b_1:", data, bounds) == "alert:50"
    assert dated_name("budget:b_1:2026-03:refused:9", "budget:b_1:", data, bounds) == "refused:9"
    assert dated_name(f"budget:b_1:{march.span}:alert:50", "budget:b_1:", data, bounds) is None
    week = window_at(datetime(2026, 3, 10, tzinfo=UTC), "weekly", "UTC")
    wbounds = (week.start.isoformat(), week.end.isoformat())
    wdata = {"period_start": wbounds[0], "period_end": wbounds[1]}
    assert dated_name(f"budget:b_1:{week.key}:alert:50", "budget:b_1:", wdata, wbounds) == (
        "alert:50"
    )
    assert dated_name("budget:b_2:2026-03:alert:50", "budget:b_1:", data, bounds) is None
    moved = {**data, "period_start": "2026-03-01T08:00:00+00:00"}  # other hours, same date
    assert dated_name("budget:b_1:2026-03:alert:50", "budget:b_1:", moved, bounds) is None
