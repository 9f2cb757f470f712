"""/anomalies in a real browser: the episodes of a runaway key (expected band, actual,
contributors, the pause it applied), acknowledging one with a note (the API's route:
audited, the pause lifted), and who may: a viewer reads but may not acknowledge (403), a
team admin never sees another team's episode (404 by URL), a member none; CSRF on the
forms; no serious axe violations."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from spendgate.store import schema
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.admin.test_anomalies_http import USD, _ledger_row, check, spend
from tests.conftest import start_gateway
from tests.console.conftest import (
    Console,
    axe_violations,
    form,
    make_console,
    session,
    sign_in,
)

SHOTS = Path("/tmp/spendgate-console2-shots")


@pytest.fixture
def console(
    upstream: tuple[FakeUpstream, ServerHandle], fake: FakeUpstream, tmp_path: Path
) -> Iterator[Console]:
    """The console's gateway without its own periodic anomaly check: the tests check at
    the frozen clock's time, after writing the history (a check before it would keep
    the empty history for the hour)."""
    gw = start_gateway(
        f"sqlite:///{tmp_path / 'console.db'}",
        upstream[1].url,
        tmp_path,
        extra_config="[anomalies]\ncheck_seconds = 0\n",
    )
    yield make_console(gw)
    gw.admin.close()
    gw.handle.stop()


def _runaway(console: Console, *team_ids: str, pause: bool = False) -> dict[str, dict[str, Any]]:
    """A key per team with four weeks at $1 an hour, then $16 in the running hour's
    first half: the check opens an episode for each key and team (with ``pause``, one
    that pauses the key). {team id: the key's anomaly}."""
    gw = console.gw
    top = gw.clock.now().replace(minute=0, second=0, microsecond=0)
    keys, rows = [], []
    for n, team_id in enumerate(team_ids):
        key = gw.post(
            "/admin/keys", {"name": f"runaway-{n}", "org_id": console.org_id, "team_id": team_id}
        )
        keys.append(key)
        if pause:
            action = {"scope_type": "key", "scope_id": key["id"], "action": "pause"}
            gw.post("/admin/anomaly-actions", action)
        for h in range(1, 4 * 168 + 4):
            at = top - timedelta(hours=h) + timedelta(minutes=10)
            rows.append(_ledger_row(f"hist_{n}_{h:05d}", key, at, USD))

    async def insert() -> None:
        async with gw.app.services.engine.begin() as conn:
            await conn.execute(schema.ledger.insert(), rows)

    gw.run(insert())
    for key in keys:
        spend(gw, key, 8)
    check(gw)
    found = gw.get("/admin/anomalies", scope_type="key", status="open")
    return {a["team_id"]: a for a in found}


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_org_admin_sees_and_acknowledges_an_anomaly(console: Console, page: Page) -> None:
    """The list shows the key's open episode with its expected band and actual spend;
    its page names gpt-4o as the whole excess and the pause in force; acknowledging with
    a note is the API's route (acknowledged by the console user, audited with the note,
    the pause lifted); a second acknowledgement is refused (409)."""
    gw = console.gw
    key_anomaly = _runaway(console, console.team_id, pause=True)[console.team_id]
    assert key_anomaly["action_state"] == "active"
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(console.url + "/anomalies")
    row = page.locator(f"#anomaly-{key_anomaly['id']}")
    expect(row).to_contain_text("key runaway-0 (team research)")
    expect(row).to_contain_text("$0.50")
    expect(row).to_contain_text(f"${key_anomaly['actual_usd']}")
    expect(row).to_contain_text("pause")
    expect(row.locator(".ack")).to_have_text("no")
    _shot(page, "anomalies-list")
    row.get_by_role("link", name=key_anomaly["id"]).click()
    expect(page.locator("#anomaly-status")).to_contain_text("open")
    expect(page.locator("#anomaly-action")).to_contain_text("in force")
    expect(page.locator("#contributors-table")).to_contain_text("gpt-4o")
    expect(page.locator("#contributors-table")).to_contain_text("100.0%")
    with session(console.url, "org_admin@acme.test") as client:  # a note past 1000 characters
        path = f"/anomalies/{key_anomaly['id']}"
        long_ack = form(client, f"{path}/acknowledge", {"note": "n" * 1001})
        long_lift = form(client, f"{path}/lift-action", {"note": "n" * 1001})
    assert (long_ack.status_code, long_lift.status_code) == (422, 422)
    assert 'id="ack-note-error"' in long_ack.text and "lift-note-error" not in long_ack.text
    assert 'id="lift-note-error"' in long_lift.text and "ack-note-error" not in long_lift.text
    assert gw.get(f"/admin/anomalies/{key_anomaly['id']}")["acknowledged_by"] is None
    page.get_by_label("Note", exact=True).fill("loop fixed")
    expect(page.get_by_label("Also lift the pause it applied")).to_be_checked()
    _shot(page, "anomaly-detail")
    page.get_by_role("button", name="Acknowledge").click()
    expect(page.locator("#anomaly-ack")).to_contain_text("loop fixed")
    expect(page.locator("#anomaly-action")).to_contain_text("lifted")
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
    api = gw.get(f"/admin/anomalies/{key_anomaly['id']}")
    user_id = console.users["org_admin"]["id"]
    assert api["acknowledged_by"] == f"console:{user_id}" and api["ack_note"] == "loop fixed"
    assert api["action_state"] == "lifted"
    assert gw.get("/admin/rate-limits") == []
    audit = gw.get("/admin/audit", action="anomaly.acknowledged")["entries"]
    assert [(e["target_id"], e["after"]["note"]) for e in audit] == [
        (key_anomaly["id"], "loop fixed")
    ]
    page.goto(console.url + "/anomalies?view=acknowledged")
    expect(page.locator(f"#anomaly-{key_anomaly['id']} .ack")).to_contain_text(
        "by org_admin@acme.test"
    )
    with session(console.url, "org_admin@acme.test") as client:
        again = form(client, f"/anomalies/{key_anomaly['id']}/acknowledge", {"note": "x"})
        assert again.status_code == 409


def test_finance_lifts_the_pause_without_acknowledging(console: Console, page: Page) -> None:
    """*Lift the action* is the API's lift-action: the key's pause is undone (its rate
    limits gone), the episode stays unacknowledged, audited with the note; the form is
    gone afterwards."""
    gw = console.gw
    anomaly = _runaway(console, console.team_id, pause=True)[console.team_id]
    assert gw.get("/admin/rate-limits") != []
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + f"/anomalies/{anomaly['id']}")
    page.get_by_label("Note (why)").fill("let it run")
    page.get_by_role("button", name="Lift the action").click()
    expect(page.locator("#anomaly-action")).to_contain_text("lifted by finance@acme.test")
    expect(page.get_by_role("button", name="Lift the action")).to_have_count(0)
    expect(page.locator("#anomaly-ack")).to_have_text("not yet")
    api = gw.get(f"/admin/anomalies/{anomaly['id']}")
    assert api["action_state"] == "lifted" and api["acknowledged_at"] is None
    assert gw.get("/admin/rate-limits") == []
    audit = gw.get("/admin/audit", action="anomaly.action_lifted")["entries"]
    assert [e["after"]["note"] for e in audit] == ["let it run"]


