"""The budget list, budget page and rate-limits page say what is true now: a budget
refusing calls is blocked (it read "over soft limit"), the amount shown with an
exception says so, a forecast never lands below what is spent, and a stored budget or
rate limit naming a provider or model the config no longer has carries its warning."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import openai
import sqlalchemy as sa
from playwright.sync_api import Page, expect

from spendgate.store import schema
from tests.conftest import RunningGateway
from tests.console.conftest import Console, sign_in

SHOTS = Path("/tmp/spendgate-honest-shots")


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _call(client: openai.OpenAI) -> Decimal:
    return Decimal(
        client.chat.completions.with_raw_response.create(
            model="gpt-4o", max_tokens=20, messages=[{"role": "user", "content": "x"}]
        ).headers["x-spendgate-cost-usd"]
    )


def test_blocked_exception_amount_and_landing_say_what_is_true(
    console: Console, page: Page
) -> None:
    """A hard-capped budget at its cap is "blocked: hard limit reached" in the list and on
    its page; a budget with an exception shows its own amount and the exception's; a
    forecast stored before a burst of spend lands at no less than what is spent."""
    gw = console.gw
    key = gw.post("/admin/keys", {"name": "k", "org_id": console.org_id})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    cost = _call(client)
    capped = gw.post(
        "/admin/budgets",
        {
            "name": "capped",
            "scope_type": "key",
            "scope_id": key["id"],
            "amount_usd": str(cost),
            "hard_limit": True,
        },
    )
    raised = gw.post(
        "/admin/budgets",
        {"name": "raised", "scope_type": "key", "scope_id": key["id"], "amount_usd": "100"},
    )
    gw.post(
        f"/admin/budgets/{raised['id']}/exceptions",
        {"amount_usd": "20", "reason": "launch", "expires_at": "2026-03-20T00:00:00Z"},
    )
    burst = gw.post(
        "/admin/budgets",
        {"name": "burst", "scope_type": "team", "scope_id": console.team_id, "amount_usd": "1"},
    )
    team_key = gw.post(
        "/admin/keys", {"name": "t", "org_id": console.org_id, "team_id": console.team_id}
    )
    team = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=team_key["key"], max_retries=0)
    stored = gw.get(f"/admin/forecasts/{burst['id']}", refresh="true")  # nothing spent
    for _ in range(5):  # after the forecast was stored
        _call(team)
    spent = Decimal(gw.get(f"/admin/budgets/{burst['id']}/status")["spent_usd"])
    assert Decimal(stored["p90_usd"]) < spent

    sign_in(page, console.url, "finance@acme.test")
    page.goto(f"{console.url}/usage/budgets")
    rows = page.locator("#budgets-table tbody tr")
    capped_row = rows.filter(has=page.get_by_role("link", name="capped", exact=True))
    expect(capped_row.locator(".state")).to_have_text("blocked: hard limit reached")
    raised_row = rows.filter(has=page.get_by_role("link", name="raised", exact=True))
    expect(raised_row.locator(".amount")).to_contain_text("120.00")
    expect(raised_row.locator(".exception-note")).to_have_text(
        "$100.00 + $20.00 from 1 active exception"
    )
    burst_row = rows.filter(has=page.get_by_role("link", name="burst", exact=True))
    landing = burst_row.locator("td").nth(6).inner_text()
    assert Decimal(landing.split(" ")[0].lstrip("$")) >= spent
    _shot(page, "budgets-list")
    page.goto(f"{console.url}/usage/budgets/{capped['id']}")
    expect(page.locator("main")).to_contain_text("status: blocked: hard limit reached")
    page.goto(f"{console.url}/usage/budgets/{raised['id']}")
    expect(page.locator("#status-table")).to_contain_text(
        "$120.00 ($100.00 + $20.00 from 1 active exception)"
    )
    _shot(page, "budget-page-exception")
    page.goto(f"{console.url}/usage/budgets/{burst['id']}")
    p50 = page.locator(".landing").inner_text().split("$")[1].split(",")[0].rstrip(".")
    assert Decimal(p50) >= spent


def test_names_the_config_dropped_are_warned_on_the_pages(console: Console, page: Page) -> None:
    """A budget and a rate limit stored naming a model the config no longer has (written
    here straight to the database, as a config change leaves them): the budget list, the
    budget page and the rate-limits pages show the admin API's warning."""
    gw = console.gw
    key = gw.post("/admin/keys", {"name": "k", "org_id": console.org_id})
    budget = gw.post(
        "/admin/budgets",
        {
            "name": "dropped",
            "scope_type": "key",
            "scope_id": key["id"],
            "amount_usd": "10",
            "categories": {"models": ["gpt-4o"]},
        },
    )
    limit = gw.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "gpt-4o", "rpm": 5},
    )

    async def drop() -> None:
        async with gw.app.services.engine.begin() as conn:
            await conn.execute(
                sa.update(schema.budgets)
                .where(schema.budgets.c.id == budget["id"])
                .values(categories={"models": ["retired-model"]})
            )
            await conn.execute(
                sa.update(schema.rate_limits)
                .where(schema.rate_limits.c.id == limit["id"])
                .values(model="retired-model")
            )

    gw.run(drop())
    message = "categories.models: 'retired-model' is not a configured model"
    assert gw.get(f"/admin/budgets/{budget['id']}")["warnings"] == [message]
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(f"{console.url}/usage/budgets")
    expect(page.locator(".budget-warning")).to_have_text(f"⚠ Warning: {message}")
    page.goto(f"{console.url}/usage/budgets/{budget['id']}")
    expect(page.locator(".budget-warning")).to_have_text(f"⚠ Warning: {message}")
    _shot(page, "budget-page-warning")
    limit_message = "model: 'retired-model' is not a configured model"
    page.goto(f"{console.url}/rate-limits")
    expect(page.locator(".limit-warning")).to_have_text(f"⚠ Warning: {limit_message}")
    _shot(page, "rate-limits")
    page.goto(f"{console.url}/rate-limits/{limit['id']}")
    expect(page.locator(".limit-warning")).to_have_text(f"⚠ Warning: {limit_message}")


