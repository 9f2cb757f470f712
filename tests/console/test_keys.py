"""/keys in a real browser: the list with limits, create (secret once), rotate, revoke,
and a team admin kept to their own team's keys."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import event

from tests.console.conftest import Console, axe_violations, form, session, sign_in

MSG = [{"role": "user", "content": "hello"}]


def _key(console: Console, team_id: str, name: str) -> dict:
    return console.gw.post(
        "/admin/keys", {"name": name, "org_id": console.org_id, "team_id": team_id}
    )


def test_org_admin_creates_a_key_and_sees_its_secret_once(console: Console, page: Page) -> None:
    """The secret is on the page answering the create, with a copy button, and never on
    the list or the key's page afterwards; the key works with it at the proxy."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    page.get_by_label("Name", exact=True).fill("batch-jobs")
    page.get_by_label("Team").select_option(label="research")
    page.get_by_label("Tags", exact=True).fill("nightly, etl")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key “batch-jobs” created")).to_be_visible()
    secret = page.get_by_role("textbox", name="Secret").input_value()
    assert secret.startswith("sk-")
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    page.goto(console.url + "/keys")
    expect(page.locator("#keys-table")).to_contain_text("batch-jobs")
    assert secret not in page.content()
    page.get_by_role("link", name="batch-jobs").click()
    expect(page.get_by_role("heading", name="Key “batch-jobs”")).to_be_visible()
    assert secret not in page.content()
    keys = console.gw.get("/admin/keys", org_id=console.org_id)
    assert [k["tags"] for k in keys if k["name"] == "batch-jobs"] == [["nightly", "etl"]]


def test_binding_limit_is_the_one_with_least_left(console: Console, page: Page) -> None:
    """A key under a team budget of $50 (hard) and a key wallet of $5: the wallet binds,
    shown with its headroom on the list and the key's page."""
    key = _key(console, console.team_id, "agent-key")
    console.gw.post(
        "/admin/budgets",
        {
            "name": "research monthly",
            "scope_type": "team",
            "scope_id": console.team_id,
            "period": "monthly",
            "amount_usd": "50",
            "hard_limit": True,
        },
    )
    console.gw.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "5"},
    )
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    expect(page.locator(f"#key-{key['id']} .binding")).to_contain_text("wallet")
    expect(page.locator(f"#key-{key['id']} .binding")).to_contain_text("$5.00 left of $5.00")
    page.goto(console.url + f"/keys/{key['id']}")
    expect(page.locator("#limits-table")).to_contain_text("research monthly")
    expect(page.locator("tr.binding-row")).to_contain_text("wallet")


def test_rotate_shows_a_new_secret_and_revoke_asks_first(console: Console, page: Page) -> None:
    """Rotate answers with a new secret once (the old one stops at the proxy); revoke
    asks for confirmation, then the key is revoked and audited."""
    key = _key(console, console.team_id, "rotating")
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + f"/keys/{key['id']}")
    page.get_by_role("button", name="Rotate secret").click()
    new_secret = page.get_by_role("textbox", name="Secret").input_value()
    assert new_secret.startswith("sk-") and new_secret != key["key"]
    page.goto(console.url + f"/keys/{key['id']}")
    page.get_by_role("link", name="Revoke…").click()
    expect(page.get_by_role("heading", name="Revoke key “rotating”?")).to_be_visible()
    assert console.gw.get(f"/admin/keys/{key['id']}")["status"] == "active"
    page.get_by_role("button", name="Revoke key").click()
    expect(page.locator("#key-status")).to_contain_text("revoked")
    actions = [e["action"] for e in console.gw.get("/admin/audit", target=key["id"])["entries"]]
    assert "key.revoked" in actions and "key.rotated" in actions
    assert any(
        e["actor_type"] == "console"
        for e in console.gw.get("/admin/audit", target=key["id"])["entries"]
    )


