"""Every admin page answers each role as the admin API's permission table says: 200 for
a role holding the page's read permission, 403 for one that does not (``member`` holds
none). The expectation is the table in ``core.access`` itself."""

from __future__ import annotations

import httpx
import pytest

from spendgate.core.access import GRANTS, Can
from tests.console.conftest import PASSWORD, Console

PAGES = {
    "/keys": Can.KEYS_READ,
    "/wallets": Can.WALLETS_READ,
    "/rate-limits": Can.LIMITS_READ,
    "/webhooks": Can.WEBHOOKS,
    "/audit": Can.AUDIT_READ,
    "/people": Can.DIRECTORY_READ,
    "/org": Can.DIRECTORY_READ,
    "/anomalies": Can.ANOMALIES_READ,
}
ROLES = ("org_admin", "finance", "team_admin", "viewer", "member")


@pytest.mark.parametrize("role", ROLES)
def test_each_page_answers_each_role_by_the_permission_table(console: Console, role: str) -> None:
    """200 where the role holds the permission, else 403 (never a 500)."""
    with httpx.Client(base_url=console.url) as client:
        client.get("/login")
        token = client.cookies["sg_csrf"]
        signed = client.post(
            "/login",
            data={"email": f"{role}@acme.test", "password": PASSWORD, "csrf_token": token},
        )
        assert signed.status_code == 303
        for path, permission in PAGES.items():
            expected = 200 if role in GRANTS[permission] else 403
            assert client.get(path).status_code == expected, (role, path)


def test_every_post_form_carries_the_csrf_token(console: Console) -> None:
    """On each admin page (and a page of each kind of object), every POST form has the
    CSRF field; the guard refuses any POST without it."""
    gw = console.gw
    key = gw.post(
        "/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": console.team_id}
    )
    wallet = gw.post("/admin/wallets", {"scope_type": "team", "scope_id": console.team_id})
    limit = gw.post(
        "/admin/rate-limits", {"scope_type": "team", "scope_id": console.team_id, "rpm": 1}
    )
    hook = gw.post("/admin/webhooks", {"url": "http://127.0.0.1:9/x"})
    paths = [
        *PAGES,
        f"/keys/{key['id']}",
        f"/keys/{key['id']}/revoke",
        f"/wallets/{wallet['id']}",
        f"/rate-limits/{limit['id']}",
        f"/webhooks/{hook['id']}",
        f"/people/{console.users['viewer']['id']}",
    ]
    with httpx.Client(base_url=console.url) as client:
        client.get("/login")
        token = client.cookies["sg_csrf"]
        client.post(
            "/login",
            data={"email": "org_admin@acme.test", "password": PASSWORD, "csrf_token": token},
        )
        for path in paths:
            html = client.get(path).text
            forms = html.split('<form method="post"')[1:]
            assert forms, path
            for form in forms:
                body = form.split("</form>")[0]
                assert f'name="csrf_token" value="{token}"' in body, (path, body[:200])
