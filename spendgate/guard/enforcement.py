"""Enforcement: reserve a call's worst case against every budget and wallet that
applies, settle to the real cost, release on failure, and fire thresholds once.

The rules live in ``budget_rules`` (pure); the atomic arithmetic in ``counters``;
this module wires them to the clock, the policy snapshot and the event store.

Across replicas (Redis counters) three more things keep the counters true:

* **Policy changes bind at once.** Every admin change calls ``policy_changed`` after
  its transaction commits: it bumps the counters' policy version, and every process's
  next admission finds its snapshot stale in the same round trip (``spendgate.guard``)
  and reloads it (``resync``) before planning the call again.
* **Lost counters are seeded again.** A snapshot remembers the counters' epoch; a new
  epoch means Redis lost every bucket, so this process forgets which buckets it seeded
  and seeds each again from the ledger (its own rows flushed first) before using it.
* **Holds live as long as their call.** A hold expires ``hold_seconds`` after it was
  taken or last renewed; ``renew_holds`` (a heartbeat, every few seconds) renews every
  hold of a call still running here, so only a dead process's holds are reaped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from hashlib import blake2b
from typing import Any, NoReturn

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from spendgate.core import budget_rules as rules
from spendgate.core.budget_windows import Period, Window, window_at
from spendgate.core.clock import Clock
from spendgate.core.event_data import budget_event_data
from spendgate.core.money import format_usd
from spendgate.core.pricing import unpriced_key, unpriced_refusal
from spendgate.counters import BucketState, Counters, Generation, Hold, Refusal, Settlement
from spendgate.counters.memory import MemoryCounters
from spendgate.errors import BudgetExceeded, InsufficientFunds
from spendgate.guard.period_events import period_prefix
from spendgate.security.credentials import CountedIds
from spendgate.store.ledger import LedgerWriter
from spendgate.store.policies import PolicySnapshot, PolicyStore, Wallet

log = logging.getLogger("spendgate.guard.enforcement")

EVENT_TYPES = {
    "alert": "budget.threshold_crossed",
    "soft": "budget.soft_limit_reached",
    "hard": "budget.hard_limit_reached",
}

#: subjects whose applicable budgets and wallets are kept (the cache starts over past it)
MAX_CACHED_SUBJECTS = 10_000
#: what a snapshot loaded without a generation (Redis was down) is compared as: never current
UNKNOWN = Generation("", -1)

#: (type, dedup key, data, org id)
EmitEvent = Callable[[str, str, dict[str, Any], datetime, str | None], None]


def budget_bucket(budget: rules.Budget, window: Window) -> str:
    return bucket_name(budget.id, window.key, window.start, window.end, budget.categories)


def bucket_name(
    budget_id: str, key: str, start: datetime, end: datetime, categories: rules.Categories
) -> str:
    """A budget's counter for one period: ``b:<budget id>:<period key>:<what it counts>``,
    the last part a digest of the period's bounds and the budget's categories. A counter
    holds what one rule counted, so an edit that changes what the budget counts (its
    categories, or its zone: a daily ``2026-03-10`` in UTC and in Los Angeles are seven
    hours apart) names a new counter, seeded from the ledger by the new rule; the old one
    would keep spend the budget no longer counts and miss spend it now does for the rest
    of the period (the reconciliation only ever raises a counter)."""
    rule = repr(
        (
            int(start.timestamp()),
            int(end.timestamp()),
            *(tuple(sorted(getattr(categories, name))) for name in rules.CATEGORY_DIMENSIONS),
        )
    )
    return f"b:{budget_id}:{key}:{blake2b(rule.encode(), digest_size=6).hexdigest()}"


def wallet_bucket(wallet: Wallet) -> str:
    return f"w:{wallet.id}"


@dataclass(frozen=True, slots=True)
class Applied:
    """One budget that a call counts against, in its current period."""

    budget: rules.Budget
    window: Window
    amount_nanos: int
    cap_nanos: int | None
    #: its counter's name (``budget_bucket``), read three times a call: computed once
    bucket: str = field(init=False, repr=False, compare=False)

    #: its thresholds with their levels in nanos (``budget_rules.levels``), read on every
    #: settle: worked out once per period, not hashed into a cache each call
    levels: tuple[tuple[rules.Threshold, int], ...] = field(init=False, repr=False, compare=False)
    #: the lowest of those levels: a settle that ends below it crossed none (most settles)
    lowest: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bucket", budget_bucket(self.budget, self.window))
        levels = rules.levels(self.budget, self.amount_nanos)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "lowest", min((level for _, level in levels), default=0))


@dataclass(frozen=True, slots=True)
class Applicable:
    """The budgets and wallets one subject's calls count against under one policy
    snapshot, and the span ``[since, until)`` (epoch seconds) it holds for: inside every
    budget's period, with no exception starting or ending and no ticket grant running
    out. Worked out once per subject and span, not on every call."""

    budgets: tuple[Applied, ...]
    wallets: tuple[Wallet, ...]
    since: float
    until: float
    #: each hold's (bucket, cap, cap stored in the bucket), budgets first, then wallets
    holds: tuple[tuple[str, int | None, bool], ...]
    #: the same buckets, in the same order (the settlements')
    buckets: tuple[str, ...]

    @classmethod
    def of(
        cls,
        budgets: tuple[Applied, ...],
        raises: tuple[rules.Raise, ...],
        wallets: tuple[Wallet, ...],
        grants: tuple[Wallet, ...],
        now: datetime,
    ) -> Applicable:
        """``raises``: the exceptions of ``budgets``; ``grants``: every ticket grant the
        subject's wallets could be funded by (in use or run out)."""
        at = now.timestamp()
        since = max((a.window.start.timestamp() for a in budgets), default=float("-inf"))
        until = min((a.window.end.timestamp() for a in budgets), default=float("inf"))
        edges = [t.timestamp() for r in raises for t in (r.starts_at, r.expires_at)]
        edges += [g.expires_at.timestamp() for g in grants if g.expires_at is not None]
        since = max([since, *(t for t in edges if t <= at)])
        until = min([until, *(t for t in edges if t > at)])
        holds = tuple((a.bucket, a.cap_nanos, False) for a in budgets) + tuple(
            (wallet_bucket(w), None, True) for w in wallets
        )
        return cls(budgets, wallets, since, until, holds, tuple(h[0] for h in holds))


