"""Per-model rate limits through the HTTP stack with the openai SDK, on the in-process
limiter (SQLite run) and on Redis (PostgreSQL run). The clock is frozen; time moves
only when a test moves it."""

from __future__ import annotations

import asyncio
from datetime import UTC
from typing import Any

import httpx
import openai
import pytest

from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "hi"}]


def sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def limit(gw: RunningGateway, **fields: Any) -> dict[str, Any]:
    return gw.post("/admin/rate-limits", fields)


def test_rpm_per_model_with_headers_and_retry_after(gateway: RunningGateway) -> None:
    """5 rpm on one model, 100 rpm on another: the 6th call on the first is refused with
    Retry-After and x-ratelimit-*; the other model is unaffected; a minute later it flows."""
    key = gateway.create_key()
    limit(gateway, scope_type="key", scope_id=key["id"], model="demo-small", rpm=5)
    limit(gateway, scope_type="key", scope_id=key["id"], model="demo-*", rpm=100)
    client = sdk(gateway, key["key"])
    remaining = []
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(model="demo-small", messages=MSG)
        assert raw.headers["x-ratelimit-limit-requests"] == "5"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="demo-small", messages=MSG)
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) == 60
    raw = client.chat.completions.with_raw_response.create(model="demo-large", messages=MSG)
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    gateway.clock.advance(59.5)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="demo-small", messages=MSG)
    gateway.clock.advance(0.5)
    client.chat.completions.create(model="demo-small", messages=MSG)


def test_no_double_burst_at_the_window_edge(gateway: RunningGateway) -> None:
    """Calls late in one minute still count early in the next: a sliding window."""
    key = gateway.create_key()
    limit(gateway, scope_type="key", scope_id=key["id"], model="*", rpm=3)
    client = sdk(gateway, key["key"])
    gateway.clock.advance(50)
    for _ in range(3):
        client.chat.completions.create(model="demo-small", messages=MSG)
    gateway.clock.advance(15)  # a fixed window would have reset here
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="demo-small", messages=MSG)


def test_tpm_refuses_a_large_prompt(gateway: RunningGateway) -> None:
    """A prompt whose estimate exceeds the tokens-per-minute limit is refused; small ones pass."""
    key = gateway.create_key()
    limit(gateway, scope_type="key", scope_id=key["id"], model="demo-small", tpm=2000)
    client = sdk(gateway, key["key"])
    raw = client.chat.completions.with_raw_response.create(
        model="demo-small", messages=MSG, max_tokens=50
    )
    assert raw.headers["x-ratelimit-limit-tokens"] == "2000"
    assert 0 < int(raw.headers["x-ratelimit-remaining-tokens"]) < 2000
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(
            model="demo-small",
            max_tokens=50,
            messages=[{"role": "user", "content": "word " * 3000}],
        )
    assert "tokens" in info.value.message


def test_a_call_no_window_can_hold_tells_the_sdks_not_to_retry(gateway: RunningGateway) -> None:
    """A call whose own estimate is over the tokens-per-minute limit (or whose worst case
    is over a spend limit) is refused however long it waits: no Retry-After, and
    ``x-should-retry: false``, or the openai SDK (``max_retries=2`` by default, retrying
    every 429) sends it three times with backoff sleeps for the same answer."""
    key = gateway.create_key()
    limit(gateway, scope_type="key", scope_id=key["id"], model="gpt-4o-mini", tpm=3000)
    limit(gateway, scope_type="key", scope_id=key["id"], model="gpt-4o", max_spend_usd="0.001")
    seen: list[int] = []
    http = httpx.Client(event_hooks={"response": [lambda r: seen.append(r.status_code)]})
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], http_client=http)
    for model in ("gpt-4o-mini", "gpt-4o"):
        seen.clear()
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model=model, messages=MSG, max_tokens=5000)
        assert "this request alone needs up to" in info.value.message
        headers = info.value.response.headers
        assert headers["x-should-retry"] == "false" and "retry-after" not in headers
        assert seen == [429]
    # a refusal that waiting lifts still leaves the SDKs to retry
    limit(gateway, scope_type="key", scope_id=key["id"], model="gpt-4.1", rpm=1)
    client.with_options(max_retries=0).chat.completions.create(model="gpt-4.1", messages=MSG)
    refused = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "gpt-4.1", "messages": MSG},
        headers={"authorization": f"Bearer {key['key']}"},
    )
    assert refused.status_code == 429 and "x-should-retry" not in refused.headers


