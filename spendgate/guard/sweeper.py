"""Thresholds recovered from the ledger, so each fires exactly once, not at most once.

A threshold normally fires from the settle that crossed it, and its event travels in
that call's spool record (``store.ledger``). Some crossings have no such settle:

* a budget created, or changed, when its spend is already past some of its levels
  (they fire at once, marked ``"already_past": true``);
* levels that moved under the spend (an exception ran out) or a crossing whose record
  never reached the disk (``"recovered": true``).

The sweeper compares each budget's current-period spend *in the ledger* with the events
already fired for that period and fires what is missing, with the same dedup keys as
the settle path, so a threshold fires once whoever gets there first. It runs on start,
periodically (on one replica per interval, by lease) and on budget create/update. The
levels come from ``core.budget_rules`` (``reached``), like every other comparison.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import timedelta
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core import budget_rules as rules
from spendgate.core.budget_windows import window_at
from spendgate.core.clock import Clock
from spendgate.guard.enforcement import Applied, Enforcer, threshold_event
from spendgate.guard.period_events import fired_in_periods
from spendgate.store.events import record_event
from spendgate.store.ledger import LedgerWriter
from spendgate.store.policies import PolicyStore

log = logging.getLogger("spendgate.guard.sweeper")


class ThresholdSweeper:
    def __init__(
        self,
        engine: AsyncEngine,
        store: PolicyStore,
        enforcer: Enforcer,
        ledger: LedgerWriter,
        clock: Clock,
        *,
        grace_seconds: float = 10.0,
    ) -> None:
        self._engine = engine
        self._store = store
        self._enforcer = enforcer
        self._ledger = ledger
        self._clock = clock
        #: a periodic sweep counts only calls started this long ago: younger ones may
        #: still be in another replica's spool, with the event that crossed the level
        self._grace = timedelta(seconds=grace_seconds)

    async def sweep(
        self, budget_ids: Collection[str] | None = None, *, already_past: bool = False
    ) -> int:
        """Fire every threshold reached and not yet fired this period (of ``budget_ids``,
        or of every budget); returns how many fired. ``already_past``: the budget was
        just created or changed, so all of its spend counts and the events say so."""
        now = self._clock.now()
        await self._ledger.flush()
        snapshot = await self._enforcer.policies()
        fired = 0
        for budget in snapshot.budgets:
            if budget_ids is not None and budget.id not in budget_ids:
                continue
            window = window_at(now, budget.period, budget.timezone, budget.week_start)
            amount = rules.effective_amount(budget, snapshot.raises.get(budget.id, ()), now)
            end = window.end if already_past else min(window.end, now - self._grace)
            if end <= window.start:
                continue
            spent = await self._store.spend_matching(
                budget.org_id, window.start, end, partial(rules.applies, budget)
            )
            reached = rules.reached(budget, amount, spent)
            if not reached:
                continue
            applied = Applied(budget, window, amount, rules.hard_cap_nanos(budget, amount))
            [fired_here] = await fired_in_periods(self._engine, [(budget.id, window)])
            done = {f.key for f in fired_here}
            async with self._engine.begin() as conn:
                for threshold in reached:
                    type_, key, data = threshold_event(applied, threshold, spent)
                    if threshold.name in done:
                        continue
                    data["already_past" if already_past else "recovered"] = True
                    stored = await record_event(
                        conn, type_, data, now, org_id=budget.org_id, dedup_key=key
                    )
                    if stored is not None:
                        fired += 1
                        log.info("budget %s: %s fired from the ledger", budget.id, key)
        return fired
