"""The threshold sweeper: levels the ledger's spend has reached but no settle crossed
fire once, marked ``recovered`` — on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from tests.admin.test_budgets import budget, events, one_call_cost
from tests.conftest import RunningGateway


def test_levels_left_behind_by_an_expired_exception_fire_once(gateway: RunningGateway) -> None:
    """A +100 % exception doubles the amount; five calls reach 62.5 % of it (50 fires as
    usual). When the exception runs out the spend is 125 % of the amount: no settle
    crosses 75 or 90 any more, so the sweeper fires them (and the soft limit), once."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 4))
    expires = gateway.clock.now() + timedelta(hours=1)
    gateway.post(
        f"/admin/budgets/{made['id']}/exceptions",
        {"percent": 100, "reason": "launch", "expires_at": expires.isoformat()},
    )
    for _ in range(4):
        one_call_cost(gateway, key["key"])
    assert [e["data"]["percent"] for e in events(gateway, "budget.threshold_crossed")] == ["50"]
    sweeper = gateway.app.services.sweeper
    assert sweeper is not None
    assert gateway.run(sweeper.sweep()) == 0  # nothing missing while the exception runs

    gateway.clock.advance(2 * 3600)
    assert gateway.run(sweeper.sweep()) == 3
    crossed = events(gateway, "budget.threshold_crossed")
    assert sorted(e["data"]["percent"] for e in crossed) == ["50", "75", "90"]
    recovered = [e for e in crossed if e["data"]["percent"] != "50"]
    assert all(e["data"]["recovered"] is True for e in recovered)
    assert {e["data"]["spent_usd"] for e in recovered} == {str(cost * 5)}
    [soft] = events(gateway, "budget.soft_limit_reached")
    assert soft["data"]["recovered"] is True
    assert gateway.run(sweeper.sweep()) == 0
    assert len(events(gateway, "budget.threshold_crossed")) == 3


def test_a_periodic_sweep_leaves_the_newest_calls_to_their_own_settle(
    gateway: RunningGateway,
) -> None:
    """Calls younger than the grace period may still be in another replica's spool with
    the event that crossed the level: a periodic sweep does not count them."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 4))
    for _ in range(3):
        one_call_cost(gateway, key["key"])
    sweeper = gateway.app.services.sweeper
    assert sweeper is not None
    gateway.run(gateway.app.services.drain())
    delete = f"DELETE FROM events WHERE dedup_key LIKE 'budget:{made['id']}:%'"
    gateway.run(_execute(gateway, delete))  # as if the crossing's record never landed
    assert gateway.run(sweeper.sweep()) == 0
    gateway.clock.advance(11)
    assert gateway.run(sweeper.sweep()) == 4  # at 100 %: 50, 75, 90 and the soft limit
    fired = {e["data"]["percent"] for e in events(gateway, "budget.threshold_crossed")}
    assert fired == {"50", "75", "90"}


async def _execute(gateway: RunningGateway, sql: str) -> None:
    async with gateway.app.services.engine.begin() as conn:
        await conn.execute(sa.text(sql))


def test_thresholds_fired_under_the_period_date_before_an_upgrade_do_not_fire_again(
    gateway: RunningGateway,
) -> None:
    """Thresholds were keyed by the period's date (``budget:<id>:2026-03:alert:50``)
    before they were keyed by the window's bounds: one stored so this month, for this
    month's window, still counts, so a sweep after the upgrade fires nothing again."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 2))
    assert [e["data"]["percent"] for e in events(gateway, "budget.threshold_crossed")] == ["50"]
    dated = (
        f"UPDATE events SET dedup_key = 'budget:{made['id']}:2026-03:alert:50' "
        f"WHERE dedup_key LIKE 'budget:{made['id']}:%'"
    )
    gateway.run(_execute(gateway, dated))
    gateway.clock.advance(11)
    sweeper = gateway.app.services.sweeper
    assert sweeper is not None
    assert gateway.run(sweeper.sweep()) == 0
    assert len(events(gateway, "budget.threshold_crossed")) == 1
    assert gateway.get(f"/admin/budgets/{made['id']}/status")["thresholds_fired"] == ["alert:50"]
