"""The console agrees with the admin API on a user in two teams: a team admin of one of
them reads the user's budget but gets no edit, delete or exception controls, the forms
answer 403, and the user is not offered as a new budget's target."""

from __future__ import annotations

from tests.console.conftest import Console, form, session


def test_a_team_admin_of_one_team_reads_a_shared_users_budget_but_may_not_change_it(
    console: Console,
) -> None:
    """research's team admin; the user is in research and sales."""
    shared = console.add_user(
        "both@acme.test",
        {"role": "member", "team_ids": [console.team_id, console.other_team_id]},
    )
    budget = console.gw.post(
        "/admin/budgets",
        {
            "name": "both monthly",
            "scope_type": "user",
            "scope_id": shared["id"],
            "amount_usd": "10",
        },
    )
    path = f"/usage/budgets/{budget['id']}"
    with session(console.url, "team_admin@acme.test") as client:
        detail = client.get(path)
        assert detail.status_code == 200 and "both monthly" in detail.text
        assert f"{path}/edit" not in detail.text
        assert f"{path}/exceptions" not in detail.text
        for suffix in ("/edit", "/delete"):
            assert client.get(path + suffix).status_code == 403
        assert form(client, f"{path}/edit", {"amount_usd": "99"}).status_code == 403
        assert form(client, f"{path}/delete", {}).status_code == 403
        targets = client.get("/usage/budgets/new").text
        assert "member@acme.test" in targets and "both@acme.test" not in targets
    assert console.gw.get(f"/admin/budgets/{budget['id']}")["amount_usd"] == "10.00"
