"""Live counters reconciled with the ledger: spend a counter missed is put back.

A counter can hold less than the ledger: a settle that could not reach Redis (the call
was served and recorded), buckets lost with Redis and seeded before another replica's
rows reached the database, spend made before a replica knew a budget. Every
``reconcile_seconds`` one replica (by lease) compares each live budget bucket (this
period) and wallet bucket with the ledger and raises the counter to the ledger's
figure, logging it and emitting ``budget.counter_drift`` / ``wallet.counter_drift``.

The rule against counting twice: the ledger side counts only calls started more than
``grace`` ago, and the counter is only ever *raised to* that figure, never added to or
lowered. A call's spend reaches the counter at its settle, before its ledger row is
written, so a counter that already has it is at least the ledger's figure and is left
alone; calls in flight or younger than ``grace`` are in neither figure compared. So a
repair can only add spend the counter truly missed, and at most that (it may fall short
by the spend of calls younger than ``grace``, which the next run adds).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from spendgate.core import budget_rules as rules
from spendgate.core.budget_windows import window_at
from spendgate.core.clock import Clock
from spendgate.core.money import format_usd
from spendgate.counters import Counters
from spendgate.guard.enforcement import (
    Admission,
    Applied,
    EmitEvent,
    Enforcer,
    budget_bucket,
    wallet_bucket,
)
from spendgate.store.ledger import LedgerWriter
from spendgate.store.policies import PolicyStore

log = logging.getLogger("spendgate.guard.reconcile")


class Reconciler:
    def __init__(
        self,
        store: PolicyStore,
        enforcer: Enforcer,
        ledger: LedgerWriter,
        clock: Clock,
        emit: EmitEvent,
    ) -> None:
        self._store = store
        self._enforcer = enforcer
        self._ledger = ledger
        self._clock = clock
        self._emit = emit

    @property
    def _counters(self) -> Counters:
        return self._enforcer.counters

    async def reconcile(
        self, grace: timedelta, only: Collection[str] | None = None, *, after_outage: bool = False
    ) -> int:
        """Raise every live bucket that counts less than the ledger (calls started before
        ``now - grace``) to the ledger's figure; returns how many it repaired.

        ``only``: just these buckets, after Redis was unreachable (``guard.failover``):
        their shortfall is the outage's spend, expected, so no drift is announced;
        instead every level the ledger's spend has reached fires (those fired already
        are not stored twice: their dedup keys), so a crossing whose settle never
        reached Redis, or that only the replicas' spend together made, is not lost. One
        that Redis lost meanwhile is seeded from the ledger here.

        ``after_outage`` without ``only``: every live bucket the same way (spend a process
        made without Redis and then died with is on no live process's list), except that
        a bucket Redis does not have is left to be seeded when next used, and levels fire
        only where a counter was raised."""
        outage = after_outage or only is not None
        now = self._clock.now()
        until = now - grace
        await self._ledger.flush()
        snapshot = await self._enforcer.policies()
        repaired = 0
        for budget in snapshot.budgets:
            window = window_at(now, budget.period, budget.timezone, budget.week_start)
            bucket = budget_bucket(budget, window)
            if until <= window.start or (only is not None and bucket not in only):
                continue
            ledger, uncounted = await self._store.spend_split(
                budget.org_id, window.start, until, partial(rules.applies, budget)
            )
            info = {"budget_id": budget.id, "period": window.key, "period_span": window.span}
            if outage:
                before = await catch_up(self._counters, bucket, ledger, uncounted, only is not None)
            else:
                before = await self._repair(bucket, ledger, uncounted, budget.org_id, now, info)
            if outage and (only is not None or before is not None):
                amount = rules.effective_amount(budget, snapshot.raises.get(budget.id, ()), now)
                cap = rules.hard_cap_nanos(budget, amount)
                reached = Admission("", 0, (Applied(budget, window, amount, cap),), ())
                await self._enforcer.booked(reached, [(0, ledger)])
            repaired += before is not None
        # after an outage, ticket grants too: a ticket-funded call's holds are its budgets
        # and its grant, which an uncounted row of it must reach as well
        grants = tuple(snapshot.grants.values()) if outage else ()
        for w in (*snapshot.wallets, *grants):
            bucket = wallet_bucket(w)
            if until <= w.created_at or (only is not None and bucket not in only):
                continue
            ledger, uncounted = await self._store.wallet_spend(w, until)
            info = {"wallet_id": w.id}
            if outage:
                funds = await self._store.funds(w) if only is not None else None
                before = await catch_up(
                    self._counters, bucket, ledger, uncounted, only is not None, funds
                )
            else:
                before = await self._repair(bucket, ledger, uncounted, w.org_id, now, info)
            if outage and (only is not None or before is not None):
                await self._enforcer.booked(Admission("", 0, (), (w,)), [(0, ledger)])
            repaired += before is not None
        return repaired

    async def _repair(
        self,
        bucket: str,
        ledger: int,
        uncounted: int,
        org_id: str,
        now: datetime,
        info: dict[str, Any],
    ) -> int | None:
        """Raise ``bucket`` to ``ledger`` (of which ``uncounted`` is spend the counters
        never saw: caught up with it); the figure before if it was lower, else None."""
        before = await self._counters.raise_to(bucket, "spent", ledger, uncounted)
        if before is None or before >= ledger:
            return None
        kind = "wallet" if bucket.startswith("w:") else "budget"
        log.warning(
            "%s counter %s was %s, the ledger says %s: raised",
            kind, bucket, format_usd(before), format_usd(ledger),
        )  # fmt: skip
        data = {
            **info,
            "counter_usd": format_usd(before),
            "ledger_usd": format_usd(ledger),
            "repaired_usd": format_usd(ledger - before),
        }
        self._emit(f"{kind}.counter_drift", f"drift:{bucket}:{ledger}", data, now, org_id)
        return before


async def catch_up(
    counters: Counters,
    bucket: str,
    ledger: int,
    uncounted: int,
    seed: bool,
    cap: int | None = None,
) -> int | None:
    """After an outage: add the ledger's ``uncounted`` spend the counter does not have
    yet (``Counters.catch_up``); what it added, None if nothing. ``seed``: a bucket
    Redis lost (it came back empty) is seeded from the ledger (``ledger``, of which
    ``uncounted``), which has the spend. If another replica seeded it in between, from a
    ledger read that may have missed rows this one saw, it is caught up to this read."""
    added = await counters.catch_up(bucket, uncounted)
    if added is None and seed and not await counters.seed(bucket, ledger, cap, uncounted):
        added = await counters.catch_up(bucket, uncounted)
    return added or None