def test_team_admin_sees_and_touches_only_their_team_keys(console: Console, page: Page) -> None:
    """Another team's key is not listed, its page is a 404 and so are its actions, even
    by typing the URL."""
    mine = _key(console, console.team_id, "mine")
    theirs = _key(console, console.other_team_id, "theirs")
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/keys")
    expect(page.locator("#keys-table")).to_contain_text("mine")
    expect(page.locator("#keys-table")).not_to_contain_text("theirs")
    answer = page.goto(console.url + f"/keys/{theirs['id']}")
    assert answer is not None and answer.status == 404
    answer = page.goto(console.url + f"/keys/{theirs['id']}/revoke")
    assert answer is not None and answer.status == 404
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "sg_csrf")
    posted = page.request.post(
        console.url + f"/keys/{theirs['id']}/revoke", form={"csrf_token": token}
    )
    assert posted.status == 404
    assert console.gw.get(f"/admin/keys/{theirs['id']}")["status"] == "active"
    assert mine["id"]


@pytest.mark.parametrize("role", ["viewer", "finance", "member"])
def test_who_may_not_write_keys_gets_no_form_and_403(
    console: Console, page: Page, role: str
) -> None:
    """A viewer reads their team's keys without a create form; finance and members may
    not read keys at all (403), as in the admin API; a POST is refused either way."""
    _key(console, console.team_id, "readable")
    sign_in(page, console.url, f"{role}@acme.test")
    answer = page.goto(console.url + "/keys")
    assert answer is not None
    if role == "viewer":
        assert answer.status == 200
        expect(page.locator("#keys-table")).to_contain_text("readable")
        expect(page.get_by_role("button", name="Create key")).to_have_count(0)
    else:
        assert answer.status == 403
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "sg_csrf")
    posted = page.request.post(console.url + "/keys", form={"csrf_token": token, "name": "x"})
    assert posted.status == 403


def test_create_without_csrf_is_refused(console: Console) -> None:
    """The key form's POST without the CSRF token never reaches the page."""
    with httpx.Client(base_url=console.url) as client:
        client.get("/login")
        assert client.post("/keys", data={"name": "x"}).status_code == 403


def test_keys_page_has_no_serious_axe_violations(console: Console, browser: Browser) -> None:
    """axe-core: nothing serious or critical on the list (with the form)."""
    key = _key(console, console.team_id, "axe")
    for path in ("/keys", f"/keys/{key['id']}", f"/keys/{key['id']}/revoke"):
        violations = axe_violations(browser, console.url, "org_admin@acme.test", path)
        assert violations == [], (path, [(v["id"], v["help"]) for v in violations])


