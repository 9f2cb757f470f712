"""Signing in, out and the layout, in a real browser."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import PASSWORD, Console, axe_violations, sign_in


@pytest.mark.parametrize("role", ["org_admin", "finance", "team_admin", "viewer", "member"])
def test_each_role_signs_in_and_sees_usage(console: Console, page: Page, role: str) -> None:
    """Every role signs in with email and password and lands on /usage with its name
    and role in the header; signing out returns to the sign-in page for good."""
    sign_in(page, console.url, f"{role}@acme.test")
    assert page.url.endswith("/usage")
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    expect(page.locator(".who")).to_contain_text(f"{role}@acme.test")
    expect(page.locator("#unread-count")).to_have_text("0")
    page.get_by_role("button", name="Sign out").click()
    assert "/login" in page.url
    page.goto(console.url + "/usage")
    assert "/login?next=/usage" in page.url


def test_wrong_password_is_refused_then_throttled(console: Console, page: Page) -> None:
    """A wrong password shows an error and no session; past the failure limit even the
    right password is refused (429) until the window passes."""
    sign_in(page, console.url, "viewer@acme.test", "not the password at all")
    expect(page.get_by_role("alert")).to_contain_text("wrong email or password")
    assert "/login" in page.url
    limit = console.gw.settings.auth_failures_per_minute
    for _ in range(limit):
        sign_in(page, console.url, "viewer@acme.test", "still not the password")
    sign_in(page, console.url, "viewer@acme.test", PASSWORD)
    expect(page.get_by_role("alert")).to_contain_text("too many failed")
    console.gw.clock.advance(61)
    sign_in(page, console.url, "viewer@acme.test", PASSWORD)
    assert page.url.endswith("/usage")


def test_session_expires(console: Console, page: Page) -> None:
    """A session stops working once its lifetime has passed."""
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + "/usage")
    assert page.url.endswith("/usage")
    console.gw.clock.advance(12 * 3600 + 1)
    page.goto(console.url + "/usage")
    assert "/login" in page.url


def test_pages_send_a_strict_csp_and_forms_need_csrf(console: Console) -> None:
    """Console pages forbid inline script and foreign origins; a form POST without the
    CSRF token is refused before it reaches the page."""
    with httpx.Client(base_url=console.url) as client:
        login = client.get("/login")
        csp = login.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        refused = client.post("/login", data={"email": "viewer@acme.test", "password": PASSWORD})
        assert refused.status_code == 403
        token = client.cookies["sg_csrf"]
        ok = client.post(
            "/login",
            data={"email": "viewer@acme.test", "password": PASSWORD, "csrf_token": token},
        )
        assert ok.status_code == 303 and ok.headers["location"] == "/usage"


def test_sign_in_page_and_usage_have_no_serious_axe_violations(
    console: Console, browser: Browser
) -> None:
    """axe-core (shipped in tests/console/assets) finds nothing serious or critical."""
    violations = axe_violations(browser, console.url, "org_admin@acme.test", "/usage")
    assert violations == [], [(v["id"], v["help"]) for v in violations]


def test_pages_name_an_icon_the_console_serves(console: Console, page: Page) -> None:
    """Every page named no icon, so the browser asked for /favicon.ico and logged its 404
    as an error on each page: the layout names the console's own icon, which is served."""
    with httpx.Client(base_url=console.url) as client:
        login = client.get("/login")
        icon = re.search(r'<link rel="icon" href="([^"]+)"', login.text)
        assert icon is not None
        served = client.get(icon.group(1))
        assert served.status_code == 200
        assert served.headers["content-type"] == "image/svg+xml"
    errors: list[str] = []
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    sign_in(page, console.url, "viewer@acme.test")
    page.wait_for_load_state("networkidle")
    assert errors == []