def test_viewer_reads_team_admin_is_kept_to_their_team(console: Console, page: Page) -> None:
    """A viewer sees their team's episode but no *Acknowledge* (a forged one is 403); a
    team admin lists and opens only their team's (another team's is 404 by URL, and its
    acknowledge too); a member may not read anomalies; a form without the CSRF token
    never reaches the page; nothing got acknowledged."""
    found = _runaway(console, console.team_id, console.other_team_id)
    mine, theirs = found[console.team_id]["id"], found[console.other_team_id]["id"]
    sign_in(page, console.url, "viewer@acme.test")
    page.goto(console.url + f"/anomalies/{mine}")
    expect(page.locator("#anomaly-status")).to_contain_text("open")
    expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
    with session(console.url, "viewer@acme.test") as client:
        assert form(client, f"/anomalies/{mine}/acknowledge", {"note": "x"}).status_code == 403
    page.context.clear_cookies()
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/anomalies")
    expect(page.locator(f"#anomaly-{mine}")).to_have_count(1)
    expect(page.locator(f"#anomaly-{theirs}")).to_have_count(0)
    answer = page.goto(console.url + f"/anomalies/{theirs}")
    assert answer is not None and answer.status == 404
    with session(console.url, "team_admin@acme.test") as client:
        assert form(client, f"/anomalies/{theirs}/acknowledge", {"note": "x"}).status_code == 404
        assert client.post(f"/anomalies/{mine}/acknowledge", data={}).status_code == 403
    with session(console.url, "member@acme.test") as client:
        assert client.get("/anomalies").status_code == 403
    assert console.gw.get("/admin/anomalies", acknowledged="true") == []