def test_expiry_is_set_checked_beside_the_field_and_cleared(console: Console, page: Page) -> None:
    """A team admin sets a key's expiry on its page (stored, audited as ``key.updated``);
    a moment in the past comes back beside the field with the API's message (422) and
    nothing changes; *Clear expiry* removes it."""
    key = _key(console, console.team_id, "expiring")
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + f"/keys/{key['id']}")
    page.get_by_label("Expires (UTC)").fill("2001-01-01T00:00")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Set expiry").click()
    assert answer.value.status == 422
    expect(page.locator("#expires_at-error")).to_contain_text("must be in the future")
    expect(page.get_by_label("Expires (UTC)")).to_have_attribute("aria-invalid", "true")
    assert console.gw.get(f"/admin/keys/{key['id']}")["expires_at"] is None
    later = console.gw.clock.now().replace(microsecond=0) + timedelta(days=30)
    page.get_by_label("Expires (UTC)").fill(later.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Set expiry").click()
    stored = console.gw.get(f"/admin/keys/{key['id']}")["expires_at"]
    assert stored is not None and stored.startswith(later.strftime("%Y-%m-%dT%H:%M"))
    expect(page.locator("dl.facts")).to_contain_text(later.strftime("%Y-%m-%d %H:%M UTC"))
    page.get_by_role("button", name="Clear expiry (never expires)").click()
    assert console.gw.get(f"/admin/keys/{key['id']}")["expires_at"] is None
    actions = [e["action"] for e in console.gw.get("/admin/audit", target=key["id"])["entries"]]
    assert actions.count("key.updated") == 2


def test_expiry_of_another_team_key_and_without_csrf_is_refused(console: Console) -> None:
    """By URL guessing a team admin gets 404 for another team's key; without the CSRF
    token the form never reaches the page (403). The key is unchanged either way."""
    theirs = _key(console, console.other_team_id, "theirs")
    with session(console.url, "team_admin@acme.test") as client:
        answer = form(client, f"/keys/{theirs['id']}/expiry", {"clear": "on"})
        assert answer.status_code == 404
        bare = client.post(f"/keys/{theirs['id']}/expiry", data={"expires_at": "2100-01-01T00:00"})
        assert bare.status_code == 403
    with session(console.url, "viewer@acme.test") as client:
        mine = _key(console, console.team_id, "mine")
        answer = form(client, f"/keys/{mine['id']}/expiry", {"expires_at": "2100-01-01T00:00"})
        assert answer.status_code == 403
    assert console.gw.get(f"/admin/keys/{theirs['id']}")["expires_at"] is None


def test_create_error_is_beside_the_field_and_keeps_what_was_typed(
    console: Console, page: Page
) -> None:
    """A key whose expiry is past: the list page again (422) with the message beside
    *Expires* and the name still typed; no key made."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    page.get_by_label("Name", exact=True).fill("too-late")
    page.get_by_label("Expires (UTC, optional)").fill("2001-01-01T00:00")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Create key").click()
    assert answer.value.status == 422
    expect(page.locator("#expires_at-error")).to_contain_text("must be in the future")
    expect(page.get_by_label("Name", exact=True)).to_have_value("too-late")
    assert [k for k in console.gw.get("/admin/keys") if k["name"] == "too-late"] == []


def test_a_bad_tag_is_said_in_words_beside_the_tags(console: Console, page: Page) -> None:
    """A tag with an @: the message stands beside *Tags* and says what a tag may be
    (it was "tags.0: String should match pattern '^[A-Za-z0-9_.:/=+-]{1,64}$'" in the
    form's summary, beside no field); the admin API says the same words."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    page.get_by_label("Name", exact=True).fill("tagged")
    page.get_by_label("Tags", exact=True).fill("prod, eu@west")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#tags-error")).to_have_text(
        "Error: not a tag (1 to 64 letters, digits or _ . : / = + -): 'eu@west'"
    )
    expect(page.get_by_label("Tags", exact=True)).to_have_value("prod, eu@west")
    body = {"name": "k", "org_id": console.org_id, "tags": ["eu@west"]}
    refused = console.gw.admin.post("/admin/keys", json=body)
    assert refused.status_code == 422
    assert refused.json()["error"]["message"] == (
        "tags.0: not a tag (1 to 64 letters, digits or _ . : / = + -): 'eu@west'"
    )


def test_a_nearly_used_rate_limit_binds_before_a_roomy_budget(console: Console, page: Page) -> None:
    """A $50 team budget and a key limit of 3 rpm: after two calls the rate limit has a
    third of its share left and binds (1 request left of 3 per minute), on the list and
    the key's page; the figures are the proxy's own buckets."""
    key = _key(console, console.team_id, "busy")
    console.gw.post(
        "/admin/budgets",
        {
            "name": "research monthly",
            "scope_type": "team",
            "scope_id": console.team_id,
            "amount_usd": "50",
            "hard_limit": True,
        },
    )
    console.gw.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "*", "rpm": 3, "max_concurrent": 4},
    )
    for _ in range(2):
        answer = httpx.post(
            console.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key['key']}"},
            json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5},
        )
        assert answer.status_code == 200
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/keys")
    binding = page.locator(f"#key-{key['id']} .binding")
    expect(binding).to_contain_text("rate limit “key requests on *”")
    expect(binding).to_contain_text("1 requests left of 3 requests per minute")
    page.goto(console.url + f"/keys/{key['id']}")
    expect(page.locator("tr.binding-row")).to_contain_text("rate limit")
    expect(page.locator("#limits-table")).to_contain_text("research monthly")
    expect(page.locator("#limits-table")).to_contain_text("0 calls in flight")


