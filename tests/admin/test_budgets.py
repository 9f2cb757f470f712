"""Budgets end to end with the openai SDK: soft warnings, hard caps that hold under
concurrency, exceptions, period resets — on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import event

from spendgate.admin.policies import budget_statuses
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import MASTER_KEY, RunningGateway

MSG = [{"role": "user", "content": "same prompt every time"}]


def sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def one_call_cost(gw: RunningGateway, key: str) -> Decimal:
    raw = sdk(gw, key).chat.completions.with_raw_response.create(
        model="demo-small", messages=MSG, max_tokens=30
    )
    return Decimal(raw.headers["x-spendgate-cost-usd"])


def events(gw: RunningGateway, type_: str) -> list[dict[str, Any]]:
    gw.run(gw.app.services.drain())
    return gw.get("/admin/events", type=type_, limit=1000)


def budget(gw: RunningGateway, **fields: Any) -> dict[str, Any]:
    return gw.post("/admin/budgets", {"period": "monthly", "timezone": "UTC", **fields})


def at_once(gw: RunningGateway, times: int, method: str, path: str, **request: Any) -> list[int]:
    """``times`` admin requests ``method path`` sent together; their statuses, in order."""

    async def burst() -> list[int]:
        async with httpx.AsyncClient(
            base_url=gw.url, timeout=60, headers={"authorization": f"Bearer {MASTER_KEY}"}
        ) as client:
            sent = [client.request(method, path, **request) for _ in range(times)]
            return [r.status_code for r in await asyncio.gather(*sent)]

    return asyncio.run(burst())


def test_budget_validation_names_the_field(gateway: RunningGateway) -> None:
    """Unknown zone, negative amount, bad percentages, missing scope: 422, nothing created."""
    key = gateway.create_key()
    base = {"scope_type": "key", "scope_id": key["id"], "amount_usd": "10"}
    cases = [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "localtime"}, "timezone"),  # the server's zone, not an IANA name
        ({"timezone": "Factory"}, "timezone"),
        ({"amount_usd": "-5"}, "amount_usd"),
        ({"alert_percentages": [75, 50]}, "alert_percentages"),
        (
            {"hard_limit": True, "hard_limit_percent": 80, "alert_percentages": [50, 90]},
            "alert_percentages",
        ),
        ({"hard_limit": True, "soft_limit_percent": 120}, "soft_limit_percent"),
        ({"scope_id": "key_missing"}, "scope_id"),
        ({"scope_type": "tag", "scope_id": None, "tag": "x"}, "org_id"),
        ({"period": "hourly"}, "period"),
        ({"surprise": 1}, "surprise"),
    ]
    for change, field in cases:
        response = gateway.admin.post("/admin/budgets", json={**base, **change})
        assert response.status_code == 422, (change, response.text)
        error = response.json()["error"]
        assert error["param"] is not None and field in error["param"], (change, error)
        assert field in error["message"]
    assert gateway.get("/admin/budgets") == []


def test_a_category_naming_no_configured_provider_is_refused(gateway: RunningGateway) -> None:
    """``categories.providers`` are the config's provider names: one that names none (a
    typo, or the vendor instead of the config's name) would count no spend at all, so a
    hard cap on it would never block. 422 naming the field, on create and on update;
    a configured name counts that provider's calls only."""
    key = gateway.create_key()
    base = {"scope_type": "key", "scope_id": key["id"], "amount_usd": "10", "hard_limit": True}
    typo = gateway.admin.post(
        "/admin/budgets", json={**base, "categories": {"providers": ["anthropic", "opnai"]}}
    )
    assert typo.status_code == 422, typo.text
    error = typo.json()["error"]
    assert error["param"] == "categories.providers" and "'opnai'" in error["message"]
    assert "anthropic, azure, google, local, openai" in error["message"]
    assert gateway.get("/admin/budgets") == []
    made = budget(gateway, **base, categories={"providers": ["anthropic"]})
    patched = gateway.admin.patch(
        f"/admin/budgets/{made['id']}", json={"categories": {"providers": ["OpenAI"]}}
    )
    assert patched.status_code == 422 and "'OpenAI'" in patched.json()["error"]["message"]
    sdk(gateway, key["key"]).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=MSG
    )
    gateway.run(gateway.app.services.drain())
    [row] = [r for r in gateway.ledger() if r["model"] == "claude-sonnet-4-5"]
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert Decimal(status["spent_usd"]) == Decimal(row["cost_nanos"]) / 10**9 > 0


