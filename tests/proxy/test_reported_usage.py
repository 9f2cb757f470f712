"""What a provider reports as usage, billed as the provider bills it — through the real
SDKs, on SQLite+memory and PostgreSQL+Redis: cache writes in OpenAI's usage details at
their own rate (as ``genai-prices`` prices them), counts written as ``1200.0`` or
``"1200"`` as counts, and a usage that tells no count (``{}``, text, negative) billed on
an estimate and flagged, never at $0."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
from genai_prices import Usage, calc_price, extract_usage

from spendgate.core.money import usd_to_nanos
from spendgate.core.usage import TokenUsage
from spendgate.proxy.metering import StreamMeter
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

HI: Any = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    """The test config, plus an OpenAI model priced for cache writes (1.25x its input)."""
    return {"extra_config": '\n[models."gpt-6-luna"]\nprovider = "openai"\n'}


def sdks(gateway: RunningGateway, secret: str) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    return (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0),
        anthropic.Anthropic(base_url=gateway.url, api_key=secret, max_retries=0),
    )


def routes(
    oai: openai.OpenAI, claude: anthropic.Anthropic, model: str = "gpt-4o-mini"
) -> dict[str, Callable[[], Any]]:
    """Each metered route, whole and streamed, read to the end (the usage chunk the client
    did not ask for is stripped: ``stream_options`` is not set)."""
    return {
        "chat": lambda: oai.chat.completions.create(model=model, messages=HI),
        "chat stream": lambda: list(
            oai.chat.completions.create(model=model, messages=HI, stream=True)
        ),
        "responses": lambda: oai.responses.create(model=model, input="hello"),
        "responses stream": lambda: list(
            oai.responses.create(model=model, input="hello", stream=True)
        ),
        "messages": lambda: claude.messages.create(
            model="claude-sonnet-4-5", max_tokens=50, messages=HI
        ),
        "messages stream": lambda: list(
            claude.messages.create(
                model="claude-sonnet-4-5", max_tokens=50, messages=HI, stream=True
            )
        ),
    }


def test_openai_cache_writes_are_billed_as_genai_prices_bills_them(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """gpt-6-luna bills cache writes at 1.25x its input and reports them as
    ``cache_write_tokens`` in the usage details; they were billed as plain input (12.5%
    under the provider's bill here). Whole and streamed, chat and Responses: the ledger
    holds the writes and genai-prices' own figure for the same answer, to the nano."""
    key = gateway.create_key()
    oai, _ = sdks(gateway, key["key"])
    chat = {
        "prompt_tokens": 100_000,
        "completion_tokens": 1_000,
        "total_tokens": 101_000,
        "prompt_tokens_details": {"cached_tokens": 20_000, "cache_write_tokens": 50_000},
    }
    responses = {
        "input_tokens": 100_000,
        "output_tokens": 1_000,
        "total_tokens": 101_000,
        "input_tokens_details": {"cached_tokens": 20_000, "cache_write_tokens": 50_000},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    expected = {}
    for flavor, usage in (("chat", chat), ("responses", responses)):
        reference = extract_usage(
            {"model": "gpt-6-luna", "usage": usage}, provider_id="openai", api_flavor=flavor
        ).calc_price(genai_request_timestamp=gateway.clock.now())
        expected[flavor] = usd_to_nanos(reference.total_price)
    every = routes(oai, anthropic.Anthropic(api_key="unused"), model="gpt-6-luna")
    for name in ("chat", "chat stream", "responses", "responses stream"):
        fake.reported_usage = chat if name.startswith("chat") else responses
        every[name]()
    rows = sorted(gateway.ledger(), key=lambda r: (r["kind"], r["stream"]))
    assert [(r["kind"], r["stream"]) for r in rows] == [
        ("chat", False), ("chat", True), ("response", False), ("response", True)
    ]  # fmt: skip
    for row in rows:
        flavor = "chat" if row["kind"] == "chat" else "responses"
        assert row["status"] == "ok" and not row["usage_estimated"], row
        assert (row["cache_read_tokens"], row["cache_write_tokens"]) == (20_000, 50_000)
        assert row["cost_nanos"] == expected[flavor], row


@pytest.mark.parametrize(
    "reported",
    [
        {},
        {"prompt_tokens": "lots", "completion_tokens": 7, "input_tokens": "lots"},
        {"input_tokens": -5, "output_tokens": 7, "prompt_tokens": -5},
        None,
    ],
    ids=["empty", "text", "negative", "null"],
)
def test_a_usage_that_tells_no_count_is_estimated_never_free(
    gateway: RunningGateway, fake: FakeUpstream, reported: Any
) -> None:
    """On every route, whole and streamed, an answer whose usage has no count the
    provider could have billed is booked on spendgate's estimate, ``usage_estimated``
    (it was booked as 0 tokens, $0, as the provider's own figure; an Anthropic stream
    as its message_start's placeholder output of one token), and told so."""
    key = gateway.create_key()
    oai, claude = sdks(gateway, key["key"])
    fake.reported_usage = reported
    for call in routes(oai, claude).values():
        call()
    rows = gateway.ledger()
    assert len(rows) == 6
    for row in rows:
        assert row["status"] == "ok" and row["usage_estimated"], row
        assert row["input_tokens"] > 0 and row["output_tokens"] > 1, row
        assert row["cost_nanos"] > 0, row


def test_counts_written_as_floats_or_strings_are_billed_as_counts(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """``1200.0`` and ``"1200"`` tokens are 1,200 tokens (they were 0: the call free)."""
    key = gateway.create_key()
    oai, claude = sdks(gateway, key["key"])
    fake.reported_usage = {
        "prompt_tokens": 1200.0,
        "completion_tokens": "30",
        "input_tokens": "1200",
        "output_tokens": 30.0,
    }
    for call in routes(oai, claude).values():
        call()
    rows = gateway.ledger()
    assert len(rows) == 6
    for row in rows:
        model, provider = (
            ("claude-sonnet-4-5", "anthropic")
            if row["kind"] == "message"
            else ("gpt-4o-mini", "openai")
        )
        price = calc_price(
            Usage(input_tokens=1200, output_tokens=30),
            model,
            provider_id=provider,
            genai_request_timestamp=gateway.clock.now(),
        )
        assert not row["usage_estimated"], row
        assert (row["input_tokens"], row["output_tokens"]) == (1200, 30), row
        assert row["cost_nanos"] == usd_to_nanos(price.total_price), row


def test_a_message_start_that_is_not_an_object_is_passed_on_not_raised() -> None:
    """``message_start`` whose ``message`` is not an object raised AttributeError in the
    meter: the gateway dropped the connection mid-stream with a traceback. It is passed on
    as it came, and the stream metered by what the rest of it tells."""
    events = [
        b'event: message_start\ndata: {"type":"message_start","message":"oops"}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{},'
        b'"usage":{"output_tokens":50}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    meter = StreamMeter("message", strip_usage_chunk=False)
    assert meter.feed(b"".join(events)) == b"".join(events)
    assert meter.done and meter.usage == TokenUsage(output_tokens=50)
