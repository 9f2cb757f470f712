"""A request that asks for a dearer service tier (OpenAI's ``service_tier: "priority"``,
Anthropic's ``speed: "fast"``) is held and billed at that tier's prices, which the
price data has (genai-prices' request-context variants): priced at the standard rates,
a wallet funded calls the provider bills up to twice what the ledger said. Through the
real ``openai`` and ``anthropic`` SDKs, on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anthropic
import openai
import pytest

from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

EXTRA = """
[models."claude-opus-4-8"]
provider = "anthropic"
"""
#: OpenAI's priority prices are in the data from 2026-10-12
AFTER_PRIORITY = datetime(2026, 11, 10, 12, tzinfo=UTC)
PROMPT = "think it through [[reasoning:1000]]"


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    return {"extra_config": EXTRA}


def funded_key(gw: RunningGateway, usd: str) -> dict[str, Any]:
    key = gw.create_key()
    gw.post(
        "/admin/wallets", {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": usd}
    )
    return key


def only_row(gw: RunningGateway, key: dict[str, Any]) -> dict[str, Any]:
    [row] = [r for r in gw.ledger() if r["key_id"] == key["id"]]
    return row


def test_openai_priority_is_held_and_billed_at_its_prices(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """gpt-4o-mini at priority costs $0.25 / $1.00 a million tokens, not $0.15 / $0.60:
    the call is billed that, and a wallet with room for 1,000 output tokens at the
    standard rate but not at priority refuses it (402) before the provider sees it."""
    gateway.clock.set(AFTER_PRIORITY)
    rich = funded_key(gateway, "1")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=rich["key"], max_retries=0)
    chat = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": PROMPT}],
        max_completion_tokens=1000,
        service_tier="priority",
    )
    row = only_row(gateway, rich)
    assert chat.usage is not None and row["output_tokens"] == 1000
    assert row["cost_nanos"] == row["input_tokens"] * 250 + 1000 * 1000
    poor = funded_key(gateway, "0.0008")  # 1,000 out: $0.0006 standard, $0.001 priority
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=poor["key"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as short:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            max_completion_tokens=1000,
            service_tier="priority",
        )
    assert short.value.status_code == 402
    assert len(fake.requests) == 1


def test_anthropic_fast_mode_is_held_and_billed_at_its_prices(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """claude-opus-4-8 in fast mode costs $10 / $50 a million tokens, twice its $5 / $25:
    billed that, and refused by a hard cap that fits the standard hold only."""
    key = gateway.create_key()
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)

    def fast() -> Any:
        return client.messages.create(
            model="claude-opus-4-8",
            max_tokens=1000,
            messages=[{"role": "user", "content": PROMPT}],
            extra_body={"speed": "fast"},
        )

    answer = fast()
    row = only_row(gateway, key)
    assert answer.usage.output_tokens == 1000
    assert row["cost_nanos"] == row["input_tokens"] * 10_000 + 1000 * 50_000
    # spent: about $0.05; the next call holds about $0.05 at fast prices, $0.025 at standard
    cap = (row["cost_nanos"] + 30_000_000) / 10**9
    gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd=str(cap), hard_limit=True
    )
    with pytest.raises(anthropic.RateLimitError):
        fast()
    assert len(fake.requests) == 1