def test_a_category_naming_a_model_not_configured_is_refused(gateway: RunningGateway) -> None:
    """``categories.models`` entries that are one model's name (not a pattern) must be
    served by the config, as a key's ``models`` must: a typo would count nothing."""
    key = gateway.create_key()
    base = {"scope_type": "key", "scope_id": key["id"], "amount_usd": "10"}
    typo = gateway.admin.post(
        "/admin/budgets", json={**base, "categories": {"models": ["gpt-4o*", "gpt-4o-mni"]}}
    )
    assert typo.status_code == 422, typo.text
    error = typo.json()["error"]
    assert error["param"] == "categories.models"
    assert "'gpt-4o-mni' is not a configured model" in error["message"]
    made = budget(gateway, **base, categories={"models": ["gpt-4o-mini", "gpt-6*"]})
    patched = gateway.admin.patch(
        f"/admin/budgets/{made['id']}", json={"categories": {"models": ["gpt4o"]}}
    )
    assert patched.status_code == 422 and "'gpt4o'" in patched.json()["error"]["message"]


def test_budget_crud_and_status(gateway: RunningGateway) -> None:
    """Create, read, update, delete; status reports the period in the budget's zone."""
    key = gateway.create_key()
    created = budget(
        gateway,
        scope_type="key",
        scope_id=key["id"],
        amount_usd=12.5,
        timezone="America/New_York",
        hard_limit=True,
        hard_limit_percent=110,
    )
    assert created["amount_usd"] == "12.50" and created["alert_percentages"] == ["50", "75", "90"]
    patched = gateway.admin.patch(f"/admin/budgets/{created['id']}", json={"amount_usd": "20"})
    assert patched.status_code == 200 and patched.json()["amount_usd"] == "20.00"
    bad = gateway.admin.patch(f"/admin/budgets/{created['id']}", json={"hard_limit_percent": 60})
    assert bad.status_code == 422
    zone = gateway.admin.patch(f"/admin/budgets/{created['id']}", json={"timezone": "localtime"})
    assert zone.status_code == 422 and zone.json()["error"]["param"] == "timezone"
    cost = one_call_cost(gateway, key["key"])
    status = gateway.get(f"/admin/budgets/{created['id']}/status")
    assert Decimal(status["spent_usd"]) == cost and status["reserved_usd"] == "0.00"
    assert status["period_start_local"].startswith("2026-03-01T00:00:00-05:00")
    assert status["period_end"] == "2026-04-01T04:00:00Z"  # EDT began on March 8
    assert Decimal(status["hard_limit_usd"]) == Decimal(22)
    assert status["thresholds_fired"] == []
    assert gateway.admin.delete(f"/admin/budgets/{created['id']}").status_code == 204
    assert gateway.admin.get(f"/admin/budgets/{created['id']}").status_code == 404


def test_observation_only_budget_warns_but_never_blocks(gateway: RunningGateway) -> None:
    """Hard limit off: 50/75/90 and the soft limit fire once each; calls keep flowing."""
    team = gateway.post(
        "/admin/teams", {"name": "research", "org_id": gateway.create_key()["org_id"]}
    )
    key = gateway.create_key(org_id=team["org_id"], team_id=team["id"])
    cost = one_call_cost(gateway, key["key"])
    made = budget(gateway, scope_type="team", scope_id=team["id"], amount_usd=str(cost * 10))
    for _ in range(14):  # 150 % of the budget
        one_call_cost(gateway, key["key"])
    kinds = {
        e["data"]["threshold"] + e["data"]["percent"]
        for e in events(gateway, "budget.threshold_crossed")
    }
    assert kinds == {"alert50", "alert75", "alert90"}
    [soft] = events(gateway, "budget.soft_limit_reached")
    assert soft["data"]["budget_id"] == made["id"] and soft["data"]["percent"] == "75"
    assert Decimal(soft["data"]["spent_usd"]) == cost * 8
    assert events(gateway, "budget.hard_limit_reached") == []
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert Decimal(status["percent_used"]) == Decimal("150.00")


