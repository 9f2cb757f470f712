"""Token counts (``POST /v1/messages/count_tokens``, ``POST /v1/responses/input_tokens``)
through the real ``anthropic`` and ``openai`` SDKs: passed through to the provider with
its key, free (no ledger row, no spend), under the key's auth and model allowlist but no
budget, wallet or rate limit. On SQLite and on PostgreSQL with Redis (``gateway``)."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from spendgate.proxy import simulated
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import UPSTREAM_SECRETS, RunningGateway

MESSAGES: list[Any] = [{"role": "user", "content": "How many tokens is this prompt, roughly?"}]
SYSTEM = "You are terse."
INPUT = "Count the tokens of this input, please."
INSTRUCTIONS = "Answer in one word."


ALIAS = """
[models."claude-alias"]
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
"""


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    return {"demo": True, "extra_config": ALIAS}


def claude(gw: RunningGateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def gpt(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def count_messages(gw: RunningGateway, key: str, model: str = "claude-sonnet-4-5") -> Any:
    return claude(gw, key).messages.with_raw_response.count_tokens(
        model=model, system=SYSTEM, messages=MESSAGES
    )


def count_input(gw: RunningGateway, key: str, model: str = "gpt-4o") -> Any:
    return gpt(gw, key).responses.input_tokens.with_raw_response.count(
        model=model, input=INPUT, instructions=INSTRUCTIONS
    )


def spent(gw: RunningGateway) -> list[dict[str, Any]]:
    return gw.ledger()


def test_anthropic_sdk_counts_through_the_gateway(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """The count reaches Anthropic's own path with the provider key (never the virtual
    one), answers what the same message is then billed for, and is itself free: $0, no
    ledger row."""
    key = gateway.create_key()
    raw = count_messages(gateway, key["key"])
    counted = raw.parse().input_tokens
    assert counted > 0
    assert raw.headers["x-request-id"]
    assert raw.headers["x-spendgate-cost-usd"] == "0.00"
    [seen] = fake.requests
    assert seen.path == "/v1/messages/count_tokens"
    assert seen.headers["x-api-key"] == UPSTREAM_SECRETS["ANTHROPIC_KEY"]
    assert seen.headers["anthropic-version"]
    assert key["key"] not in str(seen.headers)
    assert seen.json == {"model": "claude-sonnet-4-5", "system": SYSTEM, "messages": MESSAGES}
    assert spent(gateway) == []
    message = claude(gateway, key["key"]).messages.create(
        model="claude-sonnet-4-5", max_tokens=32, system=SYSTEM, messages=MESSAGES
    )
    assert message.usage.input_tokens == counted
    [row] = spent(gateway)
    assert row["kind"] == "message"


def test_openai_sdk_counts_through_the_gateway(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """``responses.input_tokens.count`` reaches ``/v1/responses/input_tokens`` with the
    provider key, answers what the same response is billed for, and is free."""
    key = gateway.create_key()
    raw = count_input(gateway, key["key"])
    counted = raw.parse()
    assert counted.object == "response.input_tokens" and counted.input_tokens > 0
    assert raw.headers["x-request-id"]
    assert raw.headers["x-spendgate-cost-usd"] == "0.00"
    [seen] = fake.requests
    assert seen.path == "/v1/responses/input_tokens"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_SECRETS['OPENAI_KEY']}"
    assert key["key"] not in str(seen.headers)
    assert spent(gateway) == []
    response = gpt(gateway, key["key"]).responses.create(
        model="gpt-4o", input=INPUT, instructions=INSTRUCTIONS
    )
    assert response.usage is not None and response.usage.input_tokens == counted.input_tokens
    assert len(spent(gateway)) == 1


def test_the_upstream_model_name_is_what_the_provider_counts(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A model routed under another name upstream (``upstream_model``) is counted under
    that name, as its calls are sent."""
    key = gateway.create_key()
    raw = claude(gateway, key["key"]).messages.with_raw_response.count_tokens(
        model="claude-alias", messages=MESSAGES
    )
    assert raw.parse().input_tokens > 0
    assert fake.requests[-1].json["model"] == "claude-sonnet-4-5"


def test_a_revoked_key_may_not_count(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """Counting is free, not open: a revoked key gets the 401 of every other route, in
    each route's own format, and nothing reaches the provider."""
    key = gateway.create_key()
    assert count_messages(gateway, key["key"]).parse().input_tokens > 0
    gateway.post(f"/admin/keys/{key['id']}/revoke", {}, status=200)
    fake.requests.clear()
    with pytest.raises(anthropic.AuthenticationError, match="revoked") as refused:
        count_messages(gateway, key["key"])
    assert refused.value.status_code == 401
    assert refused.value.response.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError, match="revoked") as told:
        count_input(gateway, key["key"])
    assert told.value.code == "invalid_api_key"
    assert fake.requests == []


