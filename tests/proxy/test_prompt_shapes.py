"""Request shapes of the legacy Completions and Embeddings APIs whose cost the request's
bytes under-state: a batch of prompts (every prompt gets its own answers) and prompts
given as token ids (a token in two bytes). A hard cap or a wallet with room for one
ordinary call must not let such a call put the ledger past it. Through the real
``openai`` SDK, on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import openai

from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

#: room for one gpt-4o-mini completion of 1,000 tokens ($0.0006), not for eight
CAP = "0.001"
#: eight prompts, each long enough to run to the cap: 8,000 output tokens billed
BATCH = ["write on [[reasoning:1000]]"] * 8


def sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def spent(gw: RunningGateway) -> int:
    return sum(row["cost_nanos"] or 0 for row in gw.ledger())


def capped_and_funded(gw: RunningGateway, usd: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two keys: one under a hard-capped budget of ``usd``, one paid by a wallet of it."""
    capped, funded = gw.create_key(), gw.create_key()
    gw.create_budget(scope_type="key", scope_id=capped["id"], amount_usd=usd, hard_limit=True)
    gw.post(
        "/admin/wallets", {"scope_type": "key", "scope_id": funded["id"], "initial_topup_usd": usd}
    )
    return capped, funded


def status_of(call: Callable[[], object]) -> int:
    """The HTTP status of an SDK call: 200, or the refusal's."""
    try:
        call()
    except openai.APIStatusError as refused:
        return refused.status_code
    return 200


def attempt(gw: RunningGateway, key: str, prompt: str | list[str]) -> int:
    """A gpt-4o-mini completion of ``prompt`` capped at 1,000 tokens: its HTTP status."""
    client = sdk(gw, key)
    return status_of(
        lambda: client.completions.create(model="gpt-4o-mini", prompt=prompt, max_tokens=1000)
    )


def test_a_batch_of_prompts_is_held_for_every_prompt_s_answers(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """Completions with a list of prompts generates ``max(n, best_of)`` answers for each
    of them, and the provider bills all of them: the hold counts every prompt, so the
    batch is refused (429 by the hard cap, 402 by the wallet) and nothing is spent past
    either; a single prompt of the same cap still fits."""
    cap = int(Decimal(CAP) * 10**9)
    capped, funded = capped_and_funded(gateway, CAP)
    for key, refusal in ((capped, 429), (funded, 402)):
        status = attempt(gateway, key["key"], BATCH)
        assert spent(gateway) <= cap, "a batch of prompts put the spend past the cap"
        assert status == refusal
    assert fake.requests == []
    for key in (capped, funded):
        assert attempt(gateway, key["key"], BATCH[0]) == 200
    assert spent(gateway) <= 2 * cap


#: 4,000 tokens of input in about 8 kB: bytes / 4 held it at 2,000 ($0.0003 on
#: gpt-4o-mini's $0.15 per million), the provider bills 4,000 ($0.0006)
TOKEN_IDS = [0] * 4000
#: room for the bytes / 4 hold, not for the tokens
IDS_CAP = "0.0004"


def ids_call(gw: RunningGateway, key: str, endpoint: str, ids: list[int]) -> int:
    """An Embeddings or Completions call of ``ids`` on gpt-4o-mini: its HTTP status."""
    client = sdk(gw, key)
    if endpoint == "embeddings":
        return status_of(lambda: client.embeddings.create(model="gpt-4o-mini", input=[ids]))
    return status_of(
        lambda: client.completions.create(model="gpt-4o-mini", prompt=ids, max_tokens=1)
    )


def test_a_prompt_of_token_ids_is_held_at_a_token_an_id(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """Embeddings ``input`` and Completions ``prompt`` may be token ids, a token in two
    bytes ("0,"): each id is held as a token, so a hard cap and a wallet with room for
    the bytes / 4 but not for the ids refuse the call and nothing is spent past them."""
    cap = int(Decimal(IDS_CAP) * 10**9)
    capped, funded = capped_and_funded(gateway, IDS_CAP)
    for key, refusal in ((capped, 429), (funded, 402)):
        for endpoint in ("embeddings", "completions"):
            status = ids_call(gateway, key["key"], endpoint, TOKEN_IDS)
            assert spent(gateway) <= cap, "token ids put the spend past the cap"
            assert status == refusal
    assert fake.requests == []
    for endpoint in ("embeddings", "completions"):
        assert ids_call(gateway, capped["key"], endpoint, TOKEN_IDS[:500]) == 200
    assert [row["input_tokens"] for row in gateway.ledger()] == [500, 500]
