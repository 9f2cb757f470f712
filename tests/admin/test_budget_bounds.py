"""A budget allows at most $1,000,000,000 a period, its hard-limit buffer and exceptions
included: past it, a figure of its (its forecast's amount and cap, kept as 64-bit
nano-dollars) no longer fits the database, and one such budget failed the forecast of
every budget (one refresh writes them all). The create, the PATCH or the exception that
would pass it is a 422 naming its field (on SQLite+memory and PostgreSQL+Redis)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx

from tests.admin.test_budgets import at_once
from tests.conftest import MASTER_KEY, RunningGateway

BILLION = "1000000000"


def refused(response: Any, param: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param and "1,000,000,000" in error["message"], error


def test_a_hard_limit_buffer_past_the_most_a_budget_allows_is_422(
    gateway: RunningGateway,
) -> None:
    key = gateway.create_key()
    base = {"scope_type": "key", "scope_id": key["id"], "hard_limit": True}
    refused(
        gateway.admin.post(
            "/admin/budgets", json={**base, "amount_usd": BILLION, "hard_limit_percent": 110}
        ),
        "hard_limit_percent",
    )
    assert gateway.get("/admin/budgets") == []
    made = gateway.create_budget(**base, amount_usd="900000000", hard_limit_percent=110)
    # the forecasts of every budget are refreshed together: this one stores its figures
    assert gateway.admin.get(f"/admin/forecasts/{made['id']}").status_code == 200
    refused(
        gateway.admin.patch(f"/admin/budgets/{made['id']}", json={"amount_usd": BILLION}),
        "amount_usd",
    )
    off = gateway.admin.patch(
        f"/admin/budgets/{made['id']}", json={"amount_usd": BILLION, "hard_limit": False}
    )
    assert off.status_code == 200, off.text
    refused(
        gateway.admin.patch(f"/admin/budgets/{made['id']}", json={"hard_limit": True}),
        "hard_limit",
    )


def test_exceptions_past_the_most_a_budget_allows_are_422(gateway: RunningGateway) -> None:
    """Every exception not run out counts (they may overlap); one run out does not."""
    key = gateway.create_key()
    made = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="600000000", hard_limit=True
    )
    path = f"/admin/budgets/{made['id']}/exceptions"
    soon = (gateway.clock.now() + timedelta(hours=1)).isoformat()
    later = (gateway.clock.now() + timedelta(days=3)).isoformat()
    grant = {"reason": "launch", "expires_at": later}
    assert gateway.admin.post(path, json={**grant, "percent": 50}).status_code == 201
    refused(gateway.admin.post(path, json={**grant, "amount_usd": "100000001"}), "amount_usd")
    refused(gateway.admin.post(path, json={**grant, "percent": "16.67"}), "percent")
    made_soon = gateway.admin.post(
        path, json={"reason": "soon", "expires_at": soon, "amount_usd": "100000000"}
    )
    assert made_soon.status_code == 201, made_soon.text
    assert gateway.admin.get(f"/admin/forecasts/{made['id']}").status_code == 200
    refused(
        gateway.admin.patch(f"/admin/budgets/{made['id']}", json={"hard_limit_percent": 101}),
        "hard_limit_percent",
    )
    gateway.clock.set(datetime(2026, 3, 10, 17, 0, tzinfo=UTC))  # the hour's raise ran out
    assert gateway.admin.post(path, json={**grant, "amount_usd": "100000000"}).status_code == 201
    assert gateway.admin.get(f"/admin/forecasts/{made['id']}").status_code == 200
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert status["effective_amount_usd"] == "1000000000.00"


def test_exceptions_granted_at_once_cannot_pass_the_most_together(
    gateway: RunningGateway,
) -> None:
    """Six $500M exceptions on a $500M budget sent at the same moment: each alone fits
    the $1,000,000,000 a budget may allow, any two do not, so one is granted and five are
    422 (each checked what was granted before it, not what the others were granting)."""
    key = gateway.create_key()
    made = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="500000000", hard_limit=True
    )
    grant = {
        "reason": "launch",
        "amount_usd": "500000000",
        "expires_at": (gateway.clock.now() + timedelta(days=3)).isoformat(),
    }
    path = f"/admin/budgets/{made['id']}/exceptions"
    statuses = at_once(gateway, 6, "POST", path, json=grant)
    assert sorted(statuses) == [201, 422, 422, 422, 422, 422]
    assert len(gateway.get(path)) == 1
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert status["effective_amount_usd"] == "1000000000.00"


def test_an_amount_raised_while_an_exception_is_granted_cannot_pass_the_most(
    gateway: RunningGateway,
) -> None:
    """A PATCH raising the amount to $600M and a $500M exception on a $100M budget, sent
    together, three of each: each fits alone, an exception with the raised amount does
    not, so either the exception or the raise is refused, never both granted."""
    key = gateway.create_key()
    made = gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="100000000")
    grant = {
        "reason": "launch",
        "amount_usd": "500000000",
        "expires_at": (gateway.clock.now() + timedelta(days=3)).isoformat(),
    }

    async def both() -> list[int]:
        async with httpx.AsyncClient(
            base_url=gateway.url, timeout=60, headers={"authorization": f"Bearer {MASTER_KEY}"}
        ) as client:
            sent = []
            for _ in range(3):
                sent.append(client.post(f"/admin/budgets/{made['id']}/exceptions", json=grant))
                sent.append(
                    client.patch(f"/admin/budgets/{made['id']}", json={"amount_usd": "600000000"})
                )
            return [r.status_code for r in await asyncio.gather(*sent)]

    asyncio.run(both())
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert Decimal(status["effective_amount_usd"]) <= Decimal(BILLION)