def test_a_secret_is_never_on_the_key_page_after_an_expiry_change(
    console: Console, page: Page
) -> None:
    """The secret made by the console's create is on that answer only: not after
    changing the expiry, nor on the list."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    page.get_by_label("Name", exact=True).fill("secretive")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_role("textbox", name="Secret").input_value()
    assert page.content().count(secret) == 1
    page.get_by_role("link", name="Go to the key").click()
    page.get_by_label("Expires (UTC)").fill("2100-01-01T00:00")
    page.get_by_role("button", name="Set expiry").click()
    assert secret not in page.content()
    page.goto(console.url + "/keys")
    assert secret not in page.content()


def test_a_ticket_grant_funding_the_key_is_its_binding_limit(console: Console, page: Page) -> None:
    """An empty team wallet with tickets on and the key's ticket approved for $5: the
    grant funds the key's calls, so the binding limit is the grant with its $5.00 (not
    the wallet's $0.00); once the grant has expired, the wallet again."""
    key = _key(console, console.team_id, "needy")
    console.gw.post(
        "/admin/wallets",
        {
            "scope_type": "team",
            "scope_id": console.team_id,
            "name": "research prepaid",
            "tickets": "on",
        },
    )
    refused = httpx.post(
        console.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key['key']}"},
        json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 10},
    )
    assert refused.status_code == 402, refused.text
    ticket = refused.json()["error"]["ticket"]["id"]
    approval = {"reason": "demo", "amount_usd": "5", "more_than_asked": True}
    console.gw.post(f"/admin/tickets/{ticket}/approve", approval, status=200)
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    binding = page.locator(f"#key-{key['id']} .binding")
    expect(binding).to_contain_text(f"ticket grant “{ticket} on wallet ‘research prepaid’”")
    expect(binding).to_contain_text("$5.00 left of $5.00")
    page.goto(console.url + f"/keys/{key['id']}")
    expect(page.locator("tr.binding-row")).to_contain_text(ticket)
    console.gw.clock.advance(25 * 3600)  # the grant's 24 h are over
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    expect(binding).to_contain_text("wallet “research prepaid”: $0.00 left of $0.00")


def test_a_wallet_is_labelled_by_its_name(console: Console) -> None:
    """The keys list and a key's page call the wallet funding the key by its name
    ("demo prepaid"), not its scope ("org wallet"); renamed, by its new name."""
    key = _key(console, console.team_id, "named")
    wallet = console.gw.post(
        "/admin/wallets",
        {
            "name": "demo prepaid",
            "scope_type": "org",
            "scope_id": console.org_id,
            "initial_topup_usd": "3",
        },
    )
    with session(console.url, "org_admin@acme.test") as client:
        for path in ("/keys", f"/keys/{key['id']}"):
            page = client.get(path)
            assert page.status_code == 200, page.text
            assert "wallet “demo prepaid”" in page.text, path
            assert "org wallet" not in page.text, path
        renamed = console.gw.admin.patch(
            f"/admin/wallets/{wallet['id']}", json={"name": "pilot fund"}
        )
        assert renamed.status_code == 200, renamed.text
        page = client.get(f"/keys/{key['id']}")
        assert "wallet “pilot fund”" in page.text
        assert "demo prepaid" not in page.text