def threshold_event(
    a: Applied, threshold: rules.Threshold, spent: int, refused: bool = False
) -> tuple[str, str, dict[str, Any]]:
    """(type, dedup key, data) of ``threshold`` reached at ``spent`` in ``a``'s period:
    the dedup key makes it fire once per budget per period, whoever stores it first. The
    hard limit's names its cap in dollars too (``hard_limit_usd``): below 100 % of the
    amount, "spent $79.99 of $100.00" would not say why calls are refused."""
    data: dict[str, Any] = {
        **budget_event_data(a.budget, a.window),
        "threshold": threshold.kind,
        "percent": f"{threshold.percent.normalize():f}",
        "percent_used": f"{rules.percent_used(spent, a.amount_nanos)}",
        "spent_usd": format_usd(spent),
        "amount_usd": format_usd(a.amount_nanos),
        "hard_limit": a.budget.hard_limit,
        "refused": refused,
    }
    if threshold.kind == "hard" and a.cap_nanos is not None:
        data["hard_limit_usd"] = format_usd(a.cap_nanos)
    key = f"{period_prefix(a.budget.id, a.window)}{threshold.name}"
    return EVENT_TYPES[threshold.kind], key, data


def wallet_level_events(
    w: Wallet, was: int, left: int, cap: int
) -> tuple[tuple[str, str, dict[str, Any]], ...]:
    """(type, dedup key, data) of each wallet level the balance went through from ``was``
    to ``left``: ``wallet.low_balance`` through the low mark, ``wallet.depleted`` at zero.
    Keys include ``cap``, the total topped up, so each top-up re-arms both warnings once
    (a balance a top-up leaves below a mark has not gone through it). A ticket's grant
    warns nobody: it is meant to be used up."""
    low = was > w.low_balance_nanos >= left
    depleted = was > 0 >= left
    if w.grant_of is not None or not (low or depleted):  # every settle: build nothing
        return ()
    data = {
        "wallet_id": w.id,
        "wallet_name": w.name,
        "scope_type": w.scope_type,
        "scope_id": w.scope_id,
        "balance_usd": format_usd(left),
        "low_balance_usd": format_usd(w.low_balance_nanos),
    }
    events = []
    if low:
        events.append(("wallet.low_balance", f"wallet:{w.id}:low:{cap}", data))
    if depleted:
        events.append(("wallet.depleted", f"wallet:{w.id}:depleted:{cap}", data))
    return tuple(events)


#: the name of ``budget.calls_refused`` after its period's prefix (``period_events``);
#: then the cap and the rule it refused under (``refusal_name``)
REFUSED_AT_CAP = "refused:"


def refusal_name(cap: int, bucket: str) -> str:
    """``refused:<cap in nanos>:<rule>``, the rule the last part of the budget's counter
    name (``bucket_name``): what the budget counted when the cap refused a call."""
    return f"{REFUSED_AT_CAP}{cap}:{bucket.rsplit(':', 1)[-1]}"


def refusal_event(a: Applied, refusal: Refusal, worst_case: int) -> tuple[str, str, dict[str, Any]]:
    """(type, dedup key, data) of a hard cap refusing a call that would fit an empty
    period, but not what is spent (whatever is in flight), or any call once spend used
    the cap up: ``budget.calls_refused``, once per budget, period, cap and counting rule
    (in the key, ``refusal_name``: an amount raised, an exception or a new percentage
    re-arms it, as each is a change that could make room, and so does a categories edit,
    which changes what is spent). The budget status reads it: a hard-capped budget with
    this period's event at its current cap, whose spend still leaves too little for the
    refused call, is ``refusing`` (``admin.policies``)."""
    cap = a.cap_nanos if a.cap_nanos is not None else refusal.cap
    used = refusal.spent + refusal.reserved
    data = {
        **budget_event_data(a.budget, a.window),
        "hard_limit_usd": format_usd(cap),
        "amount_usd": format_usd(a.amount_nanos),
        "spent_usd": format_usd(refusal.spent),
        "reserved_usd": format_usd(refusal.reserved),
        "remaining_usd": format_usd(max(0, refusal.cap - used)),
        "worst_case_usd": format_usd(worst_case),
    }
    key = f"{period_prefix(a.budget.id, a.window)}{refusal_name(cap, a.bucket)}"
    return "budget.calls_refused", key, data


def _own(refusal: Refusal, worst_case: int) -> bool:
    """Whether the bucket's own cap refused a call of ``worst_case`` (what is spent and in
    flight leave it too little), not a fail-open outage's share of it, which cuts the cap
    while the refusal names the bucket's own (its figures are this replica's, so at most
    the real ones): only then has the budget reached its limit."""
    return refusal.spent + refusal.reserved + worst_case > refusal.cap


def _lasting(refusal: Refusal, worst_case: int) -> bool:
    """Whether what is spent alone leaves the bucket's cap too little for a call of
    ``worst_case``: only a reset or more room opens it, where a refusal caused by calls
    in flight ends when they settle."""
    return refusal.spent + worst_case > refusal.cap


