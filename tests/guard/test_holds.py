"""Holds that live as long as their call (issue 23.3) and counters that reconcile with
the ledger (issue 23.4) — on SQLite+memory and PostgreSQL+Redis, with a frozen clock.

A stream is held open by the fake upstream (``stream_gate``) while the clock jumps far
past the old reap time (upstream timeout + 60 s); the heartbeat and the reaper are run
by hand, as their timers would run them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from spendgate.counters import Hold
from spendgate.counters.memory import MemoryCounters
from spendgate.counters.redis import RedisCounters
from spendgate.errors import ConfigError
from spendgate.guard.enforcement import wallet_bucket
from spendgate.settings import load_settings
from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway, budget_counter

MSG = [{"role": "user", "content": "hello"}]


def chat(gw: RunningGateway, secret: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 1000, **extra},
        timeout=30,
    )


def open_stream(gw: RunningGateway, secret: str) -> Iterator[bytes]:
    """A streamed call whose first chunk has arrived (the upstream then waits)."""
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 1000, "stream": True},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        yield from response.iter_bytes()


def test_a_live_stream_keeps_its_hold_past_the_old_reap_time(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A hard budget with room for one call's worst case: a stream holds it. The clock
    jumps 20 minutes (the old reaper released holds after upstream timeout + 60 s even
    mid-stream); the heartbeat renews the stream's hold, the reaper leaves it, and a
    second call is still refused. A hold nobody renews (its holder died) is reaped."""
    gw = gateway
    key = gw.create_key()
    gw.post(
        "/admin/budgets",
        {"scope_type": "key", "scope_id": key["id"], "amount_usd": "0.001", "hard_limit": True},
    )
    enforcer = gw.app.services.enforcer
    fake.stream_gate = threading.Event()
    stream = open_stream(gw, key["key"])
    assert next(stream)  # the call is live and holds its worst case (~$0.0006)
    gw.clock.advance(20 * 60)
    assert gw.run(enforcer.renew_holds()) == 1
    assert gw.run(enforcer.reap()) == 0
    refused = chat(gw, key["key"])
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"

    # a dead holder: a reservation taken and never renewed, on a wallet bucket of its own
    counters = gw.app.services.counters
    gw.run(counters.seed("w:orphan", 0, cap=10**9))
    gw.run(counters.reserve("orphan", [Hold("w:orphan", 500)], gw.clock.now().timestamp() + 60))
    gw.clock.advance(61)
    gw.run(enforcer.renew_holds())
    assert gw.run(enforcer.reap()) == 1
    assert gw.run(counters.state("w:orphan")).reserved == 0

    fake.stream_gate.set()
    body = b"".join(stream)
    assert b"[DONE]" in body
    assert gw.run(enforcer.renew_holds()) == 0  # settled: nothing left to renew


def lower_spent(gw: RunningGateway, bucket: str, spent: int) -> None:
    """Make a counter miss spend, as a settle that could not reach Redis does."""
    counters = gw.app.services.counters
    if isinstance(counters, RedisCounters):
        prefix = counters.prefix
        gw.run(counters.client.hset(prefix + bucket, "spent", spent))
    else:
        assert isinstance(counters, MemoryCounters)
        counters._buckets[bucket].spent = spent


def test_reconciliation_raises_a_counter_to_the_ledger_and_says_so(
    gateway: RunningGateway,
) -> None:
    """Three calls recorded; the budget's and the wallet's counters lose two of them.
    Reconciliation (calls older than its grace only) raises both to the ledger's figure,
    with a ``budget.counter_drift`` / ``wallet.counter_drift`` event naming the figures.
    A call younger than the grace is in the counter but not in the ledger figure, so
    the first repair falls short by it (never counting anything twice); a second run
    at once finds nothing, and the next one after the grace completes the repair."""
    gw = gateway
    key = gw.create_key()
    made = gw.post(
        "/admin/budgets", {"scope_type": "key", "scope_id": key["id"], "amount_usd": "5"}
    )
    wallet = gw.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": key["id"], "initial_topup_usd": "5"},
    )
    costs = [Decimal(chat(gw, key["key"]).headers["x-spendgate-cost-usd"]) for _ in range(3)]
    status = gw.get(f"/admin/budgets/{made['id']}/status")
    bucket = budget_counter(made, status)
    lower_spent(gw, bucket, int(costs[0] * 10**9))
    lower_spent(gw, f"w:{wallet['id']}", int(costs[0] * 10**9))
    gw.clock.advance(60)
    young = Decimal(chat(gw, key["key"]).headers["x-spendgate-cost-usd"])  # within grace

    reconciler = gw.app.services.reconciler
    assert reconciler is not None
    assert gw.run(reconciler.reconcile(timedelta(seconds=30))) == 2
    status = gw.get(f"/admin/budgets/{made['id']}/status")
    assert Decimal(status["spent_usd"]) == sum(costs)  # short of the young call
    assert gw.run(reconciler.reconcile(timedelta(seconds=30))) == 0
    gw.run(gw.app.services.events.drain())
    [drift] = gw.get("/admin/events", type="budget.counter_drift")
    assert drift["data"]["budget_id"] == made["id"]
    assert Decimal(drift["data"]["counter_usd"]) == costs[0] + young
    assert Decimal(drift["data"]["ledger_usd"]) == sum(costs)
    assert Decimal(drift["data"]["repaired_usd"]) == sum(costs) - costs[0] - young
    [wallet_drift] = gw.get("/admin/events", type="wallet.counter_drift")
    assert wallet_drift["data"]["wallet_id"] == wallet["id"]
    gw.clock.advance(60)
    assert gw.run(reconciler.reconcile(timedelta(seconds=30))) == 2
    status = gw.get(f"/admin/budgets/{made['id']}/status")
    assert Decimal(status["spent_usd"]) == sum(costs) + young
    state = gw.run(gw.app.services.counters.state(wallet_bucket_of(gw, wallet["id"])))
    assert state.spent == int((sum(costs) + young) * 10**9)


def wallet_bucket_of(gw: RunningGateway, wallet_id: str) -> str:
    [wallet] = [w for w in gw.run(gw.app.services.enforcer.policies()).wallets if w.id == wallet_id]
    return wallet_bucket(wallet)


def test_hold_and_heartbeat_are_settings_and_the_beat_comes_well_before_the_lapse(
    tmp_path: Any,
) -> None:
    """60 s and 10 s unless configured; a heartbeat slower than half the hold (or a hold
    under a second) is refused at startup, since a live call's hold could lapse and be
    reaped between two beats."""
    defaults = load_settings(env={})
    assert (defaults.hold_seconds, defaults.hold_heartbeat_seconds) == (60.0, 10.0)
    config = tmp_path / "spendgate.toml"
    config.write_text("[gateway]\nhold_seconds = 2\nhold_heartbeat_seconds = 0.5\n")
    settings = load_settings(config_path=str(config), env={})
    assert (settings.hold_seconds, settings.hold_heartbeat_seconds) == (2.0, 0.5)
    for bad, match in (
        ("hold_seconds = 20\nhold_heartbeat_seconds = 11", "at most half"),
        ("hold_seconds = 0.5", "hold_seconds must be"),
        ('hold_heartbeat_seconds = "often"', "hold_heartbeat_seconds must be"),
    ):
        config.write_text(f"[gateway]\n{bad}\n")
        with pytest.raises(ConfigError, match=match):
            load_settings(config_path=str(config), env={})