def test_hard_cap_refuses_with_429_and_resets_next_period(gateway: RunningGateway) -> None:
    """At the hard limit: 429 budget_exceeded naming the budget, reset time and Retry-After."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(
        gateway,
        scope_type="key",
        scope_id=key["id"],
        amount_usd=str(cost * 3),
        hard_limit=True,
        period="daily",
        timezone="Asia/Kolkata",
    )
    served = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(10):
            one_call_cost(gateway, key["key"])
            served += 1
    # one call was spent before the budget existed; calls reserve their worst case, so
    # the last call that could only fit on its actual cost is refused, never let past
    assert served in (1, 2)
    spent = gateway.get(f"/admin/budgets/{made['id']}/status")["spent_usd"]
    assert Decimal(spent) == cost * (served + 1) <= cost * 3
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "budget_exceeded"
    assert made["id"] in error["message"] and "resets at 2026-03-10T18:30:00" in error["message"]
    response = info.value.response
    assert int(response.headers["retry-after"]) == 3 * 3600 + 1  # 15:30Z → 18:30Z
    [hard] = events(gateway, "budget.hard_limit_reached")
    assert hard["data"]["refused"] is True
    gateway.clock.set(datetime(2026, 3, 10, 18, 30, tzinfo=UTC))
    one_call_cost(gateway, key["key"])  # a new Kolkata day: allowed again


def test_a_call_too_big_for_the_headroom_is_not_told_the_limit_was_reached(
    gateway: RunningGateway,
) -> None:
    """Nothing spent yet, and a call without max_tokens (worst case: the model's 4096
    output tokens) does not fit a $0.001 cap: the 429 says what the call may cost and
    what is left, not that the budget "has reached its hard limit"."""
    key = gateway.create_key()
    made = budget(
        gateway, scope_type="key", scope_id=key["id"], amount_usd="0.001", hard_limit=True
    )
    with pytest.raises(openai.RateLimitError) as info:
        sdk(gateway, key["key"]).chat.completions.create(model="demo-small", messages=MSG)
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "budget_exceeded"
    message = error["message"]
    assert made["id"] in message and "reached" not in message
    assert "$0.001 left before its hard limit of $0.001" in message
    assert "this call may cost up to $0.00" in message


def test_a_refused_call_is_told_its_output_cap_is_what_did_not_fit(
    gateway: RunningGateway,
) -> None:
    """A first call against a small cap, without max_tokens, is held at the model's
    4096 output tokens: the 429 said only what the call "may cost". It says the output
    cap is in that figure and what to do: over the whole cap, no period fits it (send a
    lower max_tokens or raise the budget); over what is left, a lower one may fit."""
    key = gateway.create_key()
    budget(gateway, scope_type="key", scope_id=key["id"], amount_usd="0.001", hard_limit=True)
    with pytest.raises(openai.RateLimitError) as whole:
        sdk(gateway, key["key"]).chat.completions.create(model="demo-small", messages=MSG)
    said = whole.value.body["message"]  # type: ignore[index]
    assert "the whole output cap included: the model's default_max_tokens" in said
    assert "more than the whole hard limit, so it fits in no period" in said
    assert "send a lower max_tokens or raise the budget" in said
    other = gateway.create_key()
    budget(gateway, scope_type="key", scope_id=other["id"], amount_usd="0.00247", hard_limit=True)
    one_call_cost(gateway, other["key"])  # leaves less than an uncapped call's worst case
    with pytest.raises(openai.RateLimitError) as left:
        sdk(gateway, other["key"]).chat.completions.create(model="demo-small", messages=MSG)
    said = left.value.body["message"]  # type: ignore[index]
    assert "a call with a lower max_tokens may fit" in said and "no period" not in said
    one_call_cost(gateway, other["key"])  # and one does


def test_the_sdks_do_not_retry_a_cap_only_the_next_period_lifts(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """With the default ``max_retries=2`` the openai SDK retries every 429, so a reached
    cap was hit three times with backoff sleeps in between, for the same answer.
    ``x-should-retry: false`` tells the SDKs not to when nothing in flight can free room
    before the reset; a refusal that only a call in flight causes leaves them to retry."""
    key = gateway.create_key()
    budget(gateway, scope_type="key", scope_id=key["id"], amount_usd="0.0001", hard_limit=True)
    seen: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: seen.append(r.status_code)]})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], http_client=http)
    with pytest.raises(openai.RateLimitError) as info:  # 4096 output tokens' worth
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert seen == [429]
    # one call of 100 output tokens at most fits the cap, two do not: the second waits
    # for the first, held open mid-stream, and may be retried
    fake.stream_gate = threading.Event()
    small = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 100}
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={**small, "stream": True},
        headers={"authorization": f"Bearer {key['key']}"},
        timeout=30,
    ) as held:
        lines = held.iter_lines()
        next(lines)
        refused = httpx.post(
            gateway.url + "/v1/chat/completions",
            json=small,
            headers={"authorization": f"Bearer {key['key']}"},
        )
        assert refused.status_code == 429 and "x-should-retry" not in refused.headers
        fake.stream_gate.set()
        assert "data: [DONE]" in list(lines)


def test_a_call_bigger_than_the_whole_cap_does_not_use_up_the_hard_limit_alert(
    gateway: RunningGateway,
) -> None:
    """``budget.hard_limit_reached`` fires once per period, so a call refused only because
    its own worst case is over the whole cap (it would not fit an empty period) must not
    fire it: the budget is at 0 %, and the alert would then be missing when the budget
    really reaches its limit."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    budget(gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 3), hard_limit=True)
    with pytest.raises(openai.RateLimitError):  # no max_tokens: 4096 output tokens' worth
        sdk(gateway, key["key"]).chat.completions.create(model="demo-small", messages=MSG)
    assert events(gateway, "budget.hard_limit_reached") == []
    with pytest.raises(openai.RateLimitError):
        for _ in range(10):
            one_call_cost(gateway, key["key"])
    [hard] = events(gateway, "budget.hard_limit_reached")
    assert hard["data"]["refused"] is True and Decimal(hard["data"]["percent_used"]) >= 33


