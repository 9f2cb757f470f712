"""/wallets in a real browser: balances, days to empty, top-ups (audited), history, and
a team admin kept to their own team's wallets."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, sign_in

MSG = [{"role": "user", "content": "hello"}]


def _spend(console: Console, secret: str, calls: int) -> None:
    for _ in range(calls):
        answer = httpx.post(
            console.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {secret}"},
            json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 10},
        )
        assert answer.status_code == 200, answer.text


def _team_wallet(console: Console, team_id: str, amount: str) -> dict:
    return console.gw.post(
        "/admin/wallets",
        {"scope_type": "team", "scope_id": team_id, "initial_topup_usd": amount, "name": "w"},
    )


def test_finance_tops_up_and_sees_history_and_days_to_empty(console: Console, page: Page) -> None:
    """Finance opens a team wallet, tops it up (an audited entry with the note); after
    spend, the history lists the debit and the days to empty follow the rate."""
    key = console.gw.post(
        "/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": console.team_id}
    )
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + "/wallets")
    page.get_by_label("Funds the calls of").select_option(label="team research")
    page.get_by_label("First top-up (USD)").fill("10")
    page.get_by_role("button", name="Open wallet").click()
    expect(page.locator("#wallet-balance")).to_have_text("$10.00")
    expect(page.locator("#wallet-runway")).to_contain_text("no spend")
    page.get_by_label("Amount (USD)").fill("2.50")
    page.get_by_label("Note (for the audit log)").fill("december float")
    page.get_by_role("button", name="Add funds").click()
    expect(page.locator("#wallet-balance")).to_have_text("$12.50")
    wallet_id = page.url.rsplit("/", 1)[-1]
    entries = console.gw.get("/admin/audit", action="wallet.topped_up", target=wallet_id)
    assert [e["after"]["note"] for e in entries["entries"]] == ["december float"]
    assert entries["entries"][0]["actor_type"] == "console"
    _spend(console, key["key"], 2)
    page.reload()
    balance = Decimal(page.locator("#wallet-balance").inner_text().lstrip("$"))
    assert balance < Decimal("12.50")
    expect(page.locator("#history-table tr.debit")).to_have_count(1)
    expect(page.locator("#history-table tr.top-up")).to_have_count(2)
    runway = page.locator("#wallet-runway").inner_text()
    assert runway.split(" ")[0].replace(".", "").isdigit(), runway
    page.goto(console.url + "/wallets")
    expect(page.locator(f"#wallet-{wallet_id} .runway")).not_to_contain_text("no recent")


def test_team_admin_sees_only_their_team_wallets(console: Console, page: Page) -> None:
    """Another team's wallet is neither listed nor reachable by URL (404); a team admin
    may not top up (wallets.write is finance's and org admins')."""
    mine = _team_wallet(console, console.team_id, "5")
    theirs = _team_wallet(console, console.other_team_id, "5")
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/wallets")
    expect(page.locator(f"#wallet-{mine['id']}")).to_be_visible()
    expect(page.locator(f"#wallet-{theirs['id']}")).to_have_count(0)
    answer = page.goto(console.url + f"/wallets/{theirs['id']}")
    assert answer is not None and answer.status == 404
    page.goto(console.url + f"/wallets/{mine['id']}")
    expect(page.get_by_role("button", name="Add funds")).to_have_count(0)
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "sg_csrf")
    posted = page.request.post(
        console.url + f"/wallets/{mine['id']}/topups",
        form={"csrf_token": token, "amount_usd": "100"},
    )
    assert posted.status == 403
    assert console.gw.get(f"/admin/wallets/{mine['id']}")["balance_usd"] == "5.00"


def test_bad_top_up_is_a_422_naming_the_field(console: Console, page: Page) -> None:
    """A negative amount is refused by the API's own model: 422, the message beside
    *Amount*."""
    wallet = _team_wallet(console, console.team_id, "1")
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + f"/wallets/{wallet['id']}")
    page.get_by_label("Amount (USD)").fill("-3")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Add funds").click()
    assert answer.value.status == 422
    expect(page.get_by_role("alert")).to_contain_text("not saved")
    expect(page.locator("#amount_usd-error")).to_be_visible()
    expect(page.get_by_label("Amount (USD)")).to_have_attribute("aria-invalid", "true")


@pytest.mark.parametrize("path", ["/wallets", "/wallets/{id}"])
def test_wallet_pages_have_no_serious_axe_violations(
    console: Console, browser: Browser, path: str
) -> None:
    """axe-core: nothing serious or critical on the wallet pages."""
    wallet = _team_wallet(console, console.team_id, "1")
    url = path.replace("{id}", wallet["id"])
    violations = axe_violations(browser, console.url, "org_admin@acme.test", url)
    assert violations == [], [(v["id"], v["help"]) for v in violations]


def _call(console: Console, secret: str) -> httpx.Response:
    return httpx.post(
        console.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 10},
    )


def _paid(answer: httpx.Response) -> Decimal:
    assert answer.status_code == 200, answer.text
    return Decimal(answer.headers["x-spendgate-cost-usd"])


def test_history_debits_only_what_the_wallet_paid(console: Console, page: Page) -> None:
    """A team wallet opened mid-day, with a ticket's grant funding one key, then closed:
    each day's debit is what the wallet paid that day (not the team's calls before it
    opened or after it closed, nor the ones the grant paid for), and the debits add up
    to its *Spent in all*."""
    gw = console.gw
    asker, payer = (
        gw.post("/admin/keys", {"name": n, "org_id": console.org_id, "team_id": console.team_id})
        for n in ("asker", "payer")
    )
    opened = gw.clock.now() + timedelta(minutes=5)
    _paid(_call(console, payer["key"]))  # the team's, before the wallet opened
    gw.clock.set(opened)
    wallet = gw.post(
        "/admin/wallets", {"scope_type": "team", "scope_id": console.team_id, "tickets": "on"}
    )
    refused = _call(console, asker["key"])
    assert refused.status_code == 402, refused.text
    ticket = refused.json()["error"]["ticket"]["id"]
    approval = {"reason": "demo", "amount_usd": "5", "more_than_asked": True}
    gw.post(f"/admin/tickets/{ticket}/approve", approval, status=200)
    granted = _paid(_call(console, asker["key"]))  # the grant's, not the wallet's
    gw.post(f"/admin/wallets/{wallet['id']}/topups", {"amount_usd": "1"})
    first_day = _paid(_call(console, payer["key"]))
    gw.clock.set(datetime.combine(opened.date() + timedelta(days=1), time(10), UTC))
    second_day = _paid(_call(console, payer["key"]))
    gw.clock.advance(60)
    gw.post(f"/admin/wallets/{wallet['id']}/close", {}, status=200)
    gw.clock.advance(60)
    _paid(_call(console, payer["key"]))  # the team's, after the wallet closed
    gw.clock.set(datetime.combine(opened.date() + timedelta(days=2), time(9), UTC))
    _paid(_call(console, payer["key"]))
    assert granted > 0 and first_day > 0 and second_day > 0
    spent = Decimal(gw.get(f"/admin/wallets/{wallet['id']}")["spent_usd"])
    assert spent == first_day + second_day

    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + f"/wallets/{wallet['id']}")
    expect(page.locator("#wallet-status")).to_have_text("closed")
    rows = page.locator("#history-table tr.debit")
    debits = [
        (r.locator("td").nth(0).inner_text(), r.locator("td").nth(2).inner_text())
        for r in rows.all()
    ]
    day = opened.date()
    assert [(d, Decimal(a.removeprefix("−$"))) for d, a in debits] == [
        ((day + timedelta(days=1)).isoformat(), second_day),
        (day.isoformat(), first_day),
    ]
