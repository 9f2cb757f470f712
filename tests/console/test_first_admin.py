"""The ways in: `serve --demo` prints the demo admin's sign-in; `bootstrap` prints an
invite link; `users set-password` and `users invite`; who may set whose password."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import MASTER_KEY, start_gateway
from tests.console.conftest import Console, session, sign_in


def _cli(url: str, *args: str, stdin: str | None = None) -> dict[str, object]:
    result = CliRunner().invoke(
        cli,
        [*args, "--url", url, "--json"],
        env={"SPENDGATE_MASTER_KEY": MASTER_KEY},
        input=stdin,
    )
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout)) if result.stdout.strip() else {}


def test_demo_prints_the_first_admins_sign_in(
    upstream: tuple[FakeUpstream, ServerHandle],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    page: Page,
) -> None:
    """`serve --demo` on an empty database: the console URL, the admin's email and a
    password, shown once on the terminal; they sign in."""
    gw = start_gateway(f"sqlite:///{tmp_path / 'demo.db'}", upstream[1].url, tmp_path, demo=True)
    try:
        printed = capfd.readouterr().err
        found = re.search(r"sign in as (\S+) with password \(shown once\): (\S+)", printed)
        assert found is not None, printed
        sign_in(page, gw.url, found[1], found[2])
        assert page.url.endswith("/usage")
        expect(page.locator(".who")).to_contain_text("admin@demo.local (org_admin)")
    finally:
        gw.admin.close()
        gw.handle.stop()


def test_bootstrap_invite_link_sets_the_first_password(console: Console, page: Page) -> None:
    """The invite link `bootstrap` prints lets the admin choose a password once (then
    the sign-in page says the password is set); the link is dead afterwards, and a short
    password is refused beside the field."""
    url = console.url
    made = _cli(
        url, "bootstrap", "--org", f"new-{uuid.uuid4().hex[:6]}", "--email", "boss@new.test"
    )
    invite = str(made["console_invite_url"])
    assert invite.startswith(console.gw.settings.public_url)
    path = invite.removeprefix(console.gw.settings.public_url)
    page.goto(url + path)
    page.get_by_label("New password").fill("short")
    page.get_by_label("Repeat it").fill("short")
    page.get_by_role("button", name="Set password").click()
    expect(page.locator("#password-error")).to_contain_text("at least 12")
    page.get_by_label("New password").fill("a long enough password")
    page.get_by_label("Repeat it").fill("a long enough password")
    page.get_by_role("button", name="Set password").click()
    assert "/login" in page.url  # the sign-in page says why it is there
    expect(page.get_by_role("status")).to_contain_text("Password set: sign in with it")
    sign_in(page, url, "boss@new.test", "a long enough password")
    assert page.url.endswith("/usage")
    assert httpx.get(url + path).status_code == 404


def test_set_password_from_the_cli_and_who_may(console: Console) -> None:
    """`users set-password --password-stdin` (master key) works; a team admin may not set
    another user's password or invite them (404, as for a missing user)."""
    viewer = console.users["viewer"]
    _cli(
        console.url,
        "users",
        "set-password",
        viewer["id"],
        "--password-stdin",
        stdin="a brand new password\n",
    )
    with session(console.url, "viewer@acme.test", "a brand new password") as client:
        assert client.get("/usage").status_code == 200
    token = console.gw.post(
        "/admin/tokens", {"user_id": console.users["team_admin"]["id"], "name": "t"}
    )["token"]
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=console.url, headers=headers) as admin:
        refused = admin.put(
            f"/admin/users/{viewer['id']}/console-password", json={"password": "x" * 20}
        )
        assert refused.status_code == 404
        assert admin.post(f"/admin/users/{viewer['id']}/console-invite").status_code == 404
        own = console.users["team_admin"]["id"]
        assert admin.post(f"/admin/users/{own}/console-invite").status_code == 201
    short = console.gw.admin.put(
        f"/admin/users/{viewer['id']}/console-password", json={"password": "short"}
    )
    assert short.status_code == 422 and short.json()["error"]["param"] == "password"
