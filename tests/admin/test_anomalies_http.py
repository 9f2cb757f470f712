"""Spend anomalies end to end, on SQLite + in-process state and PostgreSQL + Redis: four
weeks of ledger history at $1 an hour, then a runaway driven through the proxy with the
``openai`` SDK (``[[reasoning:N]]`` makes each call cost $2 on gpt-4o), checked with a
frozen clock."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.core.money import format_usd
from spendgate.store import schema
from spendgate.store.leases import leases
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import MASTER_KEY, RunningGateway, start_gateway

USD = 1_000_000_000
#: 200,000 output tokens on gpt-4o ($10 per million): $2.00 a call
EXPENSIVE = "[[reasoning:200000]] summarise the logs"


@pytest.fixture
def gw(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
) -> Iterator[RunningGateway]:
    """The gateway on both backends, without its own periodic check (tests check with
    ``AnomalyWatch.check`` at the frozen clock's time, after writing the history)."""
    running = start_gateway(
        database_url, upstream[1].url, tmp_path, extra_config="[anomalies]\ncheck_seconds = 0\n"
    )
    yield running
    running.admin.close()
    running.handle.stop()


def setup_key(gw: RunningGateway) -> dict[str, Any]:
    org = gw.post("/admin/orgs", {"name": "acme"})["id"]
    team = gw.post("/admin/teams", {"org_id": org, "name": "search"})["id"]
    return gw.create_key(org_id=org, team_id=team)


def add_history(
    gw: RunningGateway, key: dict[str, Any], hours: int = 4 * 168 + 3, usd: int = 1
) -> None:
    """One $``usd`` call of gpt-4o-mini in each of the ``hours`` hours before the current
    one."""
    top = gw.clock.now().replace(minute=0, second=0, microsecond=0)
    rows = []
    for h in range(1, hours + 1):
        at = top - timedelta(hours=h) + timedelta(minutes=10)
        rows.append(_ledger_row(f"hist_{h:05d}", key, at, usd * USD))

    async def insert() -> None:
        async with gw.app.services.engine.begin() as conn:
            await conn.execute(schema.ledger.insert(), rows)

    gw.run(insert())


def _ledger_row(request_id: str, key: dict[str, Any], at: datetime, nanos: int) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "org_id": key["org_id"],
        "team_id": key["team_id"],
        "user_id": None,
        "agent_id": None,
        "key_id": key["id"],
        "tags": ["batch"],
        "provider": "openai",
        "model": "gpt-4o-mini",
        "upstream_model": "gpt-4o-mini",
        "kind": "chat",
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "input_tokens": 1,
        "output_tokens": 1,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_nanos": nanos,
        "price_unknown": False,
        "usage_estimated": False,
        "latency_ms": 1,
        "started_at": at,
        "finished_at": at,
    }


def client(gw: RunningGateway, key: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)


def spend(gw: RunningGateway, key: dict[str, Any], calls: int) -> None:
    sdk = client(gw, key)
    for _ in range(calls):
        # a cap of its own: without one the gateway sends the model's default_max_tokens
        # upstream, and the model stops thinking there
        sdk.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": EXPENSIVE}],
            max_completion_tokens=250_000,
        )


def check(gw: RunningGateway) -> Any:
    watch = gw.app.services.anomalies
    assert watch is not None
    return gw.run(watch.check(gw.clock.now()))


def events(gw: RunningGateway, type_: str) -> list[dict[str, Any]]:
    return [e for e in gw.get("/admin/events", type=type_, limit=1000)]