def test_a_team_role_sees_no_limit_it_may_not_read_on_the_keys_pages(console: Console) -> None:
    """A research key counts against an org budget, a tag budget, an org wallet and a
    budget on its owner, who is in sales only: to a team admin or viewer of research
    those are 404 in the API (org-level, or another team's), so the keys list and the
    key's page show neither their names nor their figures — only that more limits
    apply — while the team's own budget is there; an org admin sees them all. The pages
    showed every one of them, amounts and spend included."""
    gw = console.gw
    seller = console.add_user(
        "seller@acme.test", {"role": "member", "team_ids": [console.other_team_id]}
    )
    key = gw.post(
        "/admin/keys",
        {
            "name": "shared-owner",
            "org_id": console.org_id,
            "team_id": console.team_id,
            "user_id": seller["id"],
            "tags": ["nightly"],
        },
    )
    hidden = [
        ("org", {"scope_type": "org", "scope_id": console.org_id}, "1234"),
        ("tag", {"scope_type": "tag", "tag": "nightly", "org_id": console.org_id}, "2345"),
        ("seller", {"scope_type": "user", "scope_id": seller["id"]}, "3456"),
    ]
    budgets = {
        name: gw.post(
            "/admin/budgets",
            {"name": f"{name.upper()} BUDGET", "amount_usd": amount, "hard_limit": True, **scope},
        )["id"]
        for name, scope, amount in hidden
    }
    wallet = gw.post(
        "/admin/wallets",
        {
            "name": "ACME PREPAID",
            "scope_type": "org",
            "scope_id": console.org_id,
            "initial_topup_usd": "77",
        },
    )["id"]
    gw.post(
        "/admin/budgets",
        {"name": "research monthly", "scope_type": "team", "scope_id": console.team_id,
         "amount_usd": "50"},
    )  # fmt: skip
    secret = ("ORG BUDGET", "TAG BUDGET", "SELLER BUDGET", "ACME PREPAID")
    figures = ("1,234.00", "1234.00", "2,345.00", "2345.00", "3,456.00", "3456.00", "77.00")
    for role in ("team_admin", "viewer"):
        with session(console.url, f"{role}@acme.test") as client:
            for budget in budgets.values():
                assert client.get(f"/usage/budgets/{budget}").status_code == 404
            assert client.get(f"/wallets/{wallet}").status_code == 404
            for path in ("/keys", f"/keys/{key['id']}"):
                shown = client.get(path)
                assert shown.status_code == 200, shown.text
                leaked = [w for w in (*secret, *figures) if w in shown.text]
                assert not leaked, (role, path, leaked)
            detail = client.get(f"/keys/{key['id']}").text
            assert "research monthly" in detail
            assert "4 more limits apply to this key" in detail, detail
    with session(console.url, "org_admin@acme.test") as client:
        detail = client.get(f"/keys/{key['id']}").text
        assert all(name in detail for name in secret) and "more limits apply" not in detail


def test_the_keys_list_looks_up_the_owners_of_its_keys_limits_at_once(console: Console) -> None:
    """A team admin's keys list asks, of every budget on each key, whether it is theirs
    to read (its owner): the owners are looked up together, a query per kind of scope,
    not once per key — with a budget on each of eight keys the page looked up keys
    eight times, one round trip each."""
    gw = console.gw
    for n in range(8):
        key = _key(console, console.team_id, f"job-{n}")
        gw.create_budget(
            name=f"job {n} cap", scope_type="key", scope_id=key["id"], amount_usd=f"{n + 1}"
        )
    owner_lookups: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if re.search(r"FROM virtual_keys\s+WHERE virtual_keys\.id IN", statement):
            owner_lookups.append(statement)

    engine = gw.app.services.engine.sync_engine
    with session(console.url, "team_admin@acme.test") as client:
        event.listen(engine, "before_cursor_execute", seen)
        try:
            listed = client.get("/keys")
        finally:
            event.remove(engine, "before_cursor_execute", seen)
    assert listed.status_code == 200, listed.text
    assert all(f"budget “job {n} cap”" in listed.text for n in range(8)), listed.text
    assert len(owner_lookups) == 1, owner_lookups