def test_anthropic_route_refusal_format(gateway: RunningGateway) -> None:
    """The Anthropic route refuses in its own error format with Retry-After."""
    key = gateway.create_key()
    budget(gateway, scope_type="key", scope_id=key["id"], amount_usd="0.000000001", hard_limit=True)
    response = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": key["key"]},
        json={"model": "demo-small", "max_tokens": 10, "messages": MSG},
    )
    assert response.status_code == 429 and "retry-after" in response.headers
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert gateway.ledger() == []


async def _burst(url: str, key: str, n: int) -> list[int]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> int:
            response = await client.post(
                url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "demo-small", "messages": MSG, "max_tokens": 30},
            )
            if response.status_code == 429:
                assert response.json()["error"]["code"] == "budget_exceeded"
            return response.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def test_300_concurrent_calls_never_pass_the_cap(gateway: RunningGateway) -> None:
    """300 calls at once against a cap worth ~50: spend stays under it, money matches count."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    cap = cost * Decimal("51.5")  # the first call already counts
    made = budget(
        gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cap), hard_limit=True
    )
    statuses = asyncio.run(_burst(gateway.url, key["key"], 300))
    served = statuses.count(200)
    assert statuses.count(429) == 300 - served and 0 < served <= 50
    rows = [r for r in gateway.ledger() if r["status"] == "ok"]
    assert len(rows) == served + 1
    spent = sum(r["cost_nanos"] for r in rows)
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert Decimal(status["spent_usd"]) * 10**9 == spent <= cap * 10**9
    assert status["reserved_usd"] == "0.00"


def test_threshold_fires_once_when_100_calls_cross_together(gateway: RunningGateway) -> None:
    """100 concurrent calls crossing 50 % at once produce exactly one event."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    budget(
        gateway,
        scope_type="key",
        scope_id=key["id"],
        amount_usd=str(cost * 150),
        alert_percentages=[50],
        soft_limit_percent=99,
    )
    statuses = asyncio.run(_burst(gateway.url, key["key"], 100))
    assert statuses == [200] * 100
    [event] = events(gateway, "budget.threshold_crossed")
    assert event["data"]["percent"] == "50"


def test_thresholds_survive_a_restart(gateway: RunningGateway, tmp_path: Any) -> None:
    """A second gateway on the same database re-seeds spend and does not fire again."""
    from tests.conftest import start_gateway

    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 4))
    one_call_cost(gateway, key["key"])  # 2 of 4 calls: 50 %
    assert len(events(gateway, "budget.threshold_crossed")) == 1
    gateway.ledger()
    second = start_gateway(gateway.settings.database_url, gateway.url, tmp_path, demo=True)
    try:
        one_call_cost(second, key["key"])  # 75 %
        one_call_cost(second, key["key"])  # 100 %: crosses 90
        fired = {e["data"]["percent"] for e in events(second, "budget.threshold_crossed")}
        assert fired == {"50", "75", "90"}
        assert len(events(second, "budget.threshold_crossed")) == 3
        status = second.get(f"/admin/budgets/{made['id']}/status")
        assert Decimal(status["spent_usd"]) == cost * 4
    finally:
        second.admin.close()
        second.handle.stop()