async def _concurrent(url: str, key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:

        async def one() -> int:
            response = await client.post(
                url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "gpt-4o-mini", "messages": MSG},
            )
            return response.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def test_concurrency_cap_with_slow_upstream(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """Two slow calls in flight at most: of six at once, two are served, four refused."""
    key = gateway.create_key()
    limit(gateway, scope_type="key", scope_id=key["id"], model="gpt-4o-mini", max_concurrent=2)
    fake.delay_seconds = 1.0
    statuses = asyncio.run(_concurrent(gateway.url, key["key"], 6))
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
    fake.delay_seconds = 0.0
    assert asyncio.run(_concurrent(gateway.url, key["key"], 2)) == [200, 200]


def test_spend_velocity_breaker_trips(gateway: RunningGateway) -> None:
    """$ per window on an expensive model stops a runaway loop (its ``ratelimit.exceeded``
    event says the limit in dollars); it recovers as spend ages."""
    key = gateway.create_key()
    limit(
        gateway,
        scope_type="key",
        scope_id=key["id"],
        model="gpt-4o",
        max_spend_usd="0.002",
        spend_window_seconds=600,
    )
    client = sdk(gateway, key["key"])
    served = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(50):
            client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=40)
            served += 1
    assert 3 <= served < 50
    # said in dollars, as the limit was set (not in nano-dollars)
    assert "Rate limit reached for spend: limit $0.002 per 10m0s, used $0.00" in info.value.message
    assert "nano" not in info.value.message
    gateway.run(gateway.app.services.drain())
    [event] = gateway.get("/admin/events", type="ratelimit.exceeded")
    # the event's limit is money, so a decimal string in USD like all money in JSON
    assert event["data"]["kind"] == "spend" and event["data"]["limit_usd"] == "0.002"
    assert "limit" not in event["data"]
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # other models unaffected
    gateway.clock.advance(601)
    client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=40)


def test_refusal_storm_is_one_event(gateway: RunningGateway) -> None:
    """Twenty refusals in one minute produce one ratelimit.exceeded event, its
    `window_start` an ISO 8601 UTC instant."""
    key = gateway.create_key()
    limit(gateway, scope_type="key", scope_id=key["id"], model="demo-small", rpm=1)
    client = sdk(gateway, key["key"])
    client.chat.completions.create(model="demo-small", messages=MSG)
    for _ in range(20):
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="demo-small", messages=MSG)
    gateway.run(gateway.app.services.drain())
    [event] = gateway.get("/admin/events", type="ratelimit.exceeded")
    assert event["data"]["key_id"] == key["id"] and event["data"]["kind"] == "requests"
    # an ISO 8601 UTC instant like every other event's, the start of the refusals' minute
    now = gateway.clock.now().astimezone(UTC)
    assert event["data"]["window_start"] == now.replace(second=0, microsecond=0).isoformat()


def test_team_limit_is_shared_by_its_keys(gateway: RunningGateway) -> None:
    """A team row counts every key of the team together."""
    org = gateway.post("/admin/orgs", {"name": "o"})
    team = gateway.post("/admin/teams", {"name": "t", "org_id": org["id"]})
    one = gateway.create_key(org_id=org["id"], team_id=team["id"])
    two = gateway.create_key(org_id=org["id"], team_id=team["id"])
    limit(gateway, scope_type="team", scope_id=team["id"], model="*", rpm=2)
    sdk(gateway, one["key"]).chat.completions.create(model="demo-small", messages=MSG)
    sdk(gateway, two["key"]).chat.completions.create(model="demo-small", messages=MSG)
    with pytest.raises(openai.RateLimitError):
        sdk(gateway, one["key"]).chat.completions.create(model="demo-small", messages=MSG)


