"""Part-2 forms refused by the admin API's checks come back (422) with the message
beside the field it names and what was typed kept, as the budget form does: wallets,
webhooks, people (users, teams, agents, admin tokens). A secret typed into a form (a
PagerDuty routing key) is never written back into the page."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, form, session, sign_in


def _post_422(page: Page, button: str) -> None:
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name=button).click()
    assert answer.value.status == 422


def test_wallet_forms_show_errors_beside_the_field(console: Console, page: Page) -> None:
    """A negative low-balance level on *Open a wallet*, then a top-up of "lots": each
    message beside its field, the typed value kept, nothing stored."""
    key = console.gw.post(
        "/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": console.team_id}
    )
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/wallets")
    page.get_by_label("Funds the calls of").select_option(label="team research")
    page.get_by_label("Low-balance alert level (USD)").fill("-5")
    _post_422(page, "Open wallet")
    expect(page.locator("#low_balance_usd-error")).to_be_visible()
    expect(page.get_by_label("Low-balance alert level (USD)")).to_have_value("-5")
    expect(page.get_by_label("Funds the calls of")).to_have_value(f"team:{console.team_id}")
    assert console.gw.get("/admin/wallets") == []
    wallet = console.gw.post(
        "/admin/wallets", {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "5"}
    )
    page.goto(console.url + f"/wallets/{wallet['id']}")
    page.get_by_label("Amount (USD)").fill("lots")
    page.get_by_label("Note (for the audit log)").fill("quarter top-up")
    _post_422(page, "Add funds")
    expect(page.locator("#amount_usd-error")).to_be_visible()
    expect(page.get_by_label("Note (for the audit log)")).to_have_value("quarter top-up")
    assert console.gw.get(f"/admin/wallets/{wallet['id']}")["balance_usd"] == "5.00"


def test_webhook_form_error_beside_the_field_never_echoes_the_routing_key(
    console: Console, page: Page
) -> None:
    """PagerDuty without a routing key: the API's message beside the routing-key field.
    With a routing key but an unknown event type: the error is beside the event types
    and the routing key (a secret) is nowhere in the page."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/webhooks")
    page.get_by_label("URL").fill("https://events.pagerduty.example/v2/enqueue")
    page.get_by_label("Kind").select_option("pagerduty")
    page.get_by_label("Description").fill("on-call")
    _post_422(page, "Add endpoint")
    expect(page.locator("#routing_key-error")).to_contain_text("required for pagerduty")
    expect(page.get_by_label("URL")).to_have_value("https://events.pagerduty.example/v2/enqueue")
    expect(page.get_by_label("Description")).to_have_value("on-call")
    with session(console.url, "org_admin@acme.test") as client:
        answer = form(
            client,
            "/webhooks",
            {
                "url": "https://events.pagerduty.example/v2/enqueue",
                "kind": "pagerduty",
                "routing_key": "rk-very-secret-7731",
                "event_types": "nosuch.type",
            },
        )
        assert answer.status_code == 422
        assert "unknown event type" in answer.text
        assert "rk-very-secret-7731" not in answer.text
    assert console.gw.get("/admin/webhooks") == []