def test_exception_raises_the_cap_until_it_expires(gateway: RunningGateway) -> None:
    """A temporary raise lets calls through; at expiry the cap is back; both ends are events."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(
        gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost), hard_limit=True
    )
    with pytest.raises(openai.RateLimitError):
        one_call_cost(gateway, key["key"])
    expires = (gateway.clock.now() + timedelta(hours=2)).isoformat()
    granted = gateway.post(
        f"/admin/budgets/{made['id']}/exceptions",
        {"percent": 300, "reason": "launch day", "expires_at": expires},
    )
    assert granted["granted_by"] == "master"
    one_call_cost(gateway, key["key"])
    one_call_cost(gateway, key["key"])
    assert len(events(gateway, "budget.exception_granted")) == 1
    gateway.clock.advance(2 * 3600)
    gateway.run(gateway.app.services.enforcer.refresh())
    with pytest.raises(openai.RateLimitError):
        one_call_cost(gateway, key["key"])
    gateway.run(gateway.app.services.enforcer.announce_expired_exceptions())
    [expired] = events(gateway, "budget.exception_expired")
    assert expired["data"]["exception_id"] == granted["id"]


def test_exception_events_name_the_budget_scope_and_period(gateway: RunningGateway) -> None:
    """``budget.exception_granted`` and ``budget.exception_expired`` carry the fields every
    budget event has (budget, scope, period), like a threshold event: the granted one the
    period it starts raising (March), the expired one the period it ran out in (April)."""
    key = gateway.create_key()
    made = budget(
        gateway, scope_type="key", scope_id=key["id"], amount_usd="5", name="launch budget"
    )
    expires = gateway.clock.now() + timedelta(days=30)  # 2026-04-09
    granted = gateway.post(
        f"/admin/budgets/{made['id']}/exceptions",
        {"amount_usd": "2", "reason": "launch day", "expires_at": expires.isoformat()},
    )
    gateway.clock.advance(30 * 86400)
    gateway.run(gateway.app.services.enforcer.refresh())
    gateway.run(gateway.app.services.enforcer.announce_expired_exceptions())
    [on] = events(gateway, "budget.exception_granted")
    [off] = events(gateway, "budget.exception_expired")
    common = {
        "budget_id": made["id"],
        "budget_name": "launch budget",
        "scope_type": "key",
        "scope_id": key["id"],
        "tag": None,
        "exception_id": granted["id"],
        "reason": "launch day",
        "amount_usd": "2.00",
    }
    assert on["data"] | common == on["data"] and off["data"] | common == off["data"]
    assert (on["data"]["period"], off["data"]["period"]) == ("2026-03", "2026-04")
    assert on["data"]["period_start"] == "2026-03-01T00:00:00+00:00"
    assert off["data"]["period_end"] == "2026-05-01T00:00:00+00:00"
    assert datetime.fromisoformat(off["data"]["expires_at"]) == expires


def test_key_events_name_the_key_as_a_scope(gateway: RunningGateway) -> None:
    """``key.created`` and ``key.revoked`` say ``scope_type: key`` with the key's id and
    who holds it, so webhook scope filters and preferences match them like budget events;
    never the secret."""
    org = gateway.post("/admin/orgs", {"name": "key-events"})["id"]
    key = gateway.create_key(org_id=org, tags=["batch"])
    gateway.post(f"/admin/keys/{key['id']}/revoke", {}, status=200)
    for type_ in ("key.created", "key.revoked"):
        [e] = [e for e in events(gateway, type_) if e["data"]["key_id"] == key["id"]]
        assert e["data"]["scope_type"] == "key" and e["data"]["scope_id"] == key["id"]
        assert e["data"]["tags"] == ["batch"] and e["data"]["key_prefix"] == key["key_prefix"]
        assert key["key"] not in str(e)


def test_wallet_funds_calls_and_refuses_with_402(gateway: RunningGateway) -> None:
    """A wallet pays for calls; empty, it refuses with 402; a top-up lets calls through."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    gateway.clock.advance(1)  # the wallet pays for calls from its creation on
    wallet = gateway.post(
        "/admin/wallets",
        {
            "scope_type": "key",
            "scope_id": key["id"],
            "initial_topup_usd": str(cost * 3),
            "low_balance_usd": str(cost * 2),
        },
    )
    assert Decimal(wallet["balance_usd"]) == cost * 3
    served = 0
    with pytest.raises(openai.APIStatusError) as info:
        for _ in range(5):
            one_call_cost(gateway, key["key"])
            served += 1
    assert info.value.status_code == 402
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "insufficient_funds"
    assert served >= 1  # calls reserve their worst case, so the last sliver is not spent
    state = gateway.get(f"/admin/wallets/{wallet['id']}")
    assert Decimal(state["spent_usd"]) == cost * served
    assert Decimal(state["balance_usd"]) == cost * (3 - served) >= 0
    assert len(events(gateway, "wallet.low_balance")) == 1
    gateway.post(f"/admin/wallets/{wallet['id']}/topups", {"amount_usd": str(cost * 2)})
    one_call_cost(gateway, key["key"])
    state = gateway.get(f"/admin/wallets/{wallet['id']}")
    assert Decimal(state["balance_usd"]) == cost * (4 - served)
    assert [t["amount_usd"] for t in gateway.get(f"/admin/wallets/{wallet['id']}/topups")] == [
        str(cost * 3),
        str(cost * 2),
    ]


