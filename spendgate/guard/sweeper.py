"""Thresholds and wallet levels recovered from the ledger, so each fires exactly once,
not at most once.

A threshold (or a wallet's ``wallet.low_balance`` / ``wallet.depleted``) normally fires
from the settle that crossed it, and its event travels in that call's spool record
(``store.ledger``). Some crossings have no such settle:

* a budget created, or changed, when its spend is already past some of its levels, or
  a wallet's low mark raised above a balance that was above it after the last top-up
  (they fire at once, marked ``"already_past": true``);
* levels that moved under the spend (an exception ran out) or a crossing whose record
  never reached the disk (``kill -9`` between the settle and the spool write; marked
  ``"recovered": true``).

The sweeper compares each budget's current-period spend, and each open wallet's balance
since its last top-up, *in the ledger* with the events already fired and fires what is
missing, with the same dedup keys as the settle path, so a level fires once whoever gets
there first. It runs on start, periodically (on one replica per interval, by lease) and
on budget create/update and wallet update. The levels come from ``core.budget_rules``
(``reached``) and ``guard.enforcement.wallet_level_events``, as the settle's do.

With shared counters, a call whose record was lost after its settle reached Redis is in
the wallet's counter (its balance, its 402s) but never in the ledger: its crossing is
recovered once the ledger's spend reaches the mark too (the next calls).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core import budget_rules as rules
from spendgate.core.budget_windows import window_at
from spendgate.core.clock import Clock
from spendgate.guard.enforcement import Applied, Enforcer, threshold_event, wallet_level_events
from spendgate.guard.period_events import fired_in_periods
from spendgate.store.events import fired_many, record_event
from spendgate.store.ledger import LedgerWriter
from spendgate.store.policies import PolicySnapshot, PolicyStore, Wallet

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
        self,
        budget_ids: Collection[str] | None = None,
        *,
        wallet_ids: Collection[str] | None = None,
        already_past: bool = False,
    ) -> int:
        """Fire every threshold reached and wallet level gone through and not yet fired
        (of ``budget_ids`` and ``wallet_ids``; with neither, of every budget and wallet);
        returns how many fired. ``already_past``: they were just created or changed, so
        all of their spend counts and the events say so."""
        now = self._clock.now()
        await self._ledger.flush()
        snapshot = await self._enforcer.policies()
        every = budget_ids is None and wallet_ids is None
        # a periodic sweep counts only calls started ``grace`` ago (see ``__init__``)
        until = None if already_past else now - self._grace
        mark = "already_past" if already_past else "recovered"
        fired = 0
        for budget in snapshot.budgets:
            if every or (budget_ids is not None and budget.id in budget_ids):
                fired += await self._budget(budget, snapshot, now, until, mark)
        for wallet in snapshot.wallets:
            if every or (wallet_ids is not None and wallet.id in wallet_ids):
                fired += await self._wallet(wallet, now, until, mark)
        return fired

    async def _budget(
        self,
        budget: rules.Budget,
        snapshot: PolicySnapshot,
        now: datetime,
        until: datetime | None,
        mark: str,
    ) -> int:
        """The thresholds ``budget``'s spend this period reached (calls started before
        ``until``; None: every call) that have not fired, fired with ``mark`` in their data."""
        window = window_at(now, budget.period, budget.timezone, budget.week_start)
        amount = rules.effective_amount(budget, snapshot.raises.get(budget.id, ()), now)
        end = window.end if until is None else min(window.end, until)
        if end <= window.start:
            return 0
        spent = await self._store.spend_matching(
            budget.org_id, window.start, end, partial(rules.applies, budget)
        )
        reached = rules.reached(budget, amount, spent)
        if not reached:
            return 0
        applied = Applied(budget, window, amount, rules.hard_cap_nanos(budget, amount))
        [fired_here] = await fired_in_periods(self._engine, [(budget.id, window)])
        done = {f.key for f in fired_here}  # names: ``alert:50``, also under an old key
        missing = [threshold_event(applied, t, spent) for t in reached if t.name not in done]
        return await self._fire(missing, (), mark, now, budget.org_id)

    async def _wallet(
        self, wallet: Wallet, now: datetime, until: datetime | None, mark: str
    ) -> int:
        """The levels ``wallet``'s balance went through since its last top-up (the one
        that made its current total, the dedup keys' ``cap``: each top-up re-arms them),
        by the ledger's spend of calls started before ``until``, that have not fired.
        What the settles would fire (``wallet_level_events``): a balance the top-up left
        below a mark went through none; a low mark moved above the balance did."""
        cap, topped_at = await self._store.topped_up_last(wallet.id)
        if topped_at is None:
            return 0  # never funded: its balance went through nothing
        spent, _ = await self._store.wallet_spend(wallet, until)
        left = cap - spent
        if left > max(wallet.low_balance_nanos, 0):
            return 0  # most wallets: above both marks
        prefix = f"wallet:{wallet.id}:"
        done = {f.key for f in (await fired_many(self._engine, [prefix]))[prefix]}
        if {f"wallet:{wallet.id}:low:{cap}", f"wallet:{wallet.id}:depleted:{cap}"} <= done:
            return 0
        before, _ = await self._store.wallet_spend(wallet, topped_at)
        missing = wallet_level_events(wallet, cap - before, left, cap)
        return await self._fire(missing, done, mark, now, wallet.org_id)

    async def _fire(
        self,
        events: Iterable[tuple[str, str, dict[str, Any]]],
        done: Collection[str],
        mark: str,
        now: datetime,
        org_id: str,
    ) -> int:
        """Store each of ``events`` whose key is not in ``done`` (nor stored meanwhile by
        a settle or another replica), ``mark`` set in its data; how many were stored."""
        fired = 0
        async with self._engine.begin() as conn:
            for type_, key, data in events:
                if key in done:
                    continue
                stored = await record_event(
                    conn, type_, {**data, mark: True}, now, org_id=org_id, dedup_key=key
                )
                if stored is not None:
                    fired += 1
                    log.info("%s fired from the ledger", key)
        return fired
