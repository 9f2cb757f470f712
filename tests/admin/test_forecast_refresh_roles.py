"""``GET /admin/forecasts/{id}?refresh=true`` recomputes a forecast (a statistical fit,
CPU-heavy): it takes the permission to change the budget, as ``PATCH /admin/budgets/{id}``
does (a team role in every team of a user the budget binds, ``access.BINDING``), so
those who only read a budget cannot keep the gateway busy with it. They still read the
stored forecast. Real admin tokens over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from typer.testing import CliRunner

from spendgate.cli import app as cli
from tests.admin.test_shared_users import World, _world
from tests.conftest import RunningGateway


def _viewer_of_t1(world: World) -> str:
    """An admin token of a viewer of T1 (who reads T1's budgets and forecasts)."""
    viewer = world.gw.post(
        "/admin/users",
        {"email": "viewer@a.example", "org_id": world.org_id, "role": "viewer",
         "team_ids": [world.t1]},
    )["id"]  # fmt: skip
    token: str = world.gw.post("/admin/tokens", {"user_id": viewer, "name": "viewer"})["token"]
    return token


def test_only_those_who_may_change_a_budget_force_its_forecast(gateway: RunningGateway) -> None:
    world = _world(gateway)
    world.tokens["viewer_of_t1"] = _viewer_of_t1(world)
    own = world.budget(world.user(world.t1))  # binds a user of T1 only
    shared = world.budget(world.user(world.t1, world.t2))  # binds a user of T1 and T2
    stored = {b: gateway.get(f"/admin/forecasts/{b}")["generated_at"] for b in (own, shared)}
    gateway.clock.advance(60)  # a recompute would be of a later moment

    def refreshing(caller: str) -> dict[str, int]:
        with world.client(caller) as c:
            return {
                name: c.get(f"/admin/forecasts/{b}", params={"refresh": "true"}).status_code
                for name, b in (("own", own), ("shared", shared))
            }

    refused = {"own": 403, "shared": 403}
    assert refreshing("viewer_of_t1") == refused
    assert refreshing("admin_of_t1") == {"own": 200, "shared": 403}
    assert refreshing("admin_of_t1_viewer_of_t2") == {"own": 200, "shared": 403}
    for caller in ("admin_of_both", "org_admin", "finance", "master"):
        assert refreshing(caller) == {"own": 200, "shared": 200}, caller

    with world.client("viewer_of_t1") as c:
        denied = c.get(f"/admin/forecasts/{own}", params={"refresh": "true"})
        error = denied.json()["error"]
        assert (error["code"], error["param"]) == ("permission_denied", "refresh")
        assert "budgets.write" in error["message"] and "viewer" in error["message"]
        # reading without refresh: the stored forecast, as the last permitted refresh left it
        read = c.get(f"/admin/forecasts/{own}")
        assert read.status_code == 200, read.text
        assert read.json()["generated_at"] > stored[own]


def test_a_refused_refresh_computes_nothing(gateway: RunningGateway) -> None:
    """The 403 comes before any work: the stored forecast is the one computed before."""
    world = _world(gateway)
    with world.client("admin_of_t1") as c:
        shared = world.budget(world.user(world.t1, world.t2))
        before = c.get(f"/admin/forecasts/{shared}")
        assert before.status_code == 200, before.text
        gateway.clock.advance(60)
        assert c.get(f"/admin/forecasts/{shared}", params={"refresh": "true"}).status_code == 403
        after = c.get(f"/admin/forecasts/{shared}")
        assert after.json()["generated_at"] == before.json()["generated_at"]


def test_the_cli_says_why_a_refresh_is_refused(gateway: RunningGateway) -> None:
    """``spendgate forecast --refresh`` with a viewer's token: exit 1 and the API's reason,
    naming the option typed; ``spendgate forecast`` reads the forecast."""
    world = _world(gateway)
    token = _viewer_of_t1(world)
    budget = world.budget(world.user(world.t1))
    env = {"SPENDGATE_ADMIN_TOKEN": token, "SPENDGATE_MASTER_KEY": "", "COLUMNS": "300"}
    refused = CliRunner().invoke(
        cli, ["forecast", budget, "--refresh", "--url", gateway.url], env=env
    )
    assert refused.exit_code == 1, refused.output
    assert "error 403: --refresh: recomputing the forecast" in refused.stderr
    assert "without --refresh the stored forecast" in refused.stderr
    read = CliRunner().invoke(cli, ["forecast", budget, "--url", gateway.url, "--json"], env=env)
    assert read.exit_code == 0, read.output
