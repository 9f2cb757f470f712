"""*Refresh forecasts* on /usage/budgets: the admin API's ``POST /admin/forecasts/refresh``
for org admins and finance (every forecast of the org recomputed at once), refused to
team roles (403) and without the CSRF token; no serious axe violations."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, form, session, sign_in

SHOTS = Path("/tmp/spendgate-console2-shots")


def _budget(console: Console) -> str:
    budget = console.gw.post(
        "/admin/budgets",
        {"name": "ops", "scope_type": "team", "scope_id": console.team_id, "amount_usd": "10"},
    )
    return str(budget["id"])


def _generated(console: Console, budget_id: str) -> datetime:
    at = console.gw.get(f"/admin/forecasts/{budget_id}")["generated_at"]
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def test_finance_refreshes_every_forecast_now(console: Console, page: Page) -> None:
    """A forecast made now is fresh for an hour (reads keep it); ten minutes later the
    button recomputes it at the new time and says how many were refreshed."""
    budget_id = _budget(console)
    first = _generated(console, budget_id)
    console.gw.clock.advance(600)
    assert _generated(console, budget_id) == first  # still fresh: kept
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + "/usage/budgets")
    page.get_by_role("button", name="Refresh forecasts").click()
    expect(page.locator("#forecasts-refreshed")).to_have_text("Refreshed 1 forecast.")
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "budgets-refreshed.png"), full_page=True)
    assert _generated(console, budget_id) == console.gw.clock.now()
    assert console.gw.clock.now() != first


def test_team_roles_may_not_refresh(console: Console, page: Page) -> None:
    """A team admin sees no button and a forged refresh is 403; an org admin's without
    the CSRF token never reaches the page."""
    budget_id = _budget(console)
    first = _generated(console, budget_id)
    console.gw.clock.advance(600)
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/usage/budgets")
    expect(page.get_by_role("button", name="Refresh forecasts")).to_have_count(0)
    for role in ("team_admin", "viewer"):
        with session(console.url, f"{role}@acme.test") as client:
            assert form(client, "/usage/budgets/refresh-forecasts", {}).status_code == 403
    with session(console.url, "org_admin@acme.test") as client:
        assert client.post("/usage/budgets/refresh-forecasts").status_code == 403
    assert _generated(console, budget_id) == first


@pytest.mark.parametrize("role", ["org_admin", "finance"])
def test_budgets_with_refresh_have_no_serious_axe_violations(
    console: Console, browser: Browser, role: str
) -> None:
    _budget(console)
    violations = axe_violations(
        browser, console.url, f"{role}@acme.test", "/usage/budgets?refreshed=1&overruns=0"
    )
    assert violations == [], [(v["id"], v["help"]) for v in violations]
