"""Pages name who did something and what something is for (``console.naming``): a
budget exception's granter, an audit entry's actor, a webhook endpoint's scope — by
email or name, the id kept in a title — never a name from a team the reader may not see.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from tests.console.conftest import Console, session, sign_in


def _token_of(console: Console, role: str) -> tuple[str, str]:
    """(token id, secret) of an admin token for the user of ``role``."""
    made = console.gw.post(
        "/admin/tokens", {"user_id": console.users[role]["id"], "name": f"{role} cli"}
    )
    return made["id"], made["token"]


def _grant(console: Console, budget_id: str, reason: str, secret: str | None = None) -> None:
    body: dict[str, Any] = {
        "amount_usd": "5",
        "reason": reason,
        "expires_at": (console.gw.clock.now() + timedelta(days=3)).isoformat(),
    }
    if secret is None:
        console.gw.post(f"/admin/budgets/{budget_id}/exceptions", body)
        return
    response = httpx.post(
        f"{console.url}/admin/budgets/{budget_id}/exceptions",
        json=body,
        headers={"authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 201, response.text


def _granted(console: Console, email: str, budget_id: str) -> dict[str, str]:
    """Each exception's reason → what its "Granted by" cell says (and its title)."""
    with session(console.url, email) as client:
        html = client.get(f"/usage/budgets/{budget_id}").text
    rows = html.split('id="exceptions-table"')[1].split("</table>")[0].split("<tr>")[2:]
    return {row.split("<td>")[1].split("</td>")[0]: row.split("<td>")[-1] for row in rows}


def test_budget_exceptions_name_who_granted_them_as_far_as_the_reader_may_see(
    console: Console,
) -> None:
    """ "Granted by token:tok_…" named no one: the token's user is shown by email (the
    master key as such); a team viewer sees the email of a user of their team but not of
    one they may not see (an org-wide finance user, in no team), whose token id stays."""
    budget = console.gw.create_budget(
        name="research cap", scope_type="team", scope_id=console.team_id, amount_usd="100"
    )
    finance_token, finance_secret = _token_of(console, "finance")
    admin_token, admin_secret = _token_of(console, "team_admin")
    _grant(console, budget["id"], "by master")
    _grant(console, budget["id"], "by finance", finance_secret)
    _grant(console, budget["id"], "by team admin", admin_secret)

    shown = _granted(console, "org_admin@acme.test", budget["id"])
    assert shown["by master"].startswith("master key")
    assert f'title="token:{finance_token}">finance@acme.test<' in shown["by finance"]
    assert f'title="token:{admin_token}">team_admin@acme.test<' in shown["by team admin"]

    shown = _granted(console, "viewer@acme.test", budget["id"])
    assert "team_admin@acme.test" in shown["by team admin"]
    assert "finance@acme.test" not in shown["by finance"]
    assert f"token:{finance_token}" in shown["by finance"]


def test_audit_rows_and_entry_name_their_actor(console: Console, page: Page) -> None:
    """The audit log named actors ``token:tok_…`` / ``admin:master`` and objects
    ``team team_…``: now by the token's user's email, the team's name (the id in the
    title, and beside it on the entry's page)."""
    budget = console.gw.create_budget(
        name="research cap", scope_type="team", scope_id=console.team_id, amount_usd="100"
    )
    token_id, secret = _token_of(console, "finance")
    _grant(console, budget["id"], "by finance", secret)
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/audit?action=budget.exception_granted")
    row = page.locator("#audit-table tbody tr").first
    actor = row.locator("td").nth(1)
    expect(actor).to_have_text("finance@acme.test")
    expect(actor.locator("span")).to_have_attribute("title", f"token:{token_id}")
    row.locator("a").first.click()
    expect(page.locator("#entry-actor")).to_have_text(f"finance@acme.test token:{token_id}")
    page.goto(console.url + "/audit?action=budget.created")
    expect(page.locator("#audit-table tbody tr").first.locator("td").nth(1)).to_have_text(
        "master key"
    )
    page.goto(f"{console.url}/audit?target={console.team_id}")
    row = page.locator("#audit-table tbody tr").first
    expect(row.locator("td").nth(3)).to_have_text(f"team research {console.team_id}")
    row.locator("a").first.click()
    expect(page.locator("#entry-object")).to_have_text(f"team research {console.team_id}")


def test_a_webhook_endpoint_names_its_scope(console: Console, page: Page) -> None:
    """An endpoint's scope read "team team_…": now the team's name, its id beside it."""
    made = console.gw.post(
        "/admin/webhooks",
        {
            "url": "https://hooks.example.test/research",
            "event_types": ["*"],
            "scope_type": "team",
            "scope_id": console.team_id,
        },
    )
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(f"{console.url}/webhooks/{made['id']}")
    scope = page.locator("#webhook-scope")
    expect(scope).to_have_text(f"team research {console.team_id}")
    expect(scope.locator("span.named")).to_have_attribute("title", console.team_id)


#: statements the gateway's background loops may run while a page is measured
BACKGROUND = 3


def _audit_queries(console: Console, email: str) -> tuple[int, str]:
    """(SQL statements run, HTML) for the audit log's ``key.created`` page as ``email``."""
    from sqlalchemy import event

    seen: list[str] = []

    def count(*args: Any) -> None:
        seen.append(args[2])

    engine = console.gw.app.services.engine.sync_engine
    with session(console.url, email) as client:
        client.get("/audit?action=key.created")  # the session and its caches warmed
        event.listen(engine, "before_cursor_execute", count)
        try:
            html = client.get("/audit?action=key.created").text
        finally:
            event.remove(engine, "before_cursor_execute", count)
    return len(seen), html


def test_naming_an_audit_page_costs_queries_per_kind_not_per_row(console: Console) -> None:
    """Each row's actor and object were named one at a time (their owner, then their
    name: two or three statements per distinct id), so a page of keys made by different
    users cost ~3 statements a row; now the page's ids are named a few statements a
    kind, whatever the page holds. The names are the same, and still filtered."""
    tokens = [_token_of(console, role) for role in ("org_admin", "team_admin")]

    def make_keys(count: int) -> None:
        for i in range(count):
            _, secret = tokens[i % 2]
            response = httpx.post(
                f"{console.url}/admin/keys",
                json={"name": f"worker {i}", "org_id": console.org_id, "team_id": console.team_id},
                headers={"authorization": f"Bearer {secret}"},
            )
            assert response.status_code == 201, response.text

    make_keys(4)
    few, _ = _audit_queries(console, "org_admin@acme.test")
    make_keys(20)
    many, html = _audit_queries(console, "org_admin@acme.test")
    # the gateway's own loops (webhook delivery, housekeeping) share the engine and may run
    # a statement while a page is measured: a few statements of slack, where naming each
    # row again would add two or three a row (60 for these 20)
    assert many <= few + BACKGROUND, (few, many)
    assert html.count(">worker ") == 24 and "team_admin@acme.test" in html
    viewer_queries, seen = _audit_queries(console, "viewer@acme.test")
    assert viewer_queries <= few + BACKGROUND, (few, viewer_queries)
    assert seen.count(">worker ") == 24 and "team_admin@acme.test" in seen
    assert "org_admin@acme.test" not in seen  # org-wide, in no team of the viewer's