def test_runaway_opens_one_episode_per_scope_and_resolves(gw: RunningGateway) -> None:
    """Calm history raises nothing; $16 in the first half of an hour that usually costs $1
    opens one episode for the key and one for its team, each with one ``spend.anomaly``
    event naming gpt-4o as the whole excess; repeated checks add no event; two quiet
    hours later both resolve with one ``spend.anomaly_resolved`` each."""
    key = setup_key(gw)
    add_history(gw, key)
    assert check(gw).opened == ()
    spend(gw, key, 8)
    result = check(gw)
    assert len(result.opened) == 2
    listed = gw.get("/admin/anomalies", status="open")
    assert {(a["scope_type"], a["scope_id"]) for a in listed} == {
        ("key", key["id"]),
        ("team", key["team_id"]),
    }
    mine = next(a for a in listed if a["scope_type"] == "key")
    runaway = sum(r["cost_nanos"] for r in gw.ledger() if r["model"] == "gpt-4o")
    assert 16 * USD < runaway < 16.1 * USD  # $2 a call, and a little for the prompt
    assert mine["actual_usd"] == format_usd(runaway) and mine["expected_usd"] == "0.50"
    assert mine["method"] == "hour_of_week" and mine["elapsed_percent"] == 50
    models = [c for c in mine["contributors"] if c["dimension"] == "model"]
    assert [(c["id"], c["share_percent"]) for c in models] == [("gpt-4o", 100.0)]
    for _ in range(3):
        gw.clock.advance(300)
        assert check(gw).opened == ()
    fired = events(gw, "spend.anomaly")
    assert len(fired) == 2
    data = next(e["data"] for e in fired if e["data"]["scope_type"] == "key")
    assert data["key_id"] == key["id"] and data["team_id"] == key["team_id"]
    assert data["excess_usd"] == format_usd(runaway - USD // 2) and data["upper_usd"] == "1.00"
    gw.clock.advance(3600)  # 16:45: the last complete hour (15:00) ran hot: still open
    assert check(gw).resolved == ()
    gw.clock.advance(3600)  # 17:45: 16:00 and the running hour are quiet
    assert len(check(gw).resolved) == 2
    assert check(gw).resolved == ()
    assert len(events(gw, "spend.anomaly_resolved")) == 2
    assert {a["status"] for a in gw.get("/admin/anomalies")} == {"resolved"}
    assert gw.get("/admin/anomalies", status="open") == []


def test_acknowledge_with_a_note(gw: RunningGateway) -> None:
    """Acknowledging records who and why, is audited, and cannot be done twice; the
    filters find acknowledged and unacknowledged episodes."""
    key = setup_key(gw)
    add_history(gw, key)
    spend(gw, key, 8)
    check(gw)
    anomaly = gw.get("/admin/anomalies", scope_type="key")[0]
    done = gw.post(f"/admin/anomalies/{anomaly['id']}/acknowledge", {"note": "backfill"}, 200)
    assert done["acknowledged_by"] == "master" and done["ack_note"] == "backfill"
    assert done["acknowledged_at"] is not None and done["status"] == "open"
    again = gw.admin.post(f"/admin/anomalies/{anomaly['id']}/acknowledge", json={})
    assert again.status_code == 409
    assert [a["id"] for a in gw.get("/admin/anomalies", acknowledged="true")] == [anomaly["id"]]
    assert len(gw.get("/admin/anomalies", acknowledged="false")) == 1
    audit = gw.get("/admin/audit", action="anomaly.acknowledged")["entries"]
    assert audit[0]["target_id"] == anomaly["id"] and audit[0]["after"]["note"] == "backfill"
    missing = gw.admin.post("/admin/anomalies/anom_nope/acknowledge", json={})
    assert missing.status_code == 404
    bad = gw.admin.post(f"/admin/anomalies/{anomaly['id']}/acknowledge", json={"note": 5})
    assert bad.status_code == 422


def test_pause_refuses_the_key_until_acknowledged(gw: RunningGateway) -> None:
    """With ``pause`` set for the key, the anomaly sets every rate-limit row of the key to
    0 rpm (adding ``*``): its next call gets 429 while other keys still work; the key's
    own gpt-4o limit comes back as it was when the anomaly is acknowledged, and calls
    flow again. Applying and lifting are audited."""
    key = setup_key(gw)
    other = gw.create_key(org_id=key["org_id"], team_id=key["team_id"])
    own_limit = gw.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "gpt-4o", "rpm": 1000},
    )
    gw.post(
        "/admin/anomaly-actions", {"scope_type": "key", "scope_id": key["id"], "action": "pause"}
    )
    add_history(gw, key)
    spend(gw, key, 8)
    check(gw)
    anomaly = gw.get("/admin/anomalies", scope_type="key")[0]
    assert anomaly["action_state"] == "active" and anomaly["action"]["kind"] == "pause"
    limits = {r["model"]: r["rpm"] for r in gw.get("/admin/rate-limits")}
    assert limits == {"gpt-4o": 0, "*": 0}
    with pytest.raises(openai.RateLimitError) as refused:
        spend(gw, key, 1)
    assert refused.value.status_code == 429
    mini = client(gw, other).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert mini.choices[0].message.content
    event = events(gw, "spend.anomaly")
    assert {e["data"]["action"] for e in event} == {"pause", None}  # the team has none
    gw.post(f"/admin/anomalies/{anomaly['id']}/acknowledge", {"note": "loop fixed"}, 200)
    rows = gw.get("/admin/rate-limits")
    assert [(r["id"], r["rpm"]) for r in rows] == [(own_limit["id"], 1000)]
    spend(gw, key, 1)
    actions = {e["action"] for e in gw.get("/admin/audit", limit=1000)["entries"]}
    assert {"anomaly.action_applied", "anomaly.acknowledged"} <= actions


