"""A provider that reports an absurd usage figure (issue 22.1): the call is recorded with
its figures clamped and marked, an event says so once, and the ledger, the usage report
and budgets go on working — on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

from decimal import Decimal

import openai

from spendgate.core.usage import MAX_TOKENS_PER_CALL
from tests.conftest import RunningGateway

ABSURD = 2**62
NORMAL = [{"role": "user", "content": "hello"}]


def test_an_absurd_usage_figure_never_stops_the_ledger(gateway: RunningGateway) -> None:
    """A 2^62-reasoning-token answer is served and recorded clamped to the plausible
    maximum (priced exactly for those figures, marked ``usage_implausible``); the five
    normal calls after it reach the ledger, ``/admin/usage`` answers, and one
    ``usage.implausible`` event is raised for the model and day."""
    key = gateway.create_key()
    gateway.post(
        "/admin/budgets",
        {"scope_type": "key", "scope_id": key["id"], "amount_usd": "1000000", "period": "daily"},
    )
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    absurd = [{"role": "user", "content": f"think hard [[reasoning:{ABSURD}]]"}]
    # a cap of its own, or the gateway would send its default one and the model obey it
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=absurd, max_completion_tokens=ABSURD
    )
    assert raw.http_response.status_code == 200
    assert raw.parse().usage.completion_tokens_details.reasoning_tokens == ABSURD  # type: ignore[union-attr]
    for _ in range(5):
        client.chat.completions.create(model="gpt-4o-mini", messages=NORMAL)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=absurd, max_completion_tokens=ABSURD
    )

    rows = gateway.ledger()
    assert len(rows) == 7
    flagged = [r for r in rows if r["usage_implausible"]]
    assert len(flagged) == 2
    assert {r["reasoning_tokens"] for r in flagged} == {MAX_TOKENS_PER_CALL}
    assert {r["output_tokens"] for r in flagged} == {MAX_TOKENS_PER_CALL}
    # gpt-4o-mini output is $0.60 per million tokens: exactly $600 for the clamped figure
    assert Decimal(raw.headers["x-spendgate-cost-usd"]) > Decimal("600")
    assert all(r["cost_nanos"] is not None for r in rows)

    usage = gateway.admin.get("/admin/usage", params={"group_by": "model"})
    assert usage.status_code == 200, usage.text
    [model] = usage.json()["rows"]
    assert model["requests"] == 7
    [event] = gateway.get("/admin/events", type="usage.implausible")
    assert event["data"]["model"] == "gpt-4o-mini"
    assert event["data"]["max_tokens_per_call"] == MAX_TOKENS_PER_CALL
    budgets = gateway.get("/admin/budgets")
    status = gateway.get(f"/admin/budgets/{budgets[0]['id']}/status")
    assert Decimal(status["spent_usd"]) == sum(Decimal(r["cost_nanos"]) for r in rows) / 10**9
