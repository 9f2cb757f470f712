"""Web searches run by a provider's server-side search tool are billed per search beside
the tokens ($10 per thousand on OpenAI's and Anthropic's models, genai-prices'
``web_searches_kcount``): the gateway prices them as the provider reports them
(Anthropic's ``server_tool_use.web_search_requests``, the Responses API's
``web_search_call`` output items), whole and streamed, and holds a call's most searches
(``max_uses``, ``max_tool_calls``, else ``SEARCHES_HELD``) against a hard cap. Through
the real openai and anthropic SDKs, on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from spendgate.core.money import NANOS_PER_USD
from spendgate.core.pricing import PriceRef, PriceTable
from spendgate.core.usage import TokenUsage
from spendgate.core.worst_case import SEARCHES_HELD
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

#: a model billed $1 a search (and next to nothing a token), its prompt bounded at 1,000
#: tokens: a hold is then about its searches alone
EXTRA = """
[models."searcher"]
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
price = { input_per_mtok = "0.01", output_per_mtok = "0.01", web_search_per_thousand = "1000" }
max_input_tokens = 1000

[models."searcher-oai"]
provider = "openai"
upstream_model = "gpt-4.1"
price = { input_per_mtok = "0.01", output_per_mtok = "0.01", web_search_per_thousand = "1000" }
max_input_tokens = 1000
"""
SEARCH = {"type": "web_search_20250305", "name": "web_search"}
#: what the clock of the test gateway says (its prices are those in force then)
AT = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    return {"extra_config": EXTRA}


def cost_of(gw: RunningGateway, request_id: str) -> int:
    [row] = [r for r in gw.ledger() if r["request_id"] == request_id]
    assert row["status"] == "ok", row
    return int(row["cost_nanos"])


def tokens_and_searches(gw: RunningGateway, request_id: str) -> TokenUsage:
    [row] = [r for r in gw.ledger() if r["request_id"] == request_id]
    return TokenUsage(input_tokens=row["input_tokens"], output_tokens=row["output_tokens"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_web_searches_are_billed_per_search(
    gateway: RunningGateway, stream: bool
) -> None:
    """claude-sonnet-4-5 bills $10 per thousand searches: two searches add $0.02 to what
    the tokens cost, in the ledger and in the cost header."""
    key = gateway.create_key()
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    request: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32,
        "tools": [SEARCH],
        "messages": [{"role": "user", "content": "news today [[searches:2]]"}],
    }
    if stream:
        with client.messages.stream(**request) as events:
            final = events.get_final_message()
            request_id = events.response.headers["x-request-id"]
        assert final.usage.server_tool_use is not None
        assert final.usage.server_tool_use.web_search_requests == 2
    else:
        raw = client.messages.with_raw_response.create(**request)
        request_id = raw.headers["x-request-id"]
        assert raw.parse().usage.server_tool_use.web_search_requests == 2
        assert Decimal(raw.headers["x-spendgate-cost-usd"]) * NANOS_PER_USD == cost_of(
            gateway, request_id
        )
    tokens = tokens_and_searches(gateway, request_id)
    priced = PriceTable().price(PriceRef("claude-sonnet-4-5", "anthropic"), tokens, AT)
    assert priced.cost_nanos is not None
    assert cost_of(gateway, request_id) == priced.cost_nanos + 2 * NANOS_PER_USD // 100


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_responses_web_search_calls_are_billed_per_call(
    gateway: RunningGateway, stream: bool
) -> None:
    """gpt-4.1 bills $10 per thousand web search calls: three ``web_search_call`` items
    add $0.03."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    request: dict[str, Any] = {
        "model": "gpt-4.1",
        "tools": [{"type": "web_search"}],
        "input": "what happened [[searches:3]]",
        "max_output_tokens": 32,
    }
    if stream:
        raw = client.responses.with_raw_response.create(**request, stream=True)
        ends = [e for e in raw.parse() if e.type == "response.completed"]
        [end] = ends
        output = end.response.output
    else:
        raw = client.responses.with_raw_response.create(**request)
        output = raw.parse().output
    assert [item.type for item in output].count("web_search_call") == 3
    request_id = raw.headers["x-request-id"]
    tokens = tokens_and_searches(gateway, request_id)
    priced = PriceTable().price(PriceRef("gpt-4.1", "openai"), tokens, AT)
    assert priced.cost_nanos is not None
    assert cost_of(gateway, request_id) == priced.cost_nanos + 3 * NANOS_PER_USD // 100


