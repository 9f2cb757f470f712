"""What a call counts against, worked out once per subject and reused while it holds:
the cache must end where a budget period, an exception or a ticket grant does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from spendgate.core.budget_rules import Budget, Raise, Subject
from spendgate.core.clock import FrozenClock
from spendgate.counters.memory import MemoryCounters
from spendgate.guard.enforcement import Enforcer
from spendgate.store.database import create_engine
from spendgate.store.ledger import LedgerWriter
from spendgate.store.policies import PolicySnapshot, PolicyStore, Wallet

T0 = datetime(2026, 3, 14, 22, 0, tzinfo=UTC)
SUBJECT = Subject("org", None, None, None, "key", (), "openai", "gpt-4o-mini", "chat")
BUDGET = Budget("bud", "org", "key", "key", None, "daily", "UTC", "monday", 1000, hard_limit=True)
WALLET = Wallet("wal", "org", "org", "org", 0, T0 - timedelta(days=30))


@pytest.fixture
def enforcer(tmp_path: Any) -> Iterator[tuple[Enforcer, FrozenClock]]:
    """An enforcer on memory counters (its store and ledger are never reached here)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'unused.db'}")
    clock = FrozenClock(T0)
    yield (
        Enforcer(
            PolicyStore(engine),
            MemoryCounters(),
            LedgerWriter(engine),
            clock,
            lambda *event: None,
            reservation_seconds=60,
        ),
        clock,
    )


def test_an_exception_starting_and_ending_between_reloads_binds_at_its_edges(
    enforcer: tuple[Enforcer, FrozenClock],
) -> None:
    """A +100 % exception from 22:30 to 23:00 on a daily budget, one snapshot throughout:
    the cap doubles at 22:30, falls back at 23:00, and the next day is a new period."""
    e, clock = enforcer
    extra = Raise(0, 100, T0 + timedelta(minutes=30), T0 + timedelta(hours=1))
    snapshot = PolicySnapshot.build((BUDGET,), {"bud": (extra,)}, ())

    def cap_and_period() -> tuple[int | None, str]:
        (applied,), _ = e.applicable(snapshot, SUBJECT, clock.now())
        return applied.cap_nanos, applied.window.key

    assert cap_and_period() == (1000, "2026-03-14")
    clock.advance(29 * 60)
    assert cap_and_period() == (1000, "2026-03-14")
    clock.advance(60)
    assert cap_and_period() == (2000, "2026-03-14")
    clock.advance(30 * 60)
    assert cap_and_period() == (1000, "2026-03-14")
    clock.advance(3600)
    assert cap_and_period() == (1000, "2026-03-15")
    clock.set(T0)  # a clock stepped back finds the old figures again
    assert cap_and_period() == (1000, "2026-03-14")


def test_a_ticket_grant_funds_calls_until_it_expires(
    enforcer: tuple[Enforcer, FrozenClock],
) -> None:
    """The key's approved grant on the org wallet pays until its expiry; the wallet after."""
    e, clock = enforcer
    grant = Wallet(
        "tkt",
        "org",
        "key",
        "key",
        0,
        T0,
        grant_of="wal",
        grant_nanos=500,
        expires_at=T0 + timedelta(minutes=10),
    )
    snapshot = PolicySnapshot.build((), {}, (WALLET,), grants=(grant,))
    assert e.applicable(snapshot, SUBJECT, clock.now())[1] == (grant,)
    clock.advance(599)
    assert e.applicable(snapshot, SUBJECT, clock.now())[1] == (grant,)
    clock.advance(1)
    assert e.applicable(snapshot, SUBJECT, clock.now())[1] == (WALLET,)


def test_a_new_snapshot_is_read_afresh(enforcer: tuple[Enforcer, FrozenClock]) -> None:
    """Another snapshot (a reload after an admin change) is never answered from the
    cache of the one before."""
    e, clock = enforcer
    before = PolicySnapshot.build((BUDGET,), {}, ())
    assert len(e.applicable(before, SUBJECT, clock.now())[0]) == 1
    after = PolicySnapshot.build((), {}, (WALLET,))
    assert e.applicable(after, SUBJECT, clock.now()) == ((), (WALLET,))
