"""Bad admin input is a 4xx naming the field, never a 500 (each case found by the fuzz
run in test_admin_fuzz.py, kept here as a plain regression)."""

from __future__ import annotations

import pytest

from tests.conftest import RunningGateway


def _made(gw: RunningGateway) -> dict[str, str]:
    org = gw.post("/admin/orgs", {"name": "o"})["id"]
    team = gw.post("/admin/teams", {"org_id": org, "name": "t"})["id"]
    budget = gw.post(
        "/admin/budgets", {"scope_type": "team", "scope_id": team, "amount_usd": "10"}
    )["id"]
    limit = gw.post("/admin/rate-limits", {"scope_type": "team", "scope_id": team, "rpm": 5})["id"]
    hook = gw.post("/admin/webhooks", {"url": "http://127.0.0.1:9/h"})["id"]
    return {"org": org, "team": team, "budget": budget, "limit": limit, "webhook": hook}


@pytest.mark.parametrize(
    ("route", "field"),
    [
        ("budgets/{budget}", "name"),
        ("budgets/{budget}", "amount_usd"),
        ("budgets/{budget}", "alert_percentages"),
        ("budgets/{budget}", "categories"),
        ("rate-limits/{limit}", "spend_window_seconds"),
        ("webhooks/{webhook}", "enabled"),
        ("webhooks/{webhook}", "event_types"),
    ],
)
def test_null_in_a_patch_is_422_unless_it_means_something(
    gateway: RunningGateway, route: str, field: str
) -> None:
    ids = _made(gateway)
    path = "/admin/" + route.format(**ids)
    response = gateway.admin.patch(path, json={field: None})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == {  # the field named in param too, not only in words
        "message": f"{field}: may be left out but not set to null",
        "code": "validation_error",
        "param": field,
    }
    # null that means "no such limit" stays accepted
    if route.startswith("rate-limits"):
        cleared = gateway.admin.patch(path, json={"rpm": None, "tpm": 100})
        assert cleared.status_code == 200 and cleared.json()["rpm"] is None


def test_nul_characters_are_refused_everywhere(gateway: RunningGateway) -> None:
    ids = _made(gateway)
    for response in (
        gateway.admin.get("/admin/teams", params={"org_id": "x\x00"}),
        gateway.admin.get("/admin/orgs/x%00y"),
        gateway.admin.post("/admin/orgs", json={"name": "a\x00b"}),
        gateway.admin.get("/admin/audit/export", params={"target": "x\x00"}),
    ):
        assert response.status_code == 422, response.text
        assert "NUL" in response.json()["error"]["message"]
    assert gateway.get(f"/admin/orgs/{ids['org']}")["name"] == "o"


@pytest.mark.parametrize(
    "when",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        # numbers, which pydantic would read as Unix seconds (a fuzzed -2e-288 purged the
        # audit log "before 1970")
        -2.2179268937939386e-288,
        0,
        1_780_000_000,
    ],
)
def test_times_at_the_calendar_edges_or_not_text_are_422(
    gateway: RunningGateway, when: str | float
) -> None:
    """Every time input refuses them, and nothing happens."""
    ids = _made(gateway)
    entries = len(gateway.get("/admin/audit", limit=1000)["entries"])
    for response in (
        gateway.admin.get("/admin/audit", params={"start": str(when)}),
        gateway.admin.get("/admin/usage", params={"end": str(when)}),
        gateway.admin.post("/admin/audit/purge", json={"before": when}),
        # a number here purged raw ledger rows "before" it (0: 1970, 1.7e9: November 2023)
        gateway.admin.post("/admin/ledger/purge", json={"before": when}),
        gateway.admin.post(
            "/admin/usage/rebuild", json={"start": when, "end": "1970-01-02T00:00:00Z"}
        ),
        gateway.admin.post(
            f"/admin/budgets/{ids['budget']}/exceptions",
            json={"amount_usd": "1", "reason": "r", "expires_at": when},
        ),
        gateway.admin.post(
            "/admin/keys", json={"name": "k", "org_id": ids["org"], "expires_at": when}
        ),
    ):
        assert response.status_code == 422, response.text
        if not isinstance(when, str) and response.request.method == "POST":
            assert "ISO 8601" in response.json()["error"]["message"]
    assert len(gateway.get("/admin/audit", limit=1000)["entries"]) == entries


def test_digits_in_a_query_are_not_a_time(gateway: RunningGateway) -> None:
    for path in ("/admin/audit", "/admin/audit/export"):
        response = gateway.admin.get(path, params={"start": "10040"})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == "start"