def test_people_forms_show_errors_beside_the_field(console: Console, page: Page) -> None:
    """A team name of spaces and a token expiring in the past: each message beside its
    own form's field (the agent form's *name* is untouched), nothing made."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/people")
    page.get_by_label("New team").fill("   ")
    _post_422(page, "Create team")
    expect(page.locator("#team-name-error")).to_be_visible()
    expect(page.locator("#agent-name-error")).to_have_count(0)
    assert len(console.gw.get("/admin/teams", org_id=console.org_id)) == 2
    viewer = console.users["viewer"]["id"]
    page.goto(console.url + f"/people/{viewer}")
    page.get_by_label("Token name").fill("ci")
    page.get_by_label("Expires (UTC, optional)").fill("2001-01-01T00:00")
    _post_422(page, "Create token")
    expect(page.locator("#token-expires_at-error")).to_be_visible()
    expect(page.get_by_label("Token name")).to_have_value("ci")
    assert console.gw.get("/admin/tokens") == []


def test_forms_with_errors_have_no_serious_axe_violations(
    console: Console, browser: Browser
) -> None:
    """The error state itself is accessible: axe on a page rendered with an error (the
    rate-limit form without any limit, through the browser)."""
    context = browser.new_context(bypass_csp=True)
    tab = context.new_page()
    try:
        sign_in(tab, console.url, "org_admin@acme.test")
        tab.goto(console.url + "/rate-limits")
        tab.get_by_role("button", name="Add limit").click()
        expect(tab.locator("#rpm-error")).to_be_visible()
        from tests.console.conftest import AXE

        tab.add_script_tag(content=AXE.read_text())
        result = tab.evaluate("async () => await axe.run(document)")
        bad = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
        assert bad == [], [(v["id"], v["help"]) for v in bad]
    finally:
        context.close()
    assert axe_violations(browser, console.url, "org_admin@acme.test", "/people") == []


def test_errors_of_renamed_or_named_inputs_stand_beside_them(console: Console) -> None:
    """Where the API's field is not the input's name, the error is by the input: a scope
    picked in one select (``scope_type`` / ``scope_id``), a user's one team
    (``team_ids.0``), a rotation overlap typed in hours (``overlap_seconds``); a budget
    exception refused is the budget's page again (422); nothing is made or changed."""
    budget = console.gw.post(
        "/admin/budgets",
        {"name": "ops", "scope_type": "team", "scope_id": console.team_id, "amount_usd": "10"},
    )
    with session(console.url, "org_admin@acme.test") as client:
        assert form(client, "/webhooks", {"url": "https://hooks.example/in"}).status_code == 201
    [webhook] = console.gw.get("/admin/webhooks")
    sent: list[tuple[str, dict[str, str], str]] = [
        ("/wallets", {"scope": "planet:earth", "name": "w"}, 'id="scope-error"'),
        ("/wallets", {"scope": "team:not an id", "name": "w"}, 'id="scope-error"'),
        ("/rate-limits", {"scope": "team:not an id", "rpm": "5"}, 'id="scope-error"'),
        ("/people", {"email": "new@acme.test", "team_id": "not an id"}, "user-team_id-error"),
        (f"/webhooks/{webhook['id']}/rotate", {"overlap_hours": "-1"}, "overlap_hours-error"),
        (f"/usage/budgets/{budget['id']}/exceptions", {"amount_usd": "5"}, "x-expires_at-error"),
    ]
    with session(console.url, "org_admin@acme.test") as client:
        for path, data, beside in sent:
            answer = form(client, path, data)
            assert (path, answer.status_code) == (path, 422)
            assert beside in answer.text, (path, answer.text[:2000])
    assert console.gw.get("/admin/wallets") == []
    assert console.gw.get("/admin/rate-limits") == []
    assert "new@acme.test" not in {u["email"] for u in console.gw.get("/admin/users")}
    assert console.gw.get(f"/admin/budgets/{budget['id']}/exceptions") == []


def test_budget_messages_name_the_fields_by_their_labels(console: Console) -> None:
    """A message of the API's that names another field names it as the form labels it: an
    alert level above the hard limit, an exception with both an amount and a percent."""
    data = {
        "name": "ops",
        "scope_type": "team",
        "scope_id": console.team_id,
        "period": "monthly",
        "timezone": "UTC",
        "week_start": "monday",
        "amount_usd": "10",
        "alert_percentages": "50, 120",
        "soft_limit_percent": "75",
        "hard_limit": "on",
        "hard_limit_percent": "100",
    }
    with session(console.url, "org_admin@acme.test") as client:
        answer = form(client, "/usage/budgets/new", data)
        assert answer.status_code == 422
        [shown] = re.findall(r'id="alert_percentages-error">([^<]*)<', answer.text)
        assert shown == "Error: must not be above Hard limit (%)"
    budget = console.gw.post(
        "/admin/budgets",
        {"name": "ops", "scope_type": "team", "scope_id": console.team_id, "amount_usd": "10"},
    )
    extra = {
        "amount_usd": "5",
        "percent": "10",
        "reason": "launch",
        "expires_at": "2999-01-01T00:00",
    }
    with session(console.url, "org_admin@acme.test") as client:
        answer = form(client, f"/usage/budgets/{budget['id']}/exceptions", extra)
        assert answer.status_code == 422
        [shown] = re.findall(r'id="x-amount_usd-error">([^<]*)<', answer.text)
        assert shown == "Error: give exactly one of Extra amount (USD) or extra percent"


def test_nul_characters_are_refused_in_pages_and_forms(console: Console) -> None:
    """A NUL character in a form field or a query string, as the admin API refuses it:
    a 422 page, nothing stored. PostgreSQL cannot store it as text, so on that backend
    the console answered 503 "database unavailable" (found by fuzzing the pages)."""
    with session(console.url, "org_admin@acme.test") as client:
        made = form(client, "/people/teams", {"name": "bad\x00team"})
        assert made.status_code == 422 and "NUL" in made.text, made.text
        assert form(client, "/login", {"email": "a\x00@x", "password": "p"}).status_code == 422
        listed = client.get("/events", params={"type": "budget\x00"})
        assert listed.status_code == 422 and "NUL" in listed.text
        assert client.get("/events", params={"type": "budget.*"}).status_code == 200
        typo = client.get("/events", params={"type": "budget.treshold_crossed"})
        assert typo.status_code == 422  # the page again, the error beside the field
        assert 'value="budget.treshold_crossed"' in typo.text
        [shown] = re.findall(r'id="events-type-error">([^<]*)<', typo.text)
        assert shown.startswith("Error: unknown event type &#39;budget.treshold_crossed&#39;")
        assert form(client, "/people/teams", {"name": "good team"}).status_code == 303
    names = [t["name"] for t in console.gw.get("/admin/teams", org_id=console.org_id)]
    assert "good team" in names and not any("\x00" in n for n in names)
