"""A call is billed at the service tier or speed its provider reports it ran at, not only
the one its request names: OpenAI's default ``service_tier`` is ``"auto"``, which runs a
project configured for priority at priority (and OpenAI bills it so), and says so in the
answer (``service_tier`` on a chat answer and every chunk, ``response.service_tier``);
Anthropic reports ``usage.service_tier`` and ``usage.speed``. A reported value the price
data has no variant for (junk, Anthropic's ``"priority"``) bills the request's tier, as
before. The ledger row says which tier priced the call (``price_context``). Through the
real ``openai`` and ``anthropic`` SDKs against the fake upstream, on SQLite+memory and
PostgreSQL+Redis; the costs checked against genai-prices' own calculation."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from genai_prices import Usage, calc_price

from spendgate.core.money import NANOS_PER_USD, usd_to_nanos
from spendgate.proxy.metering import StreamMeter, usage_from_body
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

EXTRA = """
[models."claude-opus-4-8"]
provider = "anthropic"
"""
#: OpenAI's priority and flex prices are in the data from 2026-10-12
AT = datetime(2026, 11, 10, 12, tzinfo=UTC)
PROMPT = "think it through [[reasoning:300]]"
PRIORITY = {"service_tier": "priority"}


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    return {"extra_config": EXTRA}


def row_of(gw: RunningGateway, request_id: str) -> dict[str, Any]:
    [row] = [r for r in gw.ledger() if r["request_id"] == request_id]
    assert row["status"] == "ok" and not row["usage_estimated"], row
    return row


def genai_cost(row: dict[str, Any], provider: str, context: dict[str, str] | None) -> int:
    """What genai-prices itself charges the row's tokens in ``context`` (None: standard)."""
    usage = Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
    )
    price = calc_price(
        usage, row["upstream_model"], provider_id=provider, genai_request_timestamp=AT,
        price_context=context,
    )  # fmt: skip
    return usd_to_nanos(price.total_price)


def openai_call(gw: RunningGateway, api: str, stream: bool, tier: str | None) -> tuple[str, Any]:
    """One gpt-4o-mini call through the openai SDK: its request id and the tier the
    client was told (the provider's answer passes unchanged)."""
    key = gw.create_key()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key["key"], max_retries=0)
    named: dict[str, Any] = {} if tier is None else {"service_tier": tier}
    if api == "chat":
        messages = [{"role": "user", "content": PROMPT}]
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, stream=stream, **named
        )  # type: ignore[call-overload]
        if stream:
            told = [chunk.service_tier for chunk in raw.parse()]
            assert len(set(told)) == 1
            return raw.headers["x-request-id"], told[0]
        return raw.headers["x-request-id"], raw.parse().service_tier
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input=PROMPT, stream=stream, **named
    )  # type: ignore[call-overload]
    if stream:
        [end] = [e for e in raw.parse() if e.type == "response.completed"]
        return raw.headers["x-request-id"], end.response.service_tier
    return raw.headers["x-request-id"], raw.parse().service_tier


@pytest.mark.parametrize(
    ("api", "stream", "tier"),
    [
        ("chat", False, None),
        ("chat", True, "auto"),
        ("responses", False, "auto"),
        ("responses", True, None),
    ],
)
def test_a_call_openai_ran_at_priority_is_billed_at_priority(
    gateway: RunningGateway, fake: FakeUpstream, api: str, stream: bool, tier: str | None
) -> None:
    """A request naming no tier, or ``"auto"``, that OpenAI reports it ran at priority
    costs gpt-4o-mini's priority prices ($0.25 / $1.00 a million tokens, not $0.15 /
    $0.60), as genai-prices charges them, whole and streamed, chat and Responses; the
    row says so and the cost header tells it."""
    gateway.clock.set(AT)
    fake.reported_tier = PRIORITY
    request_id, told = openai_call(gateway, api, stream, tier)
    assert told == "priority"
    row = row_of(gateway, request_id)
    assert row["cost_nanos"] == genai_cost(row, "openai", PRIORITY)
    assert row["cost_nanos"] == row["input_tokens"] * 250 + row["output_tokens"] * 1000
    assert row["cost_nanos"] > genai_cost(row, "openai", None)
    assert row["price_context"] == "service_tier=priority"