def test_budget_and_wallet_each_refuse_for_their_own_reason(gateway: RunningGateway) -> None:
    """Wallet empty → 402 even with budget room; budget full → 429 even with funds."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(
        gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 100), hard_limit=True
    )
    gateway.post("/admin/wallets", {"scope_type": "key", "scope_id": key["id"]})
    with pytest.raises(openai.APIStatusError) as info:
        one_call_cost(gateway, key["key"])
    assert info.value.status_code == 402
    gateway.admin.patch(f"/admin/budgets/{made['id']}", json={"amount_usd": str(cost)})
    wallet = gateway.get("/admin/wallets")[0]
    gateway.post(f"/admin/wallets/{wallet['id']}/topups", {"amount_usd": "100"})
    with pytest.raises(openai.RateLimitError):
        one_call_cost(gateway, key["key"])


def test_failed_calls_give_their_reservation_back(gateway: RunningGateway, fake: Any) -> None:
    """Upstream errors and timeouts release the hold; nothing stays reserved or spent."""
    key = gateway.create_key()
    made = budget(gateway, scope_type="key", scope_id=key["id"], amount_usd="1", hard_limit=True)
    fake.fail_status, fake.fail_count = 503, 1
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key['key']}"},
        json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 10},
    )
    assert response.status_code == 503
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert status["reserved_usd"] == "0.00" and status["spent_usd"] == "0.00"


def test_reaper_releases_a_reservation_left_behind(gateway: RunningGateway) -> None:
    """A hold whose call never settled (a crash) is released once it outlives the timeout."""
    from spendgate.core.budget_rules import Subject

    key = gateway.create_key()
    made = budget(gateway, scope_type="key", scope_id=key["id"], amount_usd="1", hard_limit=True)
    enforcer = gateway.app.services.enforcer
    subject = Subject(
        key["org_id"], None, None, None, key["id"], (), "simulated", "demo-small", "chat"
    )
    gateway.run(enforcer.admit(subject, 250_000_000))  # never settled: the caller "crashed"
    assert gateway.get(f"/admin/budgets/{made['id']}/status")["reserved_usd"] == "0.25"
    assert gateway.run(enforcer.reap()) == 0  # not expired yet
    gateway.clock.advance(gateway.settings.upstream_timeout_seconds + 61)
    assert gateway.run(enforcer.reap()) == 1
    assert gateway.get(f"/admin/budgets/{made['id']}/status")["reserved_usd"] == "0.00"


def test_a_wallets_top_ups_stop_at_a_billion_dollars(gateway: RunningGateway) -> None:
    """Top-ups add up to at most $1,000,000,000 (the fuzz run overflowed Redis's 64-bit
    counter with repeated $600M top-ups, a 503): the one past it is 422, nothing recorded,
    and the wallet still funds calls."""
    key = gateway.create_key()
    wallet = gateway.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "600000000"},
    )
    top_ups = f"/admin/wallets/{wallet['id']}/topups"
    gateway.post(top_ups, {"amount_usd": "399999999.999999999"})
    over = gateway.admin.post(top_ups, json={"amount_usd": "0.000000002"})
    assert over.status_code == 422 and over.json()["error"]["param"] == "amount_usd"
    assert "1000000000" in over.json()["error"]["message"].replace(",", "")
    for _ in range(12):
        assert (
            gateway.admin.post(top_ups, json={"amount_usd": 599075043.4930649}).status_code == 422
        )
    gateway.post(top_ups, {"amount_usd": "0.000000001"})
    state = gateway.get(f"/admin/wallets/{wallet['id']}")
    assert Decimal(state["balance_usd"]) == Decimal("1000000000")
    one_call_cost(gateway, key["key"])
    assert Decimal(gateway.get(f"/admin/wallets/{wallet['id']}")["spent_usd"]) > 0


def test_top_ups_at_once_cannot_pass_the_limit_together(gateway: RunningGateway) -> None:
    """Four $600M top-ups sent at the same moment: one is recorded, three are 422."""
    key = gateway.create_key()
    wallet = gateway.post("/admin/wallets", {"scope_type": "key", "scope_id": key["id"]})
    topup = {"amount_usd": "600000000"}
    statuses = at_once(gateway, 4, "POST", f"/admin/wallets/{wallet['id']}/topups", json=topup)
    assert sorted(statuses) == [201, 422, 422, 422]
    assert gateway.get(f"/admin/wallets/{wallet['id']}")["balance_usd"] == "600000000.00"


def test_thresholds_already_passed_at_creation_fire_once(gateway: RunningGateway) -> None:
    """Spend of 3 calls, then a budget of 4 calls' cost (alerts 50/75, soft 90): 50 and 75
    fire at creation, marked ``already_past``; the 4th call crosses 90 as usual, and
    nothing fires twice (issue 14.1)."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    one_call_cost(gateway, key["key"])
    one_call_cost(gateway, key["key"])
    made = budget(
        gateway,
        scope_type="key",
        scope_id=key["id"],
        amount_usd=str(cost * 4),
        alert_percentages=[50, 75],
        soft_limit_percent=90,
    )
    crossed = events(gateway, "budget.threshold_crossed")
    assert sorted(e["data"]["percent"] for e in crossed) == ["50", "75"]
    assert all(e["data"]["already_past"] is True for e in crossed)
    assert all(e["data"]["budget_id"] == made["id"] for e in crossed)
    assert events(gateway, "budget.soft_limit_reached") == []
    one_call_cost(gateway, key["key"])  # 100 %
    [soft] = events(gateway, "budget.soft_limit_reached")
    assert "already_past" not in soft["data"]
    assert len(events(gateway, "budget.threshold_crossed")) == 2
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert sorted(status["thresholds_fired"]) == ["alert:50", "alert:75", "soft:90"]