def _refused(gw: RunningGateway, client: openai.OpenAI) -> None:
    """A call the hard cap refuses, its event stored (off the call's path) before this ends."""
    try:
        _call(client)
        raise AssertionError("the hard cap let the call through")
    except openai.RateLimitError:
        pass
    gw.run(gw.app.services.drain())


def test_a_cap_refusing_calls_with_room_left_says_so(console: Console, page: Page) -> None:
    """Some of the hard cap is left but less than a call's worst case, and the cap refused
    a call: the list and the page say it is refusing calls whose worst case exceeds what is
    left (it read "over soft limit"), and the page says since when and what was refused."""
    gw = console.gw
    key = gw.post("/admin/keys", {"name": "k", "org_id": console.org_id})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    cost = _call(client)
    slack = (cost / 4).quantize(Decimal("0.000000001"))
    budget = gw.post(
        "/admin/budgets",
        {
            "name": "tight",
            "scope_type": "key",
            "scope_id": key["id"],
            "amount_usd": f"{cost * 2 + slack:f}",
            "hard_limit": True,
        },
    )
    _call(client)
    _refused(gw, client)
    status = gw.get(f"/admin/budgets/{budget['id']}/status")
    left = status["remaining_to_hard_usd"]
    assert Decimal(left) == slack
    words = f"refusing calls whose worst case exceeds ${left} remaining"

    sign_in(page, console.url, "finance@acme.test")
    page.goto(f"{console.url}/usage/budgets")
    row = page.locator("#budgets-table tbody tr").filter(
        has=page.get_by_role("link", name="tight", exact=True)
    )
    expect(row.locator(".state")).to_have_text(words)
    page.goto(f"{console.url}/usage/budgets/{budget['id']}")
    expect(page.locator("main")).to_contain_text(f"status: {words}")
    note = page.locator("#refusal-note")
    expect(note).to_contain_text("Refusing calls since 2026-03-10 15:30 UTC.")
    expect(note).to_contain_text(
        f"A call that could cost up to ${status['refused_worst_case_usd']} (its prompt "
        f"estimate + max_tokens) was refused: ${left} is left of the "
        f"${status['hard_limit_usd']} hard limit"
    )
    _shot(page, "budget-page-refusing")

    # lowered to what is spent: used up, so every call is refused (none smaller passes)
    gw.admin.patch(f"/admin/budgets/{budget['id']}", json={"amount_usd": f"{cost * 2:f}"})
    page.reload()
    expect(page.locator("main")).to_contain_text("status: blocked: hard limit reached")
    # the call refused at the higher cap is refused at the lower one too: since then
    note = page.locator("#refusal-note")
    expect(note).to_contain_text("Refusing calls since 2026-03-10 15:30 UTC.")
    expect(note).to_contain_text(
        "hard limit is used up (spent and in flight): every call is refused until"
    )
    _refused(gw, client)
    page.reload()
    expect(note).to_contain_text("Refusing calls since 2026-03-10 15:30 UTC.")