def test_team_admin_sets_and_deletes_what_an_anomaly_does(console: Console, page: Page) -> None:
    """A rate limit without a limit is refused beside *Requests per minute* (422, what
    was chosen kept); a 5-rpm rate limit on the team is the API's (listed there,
    audited); deleting it works. Another team's action is not listed and deleting it by
    URL is 404; a viewer may not add one (403)."""
    gw = console.gw
    theirs = gw.post(
        "/admin/anomaly-actions",
        {"scope_type": "team", "scope_id": console.other_team_id, "action": "pause"},
    )
    sign_in(page, console.url, "team_admin@acme.test")
    page.goto(console.url + "/anomalies")
    expect(page.locator(f"#action-{theirs['id']}")).to_have_count(0)
    page.get_by_label("For").select_option(f"team:{console.team_id}")
    page.get_by_label("Action").select_option("rate_limit")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Add", exact=True).click()
    assert answer.value.status == 422
    expect(page.locator("#rpm-error")).to_contain_text("needs rpm, tpm or max_spend_usd")
    expect(page.get_by_label("Action")).to_have_value("rate_limit")
    page.get_by_label("Requests per minute").fill("5")
    page.get_by_role("button", name="Add", exact=True).click()
    [mine] = [a for a in gw.get("/admin/anomaly-actions") if a["scope_id"] == console.team_id]
    assert (mine["action"], mine["rpm"]) == ("rate_limit", 5)
    row = page.locator(f"#action-{mine['id']}")
    expect(row).to_contain_text("team research")
    expect(row).to_contain_text("5 requests/min")
    _shot(page, "anomaly-actions")
    audit = gw.get("/admin/audit", action="anomaly_action.created")["entries"]
    assert mine["id"] in {e["target_id"] for e in audit}
    with session(console.url, "team_admin@acme.test") as client:
        gone = form(client, f"/anomalies/actions/{theirs['id']}/delete", {})
        assert gone.status_code == 404
    row.get_by_role("button", name="Delete the anomaly action of team research").click()
    expect(page.locator(f"#action-{mine['id']}")).to_have_count(0)
    assert [a["id"] for a in gw.get("/admin/anomaly-actions")] == [theirs["id"]]
    with session(console.url, "viewer@acme.test") as client:
        body = {"scope": f"team:{console.team_id}", "action": "pause"}
        assert form(client, "/anomalies/actions", body).status_code == 403
        assert client.get("/anomalies").status_code == 200


def test_events_list_the_anomaly_events_for_org_readers(console: Console, page: Page) -> None:
    """Finance filters /events to ``spend.anomaly``: the key's and the team's events, as
    the API lists them, each linking to its episode; team roles may not read events
    (403)."""
    found = _runaway(console, console.team_id)
    api = console.gw.get("/admin/events", type="spend.anomaly")
    assert len(api) == 2
    sign_in(page, console.url, "finance@acme.test")
    page.goto(console.url + "/events")
    page.get_by_label("Event type").fill("spend.anomaly")
    page.get_by_role("button", name="Show").click()
    rows = page.locator("#events-table tbody tr")
    expect(rows).to_have_count(2)
    for event in api:
        expect(page.locator(f"#event-{event['id']}")).to_contain_text(event["data"]["anomaly_id"])
    _shot(page, "events")
    page.locator(f"#event-{found[console.team_id]['event_id']}").get_by_role(
        "link", name="the anomaly"
    ).click()
    expect(page.get_by_role("heading", name="Spend anomaly")).to_contain_text(
        found[console.team_id]["id"]
    )
    for role in ("team_admin", "viewer", "member"):
        with session(console.url, f"{role}@acme.test") as client:
            assert client.get("/events").status_code == 403


@pytest.mark.parametrize("role", ["org_admin", "team_admin", "finance", "viewer"])
def test_anomaly_pages_have_no_serious_axe_violations(
    console: Console, browser: Browser, role: str
) -> None:
    """axe-core on the list and an episode's page (with its forms where the role has
    them)."""
    anomaly = _runaway(console, console.team_id, pause=True)[console.team_id]
    paths = ["/anomalies", f"/anomalies/{anomaly['id']}"]
    if role in ("org_admin", "finance"):
        paths.append("/events")
    for path in paths:
        violations = axe_violations(browser, console.url, f"{role}@acme.test", path)
        assert violations == [], (path, [(v["id"], v["help"]) for v in violations])
