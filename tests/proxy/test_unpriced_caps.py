"""A model with no known price under hard caps, wallets and spend-velocity limits: an
unknown cost cannot be held against a limit, so the call is refused before it is
forwarded (fail closed on money); observation-only budgets and plain rate limits let
it through, recorded as unknown. Through the real SDKs, on SQLite+memory and
PostgreSQL+Redis."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "what does this cost?"}]

#: one model priced at 0 on purpose (a known price), one Anthropic model with no price
EXTRA = """
[models."free-local"]
provider = "local"
price = { input_per_mtok = "0", output_per_mtok = "0" }
[models."claude-unpriced"]
provider = "anthropic"
price = { model = "no-such-claude", provider = "anthropic" }
"""


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    return {"extra_config": EXTRA}


def sdk(gw: RunningGateway, key: str, seen: list[int]) -> openai.OpenAI:
    """The openai SDK with its default retries; ``seen`` gets every status it received."""
    http = httpx.Client(event_hooks={"response": [lambda r: seen.append(r.status_code)]})
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, http_client=http)


def events(gw: RunningGateway, type_: str) -> list[dict[str, Any]]:
    gw.run(gw.app.services.drain())
    found: list[dict[str, Any]] = gw.get("/admin/events", type=type_)
    return found


def forwarded(fake: FakeUpstream, model: str) -> int:
    """Calls of ``model`` the upstream saw (the shared fake may still get another test's
    stragglers, so they are told apart by model)."""
    return sum(1 for r in fake.requests if isinstance(r.json, dict) and r.json["model"] == model)


def assert_says_how_to_fix(message: str, model: str) -> None:
    assert f"price of model {model!r} is unknown" in message
    assert f'[models."{model}"]' in message and "input_per_mtok" in message


def test_a_hard_cap_refuses_an_unpriced_model_and_the_sdk_does_not_retry(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """The audit: 5 of 5 calls to a model without a price were served under a $0.000001
    hard cap (its worst case reserved as 0). Now the first is a 429 naming the model and
    the config key that fixes it, never forwarded, with ``x-should-retry: false`` and no
    ``Retry-After`` (the next period will not price it): the SDK asks once. The cap was
    not reached, so ``budget.hard_limit_reached`` does not fire; ``price.unknown`` does,
    marked refused. A model priced at 0 in the config is a known price and passes."""
    key = gateway.create_key()
    made = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="0.000001", hard_limit=True
    )
    seen: list[int] = []
    client = sdk(gateway, key["key"], seen)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as info:
            client.chat.completions.create(model="mystery-model", messages=MSG, max_tokens=5)
        headers = info.value.response.headers
        assert headers["x-should-retry"] == "false" and "retry-after" not in headers
        assert headers["x-spendgate-budget-id"] == made["id"]
        assert info.value.code == "budget_exceeded"
        assert_says_how_to_fix(info.value.message, "mystery-model")
        assert made["id"] in info.value.message
    assert seen == [429, 429] and forwarded(fake, "mystery-model") == 0
    assert gateway.ledger() == []
    assert events(gateway, "budget.hard_limit_reached") == []
    [event] = events(gateway, "price.unknown")
    assert event["data"]["model"] == "mystery-model" and event["data"]["refused"] is True
    assert event["data"]["budget_id"] == made["id"]

    free = client.chat.completions.with_raw_response.create(
        model="free-local", messages=MSG, max_tokens=5
    )
    assert free.headers["x-spendgate-cost-usd"] == "0.00"
    [row] = gateway.ledger()
    assert row["cost_nanos"] == 0 and row["price_unknown"] is False


def test_a_wallet_refuses_an_unpriced_model_whatever_its_balance(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A wallet cannot fund a cost nobody knows: 402 ``insufficient_funds`` before the
    call is forwarded, funded or not, and the wallet is not reported depleted."""
    key = gateway.create_key()
    wallet = gateway.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "50"},
    )
    seen: list[int] = []
    with pytest.raises(openai.APIStatusError) as info:
        sdk(gateway, key["key"], seen).chat.completions.create(model="mystery-model", messages=MSG)
    assert info.value.status_code == 402 and info.value.code == "insufficient_funds"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert_says_how_to_fix(info.value.message, "mystery-model")
    assert wallet["id"] in info.value.message
    assert seen == [402] and forwarded(fake, "mystery-model") == 0
    assert gateway.ledger() == []
    assert events(gateway, "wallet.depleted") == []
    [event] = events(gateway, "price.unknown")
    assert event["data"]["wallet_id"] == wallet["id"] and event["data"]["refused"] is True