def test_a_paused_key_may_not_count_tokens(gw: RunningGateway, fake: FakeUpstream) -> None:
    """A pause stops the key reaching the providers, token counts included: they are free
    and spend no ``rpm``, but a key paused because it ran away (a leak, a retry loop)
    must not go on using the gateway's provider key. Its count is the call's 429, not
    retryable, and nothing is sent; lifted, it counts again."""
    key = setup_key(gw)
    gw.post(
        "/admin/anomaly-actions", {"scope_type": "key", "scope_id": key["id"], "action": "pause"}
    )
    add_history(gw, key)
    spend(gw, key, 8)
    check(gw)
    [anomaly] = gw.get("/admin/anomalies", scope_type="key")
    fake.requests.clear()
    with pytest.raises(openai.RateLimitError) as refused:
        client(gw, key).responses.input_tokens.count(model="gpt-4o", input="hi")
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.response.headers["x-should-retry"] == "false"
    counted = httpx.post(
        f"{gw.url}/v1/messages/count_tokens",
        json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": key["key"]},
    )
    assert counted.status_code == 429, counted.text
    assert counted.json()["error"]["type"] == "rate_limit_error"
    assert fake.requests == []
    gw.post(f"/admin/anomalies/{anomaly['id']}/lift-action", {"note": "false alarm"}, 200)
    assert client(gw, key).responses.input_tokens.count(model="gpt-4o", input="hi").input_tokens


def test_rate_limit_action_and_lift_without_acknowledging(gw: RunningGateway) -> None:
    """A ``rate_limit`` action on the team adds a 1-rpm ``*`` row for the team: one call a
    minute passes, the next is refused; ``lift-action`` (un-pause) removes it, leaves the
    anomaly unacknowledged, and a second lift is refused with 409."""
    key = setup_key(gw)
    gw.post(
        "/admin/anomaly-actions",
        {"scope_type": "team", "scope_id": key["team_id"], "action": "rate_limit", "rpm": 1},
    )
    add_history(gw, key)
    spend(gw, key, 8)
    check(gw)
    team = gw.get("/admin/anomalies", scope_type="team")[0]
    assert team["action"]["limits"] == {"rpm": 1}
    gw.clock.advance(61)
    spend(gw, key, 1)
    with pytest.raises(openai.RateLimitError):
        spend(gw, key, 1)
    lifted = gw.post(f"/admin/anomalies/{team['id']}/lift-action", {"note": "let it run"}, 200)
    assert lifted["action_state"] == "lifted" and lifted["acknowledged_at"] is None
    assert gw.get("/admin/rate-limits") == []
    spend(gw, key, 1)
    assert gw.admin.post(f"/admin/anomalies/{team['id']}/lift-action", json={}).status_code == 409


def test_anomaly_action_validation_and_conflicts(gw: RunningGateway) -> None:
    """Bad action bodies are 422 naming the field; a second action for one scope is 409;
    deleting one works once."""
    key = setup_key(gw)
    base = {"scope_type": "key", "scope_id": key["id"]}
    for body, param in (
        ({**base, "action": "rate_limit"}, "rpm"),
        ({**base, "action": "pause", "rpm": 5}, "rpm"),
        ({**base, "action": "explode"}, "action"),
        ({"scope_type": "key", "scope_id": "key_nope", "action": "pause"}, "scope_id"),
        ({**base, "action": "rate_limit", "max_spend_usd": "-1"}, "max_spend_usd"),
    ):
        answer = gw.admin.post("/admin/anomaly-actions", json=body)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["param"] == param
    made = gw.post("/admin/anomaly-actions", {**base, "action": "rate_limit", "max_spend_usd": "5"})
    assert made["max_spend_usd"] == "5.00"
    assert (
        gw.admin.post("/admin/anomaly-actions", json={**base, "action": "pause"}).status_code == 409
    )
    assert gw.admin.delete(f"/admin/anomaly-actions/{made['id']}").status_code == 204
    assert gw.admin.delete(f"/admin/anomaly-actions/{made['id']}").status_code == 404
    assert gw.admin.get("/admin/anomalies", params={"status": "maybe"}).status_code == 422


def wait_for_lease(gw: RunningGateway, name: str, seconds: float = 120.0) -> None:
    """Until some replica holds the lease ``name`` (the housekeeping loop's first round
    takes it shortly after start; on a loaded machine that can be after the test begins)."""

    async def held() -> bool:
        async with gw.app.services.engine.connect() as conn:
            query = sa.select(leases.c.holder).where(leases.c.name == name)
            return (await conn.execute(query)).first() is not None

    deadline = time.monotonic() + seconds
    while not gw.run(held()):
        assert time.monotonic() < deadline, f"no replica took the lease {name!r}"
        time.sleep(0.05)


def test_one_replica_checks_per_interval(gateway: RunningGateway) -> None:
    """The housekeeping loop checked on start and holds the lease: another replica skips
    until the interval has passed; then one of them checks and the other skips."""
    gw = gateway
    wait_for_lease(gw, "anomaly-check")  # the first round runs beside the test, not before
    assert gw.run(gw.app.check_anomalies("replica-a")) is False
    gw.clock.advance(gw.settings.anomaly_check_seconds)
    assert gw.run(gw.app.check_anomalies("replica-a")) is True
    assert gw.run(gw.app.check_anomalies("replica-b")) is False


