"""A request that asks for prompt caching is held at the dearer of its two worst cases:
the prompt billed as input, or written to the 1-hour cache (Anthropic bills writes at
1.25x and 2x input; some models price them below input). Through the real anthropic
SDK and raw HTTP, on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

#: a model whose cache writes cost a tenth of its input ($10 against $1 per million)
EXTRA = """
[models."cheap-writes"]
provider = "anthropic"
upstream_model = "claude-sonnet-4-5"
price = { input_per_mtok = "10", output_per_mtok = "10", cache_write_per_mtok = "1", cache_write_1h_per_mtok = "1" }

[models."gpt-6-luna"]
provider = "openai"
"""  # noqa: E501

#: ~10,000 prompt tokens by the worst case's bytes/4 estimate
TEXT = "x " * 20_000


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    return {"extra_config": EXTRA}


def forwarded(fake: FakeUpstream) -> int:
    return sum(1 for r in fake.requests if isinstance(r.json, dict) and "messages" in r.json)


def post(gw: RunningGateway, key: str, body: bytes) -> httpx.Response:
    """A raw Messages request: the SDK cannot send a key spelled with JSON escapes."""
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
    headers["content-type"] = "application/json"
    return httpx.post(gw.url + "/v1/messages", content=body, headers=headers, timeout=30)


def marked_body(model: str, escaped: bool) -> bytes:
    block = {"type": "text", "text": TEXT, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    text = json.dumps(
        {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": [block]}]}
    )
    if escaped:  # the same JSON document: "cache\u005fcontrol" is "cache_control"
        text = text.replace('"cache_control"', '"cache\\u005fcontrol"')
    return text.encode()


@pytest.mark.parametrize("escaped", [False, True], ids=["plain", "escaped"])
def test_a_prompt_marked_for_caching_is_held_at_the_cache_write_price(
    gateway: RunningGateway, fake: FakeUpstream, escaped: bool
) -> None:
    """claude-sonnet-4-5: input $3/M, 1-hour writes $6/M. A hard cap between the two
    holds refuses the marked request before it is forwarded, however the key is spelled,
    and lets the same prompt unmarked through."""
    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="0.045", hard_limit=True)
    before = forwarded(fake)
    refused = post(gateway, key["key"], marked_body("claude-sonnet-4-5", escaped))
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert "hard limit" in refused.json()["error"]["message"]
    assert forwarded(fake) == before
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=16,
        messages=[{"role": "user", "content": [{"type": "text", "text": TEXT}]}],
    )
    assert forwarded(fake) == before + 1


def test_cache_writes_priced_below_input_do_not_lower_the_hold(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A model whose cache writes cost less than its input: asking for caching must not
    make the hold cheaper, since the provider may write nothing and bill it all as input
    (~$0.10 here, against ~$0.01 as writes); a $0.05 hard cap refuses it."""
    key = gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="0.05", hard_limit=True)
    before = forwarded(fake)
    refused = post(gateway, key["key"], marked_body("cheap-writes", escaped=False))
    assert refused.status_code == 429, refused.text
    assert forwarded(fake) == before


def test_an_openai_model_priced_for_cache_writes_is_held_at_them_unasked(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """gpt-6-luna: input $0.10/M, cache writes $0.125/M, and OpenAI caches prompts
    without being asked. The ~10,000-token prompt holds ~$0.00101 as input, ~$0.00126
    written to the cache: a $0.00115 hard cap refuses it before it is forwarded (it was
    let through, and the writes the provider reported took the spend past the cap)."""
    key = gateway.create_key()
    budget = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="0.00115", hard_limit=True
    )
    fake.reported_usage = {
        "prompt_tokens": 10_022,
        "completion_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 10_022},
    }
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    before = len(fake.requests)
    with pytest.raises(openai.RateLimitError, match="hard limit"):
        client.chat.completions.create(
            model="gpt-6-luna", max_tokens=16, messages=[{"role": "user", "content": TEXT}]
        )
    assert len(fake.requests) == before
    status = gateway.get(f"/admin/budgets/{budget['id']}/status")
    assert Decimal(status["spent_usd"]) <= Decimal("0.00115")