def test_a_key_counts_only_the_models_it_may_use(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """The key's model allowlist and the config's models bind counts as they bind calls:
    403 for a model the key may not use, 404 for one not served, in the route's format."""
    key = gateway.create_key(models=["gpt-4o-mini"])
    with pytest.raises(anthropic.PermissionDeniedError, match="may not use model"):
        count_messages(gateway, key["key"])
    with pytest.raises(openai.PermissionDeniedError, match="may not use model"):
        count_input(gateway, key["key"])
    with pytest.raises(openai.NotFoundError) as unknown:
        count_input(gateway, key["key"], model="gpt-99")
    assert unknown.value.code == "model_not_found"
    anyone = gateway.create_key()
    with pytest.raises(anthropic.NotFoundError, match="does not exist"):
        count_messages(gateway, anyone["key"], model="claude-99")
    assert count_input(gateway, key["key"], model="gpt-4o-mini").parse().input_tokens > 0
    assert [seen.path for seen in fake.requests] == ["/v1/responses/input_tokens"]


def test_an_exhausted_hard_cap_does_not_block_counting(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A key whose hard-capped budget is spent (and whose wallet is all but empty) is
    refused calls (429) but may still count tokens: a count costs nothing, so it
    neither holds nor spends the budget."""
    key = gateway.create_key()
    claude(gateway, key["key"]).messages.create(
        model="claude-sonnet-4-5", max_tokens=32, messages=MESSAGES
    )
    budget = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="0.000001", hard_limit=True
    )
    gateway.post(  # and a wallet with next to nothing in it
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "0.000001"},
    )
    with pytest.raises(anthropic.RateLimitError, match="budget"):
        claude(gateway, key["key"]).messages.create(
            model="claude-sonnet-4-5", max_tokens=32, messages=MESSAGES
        )
    before = gateway.get(f"/admin/budgets/{budget['id']}/status")
    assert count_messages(gateway, key["key"]).parse().input_tokens > 0
    assert count_input(gateway, key["key"]).parse().input_tokens > 0
    after = gateway.get(f"/admin/budgets/{budget['id']}/status")
    assert (after["spent_usd"], after["reserved_usd"]) == (
        before["spent_usd"],
        before["reserved_usd"],
    )
    assert len(spent(gateway)) == 1  # the first message only


def test_counts_take_nothing_from_the_rate_limit(gateway: RunningGateway) -> None:
    """A key at its requests-per-minute limit still counts (the providers rate-limit
    counting apart from calls), and counting leaves its calls' allowance as it was."""
    key = gateway.create_key()
    gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "*", "rpm": 1},
    )
    for _ in range(3):
        raw = count_input(gateway, key["key"])
        assert raw.parse().input_tokens > 0
        assert "x-ratelimit-remaining-requests" not in raw.headers
    gpt(gateway, key["key"]).responses.create(model="gpt-4o", input=INPUT)  # the one call
    assert count_messages(gateway, key["key"]).parse().input_tokens > 0
    with pytest.raises(openai.RateLimitError):
        gpt(gateway, key["key"]).responses.create(model="gpt-4o", input=INPUT)