@pytest.mark.parametrize(
    ("tier", "reported", "billed"),
    [
        (None, "turbo-9000", None),  # junk: the request's (none)
        ("priority", "turbo-9000", "priority"),  # junk: the request's
        ("priority", "scale", "priority"),  # a real tier the data does not price
        ("priority", "default", None),  # asked for priority, ran at default
        (None, "flex", None),  # a tier the data prices, but not for gpt-4o-mini
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_reported_tier_bills_only_where_the_prices_know_it(
    gateway: RunningGateway,
    fake: FakeUpstream,
    stream: bool,
    tier: str | None,
    reported: str,
    billed: str | None,
) -> None:
    """A reported tier no variant of the model names (junk, ``"scale"``, flex on a model
    without flex prices) leaves the call at its request's tier and keeps nothing of it
    in the row; ``"default"`` is the standard prices whatever the request asked for."""
    gateway.clock.set(AT)
    fake.reported_tier = {"service_tier": reported}
    request_id, _ = openai_call(gateway, "chat", stream, tier)
    row = row_of(gateway, request_id)
    context = None if billed is None else {"service_tier": billed}
    assert row["cost_nanos"] == genai_cost(row, "openai", context)
    assert row["price_context"] == (None if billed is None else f"service_tier={billed}")


@pytest.mark.parametrize(
    ("speed", "reported", "billed"),
    [
        (None, {"service_tier": "standard", "speed": "fast"}, "fast"),
        ("fast", {"service_tier": "standard", "speed": "standard"}, None),
        # Anthropic's priority tier has no price in the data: the request's (standard)
        (None, {"service_tier": "priority"}, None),
        ("fast", {"service_tier": "priority"}, "fast"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_anthropic_is_billed_at_the_speed_it_reports(
    gateway: RunningGateway,
    fake: FakeUpstream,
    stream: bool,
    speed: str | None,
    reported: dict[str, str],
    billed: str | None,
) -> None:
    """claude-opus-4-8 reported in fast mode costs its fast prices ($10 / $50 a million
    tokens, twice its standard), also when the request did not ask for it; reported at
    standard speed, the standard prices though the request asked for fast; a reported
    ``service_tier`` the data prices under no variant changes nothing."""
    gateway.clock.set(AT)
    fake.reported_tier = reported
    key = gateway.create_key()
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    request: dict[str, Any] = {
        "model": "claude-opus-4-8",
        "max_tokens": 300,
        "messages": [{"role": "user", "content": PROMPT}],
        "extra_body": {} if speed is None else {"speed": speed},
    }
    if stream:
        with client.messages.stream(**request) as events:
            final = events.get_final_message()
            request_id = events.response.headers["x-request-id"]
    else:
        raw = client.messages.with_raw_response.create(**request)
        final, request_id = raw.parse(), raw.headers["x-request-id"]
        cost = Decimal(raw.headers["x-spendgate-cost-usd"]) * NANOS_PER_USD
        assert cost == row_of(gateway, request_id)["cost_nanos"]
    assert final.usage.service_tier == reported["service_tier"]
    row = row_of(gateway, request_id)
    context = None if billed is None else {"speed": billed}
    assert row["cost_nanos"] == genai_cost(row, "anthropic", context)
    per_token = (10_000, 50_000) if billed else (5_000, 25_000)
    assert row["cost_nanos"] == (
        row["input_tokens"] * per_token[0] + row["output_tokens"] * per_token[1]
    )
    assert row["price_context"] == (None if billed is None else "speed=fast")


def test_the_reported_tier_is_read_where_the_usage_is() -> None:
    """Unit: a whole answer's tier (OpenAI's top level, Anthropic's usage) comes with its
    usage; an Anthropic stream keeps message_start's tier and speed through a
    message_delta that tells only one of them again; a chat stream's, from its usage
    chunk."""
    body = b'{"usage": {"input_tokens": 3, "output_tokens": 4, "speed": "fast"}}'
    assert usage_from_body("message", body)[2] == (("speed", "fast"),)
    body = b'{"service_tier": "priority", "usage": {"prompt_tokens": 3}}'
    assert usage_from_body("chat", body)[2] == (("service_tier", "priority"),)
    assert usage_from_body("response", b'{"service_tier": 7}')[2] == ()
    meter = StreamMeter("message", strip_usage_chunk=False)
    meter.feed(
        b'event: message_start\ndata: {"type": "message_start", "message": {"usage": '
        b'{"input_tokens": 3, "output_tokens": 1, "service_tier": "priority", '
        b'"speed": "fast"}}}\n\n'
        b'event: message_delta\ndata: {"type": "message_delta", "usage": '
        b'{"output_tokens": 9, "service_tier": "standard"}}\n\n'
    )
    assert dict(meter.reported) == {"service_tier": "standard", "speed": "fast"}
    chat = StreamMeter("chat", strip_usage_chunk=False)
    chat.feed(
        b'data: {"choices": [{"delta": {"content": "hi"}}], "service_tier": "flex"}\n\n'
        b'data: {"choices": [], "service_tier": "flex", "usage": {"prompt_tokens": 3, '
        b'"completion_tokens": 1}}\n\ndata: [DONE]\n\n'
    )
    assert chat.reported == (("service_tier", "flex"),)
