"""/org, and the admin pages in the nav for each role (shown only where the role may
read them), with no serious axe violations on /org."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, sign_in

NAV = {
    "org_admin": {
        "Keys",
        "Wallets",
        "Rate limits",
        "Webhooks",
        "Audit log",
        "People",
        "Org settings",
    },
    "finance": {"Wallets", "Rate limits", "Audit log", "People", "Org settings"},
    "team_admin": {"Keys", "Wallets", "Rate limits", "Audit log", "People", "Org settings"},
    "viewer": {"Keys", "Wallets", "Rate limits", "Audit log", "People", "Org settings"},
    "member": set(),
}
ADMIN_LINKS = {"Keys", "Wallets", "Rate limits", "Webhooks", "Audit log", "People", "Org settings"}


@pytest.mark.parametrize("role", sorted(NAV))
def test_nav_shows_what_the_role_may_read(console: Console, page: Page, role: str) -> None:
    """The nav lists exactly the admin pages the role's permissions reach."""
    sign_in(page, console.url, f"{role}@acme.test")
    links = set(page.get_by_role("navigation", name="Main").get_by_role("link").all_inner_texts())
    assert {link.strip() for link in links} & ADMIN_LINKS == NAV[role]


def test_org_settings_show_zone_week_and_retention(console: Console, page: Page) -> None:
    """The org page shows its name, reporting zone, week start and the retention."""
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + "/org")
    expect(page.get_by_role("heading", name="Org settings")).to_contain_text("acme-")
    expect(page.locator("#org-zone")).to_have_text("UTC")
    expect(page.locator("#org-week")).to_have_text("Monday")
    days = console.gw.app.services.audit_settings.retention_days
    expect(page.locator("#org-retention")).to_contain_text(f"{days} days")


def test_org_page_has_no_serious_axe_violations(console: Console, browser: Browser) -> None:
    """axe-core: nothing serious or critical."""
    violations = axe_violations(browser, console.url, "viewer@acme.test", "/org")
    assert violations == [], [(v["id"], v["help"]) for v in violations]