def lost_buckets(
    parts: Sequence[Settlement], results: Sequence[tuple[int, int] | tuple[int, int, int | None]]
) -> tuple[str, ...]:
    """The buckets a settle did not add its cost to: when any of a call's buckets no
    longer exists, the counters' settle adds the cost to none of them (creating the lost
    one at one call's cost would make the seed skip it), answering ``(0, 0)`` for each,
    where a bucket that took it moves by exactly ``actual``. Seeded from the ledger by
    another replica before this call's row got there, a lost bucket would miss the spend
    for good: the row is marked ``uncounted`` instead, and every one of these buckets
    caught up with it once the row is written (``guard.failover``)."""
    return tuple(
        s.bucket
        for s, (before, after, *_) in zip(parts, results, strict=False)
        if after - before != s.actual
    )


#: for a call whose org has no budget and no wallet
NOTHING_APPLIES = Applicable((), (), float("-inf"), float("inf"), (), ())


@dataclass(slots=True)
class Admission:
    reservation_id: str
    worst_case: int
    budgets: tuple[Applied, ...]
    wallets: tuple[Wallet, ...]
    settled: bool = False
    #: the buckets held, budgets first, then wallets (empty: worked out from those)
    buckets: tuple[str, ...] = ()
    #: buckets its settle did not add its cost to, as one of them was gone (Redis
    #: restarted empty and nobody seeded it again yet): its ledger row is marked
    #: ``uncounted`` and they are caught up from it (``lost_buckets``)
    lost: tuple[str, ...] = ()
    #: each hold's bucket's spent as the reserve read it, before this call (budgets
    #: first, as ``buckets``); None: not read (nothing held, or a path that does not)
    seen: tuple[int, ...] | None = None
    #: whose call, under which policies, when (None: not a call): a budget made since,
    #: or changed to count the call, gets its cost at the settle (``Enforcer.late``)
    subject: rules.Subject | None = None
    snapshot: PolicySnapshot | None = None
    at: datetime | None = None

    @property
    def remaining_seen(self) -> int | None:
        """The tightest budget's remaining nanos before this call, from what the reserve
        read (as a settle's remaining: its hard cap, else its amount, less spent); None
        without a budget or a reading."""
        seen = self.seen
        if seen is None or not self.budgets:
            return None
        return min(
            (a.cap_nanos if a.cap_nanos is not None else a.amount_nanos) - spent
            for a, spent in zip(self.budgets, seen, strict=False)
        )

    @property
    def empty(self) -> bool:
        return not self.budgets and not self.wallets

    @property
    def outstanding(self) -> bool:
        """Whether something is still held: to settle, or to give back."""
        return not self.settled and bool(self.budgets or self.wallets)


@dataclass(slots=True)
class HoldPlan:
    """The holds one call must get, before they are reserved."""

    admission: Admission
    holds: list[Hold]
    expires_at: float
    now: datetime


