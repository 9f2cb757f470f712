"""The calibration workflow our users describe, in a real browser: create a soft budget
with alerts at 50, 75 and 90 %, drive spend through the proxy with the ``openai`` SDK,
and see each threshold exactly once on /notifications and on the /usage chart."""

from __future__ import annotations

import time
from decimal import Decimal

import openai
from playwright.sync_api import Page, expect

from tests.console.conftest import Console, sign_in


def _chat(base: str, key: str) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )


def _threshold_rows(page: Page, base: str) -> list[str]:
    """The threshold notifications on /notifications, reloaded until three are there
    (they are written off the call path); the time bound is a guard against hanging."""
    rows: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        page.goto(f"{base}/notifications?type=budget.threshold_crossed")
        rows = page.locator("#notifications-table tbody tr").all_inner_texts()
        if len(rows) >= 3:
            break
        time.sleep(0.2)
    return rows


def test_soft_budget_alerts_once_each_in_the_browser(console: Console, page: Page) -> None:
    gw = console.gw
    research = gw.post(
        "/admin/keys", {"name": "research", "org_id": console.org_id, "team_id": console.team_id}
    )
    probe = gw.post(
        "/admin/keys", {"name": "probe", "org_id": console.org_id, "team_id": console.other_team_id}
    )
    _chat(gw.url, probe["key"])  # what one call costs (on another team: not in the budget)
    cost = Decimal(gw.get("/admin/usage", group_by="team")["total_cost_usd"])
    assert cost > 0
    amount = cost * 20  # each call: 5 % of the budget

    sign_in(page, gw.url, "finance@acme.test")
    page.goto(f"{gw.url}/usage/budgets")
    page.get_by_role("link", name="New budget").click()
    page.get_by_label("Name").fill("calibration")
    page.get_by_label("Scope", exact=True).select_option("team")
    page.get_by_label("Target").select_option(console.team_id)
    page.get_by_label("Period", exact=True).select_option("monthly")
    page.get_by_label("Amount (USD)").fill(str(amount))
    page.get_by_label("Alert at").fill("50, 75, 90")
    page.get_by_label("Soft limit (%)").fill("100")
    expect(page.get_by_label("Hard limit: refuse calls past it")).not_to_be_checked()
    page.get_by_role("button", name="Create budget").click()
    expect(page.get_by_role("heading", name="Budget calibration")).to_be_visible()
    budget_id = page.url.rsplit("/", 1)[-1]

    for _ in range(19):  # 95 %: past 90, short of the soft limit at 100
        _chat(gw.url, research["key"])

    rows = _threshold_rows(page, gw.url)
    assert len(rows) == 3, rows
    for percent in ("50", "75", "90"):
        assert sum(f"alert {percent}%" in r for r in rows) == 1, (percent, rows)
    assert all("calibration" in r for r in rows)
    page.locator("#notifications-table tbody tr a").first.click()
    page.wait_for_url(f"**/usage/budgets/{budget_id}")
    expect(page.get_by_role("heading", name="Budget calibration")).to_be_visible()

    page.goto(f"{gw.url}/usage?budget={budget_id}")
    levels = page.locator("#levels-table tbody tr")
    for label in ("alert 50%", "alert 75%", "alert 90%"):
        expect(levels.filter(has_text=label)).to_have_count(1)
        expect(levels.filter(has_text=label)).to_contain_text("yes")
    expect(levels.filter(has_text="soft limit 100%")).to_contain_text("no")
    svg = page.locator("svg.chart").nth(1)
    for label in ("alert 50%", "alert 75%", "alert 90%", "soft limit 100%"):
        expect(svg.locator("text", has_text=label)).to_have_count(1)
    assert svg.locator("line.level.alert").count() == 3
