"""The pieces of the Redis failover (``guard.failover``, ``counters.outage``) on their own:
the circuit breaker on a frozen clock, and the outage counters' shares of each cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from spendgate.core.budget_rules import Budget, Subject
from spendgate.core.clock import FrozenClock
from spendgate.counters import Hold, Refusal, Settlement
from spendgate.counters.outage import OutageCounters
from spendgate.errors import BudgetExceeded, ConfigError
from spendgate.guard.enforcement import Enforcer, wallet_bucket
from spendgate.guard.failover import Breaker
from spendgate.settings import load_settings
from spendgate.store.database import create_engine
from spendgate.store.ledger import LedgerWriter
from spendgate.store.policies import PolicySnapshot, PolicyStore, Wallet

EXPIRES = 1_800_000_000.0


def test_the_breaker_opens_on_a_failure_and_allows_one_probe_per_interval() -> None:
    """Closed until a failure; then no probe until ``probe_seconds`` have passed, one
    prober at a time, a failed probe waits a full interval again; recovered, it is closed
    and says how long Redis was out."""
    clock = FrozenClock()
    breaker = Breaker(clock.monotonic, probe_seconds=1.0)
    assert breaker.up and not breaker.probe_due()
    assert breaker.tripped() is True
    assert breaker.tripped() is False  # already open: one outage, counted once
    assert not breaker.up and breaker.trips == 1
    clock.advance(0.9)
    assert not breaker.probe_due()
    clock.advance(0.2)
    assert breaker.probe_due()
    breaker.probing = True
    assert not breaker.probe_due()  # one prober at a time
    breaker.probing = False
    breaker.tripped()  # the probe failed
    assert not breaker.probe_due()
    clock.advance(1.0)
    assert breaker.probe_due()
    assert breaker.recovered() == 2.1
    assert breaker.up and breaker.since is None


async def test_outage_counters_admit_only_this_replicas_share_of_the_headroom() -> None:
    """Seeded at 400 of a 1000 cap with 3 replicas, this one admits up to 600 (a third of
    the 600 left); the refusal names the budget's own cap (each one's, when a call is over
    several shares). A wallet's stored cap is
    shared the same way, by ``reserve`` and the plain ``reserve_now_seen`` alike. What was
    settled past the seed is the outage's spend."""
    counters = OutageCounters(replicas=3)
    assert await counters.seed("b:1", 400)
    assert await counters.seed("w:1", 100, cap=700)
    assert await counters.reserve("r1", [Hold("b:1", 150, 1000)], EXPIRES) is None
    assert await counters.reserve("r2", [Hold("b:1", 50, 1000)], EXPIRES) is None
    refused = await counters.reserve("r3", [Hold("b:1", 1, 1000)], EXPIRES)
    assert refused == Refusal("b:1", 400, 200, 1000)
    # the plain call every reserve goes through shares the cap as well
    assert counters.reserve_now_seen("r3", [Hold("b:1", 1, 1000)], EXPIRES) == refused
    assert await counters.reserve("r4", [Hold("b:1", 1, None)], EXPIRES) is None  # no cap
    wallet = Hold("w:1", 200, use_stored_cap=True)  # share: 100 + 600 // 3 = 300
    assert await counters.reserve("r5", [wallet], EXPIRES) is None
    assert await counters.reserve("r6", [wallet], EXPIRES) == Refusal("w:1", 100, 200, 700)
    # a call over both shares names each, with its own cap
    assert await counters.reserve("r7", [Hold("b:1", 1, 1000), wallet], EXPIRES) == Refusal(
        "b:1", 400, 201, 1000, also=(Refusal("w:1", 100, 200, 700),)
    )
    await counters.settle("r1", [Settlement("b:1", 150, 120)])
    await counters.settle("r5", [Settlement("w:1", 200, 30)])
    await counters.release("r2")
    assert counters.outage_spend() == {"b:1": 120, "w:1": 30}
    assert counters.reserved() == 1


def test_failure_mode_and_replicas_from_config_then_environment(tmp_path: Path) -> None:
    """``[gateway] redis_failure_mode/fail_open_replicas``, overridden by
    ``SPENDGATE_REDIS_FAILURE_MODE``/``SPENDGATE_FAIL_OPEN_REPLICAS``; fail-closed and 1
    by default; anything else is a configuration error naming the setting."""
    assert (load_settings(env={}).redis_failure_mode, load_settings(env={}).fail_open_replicas) == (
        "closed",
        1,
    )
    config = tmp_path / "spendgate.toml"
    config.write_text('[gateway]\nredis_failure_mode = "open"\nfail_open_replicas = 3\n')
    settings = load_settings(config_path=str(config), env={})
    assert (settings.redis_failure_mode, settings.fail_open_replicas) == ("open", 3)
    env = {"SPENDGATE_REDIS_FAILURE_MODE": "closed", "SPENDGATE_FAIL_OPEN_REPLICAS": "5"}
    settings = load_settings(config_path=str(config), env=env)
    assert (settings.redis_failure_mode, settings.fail_open_replicas) == ("closed", 5)
    with pytest.raises(ConfigError, match="redis_failure_mode"):
        load_settings(env={"SPENDGATE_REDIS_FAILURE_MODE": "sideways"})
    with pytest.raises(ConfigError, match="fail_open_replicas"):
        load_settings(env={"SPENDGATE_FAIL_OPEN_REPLICAS": "0"})
    with pytest.raises(ConfigError, match="SPENDGATE_FAIL_OPEN_REPLICAS"):
        load_settings(env={"SPENDGATE_FAIL_OPEN_REPLICAS": "three"})


async def test_a_wallet_refused_only_by_its_outage_share_is_not_depleted(tmp_path: Path) -> None:
    """A fail-open outage cuts each cap to this replica's share: a call its key's spent-up
    cap refuses is refused by the org wallet's share too, though the wallet has room.
    The budget fires its events; the wallet fires no ``wallet.depleted`` (it is once per
    top-up: fired now, with a balance left, it would be missing when the wallet does run
    dry), as a budget refused only by its share fires none either."""
    engine = create_engine(f"sqlite:///{tmp_path / 'unused.db'}")
    now = datetime(2026, 3, 14, 22, 0, tzinfo=UTC)
    subject = Subject("org", None, None, None, "key", (), "openai", "gpt-4o-mini", "chat")
    budget = Budget(
        "bud", "org", "key", "key", None, "daily", "UTC", "monday", 1000, hard_limit=True
    )
    wallet = Wallet("wal", "org", "org", "org", 0, now - timedelta(days=30))
    counters, events = OutageCounters(replicas=2), []
    enforcer = Enforcer(
        PolicyStore(engine),
        counters,
        LedgerWriter(engine),
        FrozenClock(now),
        lambda kind, *_: events.append(kind),
        reservation_seconds=60,
    )
    snapshot = PolicySnapshot.build((budget,), {}, (wallet,))
    (applied,), _ = enforcer.applicable(snapshot, subject, now)
    await counters.seed(applied.bucket, 1000)  # the cap spent
    await counters.seed(wallet_bucket(wallet), 100, cap=700)  # $600 left, share 100 + 300

    with pytest.raises(BudgetExceeded):
        await enforcer.admit(subject, 350, snapshot)  # 450 of the wallet's 700, not 400

    assert "budget.calls_refused" in events
    assert "wallet.depleted" not in events
    await engine.dispose()