class Enforcer:
    def __init__(
        self,
        store: PolicyStore,
        counters: Counters,
        ledger: LedgerWriter,
        clock: Clock,
        emit: EmitEvent,
        *,
        reservation_seconds: float,
        refresh_seconds: float = 5.0,
    ) -> None:
        self._store = store
        self._counters = counters
        #: the counters when they are this process's plain memory: each step is then a
        #: call, not an await (the outage counters, a subclass, take the general path)
        self._local = counters if type(counters) is MemoryCounters else None
        self._ledger = ledger
        self._clock = clock
        self._emit = emit
        self._reservation_seconds = reservation_seconds
        self._refresh_seconds = refresh_seconds
        self._snapshot = PolicySnapshot()
        #: the counters' epoch last read (kept through snapshots loaded without Redis)
        self._epoch: str | None = None
        self._loaded_at = float("-inf")
        self._seeded: set[str] = set()
        self._seed_lock = asyncio.Lock()
        self._refresh_lock = asyncio.Lock()
        self._windows: dict[tuple[Period, str, str], Window] = {}
        #: ``applicable`` per subject, for the snapshot ``_applicable_of``
        self._applicable_of: PolicySnapshot | None = None
        self._applicable_cache: dict[rules.Subject, Applicable] = {}
        self._reservation_ids = CountedIds("rsv")
        #: reservation ids of calls running in this process: their holds are renewed
        self._live: set[str] = set()
        #: False while a circuit breaker knows the counters are unreachable
        #: (``guard.failover``): reloads and announcements then do not wait on them
        self.counters_reachable: Callable[[], bool] = lambda: True

    # -- policy snapshot -----------------------------------------------------------------
    async def refresh(self) -> None:
        """Reload budgets, exceptions and wallets (on a timer, and after admin changes),
        one reload at a time: a timed reload that read the rows before an admin change
        committed must not install its snapshot after the change's own reload did (with
        in-process counters nothing else would notice: a new hard cap unbound until the
        next timed reload)."""
        async with self._refresh_lock:
            await self._reload()

    async def _reload(self) -> None:
        """:meth:`refresh`, the lock held.

        The counters' generation is read first, so a change committed before it was
        bumped is always in the rows read after: a snapshot is never newer than it says.
        Redis unreachable: the snapshot is loaded anyway, marked with no generation, so
        the first admission that reaches Redis again reloads it."""
        generation: Generation | None = None
        if self.counters_reachable():
            try:
                generation = await self._counters.generation()
            except RedisError as exc:
                log.warning("policy version unknown, Redis unreachable: %s", exc)
        snapshot = await self._store.snapshot(self._clock.now())
        # compared with the last epoch seen, not the last snapshot's: a snapshot loaded
        # while Redis was unreachable has none, and the loss must still be noticed after
        before = self._epoch
        if generation is not None and before is not None and generation.epoch != before:
            log.warning(
                "the shared counters were lost (epoch %s, was %s): every bucket is seeded "
                "again from the ledger before its next call",
                generation.epoch,
                before,
            )
            self._seeded.clear()
        if generation is not None:
            self._epoch = generation.epoch
        if snapshot.budgets == self._snapshot.budgets:
            # most reloads (the timed one, a wallet or rate-limit change): the budgets
            # are the ones calls in flight were admitted under, ``changed_since`` says so
            snapshot = replace(snapshot, budgets=self._snapshot.budgets)
        self._snapshot = replace(snapshot, generation=generation)
        self._loaded_at = self._clock.monotonic()

    @property
    def generation(self) -> Generation | None:
        """The counters' generation the current snapshot was loaded at."""
        return self._snapshot.generation

    @property
    def epoch(self) -> str | None:
        """The counters' epoch last read: what this process's seeded buckets belong to."""
        return self._epoch

    async def resync(self, seen: Generation) -> None:
        """An admission found the counters at ``seen``, not at this snapshot's generation:
        reload (once, however many calls found it at the same time)."""
        async with self._refresh_lock:
            if self._snapshot.generation != seen:
                await self._reload()

    async def policy_changed(self) -> None:
        """THE call every admin change makes after its transaction commits (budgets,
        exceptions, wallets and top-ups, rate limits, keys): the policy version goes up,
        so every replica reloads before its next admission, and this one reloads now.
        Redis unreachable: the change binds on other replicas at their next timed
        refresh (``refresh_seconds``), and calls that hold anything fail closed anyway."""
        try:
            if not self.counters_reachable():
                raise RedisConnectionError("the circuit breaker is open")
            await self._counters.bump()
        except RedisError as exc:
            log.error("policy change not announced, Redis unreachable: %s", exc)
        await self.refresh()

    async def policies(self) -> PolicySnapshot:
        """The current snapshot, reloaded when older than the refresh interval."""
        return await self._policies()

    async def current(self) -> PolicySnapshot:
        """:meth:`policies`, reloaded first if another replica changed them since: the
        shared counters' generation is read (one round trip), as an admission would find
        it. For reads that answer with the policies (a budget's status: its exceptions),
        which no admission on this replica may have reloaded yet. Redis unreachable: the
        snapshot as it is."""
        snapshot = await self._policies()
        if not self._counters.shared or not self.counters_reachable():
            return snapshot
        try:
            seen = await self._counters.generation()
        except RedisError as exc:
            log.warning("policy version not checked, Redis unreachable: %s", exc)
            return snapshot
        if seen != snapshot.generation:
            await self.resync(seen)
        return self._snapshot

    async def _policies(self) -> PolicySnapshot:
        if self._stale():
            try:
                async with self._refresh_lock:
                    if self._stale():  # the calls that waited for this lock: reloaded
                        await self._reload()
            except (SQLAlchemyError, OSError) as exc:
                if self._loaded_at == float("-inf"):
                    raise
                # the database is down: keep enforcing the policies last loaded (nobody
                # can change them meanwhile) and try again after the refresh interval
                log.warning("policy refresh failed, serving the last snapshot: %s", exc)
                self._loaded_at = self._clock.monotonic()
        return self._snapshot

    def _stale(self) -> bool:
        return self._clock.monotonic() - self._loaded_at > self._refresh_seconds

    def applicable(
        self, snapshot: PolicySnapshot, subject: rules.Subject, now: datetime
    ) -> tuple[tuple[Applied, ...], tuple[Wallet, ...]]:
        found = self._applicable(snapshot, subject, now, now.timestamp())
        return found.budgets, found.wallets

    def _applicable(
        self, snapshot: PolicySnapshot, subject: rules.Subject, now: datetime, at: float
    ) -> Applicable:
        """What ``subject``'s call at ``now`` (``at`` in epoch seconds) counts against,
        cached per snapshot and subject until its span ends."""
        if subject.org_id not in snapshot.by_org:  # no budget or wallet in the org at all
            return NOTHING_APPLIES
        if snapshot is not self._applicable_of:
            self._applicable_of, self._applicable_cache = snapshot, {}
        found = self._applicable_cache.get(subject)
        if found is None or not found.since <= at < found.until:
            found = self._work_out(snapshot, subject, now)
            if len(self._applicable_cache) >= MAX_CACHED_SUBJECTS:
                self._applicable_cache.clear()
            self._applicable_cache[subject] = found
        return found

    def _work_out(
        self, snapshot: PolicySnapshot, subject: rules.Subject, now: datetime
    ) -> Applicable:
        budgets, org_wallets = snapshot.by_org.get(subject.org_id, ((), ()))
        applied = []
        raises: list[rules.Raise] = []
        for budget in budgets:
            if not rules.applies(budget, subject):
                continue
            window = self._window(budget, now)
            own = snapshot.raises.get(budget.id, ())
            raises += own
            amount = rules.effective_amount(budget, own, now)
            applied.append(Applied(budget, window, amount, rules.hard_cap_nanos(budget, amount)))
        covering = [w for w in org_wallets if w.covers(subject)]
        wallets = tuple(snapshot.funding(w, subject.key_id, now) for w in covering)
        grants = [snapshot.grants.get((w.id, subject.key_id)) for w in covering]
        return Applicable.of(
            tuple(applied), tuple(raises), wallets, tuple(g for g in grants if g), now
        )

    def _window(self, budget: rules.Budget, now: datetime) -> Window:
        """The budget's current period; computing it takes ~50 µs, so it is reused until
        ``now`` leaves it."""
        shape = (budget.period, budget.timezone, budget.week_start)
        window = self._windows.get(shape)
        if window is None or not window.contains(now):
            window = window_at(now, *shape)
            self._windows[shape] = window
        return window

    def raises_for(self, budget_id: str) -> tuple[rules.Raise, ...]:
        return self._snapshot.raises.get(budget_id, ())

    async def bucket_states(
        self, budgets: Sequence[tuple[rules.Budget, Window, int]]
    ) -> list[BucketState]:
        """Spent and reserved of each (budget, its current period, its amount), seeding
        the ones not seeded yet together (one ledger scan per org and period)."""
        applied = tuple(
            Applied(budget, window, amount, rules.hard_cap_nanos(budget, amount))
            for budget, window, amount in budgets
        )
        await self._seed(applied, ())
        states = []
        for a in applied:
            state = await self._counters.state(a.bucket)
            states.append(state if state is not None else BucketState(0, 0, None))
        return states

    async def bucket_state(self, budget: rules.Budget, window: Window, amount: int) -> BucketState:
        """Spent and reserved in the budget's current period (seeding it if needed)."""
        return (await self.bucket_states([(budget, window, amount)]))[0]

    # -- seeding live counters from the ledger ------------------------------------------------
    async def _seed(self, applied: tuple[Applied, ...], wallets: tuple[Wallet, ...]) -> None:
        missing = [a for a in applied if a.bucket not in self._seeded]
        missing_w = [w for w in wallets if wallet_bucket(w) not in self._seeded]
        if not missing and not missing_w:
            return
        async with self._seed_lock:
            await self._ledger.flush()
            # one ledger scan per org and period, however many budgets share them
            scans: dict[tuple[str, datetime, datetime], dict[str, Applied]] = {}
            for a in missing:
                if a.bucket in self._seeded or await self._counters.exists(a.bucket):
                    self._seeded.add(a.bucket)
                    continue
                scan = scans.setdefault((a.budget.org_id, a.window.start, a.window.end), {})
                scan[a.bucket] = a
            for (org_id, start, end), todo in scans.items():
                figures = await self._store.spend_split_many(
                    org_id, start, end, [partial(rules.applies, a.budget) for a in todo.values()]
                )
                for a, (spent, uncounted) in zip(todo.values(), figures, strict=True):
                    await self._counters.seed(a.bucket, spent, uncounted=uncounted)
                    self._seeded.add(a.bucket)
            for w in missing_w:
                await self.seed_wallet(w)

    async def recount(self, budget_id: str) -> None:
        """After an edit changed what a budget counts (``bucket_name``): its counter for
        the rule it has now, left by an earlier edit this period (a rule put back), missed
        the calls counted meanwhile under the other rule, and is raised to the ledger's
        spend by this rule (raised only: it never held a call the ledger does not, so
        this counts none twice). A counter never used is seeded when first needed. Redis
        unreachable: the edit stands, and the reconciliation raises it later."""
        budget = next((b for b in self._snapshot.budgets if b.id == budget_id), None)
        if budget is None or not self.counters_reachable():
            return
        window = window_at(self._clock.now(), budget.period, budget.timezone, budget.week_start)
        bucket = budget_bucket(budget, window)
        try:
            if not await self._counters.exists(bucket):
                return
            await self._ledger.flush()
            spent, uncounted = await self._store.spend_split(
                budget.org_id, window.start, window.end, partial(rules.applies, budget)
            )
            await self._counters.raise_to(bucket, "spent", spent, uncounted)
        except RedisError as exc:
            log.warning("budget %s not recounted, Redis unreachable: %s", budget_id, exc)

    async def seed_wallet(self, wallet: Wallet) -> None:
        bucket = wallet_bucket(wallet)
        if bucket in self._seeded:
            return
        if not await self._counters.exists(bucket):
            spent, uncounted = await self._store.wallet_spend(wallet, None)
            funds = await self._store.funds(wallet)
            await self._counters.seed(bucket, spent, funds, uncounted)
        self._seeded.add(bucket)

    # -- the call path ---------------------------------------------------------------------
    @property
    def counters(self) -> Counters:
        return self._counters

    async def admit(
        self,
        subject: rules.Subject,
        worst_case: int | None,
        snapshot: PolicySnapshot | None = None,
    ) -> Admission:
        """Reserve ``worst_case`` nanos everywhere it applies, or refuse (429 / 402; None:
        the price is unknown, see ``plan``). Shared counters whose generation is not the
        snapshot's raise ``PolicyStale``."""
        snapshot = snapshot or await self._policies()
        plan = await self.plan(subject, worst_case, snapshot)
        if plan is None:
            return self.unheld(subject, snapshot)
        if self._local is not None:
            reply = self._local.reserve_now_seen(
                plan.admission.reservation_id, plan.holds, plan.expires_at
            )
        else:
            reply = await self._counters.reserve_seen(
                plan.admission.reservation_id,
                plan.holds,
                plan.expires_at,
                snapshot.generation or UNKNOWN,
            )
        if isinstance(reply, Refusal):
            self.refuse(plan, reply)
        plan.admission.seen = reply
        self._live.add(plan.admission.reservation_id)  # ``holding``: a plan holds something
        return plan.admission

    def unheld(self, subject: rules.Subject, snapshot: PolicySnapshot) -> Admission:
        """The admission of a call that nothing applied to when it was admitted."""
        return Admission("", 0, (), (), subject=subject, snapshot=snapshot, at=self._clock.now())

    def changed_since(self, admission: Admission) -> bool:
        """Whether the budgets changed since ``admission`` (most settles: no, a reload
        that found the same budgets keeps their tuple): then :meth:`late` has budgets to
        look for."""
        seen = admission.snapshot
        return admission.subject is not None and (
            seen is None or seen.budgets is not self._snapshot.budgets
        )

    async def late(self, admission: Admission) -> None:
        """Before ``admission``'s settle: the budgets that count its call now but did not
        when it was admitted (made meanwhile, or changed to count it) take its cost too,
        and so do the ones it held that count it in another counter now (a zone or
        categories edit: the counter they read now; the old one's hold is given back),
        in the period it started in, their counters seeded first from the ledger (which
        does not have this call yet: its row is written after the settle). Without this
        a budget made while calls were in flight never counted them (its counter was
        seeded before they were in the ledger) and let more calls past its hard cap
        until the reconciliation. Called when :meth:`changed_since` (most settles are
        not: one comparison, no await). The database unreachable (the seed reads the
        ledger): the call settles as admitted, and the reconciliation brings its cost."""
        snapshot = self._snapshot
        subject, at = admission.subject, admission.at
        admission.snapshot = snapshot
        if admission.settled or subject is None or at is None:
            return
        found = self._applicable(snapshot, subject, at, at.timestamp())
        now_by_id = {a.budget.id: a for a in found.budgets}
        # a budget held under a counter it no longer reads (its zone or categories
        # changed: ``bucket_name``) takes the call in the one it reads now; the old
        # counter's hold is given back with the rest at the settle
        kept = tuple(
            now_by_id[a.budget.id]
            if a.budget.id in now_by_id and now_by_id[a.budget.id].bucket != a.bucket
            else a
            for a in admission.budgets
        )
        held = {a.budget.id for a in admission.budgets}
        late = tuple(a for a in found.budgets if a.budget.id not in held)
        moved = tuple(a for a, was in zip(kept, admission.budgets, strict=True) if a is not was)
        if not late and not moved:
            return
        try:
            await self._seed((*moved, *late), ())
        except (SQLAlchemyError, OSError) as exc:
            log.warning("budgets made since a call was admitted not counted yet: %s", exc)
            return
        first = len(admission.budgets)
        buckets = admission.buckets or (
            *(a.bucket for a in admission.budgets),
            *(wallet_bucket(w) for w in admission.wallets),
        )
        admission.buckets = (
            *(a.bucket for a in kept),
            *(a.bucket for a in late),
            *buckets[first:],
        )
        admission.budgets = (*kept, *late)
        admission.seen = None  # read before the call, of the budgets held then
        if not admission.reservation_id:  # nothing was held: a reservation of its own
            admission.reservation_id = self._reservation_ids()

    def holding(self, admission: Admission) -> None:
        """``admission``'s holds were taken: renew them while its call runs here."""
        if not admission.empty:
            self._live.add(admission.reservation_id)

    async def renew_holds(self) -> int:
        """The heartbeat: every hold of a call still running here expires
        ``hold_seconds`` from now again. Returns how many reservations it renewed."""
        live = list(self._live)
        await self._counters.renew(live, self._clock.now().timestamp() + self._reservation_seconds)
        return len(live)

    async def plan(
        self,
        subject: rules.Subject,
        worst_case: int | None,
        snapshot: PolicySnapshot | None = None,
    ) -> HoldPlan | None:
        """The holds for this call (their buckets seeded), or None when nothing applies.
        Split from ``admit`` so ``spendgate.guard`` can reserve together with the rate
        limits. ``worst_case`` None: the model's price is unknown, and a cost nobody
        knows cannot be held against a hard cap or a wallet (``refuse_unpriced``); under
        observation-only budgets it holds 0 and is recorded as unknown."""
        now = self._clock.now()
        at = now.timestamp()
        snapshot = snapshot or await self._policies()
        found = self._applicable(snapshot, subject, now, at)
        if not found.buckets:
            return None
        if worst_case is None:
            self.refuse_unpriced(found, subject, now)
            worst_case = 0
        if not self._seeded.issuperset(found.buckets):
            await self._seed(found.budgets, found.wallets)
        holds = [Hold(bucket, worst_case, cap, stored) for bucket, cap, stored in found.holds]
        admission = Admission(
            self._reservation_ids(),
            worst_case,
            found.budgets,
            found.wallets,
            False,
            found.buckets,
            subject=subject,
            snapshot=snapshot,
            at=now,
        )
        return HoldPlan(admission, holds, at + self._reservation_seconds, now)

    def refuse_unpriced(self, found: Applicable, subject: rules.Subject, now: datetime) -> None:
        """Fail closed on money: refuse a call whose price is unknown when a hard cap (429)
        or a wallet (402) applies, before anything is held. Neither has been reached, so
        neither ``budget.hard_limit_reached`` nor ``wallet.depleted`` fires; the refusal
        is announced as ``price.unknown`` (``"refused": true``, once per org, model and day),
        which is audited like a cap hit (``audit_chain.enforcement_event``).
        The next period or a top-up will not price the model: no ``Retry-After``, and
        ``x-should-retry: false``."""
        model = subject.model
        capped = next((a for a in found.budgets if a.cap_nanos is not None), None)
        wallet = found.wallets[0] if found.wallets else None
        if capped is None and wallet is None:
            return
        data: dict[str, Any] = {
            "model": model,
            "provider": subject.provider,
            "key_id": subject.key_id,
            "refused": True,
        }
        if capped is not None:
            data["budget_id"] = capped.budget.id
        else:
            assert wallet is not None
            data["wallet_id"] = wallet.grant_of or wallet.id
        key = unpriced_key(subject.org_id, model, now, refused=True)
        self._emit("price.unknown", key, data, now, subject.org_id)
        if capped is not None:
            b = capped.budget
            raise BudgetExceeded(
                unpriced_refusal(
                    model,
                    f"budget {b.id} ({b.scope_type} {b.scope_id or b.tag}, {b.period}, "
                    f"hard limit ${format_usd(capped.cap_nanos or 0)})",
                ),
                budget_id=b.id,
                resets_at=None,
                retry_after=None,
            )
        assert wallet is not None
        # no cost ticket (``wallet_id`` None): no grant could fund an unknown cost either
        raise InsufficientFunds(
            unpriced_refusal(model, f"wallet {wallet.grant_of or wallet.id}"), retryable=False
        )

    def refuse(self, plan: HoldPlan, refusal: Refusal) -> NoReturn:
        """Fire the refusal's event and raise its error (429 budget, 402 wallet)."""
        self._refuse(plan.admission, refusal, plan.now)

    def _refuse(self, admission: Admission, refusal: Refusal, now: datetime) -> NoReturn:
        # every budget whose cap the call would pass: each may have reached its limit,
        # not only the one the error names (the first)
        every = refusal.every()
        # looked up by bucket: a call under thousands of budgets may be refused by each
        budgets = {a.bucket: a for a in admission.budgets}
        wallets = {wallet_bucket(w): w for w in admission.wallets}
        for each in every:
            a = budgets.get(each.bucket)
            if a is not None:
                self._refused_by(a, each, admission.worst_case, now)
            # only the wallet's own balance refusing: not a fail-open outage's share of it,
            # nor calls in flight holding it (they may settle below their holds); the
            # event is once per top-up, so fired with money to come back it would be
            # missing when the wallet runs dry
            w = wallets.get(each.bucket)
            if w is not None and w.grant_of is None and _lasting(each, admission.worst_case):
                self._emit(
                    "wallet.depleted",
                    f"wallet:{w.id}:depleted:{each.cap}",
                    {
                        "wallet_id": w.id,
                        "scope_type": w.scope_type,
                        "scope_id": w.scope_id,
                        "balance_usd": format_usd(each.cap - each.spent),
                    },
                    now,
                    w.org_id,
                )
        # the error names a cap that stays shut until a reset or a top-up before one that
        # calls in flight may open by settling: "retry" would be wrong advice for the call
        refusal = next((r for r in every if _lasting(r, admission.worst_case)), refusal)
        for a in admission.budgets:
            if a.bucket == refusal.bucket:
                used = refusal.spent + refusal.reserved
                retry = int((a.window.end - now).total_seconds()) + 1
                scope = a.budget.scope_id or a.budget.tag
                figures = (
                    f"spent ${format_usd(refusal.spent)}, ${format_usd(refusal.reserved)} in flight"
                )
                # the budget's own cap, not a fail-open replica's share of its headroom
                whole = refusal.cap if a.cap_nanos is None else a.cap_nanos
                smaller = _smaller_call(admission.worst_case, whole)
                if used >= refusal.cap:
                    why = f"has reached its hard limit of ${format_usd(refusal.cap)}: {figures}"
                else:  # this call's worst case is what does not fit
                    why = (
                        f"has ${format_usd(refusal.cap - used)} left before its hard limit of "
                        f"${format_usd(refusal.cap)} ({figures}) and this call may cost up to "
                        f"${format_usd(admission.worst_case)}{smaller}"
                    )
                raise BudgetExceeded(
                    f"budget {a.budget.id} ({a.budget.scope_type} {scope}"
                    f", {a.budget.period}) {why}; it resets at {a.window.end.isoformat()}",
                    budget_id=a.budget.id,
                    resets_at=a.window.end.isoformat(),
                    retry_after=retry,
                    # calls in flight may settle below their holds and make room; with
                    # none, or a call too big even then, only the reset can
                    retryable=refusal.reserved > 0
                    and refusal.spent + admission.worst_case <= refusal.cap,
                    remaining_usd=format_usd(max(0, refusal.cap - refusal.spent)),
                )
        for w in admission.wallets:
            if wallet_bucket(w) == refusal.bucket:
                balance = refusal.cap - refusal.spent
                free = balance - refusal.reserved
                shortfall = admission.worst_case - max(0, free)
                if w.grant_of is not None:  # a ticket's grant ran short: the ticket layer says so
                    raise InsufficientFunds(
                        f"ticket {w.id} has ${format_usd(max(0, free))} left of its "
                        f"${format_usd(w.grant_nanos)} grant; call may cost up to "
                        f"${format_usd(admission.worst_case)}",
                        wallet_id=w.grant_of,
                        shortfall_nanos=shortfall,
                        ticket_id=w.id,
                    )
                # with money left, the call's output cap is what did not fit: say so
                smaller = (
                    "a call with a lower max_tokens may fit (the worst case counts the whole "
                    "output cap: the model's default_max_tokens when the request sets none), "
                    "or top it up"
                    if free > 0
                    else "top it up to continue"
                )
                raise InsufficientFunds(
                    f"wallet {w.id} cannot fund this call: balance ${format_usd(balance)}, "
                    f"${format_usd(refusal.reserved)} in flight, call may cost up to "
                    f"${format_usd(admission.worst_case)}; {smaller}",
                    wallet_id=w.id,
                    shortfall_nanos=shortfall,
                )
        raise AssertionError(f"refusal for unknown bucket {refusal.bucket}")

    async def settle(self, admission: Admission, actual: int) -> int | None:
        """Book the real cost; fire thresholds crossed; return the tightest budget remaining."""
        if self.changed_since(admission):
            await self.late(admission)
        parts = self.settlements(admission, actual)
        if parts is None:
            return None
        if self._local is not None:
            return self.booked_with_caps(
                admission, self._local.settle_now(admission.reservation_id, parts)
            )
        results = await self._counters.settle(admission.reservation_id, parts)
        admission.lost = lost_buckets(parts, results)
        return await self.booked(admission, results)

    def settlements(self, admission: Admission, actual: int) -> list[Settlement] | None:
        """What settling ``admission`` writes, or None if there is nothing (left) to settle;
        marks it settled."""
        if not admission.outstanding:
            return None
        admission.settled = True
        self._live.discard(admission.reservation_id)
        buckets = admission.buckets or (
            *(a.bucket for a in admission.budgets),
            *(wallet_bucket(w) for w in admission.wallets),
        )
        return [Settlement(bucket, admission.worst_case, actual) for bucket in buckets]

    def releasing(self, admission: Admission) -> bool:
        """True (and marks it settled) if ``admission`` still holds something to give back."""
        if not admission.outstanding:
            return False
        admission.settled = True
        self._live.discard(admission.reservation_id)
        return True

    async def booked(self, admission: Admission, results: Sequence[tuple[int, int]]) -> int | None:
        """``booked_with_caps`` for counters that return spend only (before, after): each
        wallet's cap is read from them when a level could have been crossed."""
        first = len(admission.budgets)
        rows: list[tuple[int, int, int | None]] = [(b, a, None) for b, a in results[:first]]
        for w, (before, after) in zip(admission.wallets, results[first:], strict=False):
            rows.append((before, after, await self._wallet_cap(w) if after > before else None))
        return self.booked_with_caps(admission, rows)

    def booked_with_caps(
        self, admission: Admission, results: Sequence[tuple[int, int, int | None]]
    ) -> int | None:
        """After the counters settled, given (spent before, spent after, cap as the settle
        read it) per settlement: thresholds crossed, wallet levels, budget remaining.
        A settle that added nothing (``Admission.lost``) read no spend: what remains is
        not known here (None), and the catch-up fires the levels its cost crosses."""
        if admission.lost:
            return None
        remaining = None
        for a, (before, after, _) in zip(admission.budgets, results, strict=False):
            if after > before and after >= a.lowest:
                for threshold in rules.crossed_levels(a.levels, before, after):
                    self._fire(a, threshold, after, self._clock.now())
            left = (a.cap_nanos if a.cap_nanos is not None else a.amount_nanos) - after
            remaining = left if remaining is None else min(remaining, left)
        first = len(admission.budgets)
        for w, (before, after, cap) in zip(admission.wallets, results[first:], strict=False):
            if after > before:
                self._wallet_levels(w, before, after, cap or 0)
        return remaining

    async def release(self, admission: Admission) -> None:
        if self.releasing(admission):
            if self._local is not None:
                self._local.release_now(admission.reservation_id)
            else:
                await self._counters.release(admission.reservation_id)

    def _refused_by(self, a: Applied, refusal: Refusal, worst_case: int, now: datetime) -> None:
        """The events of ``a``'s hard cap refusing a call of ``worst_case`` (``refusal``:
        its bucket's figures then), for each refusing budget of the call."""
        # a call whose worst case alone is over the cap would not fit an empty period:
        # the budget has not reached its limit, and the event (once per period) is kept
        # for when it does; and only the cap's own refusal counts (``_own``)
        if _own(refusal, worst_case) and worst_case <= refusal.cap:
            self._fire(
                a, rules.Threshold("hard", a.budget.hard_limit_percent), refusal.spent, now, True
            )
        # and it refuses calls this big at this cap for the rest of the period (once per
        # cap: the budget status reads it), unless only calls in flight hold the room (it
        # is back when they settle: the 429 says retry) or the call is bigger than the
        # whole cap (it says nothing about the budget)
        if _lasting(refusal, worst_case) and (
            worst_case <= refusal.cap or refusal.spent >= refusal.cap
        ):
            self._emit(*refusal_event(a, refusal, worst_case), now, a.budget.org_id)

    def _fire(
        self,
        a: Applied,
        threshold: rules.Threshold,
        spent: int,
        now: datetime,
        refused: bool = False,
    ) -> None:
        self._emit(*threshold_event(a, threshold, spent, refused), now, a.budget.org_id)

    async def _wallet_cap(self, w: Wallet) -> int | None:
        state = await self._counters.state(wallet_bucket(w))
        return state.cap if state is not None else None

    def _wallet_levels(self, w: Wallet, before: int, after: int, cap: int) -> None:
        """The wallet levels a settle from ``before`` to ``after`` spent went through
        (``wallet_level_events``; ``cap``: the top-ups, as the settle read them)."""
        for type_, key, data in wallet_level_events(w, cap - before, cap - after, cap):
            self._emit(type_, key, data, self._clock.now(), w.org_id)

    async def announce_expired_exceptions(self) -> None:
        """``budget.exception_expired`` once for each exception that has run out."""
        now = self._clock.now()
        for row, budget in await self._store.expired_exceptions(now, now - timedelta(days=7)):
            # the period it ran out in (the last one it raised)
            last = row["expires_at"] - timedelta(microseconds=1)
            window = window_at(last, budget.period, budget.timezone, budget.week_start)
            self._emit(
                "budget.exception_expired",
                f"exception:{row['id']}:expired",
                {
                    **budget_event_data(budget, window),
                    "exception_id": row["id"],
                    "amount_usd": format_usd(int(row["amount_nanos"])),
                    "percent": row["percent"],
                    "reason": row["reason"],
                    "starts_at": row["starts_at"].isoformat(),
                    "expires_at": row["expires_at"].isoformat(),
                },
                now,
                budget.org_id,
            )

    async def reap(self) -> int:
        return await self._counters.reap(self._clock.now().timestamp())


def _smaller_call(worst_case: int, cap: int) -> str:
    """What a budget's refusal of a call whose worst case does not fit adds: that worst
    case counts the whole output cap (the model's ``default_max_tokens`` when the request
    sets none, which is what a first call against a small cap trips on), so a call with a
    lower one may pass; one over the whole ``cap`` passes in no period."""
    if worst_case > cap:
        return (
            " (its worst case, the whole output cap included: the model's default_max_tokens "
            "when the request sets none), more than the whole hard limit, so it fits in no "
            "period: send a lower max_tokens or raise the budget"
        )
    return (
        " (its worst case, the whole output cap included): a call with a lower max_tokens may fit"
    )
