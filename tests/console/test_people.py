"""/people in a real browser: users, roles and memberships, teams and agents, invite
links and admin tokens shown once, and a team admin kept to their own teams."""

from __future__ import annotations

import httpx
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, sign_in


def test_org_admin_adds_a_user_invites_them_and_they_sign_in(
    console: Console, page: Page, browser: Browser
) -> None:
    """An org admin adds a viewer of research, makes an invite link (shown once), the
    new user sets a password through it and signs in."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/people")
    form = page.get_by_role("form", name="Add a user")
    form.get_by_label("Email").fill("newcomer@acme.test")
    form.get_by_label("Role").select_option("viewer")
    form.get_by_label("Team").select_option(label="research")
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("heading", name="newcomer@acme.test")).to_be_visible()
    expect(page.locator("#memberships-table")).to_contain_text("research")
    person_url = page.url
    page.get_by_role("button", name="Make an invite / password-reset link").click()
    link = page.get_by_role("textbox", name="Secret").input_value()
    assert "/invite/" in link
    page.goto(person_url)
    assert link not in page.content()
    fresh = browser.new_context().new_page()
    fresh.goto(console.url + "/invite/" + link.rsplit("/", 1)[1])
    fresh.get_by_label("New password").fill("a brand new password")
    fresh.get_by_label("Repeat it").fill("a brand new password")
    fresh.get_by_role("button", name="Set password").click()
    sign_in(fresh, console.url, "newcomer@acme.test", "a brand new password")
    assert fresh.url.endswith("/usage")
    fresh.context.close()


def test_membership_roles_teams_and_agents(console: Console, page: Page) -> None:
    """Re-role a membership, add one, remove one; create a team and an agent."""
    viewer = console.users["viewer"]
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + f"/people/{viewer['id']}")
    page.get_by_label("Role in research", exact=True).select_option("team_admin")
    page.get_by_role("button", name="Set role in research").click()
    expect(page.locator(f"#membership-{console.team_id} .role")).to_have_text("team_admin")
    page.get_by_label("Add to team").select_option(label="sales")
    page.get_by_label("as", exact=True).select_option("viewer")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator(f"#membership-{console.other_team_id} .role")).to_have_text("viewer")
    page.get_by_role("button", name="Remove from sales").click()
    expect(page.locator(f"#membership-{console.other_team_id}")).to_have_count(0)
    page.goto(console.url + "/people")
    page.get_by_label("New team").fill("platform")
    page.get_by_role("button", name="Create team").click()
    expect(page.locator("#teams-list")).to_contain_text("platform")
    page.get_by_label("New agent").fill("nightly-bot")
    page.get_by_role("form", name="Create an agent").get_by_label("Team").select_option(
        label="research"
    )
    page.get_by_role("button", name="Create agent").click()
    expect(page.locator("#agents-list")).to_contain_text("nightly-bot (research)")
    actions = [e["action"] for e in console.gw.get("/admin/audit", target=viewer["id"])["entries"]]
    assert actions.count("user.role_changed") >= 1 and "user.updated" in actions


def test_admin_token_shown_once_works_and_revokes(console: Console, page: Page) -> None:
    """A finance user makes their own admin token: shown once, it calls the admin API;
    revoked from the page, it stops."""
    finance = console.users["finance"]
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + f"/people/{finance['id']}")
    page.get_by_label("Token name").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    token = page.get_by_role("textbox", name="Secret").input_value()
    headers = {"authorization": f"Bearer {token}"}
    assert httpx.get(console.url + "/admin/wallets", headers=headers).status_code == 200
    page.goto(console.url + f"/people/{finance['id']}")
    assert token not in page.content()
    page.get_by_role("button", name="Revoke token laptop").click()
    expect(page.locator("#tokens-table .status").first).to_have_text("revoked")
    assert httpx.get(console.url + "/admin/wallets", headers=headers).status_code == 401


def test_team_admin_is_kept_to_their_teams(console: Console, page: Page) -> None:
    """A team admin: no org-role form, no other team's members (404 by URL), cannot
    re-role an org admin, cannot make an invite link for anyone else (404)."""
    outsider = console.add_user(
        "sales-only@acme.test", {"role": "viewer", "team_ids": [console.other_team_id]}
    )
    viewer = console.users["viewer"]
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/people")
    expect(page.locator("#users-table")).not_to_contain_text("sales-only@acme.test")
    answer = page.goto(console.url + f"/people/{outsider['id']}")
    assert answer is not None and answer.status == 404
    page.goto(console.url + f"/people/{viewer['id']}")
    expect(page.get_by_role("button", name="Set org role")).to_have_count(0)
    expect(page.get_by_role("button", name="Make an invite / password-reset link")).to_have_count(0)
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "sg_csrf")
    posted = page.request.post(
        console.url + f"/people/{viewer['id']}/invite", form={"csrf_token": token}
    )
    assert posted.status == 404
    posted = page.request.post(
        console.url + f"/people/{outsider['id']}/memberships",
        form={"csrf_token": token, "team_id": console.team_id, "role": "viewer"},
    )
    assert posted.status == 404


def test_people_pages_have_no_serious_axe_violations(console: Console, browser: Browser) -> None:
    """axe-core: nothing serious or critical on the list and a person."""
    viewer = console.users["viewer"]
    for path in ("/people", f"/people/{viewer['id']}"):
        violations = axe_violations(browser, console.url, "org_admin@acme.test", path)
        assert violations == [], (path, [(v["id"], v["help"]) for v in violations])
