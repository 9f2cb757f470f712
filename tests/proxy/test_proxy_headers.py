"""SPEC §1/§13 headers on every proxied route, streamed and not, through the real SDKs."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest

from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

RATE = [
    f"x-ratelimit-{figure}-{unit}"
    for figure in ("limit", "remaining", "reset")
    for unit in ("requests", "tokens")
]
HI = [{"role": "user", "content": "hi"}]


def calls(oai: openai.OpenAI, claude: anthropic.Anthropic) -> dict[str, Callable[[bool], Any]]:
    """Per route, a call giving its raw response (streamed or not), read to the end."""
    return {
        "chat": lambda s: oai.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=HI, stream=s
        ),
        "completions": lambda s: oai.completions.with_streaming_response.create(
            model="gpt-4o-mini", prompt="hi", stream=s
        ),
        "responses": lambda s: oai.responses.with_streaming_response.create(
            model="gpt-4o", input="hi", stream=s
        ),
        "messages": lambda s: claude.messages.with_streaming_response.create(
            model="claude-sonnet-4-5", max_tokens=20, messages=HI, stream=s
        ),
        "embeddings": lambda s: oai.embeddings.with_streaming_response.create(
            model="gpt-4o-mini", input="hi"
        ),
    }


def governed_clients(gateway: RunningGateway) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    """Both SDKs on a new key under a $5 hard-capped budget and a rate limit."""
    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="5", hard_limit=True)
    gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "*", "rpm": 100, "tpm": 10**6},
    )
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    return oai, claude


@pytest.mark.parametrize("stream", [False, True])
def test_every_route_carries_the_request_id_cost_budget_and_rate_headers(
    gateway: RunningGateway, stream: bool
) -> None:
    """Under a budget and a rate limit, each route answers with ``x-request-id``, the
    tightest budget's ``x-spendgate-budget-remaining-usd`` and the six ``x-ratelimit-*``
    figures; a non-streamed answer also with ``x-spendgate-cost-usd`` (a stream's cost
    is known only after its headers went out: it comes at the end of the stream, in a
    comment, ``test_stream_cost``)."""
    oai, claude = governed_clients(gateway)
    for route, call in calls(oai, claude).items():
        if stream and route == "embeddings":
            continue  # embeddings do not stream
        with call(stream) as response:
            response.read()
            headers = response.headers
        assert response.status_code == 200, route
        assert headers["x-request-id"].startswith("req_"), route
        assert headers["x-spendgate-budget-remaining-usd"], route
        assert [h for h in RATE if h not in headers] == [], route
        assert ("x-spendgate-cost-usd" in headers) is not stream, route
    rows = gateway.ledger()
    assert len(rows) == (4 if stream else 5)
    assert all(r["cost_nanos"] > 0 and not r["usage_estimated"] for r in rows)


def test_a_provider_error_under_a_budget_says_what_is_left(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A provider's own error answer (passed on, not billed) is a proxied response too:
    under a budget it carries ``x-spendgate-budget-remaining-usd`` (the budget untouched
    by it) with its request id, cost and rate figures, streamed request or not; it had
    the cost and rate headers only."""
    oai, claude = governed_clients(gateway)
    fake.fail_status = 400
    for route, call in calls(oai, claude).items():
        for stream in (False, True):
            with (
                pytest.raises((openai.BadRequestError, anthropic.BadRequestError)) as info,
                call(stream) as response,
            ):
                response.read()
            headers = info.value.response.headers
            assert headers["x-request-id"].startswith("req_"), route
            assert headers["x-spendgate-cost-usd"] == "0.00", route
            assert headers.get("x-spendgate-budget-remaining-usd") == "5.00", route
            assert [h for h in RATE if h not in headers] == [], route
    rows = gateway.ledger()
    assert len(rows) == 10 and {r["status"] for r in rows} == {"upstream_error"}


def test_a_budget_refusal_says_what_is_left(gateway: RunningGateway) -> None:
    """A hard cap's 429 carries ``x-spendgate-budget-remaining-usd``: what the refusing
    budget has left (its cap less its spend), on both wires; it had only the budget's
    id and reset, the figure in its message."""
    key = gateway.create_key()
    budget = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="0.0001", hard_limit=True
    )
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    oai.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=5)
    spent = Decimal(gateway.get(f"/admin/budgets/{budget['id']}/status")["spent_usd"])
    assert 0 < spent < Decimal("0.0001")
    left = str(Decimal("0.0001") - spent)
    with pytest.raises(openai.RateLimitError) as refused:
        oai.chat.completions.create(model="gpt-4o-mini", messages=HI, max_tokens=10_000)
    assert refused.value.response.headers["x-spendgate-budget-remaining-usd"] == left
    with pytest.raises(anthropic.RateLimitError) as refused_too:
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=10_000, messages=HI)
    assert refused_too.value.response.headers["x-spendgate-budget-remaining-usd"] == left
