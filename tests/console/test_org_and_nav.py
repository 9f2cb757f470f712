"""/org, and the admin pages in the nav for each role (shown only where the role may
read them), with no serious axe violations on /org."""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.console.conftest import Console, axe_violations, sign_in

COMMON = {
    "Wallets",
    "Rate limits",
    "Audit log",
    "People",
    "Org settings",
    "Statements",
    "Anomalies",
}
NAV = {
    "org_admin": COMMON | {"Keys", "Webhooks", "Cost tickets", "Events"},
    "finance": COMMON | {"Cost tickets", "Events"},
    "team_admin": COMMON | {"Keys", "Cost tickets"},
    "viewer": COMMON | {"Keys"},
    "member": set(),
}
ADMIN_LINKS = COMMON | {"Keys", "Webhooks", "Cost tickets", "Events"}


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


def test_an_org_admin_sets_the_reporting_zone_and_a_finance_lead_cannot(
    console: Console, page: Page
) -> None:
    """The org admin saves Asia/Kolkata and Sunday through the form (the API's PATCH
    route: the org and the usage API then report in that zone); an unknown zone is a 422
    naming the field; finance sees no form and a forged POST is refused."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/org")
    page.get_by_label("Reporting time zone").fill("Asia/Kolkata")
    page.get_by_label("Week starts on").select_option("sunday")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#org-zone")).to_have_text("Asia/Kolkata")
    expect(page.locator("#org-week")).to_have_text("Sunday")
    org_id = console.gw.get("/admin/orgs")[0]["id"]
    assert console.gw.get(f"/admin/orgs/{org_id}")["reporting_timezone"] == "Asia/Kolkata"
    assert console.gw.get("/admin/usage", org_id=org_id)["timezone"] == "Asia/Kolkata"

    # refused: the message beside the field (no API name, no pydantic prefix), what was
    # typed still in the form, the org page around it (it was a bare error page)
    page.get_by_label("Reporting time zone").fill("Mars/Olympus")
    page.get_by_label("Week starts on").select_option("friday")
    with page.expect_response(lambda r: r.request.method == "POST") as sent:
        page.get_by_role("button", name="Save").click()
    assert sent.value.status == 422
    expect(page.locator("#reporting_timezone-error")).to_have_text(
        "Error: unknown time zone 'Mars/Olympus'; expected an IANA name such as Europe/Berlin"
        " or UTC"
    )
    expect(page.get_by_label("Reporting time zone")).to_have_value("Mars/Olympus")
    expect(page.get_by_label("Reporting time zone")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Week starts on")).to_have_value("friday")
    expect(page.locator("#org-zone")).to_have_text("Asia/Kolkata")
    assert console.gw.get(f"/admin/orgs/{org_id}")["reporting_timezone"] == "Asia/Kolkata"


def test_org_settings_cannot_be_changed_by_finance(console: Console, page: Page) -> None:
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + "/org")
    expect(page.get_by_role("button", name="Save")).to_have_count(0)
    csrf = next(c["value"] for c in page.context.cookies() if "csrf" in c["name"])
    forged = page.request.post(
        console.url + "/org",
        form={"csrf_token": csrf, "reporting_timezone": "Asia/Tokyo"},
        headers={"x-csrf-token": csrf},
    )
    assert forged.status == 403


def test_org_page_has_no_serious_axe_violations(console: Console, browser: Browser) -> None:
    """axe-core: nothing serious or critical."""
    violations = axe_violations(browser, console.url, "viewer@acme.test", "/org")
    assert violations == [], [(v["id"], v["help"]) for v in violations]