def test_a_lowered_amount_fires_the_levels_it_now_passes_once(gateway: RunningGateway) -> None:
    """At 50 % of a budget, a PATCH that halves the amount puts spend at 100 %: 75, 90 and
    the soft limit fire once, marked ``already_past``; a second PATCH fires nothing new."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    made = budget(gateway, scope_type="key", scope_id=key["id"], amount_usd=str(cost * 2))
    assert [e["data"]["percent"] for e in events(gateway, "budget.threshold_crossed")] == ["50"]
    for _ in range(2):
        response = gateway.admin.patch(
            f"/admin/budgets/{made['id']}", json={"amount_usd": str(cost)}
        )
        assert response.status_code == 200, response.text
    crossed = events(gateway, "budget.threshold_crossed")
    assert sorted(e["data"]["percent"] for e in crossed) == ["50", "75", "90"]
    assert [e["data"].get("already_past") for e in crossed if e["data"]["percent"] != "50"] == [
        True,
        True,
    ]
    assert len(events(gateway, "budget.soft_limit_reached")) == 1


def test_a_page_of_budgets_seeds_its_counters_with_one_ledger_scan(
    gateway: RunningGateway,
) -> None:
    """Budgets made after the spend (their counters not seeded yet) over one org and
    one period: their statuses read the ledger once, not once per budget (a console page
    of budgets took seconds at 1M ledger rows), and each is seeded with its own spend."""
    org = gateway.post("/admin/orgs", {"name": "page-of-budgets"})["id"]
    team = gateway.post("/admin/teams", {"name": "search", "org_id": org})
    in_team = gateway.create_key(org_id=org, team_id=team["id"])
    alone = gateway.create_key(org_id=org)
    team_cost = one_call_cost(gateway, in_team["key"]) + one_call_cost(gateway, in_team["key"])
    alone_cost = one_call_cost(gateway, alone["key"])
    made = [
        budget(gateway, scope_type="org", scope_id=org, amount_usd="100"),
        budget(gateway, scope_type="team", scope_id=team["id"], amount_usd="100"),
        budget(gateway, scope_type="key", scope_id=in_team["id"], amount_usd="100"),
        budget(gateway, scope_type="key", scope_id=alone["id"], amount_usd="100"),
    ]
    svc = gateway.app.services
    rows = [gateway.run(svc.policies.get_budget(b["id"])) for b in made]
    scans: list[str] = []

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if "FROM ledger" in sql:
            scans.append(sql)

    engine = svc.engine.sync_engine
    event.listen(engine, "before_cursor_execute", statement)
    try:
        statuses = gateway.run(budget_statuses(svc, rows))
    finally:
        event.remove(engine, "before_cursor_execute", statement)
    assert len(scans) == 1
    spent = [Decimal(s["spent_usd"]) for s in statuses]
    assert spent == [team_cost + alone_cost, team_cost, team_cost, alone_cost]


def _made(gateway: RunningGateway, kind: str) -> str:
    """A new object of this kind; its delete path."""
    key = gateway.create_key()
    scope = {"scope_type": "key", "scope_id": key["id"]}
    if kind == "budgets":
        made = gateway.post("/admin/budgets", {**scope, "amount_usd": "5"})
    elif kind == "rate-limits":
        made = gateway.post("/admin/rate-limits", {**scope, "rpm": 60})
    elif kind == "anomaly-actions":
        made = gateway.post("/admin/anomaly-actions", {**scope, "action": "pause"})
    elif kind == "allocation-rules":
        body = {"org_id": key["org_id"], "tag": "shared", "method": "even"}
        made = gateway.post("/admin/allocation-rules", body)
    else:
        made = gateway.post("/admin/webhooks", {"url": "http://127.0.0.1:9/hook"})
    return f"/admin/{kind}/{made['id']}"


@pytest.mark.parametrize(
    ("kind", "action"),
    [
        ("budgets", "budget.deleted"),
        ("rate-limits", "rate_limit.deleted"),
        ("anomaly-actions", "anomaly_action.deleted"),
        ("allocation-rules", "allocation_rule.deleted"),
        ("webhooks", "webhook.deleted"),
    ],
)
def test_one_of_20_deletes_at_once_is_204(gateway: RunningGateway, kind: str, action: str) -> None:
    """20 DELETEs of one object at once: exactly one deletes it (204, one audit entry), the
    other 19 find it gone (404), never a second 204."""
    path = _made(gateway, kind)
    statuses = at_once(gateway, 20, "DELETE", path)
    assert sorted(statuses) == [204] + [404] * 19, statuses
    target = path.rsplit("/", 1)[1]
    entries = gateway.get("/admin/audit", limit=1000)["entries"]
    assert [e["action"] for e in entries if e["target_id"] == target].count(action) == 1


def test_20_revokes_of_one_key_at_once_audit_it_once(gateway: RunningGateway) -> None:
    """Revoking is idempotent (200 each time), but of 20 revokes at once only the one that
    revoked the key writes `key.revoked` to the audit log and the event feed."""
    key = gateway.create_key()
    path = f"/admin/keys/{key['id']}/revoke"
    assert at_once(gateway, 20, "POST", path, json={}) == [200] * 20
    entries = gateway.get("/admin/audit", limit=1000)["entries"]
    revoked = [e for e in entries if e["target_id"] == key["id"] and e["action"] == "key.revoked"]
    assert len(revoked) == 1
    assert gateway.get(f"/admin/keys/{key['id']}")["status"] == "revoked"


def test_20_revokes_of_one_admin_token_at_once_audit_it_once(gateway: RunningGateway) -> None:
    """Like keys: 20 revokes of one admin token at once all answer 200; one audit entry."""
    org = gateway.post("/admin/orgs", {"name": f"tokens-{uuid.uuid4().hex[:8]}"})
    user = gateway.post(
        "/admin/users", {"email": "t@tokens.example", "role": "org_admin", "org_id": org["id"]}
    )
    token = gateway.post("/admin/tokens", {"user_id": user["id"], "name": "t"})
    path = f"/admin/tokens/{token['id']}/revoke"
    assert at_once(gateway, 20, "POST", path, json={}) == [200] * 20
    entries = gateway.get("/admin/audit", limit=1000)["entries"]
    actions = [e["action"] for e in entries if e["target_id"] == token["id"]]
    assert actions.count("admin_token.revoked") == 1
