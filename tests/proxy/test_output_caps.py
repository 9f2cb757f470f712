"""The output cap a worst case assumes is the one the provider gets (issue 23.2), and
the answers a request asks for are counted (23.1): what the fake upstream received,
through the ``openai`` SDK, on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "hello [[reasoning:20000]]"}]


def sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def test_a_missing_cap_is_sent_in_the_field_the_route_takes(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """No cap in the request: OpenAI chat gets ``max_completion_tokens`` (the field
    reasoning models take), an OpenAI-compatible server ``max_tokens``, Responses
    ``max_output_tokens``, each the route's ``default_max_tokens``; the model stops
    there, however long it would think. A cap the client set is passed on untouched."""
    client = sdk(gateway, gateway.create_key()["key"])
    chat = client.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert chat.usage is not None and chat.usage.completion_tokens == 4096
    assert fake.requests[-1].json["max_completion_tokens"] == 4096
    assert "max_tokens" not in fake.requests[-1].json

    client.chat.completions.create(model="llama-local", messages=MSG)
    assert fake.requests[-1].json["max_tokens"] == 4096

    response = client.responses.create(model="gpt-4o-mini", input="think [[reasoning:20000]]")
    assert response.usage is not None and response.usage.output_tokens == 4096
    assert fake.requests[-1].json["max_output_tokens"] == 4096

    client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=64)
    sent = fake.requests[-1].json
    assert sent["max_tokens"] == 64 and "max_completion_tokens" not in sent


def test_n_is_reserved_for_every_answer(gateway: RunningGateway) -> None:
    """A hard budget with room for one answer of 1,000 tokens but not eight: n=8 is
    refused before it is forwarded; n=1 goes through."""
    key = gateway.create_key()
    gateway.post(
        "/admin/budgets",
        {"scope_type": "key", "scope_id": key["id"], "amount_usd": "0.002", "hard_limit": True},
    )
    client = sdk(gateway, key["key"])
    hi = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=hi, n=8, max_tokens=1000)
    assert refused.value.code == "budget_exceeded"
    one = client.chat.completions.create(model="gpt-4o-mini", messages=hi, max_tokens=1000)
    assert len(one.choices) == 1


@pytest.mark.parametrize(("field", "value"), [("n", 0), ("n", "8"), ("max_tokens", -5)])
def test_an_unusable_count_or_cap_is_a_400_naming_it(
    gateway: RunningGateway, field: str, value: object
) -> None:
    """``n`` or a cap that is not a whole number in range: 400 in OpenAI's format with
    the field as ``param``; nothing is forwarded."""
    client = sdk(gateway, gateway.create_key()["key"])
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={field: value},
        )
    assert bad.value.param == field


def test_a_server_that_ignores_max_completion_tokens_gets_the_cap_as_max_tokens(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A chat request capped by ``max_completion_tokens`` alone, to an OpenAI-compatible
    server that ignores that field (Ollama's OpenAI layer does, as did llama-cpp-python
    and TGI): the gateway held 100 output tokens and forwarded no cap the server reads, so
    it thought 20,000 tokens past a hard cap and a wallet. The cap goes out as
    ``max_tokens``, the field such servers read, and the spend stays under both."""
    fake.ignored_fields = frozenset({"max_completion_tokens"})
    cap = "0.001"  # llama-local: $0.20 per million output tokens; 20,000 are $0.004
    capped, funded = gateway.create_key(), gateway.create_key()
    gateway.create_budget(scope_type="key", scope_id=capped["id"], amount_usd=cap, hard_limit=True)
    gateway.post(
        "/admin/wallets", {"scope_type": "key", "scope_id": funded["id"], "initial_topup_usd": cap}
    )
    for key in (capped, funded):
        chat = sdk(gateway, key["key"]).chat.completions.create(
            model="llama-local", messages=MSG, max_completion_tokens=100
        )
        spent = [row["cost_nanos"] for row in gateway.ledger() if row["key_id"] == key["id"]]
        assert sum(spent) <= int(Decimal(cap) * 10**9), "the server thought past the cap"
        assert chat.usage is not None and chat.usage.completion_tokens == 100
        sent = fake.requests[-1].json
        assert sent["max_tokens"] == 100 and "max_completion_tokens" not in sent


def test_a_key_given_twice_reaches_the_provider_as_it_was_held(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A body that repeats a field (``max_tokens`` 100,000 first, 5 last) is held at the
    value the gateway reads, the last; the provider gets that request serialised again,
    each field once, never the client's bytes, which a provider reading the first value
    would run at 100,000 tokens past a hold of 5."""
    key = gateway.create_key()["key"]
    body = (
        b'{"model": "gpt-4o-mini", "max_tokens": 100000, '
        b'"messages": [{"role": "user", "content": "hi", "content": "hello"}], '
        b'"max_tokens": 5}'
    )
    answer = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    sent = fake.requests[-1]
    assert sent.raw.count(b'"max_tokens"') == 1 and sent.json["max_tokens"] == 5
    assert sent.raw.count(b'"content"') == 1 and b"hello" in sent.raw
    assert answer.json()["usage"]["completion_tokens"] <= 5
