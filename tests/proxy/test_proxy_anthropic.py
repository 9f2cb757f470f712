"""The Anthropic Messages endpoint through the real ``anthropic`` SDK."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anthropic
from genai_prices import Usage, calc_price, extract_usage

from spendgate.core.money import usd_to_nanos
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import UPSTREAM_SECRETS, RunningGateway


def client(gw: RunningGateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def test_message_with_cache_tokens_is_priced_like_genai_prices(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """Cache reads and writes are priced at their own rates, exactly as genai-prices does."""
    key = gateway.create_key()
    raw = client(gateway, key["key"]).messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[
            {"role": "user", "content": "long prompt " * 60 + "[[cached:40]] [[cache_write:30]]"}
        ],
    )
    message = raw.parse()
    assert message.usage.cache_read_input_tokens == 40
    expected = extract_usage(message.model_dump(), provider_id="anthropic").calc_price().total_price
    assert Decimal(raw.headers["x-spendgate-cost-usd"]) == expected
    [row] = gateway.ledger()
    assert row["cost_nanos"] == usd_to_nanos(expected)
    assert row["cache_read_tokens"] == 40 and row["cache_write_tokens"] == 30
    assert row["input_tokens"] == message.usage.input_tokens + 70
    seen = fake.requests[-1]
    assert seen.headers["x-api-key"] == UPSTREAM_SECRETS["ANTHROPIC_KEY"]
    assert key["key"] not in str(seen.headers)


def test_streamed_message_takes_usage_from_start_and_delta(gateway: RunningGateway) -> None:
    """Input from message_start, output from message_delta: the stream is not billed $0."""
    key = gateway.create_key()
    with client(gateway, key["key"]).messages.stream(
        model="claude-opus-4-1",
        max_tokens=100,
        messages=[{"role": "user", "content": "stream me [[cached:2]]"}],
    ) as stream:
        final = stream.get_final_message()
    [row] = gateway.ledger()
    assert row["stream"] is True and row["status"] == "ok" and not row["usage_estimated"]
    assert row["output_tokens"] == final.usage.output_tokens > 1
    assert row["cache_read_tokens"] == 2
    expected = extract_usage(final.model_dump(), provider_id="anthropic").calc_price().total_price
    assert row["cost_nanos"] == usd_to_nanos(expected)


def genai_cost(model: str, row: dict[str, Any]) -> Decimal:
    """genai-prices' own price of a ledger row's tokens, the 1-hour writes included."""
    usage = Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
        cache_write_1h_tokens=row["cache_write_1h_tokens"],
    )
    return calc_price(usage, model, provider_id="anthropic").total_price


ONE_HOUR_PROMPT = "long prompt " * 200 + "[[cached:40]] [[cache_write:300]] [[cache_write_1h:200]]"


def test_one_hour_cache_writes_are_priced_at_their_own_rate(gateway: RunningGateway) -> None:
    """A message whose cache writes are 100 for 5 minutes and 200 for an hour costs what
    genai-prices says for that split (not all 300 at the 5-minute rate), and the ledger
    row keeps both counts."""
    key = gateway.create_key()
    raw = client(gateway, key["key"]).messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": ONE_HOUR_PROMPT}],
    )
    message = raw.parse()
    assert message.usage.cache_creation is not None
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 200
    [row] = gateway.ledger()
    assert (row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (300, 200)
    expected = genai_cost("claude-sonnet-4-5", row)
    assert row["cost_nanos"] == usd_to_nanos(expected)
    assert Decimal(raw.headers["x-spendgate-cost-usd"]) == expected
    all_five_minutes = genai_cost("claude-sonnet-4-5", {**row, "cache_write_1h_tokens": 0})
    assert expected > all_five_minutes  # $6 against $3.75 per million for those 200


def test_streamed_one_hour_cache_writes_are_priced_at_their_own_rate(
    gateway: RunningGateway,
) -> None:
    """Streamed, the split comes in message_start; the message_delta that ends the stream
    does not repeat it and it is still billed."""
    key = gateway.create_key()
    with client(gateway, key["key"]).messages.stream(
        model="claude-opus-4-1",
        max_tokens=100,
        messages=[{"role": "user", "content": ONE_HOUR_PROMPT}],
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_creation is not None
    assert final.usage.cache_creation.ephemeral_1h_input_tokens == 200
    [row] = gateway.ledger()
    assert row["stream"] is True and row["status"] == "ok" and not row["usage_estimated"]
    assert (row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (300, 200)
    assert row["output_tokens"] == final.usage.output_tokens > 1
    assert row["cost_nanos"] == usd_to_nanos(genai_cost("claude-opus-4-1", row))
    expected = extract_usage(final.model_dump(), provider_id="anthropic").calc_price().total_price
    assert row["cost_nanos"] == usd_to_nanos(expected)


def test_x_api_key_header_and_raw_stream(gateway: RunningGateway) -> None:
    """The SDK's x-api-key auth works, and create(stream=True) yields the full event set."""
    key = gateway.create_key()
    events = list(
        client(gateway, key["key"]).messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=20,
            stream=True,
            messages=[{"role": "user", "content": "hi"}],
        )
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "message_delta" in kinds
    [row] = gateway.ledger()
    assert row["model"] == "claude-3-5-haiku-latest" and row["cost_nanos"] > 0


def test_demo_model_on_anthropic_route(gateway: RunningGateway) -> None:
    """The simulated provider answers the Messages API too, labelled as simulated."""
    key = gateway.create_key()
    raw = client(gateway, key["key"]).messages.with_raw_response.create(
        model="demo-large", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-spendgate-simulated"] == "true"
    assert raw.parse().usage.output_tokens <= 10
