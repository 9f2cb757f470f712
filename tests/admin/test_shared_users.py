"""A user in two teams: what binds their calls is changed only by those who reach both.

A budget on a user binds every call of theirs, made with any of their teams' keys. A team
admin of T1 alone reads the budget of a user of T1 and T2 but may not create, change,
delete it or grant exceptions on it (403 saying why, not the 404 of an unseen object);
an admin of both teams, an org role and the master key may. Through the HTTP API with
real admin tokens, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import MASTER_KEY, RunningGateway


@dataclass
class World:
    gw: RunningGateway
    org_id: str
    t1: str
    t2: str
    tokens: dict[str, str]

    def client(self, caller: str) -> httpx.Client:
        secret = MASTER_KEY if caller == "master" else self.tokens[caller]
        return httpx.Client(base_url=self.gw.url, headers={"authorization": f"Bearer {secret}"})

    def user(self, *team_ids: str) -> str:
        """A proxy user (no admin role) of these teams."""
        return self.gw.post(
            "/admin/users",
            {
                "email": f"{'-'.join(team_ids)}@a.example",
                "role": "member",
                "team_ids": list(team_ids),
                "org_id": self.org_id,
            },
        )["id"]

    def budget(self, user_id: str, amount: str = "10") -> str:
        return self.gw.post(
            "/admin/budgets", {"scope_type": "user", "scope_id": user_id, "amount_usd": amount}
        )["id"]


def _world(gw: RunningGateway) -> World:
    org_id = gw.post("/admin/orgs", {"name": "acme"})["id"]
    t1, t2 = (gw.post("/admin/teams", {"org_id": org_id, "name": n})["id"] for n in ("T1", "T2"))
    standings: dict[str, dict[str, Any]] = {
        # no role in T2
        "admin_of_t1": {"role": "team_admin", "team_ids": [t1]},
        # a viewer of T2: reading T2 is not changing what binds its calls
        "admin_of_t1_viewer_of_t2": {
            "memberships": [
                {"team_id": t1, "role": "team_admin"},
                {"team_id": t2, "role": "viewer"},
            ]
        },
        "admin_of_both": {"role": "team_admin", "team_ids": [t1, t2]},
        "org_admin": {"role": "org_admin"},
        "finance": {"role": "finance"},
    }
    tokens = {}
    for name, standing in standings.items():
        user = gw.post(
            "/admin/users", {"email": f"{name}@a.example", "org_id": org_id, **standing}
        )["id"]
        tokens[name] = gw.post("/admin/tokens", {"user_id": user, "name": name})["token"]
    return World(gw, org_id, t1, t2, tokens)


def _changes(world: World, caller: str, user_id: str) -> dict[str, int]:
    """Each change that binds the user's calls, tried by ``caller``: its status."""
    budget = world.budget(user_id)
    doomed = world.budget(user_id, "20")
    expires = "2026-03-11T00:00:00+00:00"  # the frozen clock is 2026-03-10 15:30 UTC
    with world.client(caller) as c:
        return {
            "create": c.post(
                "/admin/budgets",
                json={
                    "scope_type": "user",
                    "scope_id": user_id,
                    "amount_usd": "5",
                    "period": "daily",
                },
            ).status_code,
            "raise": c.patch(f"/admin/budgets/{budget}", json={"amount_usd": "1000"}).status_code,
            "lift the hard cap": c.patch(
                f"/admin/budgets/{budget}", json={"hard_limit": False}
            ).status_code,
            "exception": c.post(
                f"/admin/budgets/{budget}/exceptions",
                json={"amount_usd": "500", "reason": "launch", "expires_at": expires},
            ).status_code,
            "delete": c.delete(f"/admin/budgets/{doomed}").status_code,
        }


ALL_DONE = {"create": 201, "raise": 200, "lift the hard cap": 200, "exception": 201, "delete": 204}
ALL_REFUSED = dict.fromkeys(ALL_DONE, 403)


def test_only_callers_reaching_every_team_of_a_user_change_what_binds_their_calls(
    gateway: RunningGateway,
) -> None:
    """An admin of T1 alone (with or without a viewer role in T2) is refused every change
    to the budgets of a user of T1 and T2 — and still makes them for a user of T1 only;
    an admin of both teams, the org roles and the master key make them all."""
    world = _world(gateway)
    shared, own = world.user(world.t1, world.t2), world.user(world.t1)
    expected = {
        "admin_of_t1": ALL_REFUSED,
        "admin_of_t1_viewer_of_t2": ALL_REFUSED,
        "admin_of_both": ALL_DONE,
        "org_admin": ALL_DONE,
        "finance": ALL_DONE,
        "master": ALL_DONE,
    }
    got = {caller: _changes(world, caller, shared) for caller in expected}
    assert got == expected
    assert _changes(world, "admin_of_t1", own) == ALL_DONE


def test_the_refusal_says_why_and_changes_nothing(gateway: RunningGateway) -> None:
    """The admin of T1 still reads the budget (GET, the list, its exceptions); each
    change answers 403 ``permission_denied`` naming the reason — the body's ``scope_id``
    too, not a 422 claiming the user does not exist — and the budget stays as it was."""
    world = _world(gateway)
    shared = world.user(world.t1, world.t2)
    budget = world.budget(shared)
    before = world.gw.get(f"/admin/budgets/{budget}")
    with world.client("admin_of_t1") as c:
        assert c.get(f"/admin/budgets/{budget}").json() == before
        assert budget in [b["id"] for b in c.get("/admin/budgets").json()]
        assert c.get(f"/admin/budgets/{budget}/exceptions").status_code == 200
        patched = c.patch(f"/admin/budgets/{budget}", json={"amount_usd": "1000"})
        created = c.post(
            "/admin/budgets",
            json={"scope_type": "user", "scope_id": shared, "amount_usd": "5", "period": "daily"},
        )
    for response in (patched, created):
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "permission_denied"
        assert "also in a team you are not an admin of" in error["message"]
        assert "an admin of each of the user's teams, or an org role" in error["message"]
    assert created.json()["error"]["param"] == "scope_id"
    assert world.gw.get(f"/admin/budgets/{budget}") == before
    assert [b["id"] for b in world.gw.get("/admin/budgets") if b["scope_id"] == shared] == [budget]