def test_team_roles_see_only_their_teams_anomalies(gw: RunningGateway) -> None:
    """A viewer of the team sees its anomalies but may not acknowledge (403); a viewer of
    another team sees none of them."""
    key = setup_key(gw)
    add_history(gw, key)
    spend(gw, key, 8)
    check(gw)
    other_team = gw.post("/admin/teams", {"org_id": key["org_id"], "name": "other"})["id"]
    seen = {}
    for team in (key["team_id"], other_team):
        user = gw.post(
            "/admin/users", {"email": f"v-{team}@a.example", "role": "viewer", "team_ids": [team]}
        )["id"]
        token = gw.post("/admin/tokens", {"user_id": user, "name": "v"})["token"]
        headers = {"authorization": f"Bearer {token}"}
        seen[team] = httpx.get(f"{gw.url}/admin/anomalies", headers=headers).json()
        if team == key["team_id"]:
            target = seen[team][0]["id"]
            ack = httpx.post(
                f"{gw.url}/admin/anomalies/{target}/acknowledge", json={}, headers=headers
            )
            assert ack.status_code == 403
    assert {a["scope_type"] for a in seen[key["team_id"]]} == {"key", "team"}
    assert seen[other_team] == []


def test_cli_lists_acknowledges_and_unpauses(gw: RunningGateway) -> None:
    """``spendgate anomalies list|ack|unpause`` and ``actions create|list`` over the admin
    API, tables and ``--json``: a paused key's pause is lifted from the command line."""
    key = setup_key(gw)
    env = {"SPENDGATE_MASTER_KEY": MASTER_KEY}

    def cli_json(*args: str) -> Any:
        result = CliRunner().invoke(cli, [*args, "--url", gw.url, "--json"], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    made = cli_json(
        "anomalies", "actions", "create", "--scope", "key", "--scope-id", key["id"], "--pause"
    )
    assert made["action"] == "pause"
    assert [a["id"] for a in cli_json("anomalies", "actions", "list")] == [made["id"]]
    add_history(gw, key)
    spend(gw, key, 8)
    check(gw)
    table = CliRunner().invoke(
        cli, ["anomalies", "list", "--status", "open", "--url", gw.url], env=env
    )
    assert table.exit_code == 0 and "pause (active)" in table.output
    mine = cli_json("anomalies", "list", "--scope-type", "key", "--unacknowledged")
    assert len(mine) == 1
    lifted = cli_json("anomalies", "unpause", mine[0]["id"], "--note", "hotfix deployed")
    assert lifted["action_state"] == "lifted"
    spend(gw, key, 1)  # the key works again
    acked = cli_json("anomalies", "ack", mine[0]["id"], "--note", "loop in the crawler")
    assert acked["acknowledged_by"] == "master"
    missing = CliRunner().invoke(cli, ["anomalies", "ack", "anom_x", "--url", gw.url], env=env)
    assert missing.exit_code == 1 and "404" in missing.output


def test_a_runaway_starting_late_in_an_hour_is_flagged_within_60_minutes(
    gw: RunningGateway,
) -> None:
    """$2 an hour for four weeks; at 15:40 (frozen clock) a loop starts spending 8× that,
    $16 an hour, checked every 5 minutes. By the hour's end it is $4.67 above expected,
    under the $10 floor; the running hour alone would start again at 16:00 and pass the
    floor only at 16:43. The last hour and the running part judged together pass it at
    16:23: the episode opens within 45 minutes of the loop's start."""
    key = setup_key(gw)
    add_history(gw, key, usd=2)
    start = gw.clock.now().replace(minute=40)
    early = start.replace(minute=5)
    rows = [_ledger_row("calm_now", key, early, 2 * USD * 40 // 60)]
    gw.clock.set(start)
    opened_at = None
    for n in range(18):  # 90 minutes of the loop, one check per 5 minutes
        rows.append(_ledger_row(f"loop_{n:03d}", key, gw.clock.now(), 16 * USD // 12))

        async def insert(batch: list[dict[str, Any]] = rows) -> None:
            async with gw.app.services.engine.begin() as conn:
                await conn.execute(schema.ledger.insert(), batch)

        gw.run(insert())
        rows = []
        gw.clock.advance(300)
        if check(gw).opened and opened_at is None:
            opened_at = gw.clock.now()
    assert opened_at is not None
    assert (opened_at - start) <= timedelta(minutes=60), opened_at
    (mine,) = [a for a in gw.get("/admin/anomalies") if a["scope_type"] == "key"]
    assert mine["method"] == "span" and mine["status"] == "open"
