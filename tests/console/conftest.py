"""Browser fixtures: Playwright driving Debian's Chromium (``/usr/bin/chromium``; never a
browser Playwright downloads) against a gateway served in a thread, and users of each
role with a console password.

``CONSOLE_BROWSER`` names another Chromium binary if needed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import RunningGateway, migrated_sqlite, start_gateway

CHROMIUM = os.environ.get("CONSOLE_BROWSER", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PASSWORD = "correct horse battery staple"
AXE = Path(__file__).parent / "assets" / "axe-4.14.1.min.js"


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One browser for the console's tests. Package-scoped: Playwright's sync API keeps
    an event loop running on the main thread while it is open, and every later test
    that calls ``asyncio.run`` (the PostgreSQL ``database_url`` fixture) would fail."""
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Console:
    """A gateway with an org, a team and one user per role, each with a password."""

    gw: RunningGateway
    org_id: str
    team_id: str
    other_team_id: str
    users: dict[str, dict[str, Any]]

    @property
    def url(self) -> str:
        return self.gw.url

    def add_user(self, email: str, body: dict[str, Any]) -> dict[str, Any]:
        user = self.gw.post("/admin/users", {"email": email, "org_id": self.org_id, **body})
        auth = self.gw.app.console.state.console_auth
        self.gw.run(auth.set_password(user["id"], PASSWORD, self.gw.clock.now()))
        return user


def make_console(gw: RunningGateway) -> Console:
    org = gw.post("/admin/orgs", {"name": f"acme-{uuid.uuid4().hex[:8]}"})
    team = gw.post("/admin/teams", {"name": "research", "org_id": org["id"]})
    other = gw.post("/admin/teams", {"name": "sales", "org_id": org["id"]})
    console = Console(gw, org["id"], team["id"], other["id"], {})
    roles = {
        "org_admin": {"role": "org_admin"},
        "finance": {"role": "finance"},
        "team_admin": {"role": "team_admin", "team_ids": [team["id"]]},
        "viewer": {"role": "viewer", "team_ids": [team["id"]]},
        "member": {"role": "member", "team_ids": [team["id"]]},
    }
    for role, body in roles.items():
        console.users[role] = console.add_user(f"{role}@acme.test", body)
    return console


@pytest.fixture
def console(
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
    sqlite_template: Path,
) -> Iterator[Console]:
    """SQLite: the browser walks pages; the stores are tested on both backends elsewhere."""
    database = migrated_sqlite(sqlite_template, tmp_path / "console.db")
    gw = start_gateway(database, upstream[1].url, tmp_path)
    yield make_console(gw)
    gw.admin.close()
    gw.handle.stop()


def sign_in(page: Page, base: str, email: str, password: str = PASSWORD) -> None:
    page.goto(f"{base}/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    tab = context.new_page()
    yield tab
    context.close()


#: signed-in tabs of this test's axe checks, by (base URL, email): signing in again for
#: every page checked cost more than the check
_axe_tabs: dict[tuple[str, str], Page] = {}


@pytest.fixture(autouse=True)
def _close_axe_tabs() -> Iterator[None]:
    yield
    while _axe_tabs:
        _axe_tabs.popitem()[1].context.close()


def axe_violations(browser: Browser, base: str, email: str, path: str) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of a page (axe is injected inline, so this
    context bypasses the CSP; the pages themselves never need that). One signed-in tab
    per user for the test's checks; axe details only the violations (``resultTypes``:
    the passes it would otherwise describe node by node are never read)."""
    tab = _axe_tabs.get((base, email))
    if tab is None:
        tab = browser.new_context(bypass_csp=True).new_page()
        _axe_tabs[(base, email)] = tab
        sign_in(tab, base, email)
    tab.goto(base + path)
    if urlsplit(tab.url).path == "/login" != path:  # the session ended (a clock moved on)
        sign_in(tab, base, email)
        tab.goto(base + path)
    tab.add_script_tag(content=AXE.read_text())
    result = tab.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [v for v in result["violations"] if v["impact"] in ("serious", "critical")]


@contextmanager
def session(base: str, email: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    """An HTTP client signed in to the console as a browser would be (cookies + CSRF)."""
    with httpx.Client(base_url=base) as client:
        client.get("/login")
        response = client.post(
            "/login",
            data={"email": email, "password": password, "csrf_token": client.cookies["sg_csrf"]},
        )
        assert response.status_code == 303, response.text
        yield client


def form(client: httpx.Client, path: str, data: dict[str, Any]) -> httpx.Response:
    """POST a console form with the CSRF token, as the page would."""
    return client.post(path, data={**data, "csrf_token": client.cookies["sg_csrf"]})


def refused_filters(
    page: Page, base: str, path: str, fields: dict[str, str], wrong: tuple[str, str, str]
) -> None:
    """Fill a GET filter form on ``path`` by its labels (a select is chosen, an input
    typed), submit it, and see it refused (422) with every value still as typed and the
    message beside the ``wrong`` field (its label, its input's name, the message)."""
    page.goto(base + path)
    for label, value in fields.items():
        field = page.get_by_label(label, exact=True)
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    with page.expect_response(lambda r: r.url.startswith(f"{base}{path}?")) as sent:
        page.locator("form.filters button[type=submit]").click()
    assert sent.value.status == 422
    for label, value in fields.items():
        expect(page.get_by_label(label, exact=True)).to_have_value(value)
    label, name, message = wrong
    expect(page.locator(f"#{name}-error")).to_have_text(f"Error: {message}")
    expect(page.get_by_label(label, exact=True)).to_have_attribute("aria-invalid", "true")
