"""The console's names of ids follow one rule (``console.naming.Namer.may_see``): a
reader is shown a team's, user's, agent's or key's name only when the admin API would
let them read the object. A key of team A may name a user and an agent of team B (an
org admin may make one): a viewer or team admin of A sees the key, but only the ids of
team B's user and agent — on the keys list and page, the rate limits, the anomalies
and usage grouped by user, agent or key — while an org admin sees their names."""

from __future__ import annotations

from datetime import timedelta

import openai

from spendgate.store.anomalies import anomalies
from tests.console.conftest import Console, session

BRAVO = "bravo"  # in every name of team B's objects, and in nothing else on the pages


def _pages(console: Console) -> dict[str, list[tuple[str, str]]]:
    """Team B's user, agent and key, a key of team A naming them that made a call, a
    rate limit on that key and an anomaly of it naming team B's key as a contributor:
    the pages showing them, each with the (id, name) of team B's objects it shows."""
    gw = console.gw
    org = console.org_id
    team_b = gw.post("/admin/teams", {"name": f"{BRAVO}-team", "org_id": org})
    in_b = {"org_id": org, "team_id": team_b["id"]}
    user_b = console.add_user(
        f"{BRAVO}-user@acme.test", {"role": "viewer", "team_ids": [team_b["id"]]}
    )
    agent_b = gw.post("/admin/agents", {"name": f"{BRAVO}-agent", **in_b})
    key_b = gw.post("/admin/keys", {"name": f"{BRAVO}-key", **in_b})
    key_a = gw.post(
        "/admin/keys",
        {"name": "alpha-key", "org_id": org, "team_id": console.team_id,
         "user_id": user_b["id"], "agent_id": agent_b["id"]},
    )  # fmt: skip
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key_a["key"], max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    gw.post("/admin/rate-limits", {"scope_type": "key", "scope_id": key_a["id"], "rpm": 5})
    now = gw.clock.now()

    async def insert() -> None:
        async with gw.app.services.engine.begin() as conn:
            await conn.execute(
                anomalies.insert().values(
                    id="anom_names", org_id=org, scope_type="key", scope_id=key_a["id"],
                    team_id=console.team_id, started_at=now, hour_start=now - timedelta(hours=1),
                    method="hour_of_week", elapsed=0.5, expected_nanos=1, upper_nanos=2,
                    actual_nanos=9, peak_excess_nanos=8, last_checked_at=now,
                    contributors=[{"dimension": "key", "id": key_b["id"], "actual_nanos": 9,
                                   "expected_nanos": 1, "share": 1.0}],
                )
            )  # fmt: skip

    gw.run(insert())
    user, agent, key = user_b["id"], agent_b["id"], key_b["id"]
    return {  # page -> what stands for team B's objects on it: (id, name)
        "/keys": [(user, user_b["email"]), (agent, agent_b["name"])],
        f"/keys/{key_a['id']}": [(user, user_b["email"]), (agent, agent_b["name"])],
        "/rate-limits": [],
        "/anomalies": [(key, key_b["name"])],
        "/anomalies/anom_names": [(key, key_b["name"])],
        "/usage?group_by=user": [(user, user_b["email"])],
        "/usage?group_by=agent": [(agent, agent_b["name"])],
        "/usage?group_by=key": [],
        "/usage?group_by=team": [],
    }


def test_a_reader_of_team_a_never_sees_names_of_team_b(console: Console) -> None:
    pages = _pages(console)
    for role in ("viewer", "team_admin"):
        with session(console.url, f"{role}@acme.test") as client:
            for path, shown in pages.items():
                html = client.get(path).text
                assert BRAVO not in html, (role, path)
                assert all(ident in html for ident, _ in shown), (role, path)  # the ids stand in
    with session(console.url, "org_admin@acme.test") as client:
        for path, shown in pages.items():
            html = client.get(path).text
            assert all(name in html for _, name in shown), path