def test_with_limits_hidden_the_binding_one_is_said_to_be_of_those_shown(
    console: Console,
) -> None:
    """An org budget a team admin may not read can run out before the team's budget: the
    keys pages then call the team's budget the binding limit *of those shown*, not the
    one that runs out first; a key with no limit shown counts its hidden ones without a
    "more". Both pages said "(binding)" and "1 more" as if nothing were hidden."""
    gw = console.gw
    team_key, bare_key = (_key(console, console.team_id, n) for n in ("team-job", "bare-job"))
    gw.create_budget(
        name="ORG CAP", scope_type="org", scope_id=console.org_id, amount_usd="1",
        hard_limit=True,
    )  # fmt: skip
    gw.create_budget(
        name="team job cap", scope_type="key", scope_id=team_key["id"], amount_usd="50"
    )
    with session(console.url, "team_admin@acme.test") as client:
        listed = client.get("/keys").text
        shown = client.get(f"/keys/{team_key['id']}").text
        bare = client.get(f"/keys/{bare_key['id']}").text
    team_row = listed.split(f'id="key-{team_key["id"]}"')[1].split("</tr>")[0]
    bare_row = listed.split(f'id="key-{bare_key["id"]}"')[1].split("</tr>")[0]
    assert "budget “team job cap”" in team_row and "of those shown" in team_row, team_row
    assert "(1 limit not shown to your role)" in bare_row, bare_row
    assert "(binding of those shown)" in shown and "1 more limit applies" in shown, shown
    assert "1 limit applies to this key" in bare and "more" not in bare.split("hidden-limits")[1]
    assert "ORG CAP" not in listed + shown + bare


def test_a_rate_limit_on_a_pattern_no_model_matches_is_never_binding(
    console: Console, page: Page
) -> None:
    """A row on ``claude-*-opus*`` when no configured model matches it governs no call:
    it was called the binding limit (first on a tie of untouched limits); now it is listed
    last, marked, and the binding limit is the row that can run out."""
    key = _key(console, console.team_id, "pattern-job")
    for model, rpm in (("claude-*-opus*", 5), ("gpt-4o-mini", 100)):
        console.gw.post(
            "/admin/rate-limits",
            {"scope_type": "key", "scope_id": key["id"], "model": model, "rpm": rpm},
        )
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    binding = page.locator(f"#key-{key['id']} .binding")
    expect(binding).to_contain_text("rate limit “key requests on gpt-4o-mini”")
    page.goto(console.url + f"/keys/{key['id']}")
    expect(page.locator("tr.binding-row")).to_contain_text("gpt-4o-mini")
    idle = page.locator("#limits-table tbody tr").last
    expect(idle).to_contain_text("claude-*-opus*")
    expect(idle).to_contain_text("(matches no configured model: limits no call)")
    expect(idle.locator("td").last).to_have_text("never reached")
    expect(idle).not_to_have_class("binding-row")


def test_a_rate_limit_on_models_the_key_may_not_use_is_never_binding(
    console: Console, page: Page
) -> None:
    """A team row on gpt-4o limits no call of a key that may use only gpt-4o-mini (its
    ``models``): it was that key's binding limit once another key of the team had used
    some of it; now it is listed last, marked, and the key's own row binds."""
    key = console.gw.post(
        "/admin/keys",
        {
            "name": "mini-only",
            "org_id": console.org_id,
            "team_id": console.team_id,
            "models": ["gpt-4o-mini"],
        },
    )
    other = _key(console, console.team_id, "big-model")
    for scope, scope_id, model, rpm in (
        ("key", key["id"], "gpt-4o-mini", 100),
        ("team", console.team_id, "gpt-4o", 5),
    ):
        console.gw.post(
            "/admin/rate-limits",
            {"scope_type": scope, "scope_id": scope_id, "model": model, "rpm": rpm},
        )
    sdk = openai.OpenAI(base_url=console.url + "/v1", api_key=other["key"], max_retries=0)
    sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/keys")
    binding = page.locator(f"#key-{key['id']} .binding")
    expect(binding).to_contain_text("rate limit “key requests on gpt-4o-mini”")
    page.goto(console.url + f"/keys/{key['id']}")
    idle = page.locator("#limits-table tbody tr").last
    expect(idle).to_contain_text("team requests on gpt-4o")
    expect(idle).to_contain_text("(governs no model this key may use: limits no call)")
    expect(idle).not_to_have_class("binding-row")
    page.goto(console.url + f"/keys/{other['id']}")  # the other key's calls it does limit
    expect(page.locator("tr.binding-row")).to_contain_text("team requests on gpt-4o")