def test_a_hard_cap_holds_the_searches_a_call_may_run(gateway: RunningGateway) -> None:
    """At $1 a search under a $5 cap: a call allowed three searches fits; one allowed six,
    or with no limit (``SEARCHES_HELD``), is refused before the provider sees it; two
    searches then bill $2, and the cap still holds what is left."""
    assert SEARCHES_HELD > 5
    key = gateway.create_key()
    budget = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="5", hard_limit=True
    )
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)

    def ask(tool: dict[str, Any]) -> Any:
        return client.messages.with_raw_response.create(
            model="searcher",
            max_tokens=16,
            tools=[tool],
            messages=[{"role": "user", "content": "look it up [[searches:2]]"}],
        )

    for tool in ({**SEARCH, "max_uses": 6}, SEARCH):
        with pytest.raises(anthropic.RateLimitError) as refused:
            ask(tool)
        assert "hard limit" in str(refused.value)
        assert "web searches, billed per search" in str(refused.value)
    answer = ask({**SEARCH, "max_uses": 3})
    assert Decimal(answer.headers["x-spendgate-cost-usd"]) >= Decimal(2)
    assert cost_of(gateway, answer.headers["x-request-id"]) >= 2 * NANOS_PER_USD
    # under $3 left: two more searches are still held, then under $1 left: one is not
    ask({**SEARCH, "max_uses": 2})
    with pytest.raises(anthropic.RateLimitError):
        ask({**SEARCH, "max_uses": 1})
    status = gateway.get(f"/admin/budgets/{budget['id']}/status")
    assert Decimal(status["spent_usd"]) <= Decimal(5)


def test_responses_max_tool_calls_bounds_the_hold(gateway: RunningGateway) -> None:
    """``max_tool_calls`` bounds the searches a Responses call is held for; one that is
    not a whole number is a 400 in OpenAI's format, and nothing is forwarded."""
    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="5", hard_limit=True)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    request: dict[str, Any] = {
        "model": "searcher-oai",
        "tools": [{"type": "web_search"}],
        "input": "find it [[searches:4]]",
        "max_output_tokens": 16,
    }
    with pytest.raises(openai.RateLimitError):
        client.responses.create(**request)  # SEARCHES_HELD searches at $1: over $5
    answer = client.responses.with_raw_response.create(**request, max_tool_calls=4)
    assert Decimal(answer.headers["x-spendgate-cost-usd"]) >= Decimal(4)
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(**request, extra_body={"max_tool_calls": "many"})
    assert bad.value.body["param"] == "max_tool_calls"  # type: ignore[index]


@pytest.mark.parametrize("api", ["anthropic", "responses"])
def test_a_stream_cut_after_its_searches_bills_them(
    gateway: RunningGateway, fake: FakeUpstream, api: str
) -> None:
    """The provider's stream breaks after two searches ran but before its usage (the
    ``message_delta`` / ``response.completed`` that counts them): the estimate the call
    is booked at still has the searches the stream showed going by (Anthropic's
    ``server_tool_use`` blocks, the Responses API's ``web_search_call`` items); a
    ``message_start`` counts none, since none has run yet."""
    key = gateway.create_key()["key"]
    prompt = "look it up [[searches:2]]"
    if api == "anthropic":
        path, model = "/v1/messages", "searcher"
        body: dict[str, Any] = {"max_tokens": 16, "tools": [SEARCH]}
        body["messages"] = [{"role": "user", "content": prompt}]
        fake.drop_stream_after = 1 + 2 * 4 + 1  # message_start, searches, the answer's start
    else:
        path, model = "/v1/responses", "searcher-oai"
        body = {"max_output_tokens": 16, "tools": [{"type": "web_search"}], "input": prompt}
        fake.drop_stream_after = 2 + 2 * 2 + 1  # created, in_progress, searches, answer's
    response = httpx.post(
        gateway.url + path,
        json={**body, "model": model, "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    [row] = [r for r in gateway.ledger() if r["request_id"] == response.headers["x-request-id"]]
    assert (row["status"], row["usage_estimated"]) == ("incomplete", True)
    # $1 a search: the tokens of a bounded prompt are a fraction of a cent
    assert 2 * NANOS_PER_USD <= int(row["cost_nanos"]) < 2 * NANOS_PER_USD + NANOS_PER_USD // 100