def test_a_yes_or_no_is_true_or_false_only(gateway: RunningGateway) -> None:
    """0 and 1 are not booleans (pydantic would read them as such): 422, nothing changed."""
    ids = _made(gateway)
    user = gateway.post("/admin/users", {"email": "u@o.example", "org_id": ids["org"]})["id"]
    for response, field in (
        (
            gateway.admin.patch(f"/admin/budgets/{ids['budget']}", json={"hard_limit": 1}),
            "hard_limit",
        ),
        (gateway.admin.patch(f"/admin/webhooks/{ids['webhook']}", json={"enabled": 0}), "enabled"),
        (
            gateway.admin.post(
                "/admin/usage/rebuild",
                json={"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z", "dry_run": 1},
            ),
            "dry_run",
        ),
        (
            gateway.admin.post(
                "/admin/keys", json={"name": "k", "org_id": ids["org"], "allow_request_tags": "yes"}
            ),
            "allow_request_tags",
        ),
        (
            gateway.admin.put(
                f"/admin/users/{user}/notification-preferences",
                json={"channels": {"in_app": 0, "webhook_endpoint_ids": []}},
            ),
            "channels.in_app",
        ),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == field, response.text
    assert gateway.get(f"/admin/budgets/{ids['budget']}")["hard_limit"] is False
    assert gateway.get(f"/admin/webhooks/{ids['webhook']}")["enabled"] is True
    assert (
        gateway.admin.patch(
            f"/admin/budgets/{ids['budget']}", json={"hard_limit": True}
        ).status_code
        == 200
    )


def test_a_count_is_a_number_not_true_or_false(gateway: RunningGateway) -> None:
    """pydantic reads true as 1 and false as 0: ``"rpm": true`` made a limit of one request
    a minute and ``"overlap_seconds": false`` rotated a webhook secret with no overlap.
    Every whole number of a body refuses them (422 naming the field), and nothing changes."""
    ids = _made(gateway)
    team = ids["team"]
    secret = gateway.get(f"/admin/webhooks/{ids['webhook']}")
    for method, path, body, field in (
        ("POST", "/admin/rate-limits",
         {"scope_type": "team", "scope_id": team, "model": "m", "rpm": True}, "rpm"),
        ("POST", "/admin/rate-limits",
         {"scope_type": "team", "scope_id": team, "model": "m", "max_concurrent": True},
         "max_concurrent"),
        ("PATCH", f"/admin/rate-limits/{ids['limit']}", {"tpm": True}, "tpm"),
        ("PATCH", f"/admin/rate-limits/{ids['limit']}", {"spend_window_seconds": True},
         "spend_window_seconds"),
        ("POST", "/admin/anomaly-actions",
         {"scope_type": "team", "scope_id": team, "action": "rate_limit", "rpm": True}, "rpm"),
        ("POST", "/admin/allocation-rules",
         {"org_id": ids["org"], "method": "even", "position": False}, "position"),
        ("POST", f"/admin/webhooks/{ids['webhook']}/rotate-secret", {"overlap_seconds": False},
         "overlap_seconds"),
    ):  # fmt: skip
        response = gateway.admin.request(method, path, json=body)
        assert response.status_code == 422, (path, response.text)
        assert response.json()["error"]["param"] == field, response.text
        assert "not true or false" in response.json()["error"]["message"]
    assert gateway.get("/admin/rate-limits") == [gateway.get(f"/admin/rate-limits/{ids['limit']}")]
    assert gateway.get(f"/admin/rate-limits/{ids['limit']}")["rpm"] == 5
    assert gateway.get("/admin/anomaly-actions") == []
    assert gateway.get("/admin/allocation-rules") == []
    assert gateway.get(f"/admin/webhooks/{ids['webhook']}") == secret


def test_huge_audit_cursor_is_422(gateway: RunningGateway) -> None:
    response = gateway.admin.get("/admin/audit", params={"before_seq": 2**63})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "before_seq"


def test_words_for_a_time_and_a_malformed_email_are_said_plainly(gateway: RunningGateway) -> None:
    """`--expires-at yesterday` reached the API as "yesterday" and the answer was pydantic's
    "Input should be a valid datetime or date, input is too short"; a bad email answered
    with the regular expression. Both now say what is expected."""
    ids = _made(gateway)
    response = gateway.admin.post(
        f"/admin/budgets/{ids['budget']}/exceptions",
        json={"percent": "50", "reason": "r", "expires_at": "yesterday"},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == {
        "message": "expires_at: not an ISO 8601 date-time such as 2026-05-01T00:00:00Z: "
        "'yesterday'",
        "code": "validation_error",
        "param": "expires_at",
    }
    response = gateway.admin.get("/admin/usage", params={"start": "last week"})
    assert response.status_code == 422, response.text
    response = gateway.admin.post("/admin/users", json={"email": "ana", "role": "finance"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"] == "email: not an email address: 'ana'"


def test_a_validators_message_is_not_prefixed_with_value_error(gateway: RunningGateway) -> None:
    """A budget in an unknown time zone answered "timezone: Value error, unknown time
    zone …": pydantic's prefix leaked into the API's message (the console strips it)."""
    org = gateway.post("/admin/orgs", {"name": "zones"})
    response = gateway.admin.post(
        "/admin/budgets",
        json={"scope_type": "org", "scope_id": org["id"], "period": "monthly",
              "amount_usd": "10", "timezone": "Mars/Base"},
    )  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["error"] == {
        "message": "timezone: unknown time zone 'Mars/Base'; expected an IANA name such as "
        "Europe/Berlin or UTC",
        "code": "validation_error",
        "param": "timezone",
    }


def test_an_unknown_event_type_is_422_not_an_empty_list(gateway: RunningGateway) -> None:
    """``GET /admin/events?type=budget.*`` (the webhooks' way of naming a family) or a
    typo answered 200 with no events, as if none had happened. A family now lists its
    events and ``*`` all; an unknown type is 422 naming ``type`` and the types there are."""
    key = gateway.create_key()
    gateway.admin.post(f"/admin/keys/{key['id']}/revoke")
    mine = {"org_id": key["org_id"]}
    assert {e["type"] for e in gateway.get("/admin/events", type="key.*", **mine)} == {
        "key.created",
        "key.revoked",
    }
    assert len(gateway.get("/admin/events", type="*", **mine)) == 2
    assert gateway.get("/admin/events", type="budget.*", **mine) == []
    for asked in ("budget.treshold_crossed", "bugdet.*"):
        response = gateway.admin.get("/admin/events", params={"type": asked})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "type"
        assert error["message"].startswith(f"type: unknown event type {asked!r}: a type (")
        assert "budget.threshold_crossed" in error["message"]


def test_a_bad_team_names_the_field_it_was_sent_in(gateway: RunningGateway) -> None:
    """``PUT /admin/users/{id}/memberships/{team_id}`` with a team that does not exist,
    or one of another org, is 422 naming ``team_id`` (the path's field), not
    ``team_ids``, a field of another route; ``PATCH`` with ``team_ids`` still names
    ``team_ids``."""
    gw = gateway
    org = gw.post("/admin/orgs", {"name": "teams-field"})["id"]
    elsewhere = gw.post("/admin/orgs", {"name": "teams-field-2"})["id"]
    foreign = gw.post("/admin/teams", {"org_id": elsewhere, "name": "t"})["id"]
    user = gw.post("/admin/users", {"email": "tf@example.com", "role": "finance", "org_id": org})
    for team, said in (("team_missing", "does not exist"), (foreign, "another org")):
        put = gw.admin.put(f"/admin/users/{user['id']}/memberships/{team}", json={"role": "viewer"})
        assert put.status_code == 422, put.text
        assert put.json()["error"]["param"] == "team_id", put.text
        assert said in put.json()["error"]["message"]
        patch = gw.admin.patch(f"/admin/users/{user['id']}", json={"team_ids": [team]})
        assert patch.status_code == 422, patch.text
        assert patch.json()["error"]["param"] == "team_ids", patch.text


def test_the_master_key_naming_no_org_is_told_the_field_is_required(
    gateway: RunningGateway,
) -> None:
    """The master key belongs to no org: a user or agent it creates with neither an org
    nor a team, or a webhook filter of a scope type without its id, is a 422 saying the
    field is required, not that an org called ``None`` does not exist (found following
    the README: ``spendgate users create ops@acme.io --role org_admin`` answered
    ``org_id: org None does not exist``)."""
    gw = gateway
    gw.post("/admin/orgs", {"name": "no-org-named"})
    for path, body, param, said in (
        (
            "/admin/users",
            {"email": "n@example.com", "role": "finance"},
            "org_id",
            "org_id: required with the master key",
        ),
        ("/admin/agents", {"name": "crawler"}, "org_id", "org_id: required with the master key"),
        (
            "/admin/webhooks",
            {"url": "http://127.0.0.1:9/h", "scope_type": "team"},
            "scope_id",
            "scope_id: required when scope_type is team",
        ),
    ):
        response = gw.admin.post(path, json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == param
        assert response.json()["error"]["message"] == said
        assert "None" not in response.text
