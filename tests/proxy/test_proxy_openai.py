"""The OpenAI-style endpoints through the real ``openai`` SDK, metered exactly."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest
from genai_prices import Usage, calc_price

from spendgate.core.money import usd_to_nanos
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import UPSTREAM_SECRETS, RunningGateway


def client(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def test_chat_completion_is_priced_and_recorded(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A non-streamed chat call carries its exact cost in a header and lands in the ledger."""
    key = gateway.create_key(tags=["checkout"])
    raw = client(gateway, key["key"]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there [[cached:0]]"}]
    )
    completion = raw.parse()
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0
    expected = calc_price(
        Usage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens),
        "gpt-4o-mini",
        provider_id="openai",
    ).total_price
    assert Decimal(raw.headers["x-spendgate-cost-usd"]) == expected
    assert raw.headers["x-request-id"].startswith("req_")
    [row] = gateway.ledger()
    assert row["request_id"] == raw.headers["x-request-id"]
    assert row["cost_nanos"] == usd_to_nanos(expected)
    assert (row["input_tokens"], row["output_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert row["tags"] == ["checkout"] and row["org_id"] == key["org_id"]
    assert row["status"] == "ok" and row["kind"] == "chat" and row["stream"] is False


def test_provider_key_replaces_virtual_key(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """The upstream sees the provider's key, never the client's virtual key."""
    key = gateway.create_key()
    fake.required_api_key = UPSTREAM_SECRETS["OPENAI_KEY"]
    client(gateway, key["key"]).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
    )
    seen = fake.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_SECRETS['OPENAI_KEY']}"
    assert key["key"] not in str(seen.headers)


def test_stream_usage_is_requested_and_stripped(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """Streams are billed from the usage chunk spendgate asks for, which the client never sees."""
    key = gateway.create_key()
    chunks = list(
        client(gateway, key["key"]).chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            messages=[{"role": "user", "content": "stream please"}],
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert fake.requests[-1].json["stream_options"] == {"include_usage": True}
    [row] = gateway.ledger()
    assert row["stream"] is True and row["status"] == "ok" and not row["usage_estimated"]
    assert row["output_tokens"] == sum(1 for c in chunks if c.choices[0].delta.content)
    assert row["cost_nanos"] > 0


def test_stream_usage_kept_when_client_asks(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """With include_usage the client gets the usage chunk, and it matches the ledger."""
    key = gateway.create_key()
    chunks = list(
        client(gateway, key["key"]).chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "stream with usage [[cached:1]]"}],
        )
    )
    final = chunks[-1].usage
    assert final is not None
    [row] = gateway.ledger()
    assert row["output_tokens"] == final.completion_tokens
    assert row["input_tokens"] == final.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_completions_and_responses(gateway: RunningGateway, stream: bool) -> None:
    """Legacy completions and the Responses API work streamed and not, and are billed."""
    key = gateway.create_key()
    sdk = client(gateway, key["key"])
    if stream:
        list(sdk.completions.create(model="gpt-4o-mini", prompt="say hi", stream=True))
        with sdk.responses.stream(model="gpt-4o", input="tell me") as events:
            final = events.get_final_response()
    else:
        sdk.completions.create(model="gpt-4o-mini", prompt="say hi")
        final = sdk.responses.create(model="gpt-4o", input="tell me")
    assert final.usage is not None and final.output_text
    rows = {r["kind"]: r for r in gateway.ledger()}
    assert set(rows) == {"completion", "response"}
    assert rows["response"]["output_tokens"] == final.usage.output_tokens
    assert all(r["cost_nanos"] > 0 and not r["usage_estimated"] for r in rows.values())


def test_a_background_response_is_refused_before_the_provider_sees_it(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """``background: true`` makes the provider answer "queued" with no usage and bill the
    run later, which nothing here could read: it was forwarded and booked at an estimate
    of the "queued" answer's bytes. It is a 400 naming the parameter, nothing is sent
    upstream or booked, and the same call without it is served."""
    sdk = client(gateway, gateway.create_key()["key"])
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.responses.create(model="gpt-4o", input="tell me", background=True)
    body: Any = refused.value.body
    assert body["param"] == "background" and "not supported" in body["message"]
    assert fake.requests == [] and gateway.ledger() == []
    assert sdk.responses.create(model="gpt-4o", input="tell me", background=False).output_text
    assert [r["kind"] for r in gateway.ledger()] == ["response"]


def test_embeddings_and_models(gateway: RunningGateway) -> None:
    """Embeddings are billed on input tokens; models.list shows what the key may use."""
    key = gateway.create_key(models=["gpt-4o-mini", "demo-small"])
    sdk = client(gateway, key["key"])
    result = sdk.embeddings.create(model="gpt-4o-mini", input=["a", "bb"])
    assert len(result.data) == 2
    assert sorted(m.id for m in sdk.models.list()) == ["demo-small", "gpt-4o-mini"]
    [row] = gateway.ledger()
    assert row["kind"] == "embedding" and row["input_tokens"] == result.usage.prompt_tokens


def test_azure_deployment_routing(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """Azure models go to /openai/deployments/<deployment> with api-key and api-version."""
    key = gateway.create_key()
    client(gateway, key["key"]).chat.completions.create(
        model="azure-gpt-4o", messages=[{"role": "user", "content": "hi azure"}]
    )
    seen = fake.requests[-1]
    assert seen.path == "/openai/deployments/gpt4o-deployment/chat/completions"
    assert "api-version=2024-10-21" in seen.query
    assert seen.headers["api-key"] == UPSTREAM_SECRETS["AZURE_KEY"]
    [row] = gateway.ledger()
    assert row["provider"] == "azure" and row["upstream_model"] == "gpt4o-deployment"


def test_override_price_and_upstream_model(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """A self-hosted model priced from config; the upstream gets its own model name."""
    key = gateway.create_key()
    reply = client(gateway, key["key"]).chat.completions.create(
        model="llama-local", messages=[{"role": "user", "content": "hi"}]
    )
    assert fake.requests[-1].json["model"] == "llama3.1:8b"
    usage = reply.usage
    assert usage is not None
    expected = (
        Decimal(usage.prompt_tokens) * Decimal("0.10")
        + Decimal(usage.completion_tokens) * Decimal("0.20")
    ) / 1_000_000
    [row] = gateway.ledger()
    assert row["cost_nanos"] == usd_to_nanos(expected)


def test_unknown_price_is_flagged_not_zero(gateway: RunningGateway) -> None:
    """No price known: tokens recorded, cost NULL, flagged, and a price.unknown event:
    once a day per org and model (another org's calls to it are announced to that org)."""
    key = gateway.create_key()
    raw = client(gateway, key["key"]).chat.completions.with_raw_response.create(
        model="mystery-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-spendgate-cost-usd"] == "unknown"
    [row] = gateway.ledger()
    assert row["cost_nanos"] is None and row["price_unknown"] is True and row["output_tokens"] > 0
    usage = gateway.get("/admin/usage", group_by="model")
    assert usage["unpriced_requests"] == 1

    def events() -> list[dict[str, object]]:
        gateway.run(gateway.app.services.drain())
        return gateway.get("/admin/events", type="price.unknown")

    [event] = events()
    assert event["data"]["model"] == "mystery-model"
    client(gateway, key["key"]).chat.completions.create(
        model="mystery-model", messages=[{"role": "user", "content": "again"}]
    )
    assert len(events()) == 1
    other = gateway.create_key()
    client(gateway, other["key"]).chat.completions.create(
        model="mystery-model", messages=[{"role": "user", "content": "another org"}]
    )
    assert sorted(e["org_id"] for e in events()) == sorted([key["org_id"], other["org_id"]])