def test_the_demo_provider_counts_offline(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """``--demo``: the simulated provider answers both counts in-process with the prompt
    tokens its answers report, and nothing is dialled."""
    key = gateway.create_key()
    raw = count_messages(gateway, key["key"], model="demo-large")
    counted = raw.parse().input_tokens
    assert raw.headers["x-spendgate-simulated"] == "true"
    body = {"model": "demo-large", "system": SYSTEM, "messages": MESSAGES}
    assert counted == simulated.input_tokens("/messages/count_tokens", body)
    message = claude(gateway, key["key"]).messages.create(
        model="demo-large", max_tokens=16, system=SYSTEM, messages=MESSAGES
    )
    assert message.usage.input_tokens == counted
    responses = count_input(gateway, key["key"], model="demo-small")
    assert responses.headers["x-spendgate-simulated"] == "true"
    answer = gpt(gateway, key["key"]).responses.create(
        model="demo-small", input=INPUT, instructions=INSTRUCTIONS
    )
    assert answer.usage is not None
    assert responses.parse().input_tokens == answer.usage.input_tokens
    assert fake.requests == []
    assert len(spent(gateway)) == 2  # the two answers, not the counts


@pytest.mark.parametrize(
    ("path", "model", "says"),
    [
        ("/v1/messages/count_tokens", "gpt-4o", "OpenAI-style provider"),
        ("/v1/messages/count_tokens", "llama-local", "OpenAI-style provider"),
        ("/v1/responses/input_tokens", "azure-gpt-4o", "'azure'"),
        ("/v1/responses/input_tokens", "gemini-2.5-flash", "'openai_compatible'"),
        ("/v1/responses/input_tokens", "claude-sonnet-4-5", "/v1/messages/count_tokens"),
    ],
)
def test_a_provider_that_cannot_count_is_a_clear_400(
    gateway: RunningGateway, fake: FakeUpstream, path: str, model: str, says: str
) -> None:
    """A model whose provider has no such count endpoint (Azure OpenAI and the
    OpenAI-compatible servers have no ``/responses/input_tokens``; only Anthropic counts
    Messages) is a 400 in the route's format naming the model, never forwarded."""
    key = gateway.create_key()
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "input": INPUT}
    response = httpx.post(gateway.url + path, json=body, headers={"x-api-key": key["key"]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert says in error["message"] and repr(model) in error["message"]
    if path.startswith("/v1/messages"):
        assert error["type"] == "invalid_request_error" and "param" not in error
    else:
        assert error["param"] == "model"
    assert response.headers["x-request-id"]
    assert fake.requests == []


def test_provider_errors_pass_through_and_its_key_refusal_is_not_leaked(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """The provider's own error (a 429 with its retry advice) reaches the client as on
    the other routes; its refusal of spendgate's key is a 502 that shows no key."""
    key = gateway.create_key()
    fake.fail_status, fake.fail_count, fake.fail_headers = 429, 1, {"retry-after": "7"}
    with pytest.raises(anthropic.RateLimitError) as limited:
        count_messages(gateway, key["key"])
    assert limited.value.response.headers["retry-after"] == "7"
    fake.required_api_key = "sk-the-right-provider-key"
    with pytest.raises(openai.InternalServerError) as refused:
        count_input(gateway, key["key"])
    assert refused.value.status_code == 502 and refused.value.code == "upstream_auth_failed"
    assert UPSTREAM_SECRETS["OPENAI_KEY"][-4:] not in refused.value.response.text
    assert spent(gateway) == []


def test_a_count_without_v1_is_told_where_it_is_served(gateway: RunningGateway) -> None:
    """The counts are among the routes a 404 names, and a path missing its /v1 is told
    where to find it."""
    key = gateway.create_key()
    headers = {"authorization": f"Bearer {key['key']}"}
    missing = httpx.post(gateway.url + "/v1/images/generations", json={}, headers=headers)
    assert missing.status_code == 404
    assert "/v1/messages/count_tokens" in missing.json()["error"]["message"]
    assert "/v1/responses/input_tokens" in missing.json()["error"]["message"]
    bare = httpx.post(gateway.url + "/responses/input_tokens", json={}, headers=headers)
    assert "spendgate serves it at /v1/responses/input_tokens" in bare.text


@pytest.mark.parametrize(
    "gateway_options",
    [{"demo": True, "extra_config": ALIAS, "gateway_config_lines": 'unlisted_models = "deny"'}],
)
def test_unlisted_models_deny_binds_counts_as_it_binds_calls(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """``unlisted_models = "deny"``: a key (or team) with rate-limit rows may use only the
    models a row governs; that is part of its allowlist, so a count of any other model is
    the call's 403 and never reaches the provider."""
    key = gateway.create_key()
    gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "gpt-4o-mini", "rpm": 100},
    )
    with pytest.raises(openai.PermissionDeniedError, match="not approved"):
        gpt(gateway, key["key"]).responses.create(model="gpt-4o", input=INPUT)
    with pytest.raises(openai.PermissionDeniedError, match="not approved"):
        count_input(gateway, key["key"])
    with pytest.raises(anthropic.PermissionDeniedError, match="not approved"):
        count_messages(gateway, key["key"])
    assert fake.requests == []
    assert count_input(gateway, key["key"], model="gpt-4o-mini").parse().input_tokens > 0


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/messages", "spendgate serves it at /v1/messages"),
        ("/messages/count_tokens", "spendgate serves it at /v1/messages/count_tokens"),
        ("/v1/v1/messages", "the path has /v1 twice"),
        ("/v1/v1/messages/count_tokens", "the path has /v1 twice"),
    ],
)
def test_a_messages_path_with_a_base_url_mistake_is_told_in_anthropic_format(
    gateway: RunningGateway, path: str, says: str
) -> None:
    """A Messages path without its /v1, or with it twice (an Anthropic SDK whose base_url
    ends in /v1), is a 404 in Anthropic's error format (the README's "the route's
    format"), saying what to change; the count's path and ``/v1/v1/…`` were OpenAI's."""
    key = gateway.create_key()
    told = httpx.post(gateway.url + path, json={}, headers={"x-api-key": key["key"]})
    assert told.status_code == 404
    assert told.json()["type"] == "error", told.text
    error = told.json()["error"]
    assert error["type"] == "not_found_error" and says in error["message"]
