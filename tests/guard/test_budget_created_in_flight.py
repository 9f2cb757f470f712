"""A budget created while calls are in flight (admitted before it existed, so holding
nothing against it) counts them when they settle: its counter, its thresholds and its
hard cap then go on from the period's real spend — on SQLite+memory and
PostgreSQL+Redis (where the settle is one joint script with the rate limits)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import openai

from spendgate.core.budget_rules import Subject
from spendgate.guard.enforcement import Admission
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "s"}]
#: every such call costs the same, streamed or not (the fake upstream's usage)
CALL: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": MSG}


def _status(gateway: RunningGateway, budget_id: str) -> dict[str, Any]:
    gateway.run(gateway.app.services.drain())
    return gateway.get(f"/admin/budgets/{budget_id}/status")


def _crossed(gateway: RunningGateway, budget_id: str) -> list[str]:
    gateway.run(gateway.app.services.drain())
    found = gateway.get("/admin/events", type="budget.threshold_crossed", limit=1000)
    return sorted(e["data"]["percent"] for e in found if e["data"]["budget_id"] == budget_id)


@contextmanager
def _streams_in_flight(client: openai.OpenAI, fake: FakeUpstream, n: int) -> Iterator[None]:
    """Inside: ``n`` streamed calls admitted, their first chunk received and the rest held
    back by ``fake``; on leaving, they end and settle."""
    gate = threading.Event()
    started = [threading.Event() for _ in range(n)]
    fake.stream_gate = gate

    def stream(i: int) -> None:
        for _ in client.chat.completions.create(**CALL, stream=True):
            started[i].set()

    with ThreadPoolExecutor(n) as pool:
        running = [pool.submit(stream, i) for i in range(n)]
        try:
            assert all(s.wait(30) for s in started)
            yield
        finally:
            gate.set()
        for r in running:
            r.result(30)


def test_calls_in_flight_when_a_budget_is_created_count_once_they_settle(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """One call spent, two streams in flight, then a hard-capped budget of five calls'
    cost: at first it counts one call (20 %). Once the streams settle it counts three
    (60 %: 50 fires as it is crossed), so one more call is served (80 %: 75 and the soft
    limit fire) and the next is refused, its worst case over what is left (the hard limit
    fires, ``refused``): the period ends at four calls, within the cap. (Its counter
    stayed at one call, seeded before the streams' rows reached the ledger: it served
    three more calls, six in all, past the cap, and fired nothing past 50 % until the
    reconciliation.)"""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(**CALL)
    cost = Decimal(raw.headers["x-spendgate-cost-usd"])
    with _streams_in_flight(client, fake, 2):
        budget = gateway.create_budget(
            scope_type="key", scope_id=key["id"], amount_usd=f"{cost * 5:f}", hard_limit=True
        )
        made = _status(gateway, budget["id"])
        assert Decimal(made["spent_usd"]) == cost and Decimal(made["reserved_usd"]) == 0
    settled = _status(gateway, budget["id"])
    assert Decimal(settled["spent_usd"]) == cost * 3
    assert settled["thresholds_fired"] == ["alert:50"]

    served = 0
    while served < 5:
        try:
            client.chat.completions.create(**CALL)
        except openai.RateLimitError as exc:
            assert "this call may cost up to" in str(exc)
            break
        served += 1
    assert served == 1
    final = _status(gateway, budget["id"])
    assert Decimal(final["spent_usd"]) == cost * 4 and final["state"] == "refusing"
    spent = sum(int(r["cost_nanos"] or 0) for r in gateway.ledger() if r["key_id"] == key["id"])
    assert Decimal(spent) / 10**9 == cost * 4
    assert _crossed(gateway, budget["id"]) == ["50", "75"]
    # and the refusal reached the hard limit (``"refused": true``)
    assert sorted(final["thresholds_fired"]) == ["alert:50", "alert:75", "hard:100", "soft:75"]


def test_a_budget_made_under_calls_in_flight_is_passed_by_them_only(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """Calls forwarded before a budget existed cannot be refused by it: a cap of one call
    made under three streams ends the period at three calls' spend, no more. The cap is
    ``blocked`` at once after they settle, and its hard limit fires once."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    cost = Decimal(
        client.chat.completions.with_raw_response.create(**CALL).headers["x-spendgate-cost-usd"]
    )
    other = gateway.create_key(org_id=key["org_id"])
    with _streams_in_flight(client, fake, 3):
        budget = gateway.create_budget(
            scope_type="org", scope_id=key["org_id"], amount_usd=f"{cost * 2:f}", hard_limit=True
        )
    status = _status(gateway, budget["id"])
    assert Decimal(status["spent_usd"]) == cost * 4 and status["state"] == "blocked"
    assert "hard:100" in status["thresholds_fired"]
    for secret in (key["key"], other["key"]):
        refused = openai.OpenAI(base_url=gateway.url + "/v1", api_key=secret, max_retries=0)
        try:
            refused.chat.completions.create(**CALL)
            raise AssertionError("the cap let a call through")
        except openai.RateLimitError as exc:
            assert "has reached its hard limit" in str(exc)


def test_only_a_reload_that_changed_the_budgets_sends_a_settle_looking_for_new_ones(
    gateway: RunningGateway,
) -> None:
    """A call in flight across a reload looks again for the budgets that apply to it only
    when the reload found other budgets: the timed reload (every few seconds) and a
    wallet made keep the budgets it was admitted under (each reload made every such
    settle redo the lookup); a budget made, changed or deleted does not."""
    enforcer = gateway.app.services.enforcer
    key = gateway.create_key()
    budget = gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="10")
    subject = Subject(
        org_id=key["org_id"],
        team_id=None,
        user_id=None,
        agent_id=None,
        key_id=key["id"],
        tags=(),
        provider="openai",
        model="gpt-4o-mini",
        kind="chat",
    )

    def admitted() -> Admission:
        return enforcer.unheld(subject, gateway.run(enforcer.policies()))

    call = admitted()
    gateway.run(enforcer.refresh())
    assert not enforcer.changed_since(call)
    gateway.post("/admin/wallets", {"scope_type": "org", "scope_id": key["org_id"]})
    assert not enforcer.changed_since(call)
    gateway.create_budget(scope_type="org", scope_id=key["org_id"], amount_usd="50")
    assert enforcer.changed_since(call)

    call = admitted()
    changed = gateway.admin.patch(f"/admin/budgets/{budget['id']}", json={"amount_usd": "20"})
    assert changed.is_success
    assert enforcer.changed_since(call)
    call = admitted()
    assert gateway.admin.delete(f"/admin/budgets/{budget['id']}").is_success
    assert enforcer.changed_since(call)
    # a call that is not one (``subject`` None) never looks
    assert not enforcer.changed_since(Admission("", 0, (), (), snapshot=call.snapshot))