def test_a_spend_velocity_limit_refuses_an_unpriced_model_an_rpm_limit_does_not(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """$ per window cannot count a cost it does not know: 429 ``rate_limit_exceeded``
    naming the model, no retry; a requests-per-minute row on another key lets it through
    (recorded as unknown), as does an observation-only budget."""
    limited = gateway.create_key()
    row = gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": limited["id"], "model": "*", "max_spend_usd": "5"},
    )
    seen: list[int] = []
    with pytest.raises(openai.RateLimitError) as info:
        sdk(gateway, limited["key"], seen).chat.completions.create(
            model="mystery-model", messages=MSG
        )
    assert info.value.code == "rate_limit_exceeded" and row["id"] in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in info.value.response.headers
    assert_says_how_to_fix(info.value.message, "mystery-model")
    assert seen == [429] and forwarded(fake, "mystery-model") == 0
    assert events(gateway, "ratelimit.exceeded") == []

    other = gateway.create_key()
    gateway.post("/admin/rate-limits", {"scope_type": "key", "scope_id": other["id"], "rpm": 100})
    gateway.create_budget(scope_type="key", scope_id=other["id"], amount_usd="0.000001")
    raw = sdk(gateway, other["key"], []).chat.completions.with_raw_response.create(
        model="mystery-model", messages=MSG
    )
    assert raw.headers["x-spendgate-cost-usd"] == "unknown"
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    [served] = gateway.ledger()
    assert served["cost_nanos"] is None and served["price_unknown"] is True
    assert forwarded(fake, "mystery-model") == 1


def test_the_anthropic_route_refuses_in_its_own_format(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """The same refusals on ``/v1/messages``: Anthropic's error shape and types
    (``rate_limit_error`` for the cap, ``billing_error`` for the wallet), and the SDK,
    retries left at their default, asks once."""
    capped, funded = gateway.create_key(), gateway.create_key()
    gateway.create_budget(
        scope_type="key", scope_id=capped["id"], amount_usd="100", hard_limit=True
    )
    gateway.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": funded["id"], "initial_topup_usd": "50"},
    )
    seen: list[int] = []
    http = anthropic.DefaultHttpxClient(
        event_hooks={"response": [lambda r: seen.append(r.status_code)]}
    )
    for key, status, kind in ((capped, 429, "rate_limit_error"), (funded, 402, "billing_error")):
        client = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], http_client=http)
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(model="claude-unpriced", max_tokens=50, messages=MSG)
        assert info.value.status_code == status
        body = info.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert body["error"]["type"] == kind
        assert_says_how_to_fix(body["error"]["message"], "claude-unpriced")
    assert seen == [429, 402] and forwarded(fake, "claude-unpriced") == 0
    assert gateway.ledger() == []


def unpriced_audit(gw: RunningGateway) -> list[dict[str, Any]]:
    gw.run(gw.app.services.drain())
    entries: list[dict[str, Any]] = gw.get("/admin/audit", action="price.unknown", limit=100)[
        "entries"
    ]
    return entries


def test_each_refusal_is_audited_once_per_org_model_and_day_across_replicas(
    gateway: RunningGateway, upstream: tuple[FakeUpstream, Any], tmp_path: Any
) -> None:
    """A refusal for an unknown price is a cap hit: it lands in the audit log (by the
    enforcer, naming the key, the model and the budget, wallet or rate limit that
    refused), once per org, model and day like its ``price.unknown`` event, whichever
    replica refused; a call served at an unknown price is no audit entry."""
    from tests.conftest import start_gateway

    capped, funded, limited = (gateway.create_key() for _ in range(3))
    budget = gateway.create_budget(
        scope_type="key", scope_id=capped["id"], amount_usd="100", hard_limit=True
    )
    wallet = gateway.post(
        "/admin/wallets", {"scope_type": "key", "scope_id": funded["id"], "initial_topup_usd": "5"}
    )
    row = gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": limited["id"], "model": "*", "max_spend_usd": "5"},
    )
    second = start_gateway(
        gateway.settings.database_url, upstream[1].url, tmp_path, extra_config=EXTRA
    )
    try:
        for gw in (gateway, gateway, second):
            for key in (capped, funded, limited):
                with pytest.raises(openai.APIStatusError):
                    sdk(gw, key["key"], []).chat.completions.create(
                        model="mystery-model", messages=MSG
                    )
    finally:
        second.admin.close()
        second.handle.stop()
    served = gateway.create_key()
    sdk(gateway, served["key"], []).chat.completions.create(model="mystery-model", messages=MSG)
    entries = unpriced_audit(gateway)
    assert sorted((e["target_type"], e["target_id"]) for e in entries) == sorted(
        [("budget", budget["id"]), ("wallet", wallet["id"]), ("rate_limit", row["id"])]
    )
    for key, target in ((capped, budget["id"]), (funded, wallet["id"]), (limited, row["id"])):
        [entry] = [e for e in entries if e["target_id"] == target]
        assert (entry["actor_type"], entry["actor_id"]) == ("system", "enforcer")
        assert entry["after"]["key_id"] == key["id"] and entry["org_id"] == key["org_id"]
        assert entry["after"]["model"] == "mystery-model" and entry["after"]["refused"] is True
        assert entry["at"].startswith("2026-03-10")

    gateway.clock.advance(86_400)  # the next day: refused again, audited again
    with pytest.raises(openai.RateLimitError):
        sdk(gateway, capped["key"], []).chat.completions.create(model="mystery-model", messages=MSG)
    assert len(unpriced_audit(gateway)) == 4
    assert gateway.get("/admin/audit/verify")["ok"] is True