def test_a_row_for_a_model_name_not_configured_is_refused(gateway: RunningGateway) -> None:
    """A row naming one model (not a pattern) that the config does not serve governs no
    call: a typo (``gpt-4o-mni``, ``gpt-4o ``) would leave the model unlimited. 422 naming
    ``model``; patterns may match models configured later."""
    key = gateway.create_key()
    base = {"scope_type": "key", "scope_id": key["id"], "rpm": 1}
    for typo in ("gpt-4o-mni", "gpt-4o ", " ", "GPT-4o"):
        refused = gateway.admin.post("/admin/rate-limits", json={**base, "model": typo})
        assert refused.status_code == 422, (typo, refused.text)
        error = refused.json()["error"]
        assert (
            error["param"] == "model" and f"{typo!r} is not a configured model" in error["message"]
        )
    assert gateway.get("/admin/rate-limits") == []
    limit(gateway, **base, model="gpt-4o-mini")
    limit(gateway, **base, model="gpt-6*")  # nothing matches yet: allowed
    client = sdk(gateway, key["key"])
    client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSG)


def test_rate_limit_admin_validation(gateway: RunningGateway) -> None:
    """No limit at all, a missing scope, a duplicate row: clear 4xx, nothing stored."""
    key = gateway.create_key()
    empty = gateway.admin.post(
        "/admin/rate-limits", json={"scope_type": "key", "scope_id": key["id"]}
    )
    assert empty.status_code == 422 and empty.json()["error"]["param"] == "rpm"
    missing = gateway.admin.post(
        "/admin/rate-limits", json={"scope_type": "key", "scope_id": "key_x", "rpm": 1}
    )
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "scope_id"
    made = limit(gateway, scope_type="key", scope_id=key["id"], model="gpt-4o", rpm=10)
    again = gateway.admin.post(
        "/admin/rate-limits",
        json={"scope_type": "key", "scope_id": key["id"], "model": "gpt-4o", "rpm": 20},
    )
    assert again.status_code == 409
    patched = gateway.admin.patch(f"/admin/rate-limits/{made['id']}", json={"tpm": 5000})
    assert patched.status_code == 200 and patched.json()["tpm"] == 5000
    assert len(gateway.get("/admin/rate-limits")) == 1
    assert gateway.admin.delete(f"/admin/rate-limits/{made['id']}").status_code == 204
    assert gateway.get("/admin/rate-limits") == []


def test_a_row_that_limits_no_call_is_warned_about(gateway: RunningGateway) -> None:
    """A pattern matching no configured model, and a row each of whose models has a more
    specific row of its own key (or team), govern no call (``rate_rules.idle_rows``):
    created, changed, read and listed, the row carries a warning saying so. Another
    scope's rows shadow nothing; a row governing some model is no warning."""
    key = gateway.create_key()
    team = gateway.post("/admin/teams", {"name": "t", "org_id": key["org_id"]})
    nowhere = "model: 'gpt-5*': matches no configured model; this row limits no call"
    shadowed = (
        "model: 'gemini-*': a more specific row governs each configured model it matches; "
        "this row limits no call"
    )
    on_key = {"scope_type": "key", "scope_id": key["id"]}
    typo = limit(gateway, **on_key, model="gpt-5*", rpm=5)
    assert typo["warnings"] == [nowhere]
    wide = limit(gateway, **on_key, model="gemini-*", rpm=5)
    assert wide["warnings"] == []
    assert limit(gateway, **on_key, model="gemini-2.5-flash", rpm=1)["warnings"] == []
    assert limit(gateway, **on_key, model="gemini-2.5-pro", rpm=1)["warnings"] == []
    team_wide = limit(gateway, scope_type="team", scope_id=team["id"], model="gemini-*", rpm=9)
    assert team_wide["warnings"] == []  # the key's rows do not shadow the team's

    assert gateway.get(f"/admin/rate-limits/{wide['id']}")["warnings"] == [shadowed]
    changed = gateway.admin.patch(f"/admin/rate-limits/{wide['id']}", json={"rpm": 6})
    assert changed.status_code == 200 and changed.json()["warnings"] == [shadowed]
    changed = gateway.admin.patch(f"/admin/rate-limits/{typo['id']}", json={"tpm": 100})
    assert changed.status_code == 200 and changed.json()["warnings"] == [nowhere]
    listed = {r["id"]: r["warnings"] for r in gateway.get("/admin/rate-limits")}
    assert listed[typo["id"]] == [nowhere] and listed[wide["id"]] == [shadowed]
    assert listed[team_wide["id"]] == []
    on_team = limit(gateway, scope_type="team", scope_id=team["id"], model="gpt-5*", rpm=1)
    assert on_team["warnings"] == [nowhere]
