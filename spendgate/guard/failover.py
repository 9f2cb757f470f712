"""Redis unreachable: a circuit breaker in front of ``CallGuard``, and, in fail-open mode,
local counters for the outage whose spend goes back to Redis exactly once.

* **The breaker.** The first call that cannot reach Redis (connection refused, reset or
  timed out) trips it. While it is open no call touches Redis: a dead Redis costs its
  connect timeout once per ``probe_seconds`` (one probe: a read of the generation), not
  on every call. The probe that reaches Redis again first hands back what was spent
  meanwhile (below), and only then lets calls use Redis.
* **Fail-closed** (the default): while the breaker is open, a call that would hold
  anything (a budget or wallet hold, a rate limit) is refused with 503
  ``state_unavailable`` and Retry-After; a call with nothing to hold goes on, as it
  does when Redis is up.
* **Fail-open** (``redis_failure_mode = "open"``): while it is open, calls are admitted
  against an ``Outage``: a ``CallGuard`` over this process's memory (``OutageCounters``,
  ``MemoryRateLimiter``), with the same policy snapshot, the same rules
  (``core.budget_rules``) and buckets seeded from the ledger. Each hard cap is cut to
  this replica's share of the headroom the ledger showed, ``fail_open_cap(cap, seed,
  fail_open_replicas)``; rate limits hold per replica.

**Back to Redis, exactly once.** What Redis has not counted is *owed*: an outage's spend
past each bucket's seed, the cost of a call whose settle could not reach Redis, and
the cost of a call admitted locally that finished after Redis came back. Owed spend is
sent in batches by ``replay.lua``, which adds it to each bucket only if (a) the
counters' epoch is still the one the spend belongs to (a Redis that came back empty is
seeded again from the ledger, which has this spend: nothing is added) and (b) the
batch's marker key is new (a batch whose reply was lost is not added twice when sent
again under the same marker). Thresholds the added spend crosses fire then, with their
usual dedup keys. Redis reservations of calls whose settle failed are given back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from spendgate.core.budget_rules import Subject
from spendgate.core.clock import Clock
from spendgate.counters import Counters
from spendgate.counters.outage import OutageCounters
from spendgate.counters.redis import RedisCounters
from spendgate.counters.redis_pool import lua_script
from spendgate.errors import StateUnavailable
from spendgate.guard import CallGuard, Guarded
from spendgate.guard.enforcement import Admission, Applied, Enforcer, wallet_bucket
from spendgate.ratelimit.gate import RateAdmission, RateGate
from spendgate.security.credentials import new_id
from spendgate.store.policies import PolicySnapshot, Wallet

log = logging.getLogger("spendgate.guard.failover")

#: what counts as "Redis unreachable"; any other Redis error is a bug and propagates
UNREACHABLE = (RedisConnectionError, RedisTimeoutError)
Mode = Literal["closed", "open"]
#: how often a replica that lost Redis tries it again
PROBE_SECONDS = 1.0
#: how long a replay's marker is kept (a reply lost for longer than this is unlikely)
MARKER_TTL_SECONDS = 7 * 24 * 3600
#: (enforcer, rate gate) like the primary ones, over the given counters and process memory
LocalGuards = Callable[[Counters], tuple[Enforcer, RateGate]]


class Breaker:
    """Closed while Redis answers; open from the first failure, with one probe allowed
    every ``probe_seconds`` (on the clock passed in)."""

    def __init__(self, monotonic: Callable[[], float], probe_seconds: float) -> None:
        self._monotonic = monotonic
        self.probe_seconds = probe_seconds
        self.up = True
        self.probing = False
        #: when it opened (monotonic), None while closed
        self.since: float | None = None
        self._next_probe = 0.0
        #: how many times Redis was lost
        self.trips = 0

    def tripped(self) -> bool:
        """Record a failure; True if Redis was in use until now."""
        now = self._monotonic()
        self._next_probe = now + self.probe_seconds
        if not self.up:
            return False
        self.up, self.since = False, now
        self.trips += 1
        return True

    def probe_due(self) -> bool:
        return not self.up and not self.probing and self._monotonic() >= self._next_probe

    def recovered(self) -> float:
        """Closed again; returns how long it was open."""
        down = self._monotonic() - (self.since if self.since is not None else self._monotonic())
        self.up, self.since = True, None
        return down


@dataclass
class Outage:
    """One Redis outage of this process, in fail-open mode."""

    counters: OutageCounters
    enforcer: Enforcer
    guard: CallGuard
    #: the counters' epoch when it began (None: never known): the spend belongs to it
    epoch: str | None
    #: calls admitted here and not finished yet, and in all
    running: int = 0
    admitted: int = 0
    #: each bucket counted here, as the budget period or wallet it is (for thresholds)
    targets: dict[str, Applied | Wallet] = field(default_factory=dict)
    #: Redis is back and this outage's spend has been handed over
    closed: bool = False


@dataclass(slots=True)
class LocalGuarded(Guarded):
    """A call admitted against an outage's local counters."""

    outage: Outage
    finished: bool = False


@dataclass
class Owed:
    """Spend Redis has not counted, per bucket, under one epoch, and what it belongs to."""

    amounts: dict[str, int] = field(default_factory=dict)
    budgets: dict[str, Applied] = field(default_factory=dict)
    wallets: dict[str, Wallet] = field(default_factory=dict)
    #: Redis reservations (money) to give back
    releases: list[str] = field(default_factory=list)

    def add(self, admission: Admission, cost: int) -> None:
        for a in admission.budgets:
            self.budgets[a.bucket] = a
            self.amounts[a.bucket] = self.amounts.get(a.bucket, 0) + cost
        for w in admission.wallets:
            self.wallets[wallet_bucket(w)] = w
            self.amounts[wallet_bucket(w)] = self.amounts.get(wallet_bucket(w), 0) + cost

    @property
    def empty(self) -> bool:
        return not any(self.amounts.values()) and not self.releases


@dataclass
class Batch:
    marker: str
    epoch: str
    owed: Owed


class FailoverGuard:
    """``CallGuard``'s interface (admit, settle, unbilled, release, abandon) with the
    breaker and, in fail-open mode, the local outage path in front."""

    def __init__(
        self,
        primary: CallGuard,
        enforcer: Enforcer,
        rate_gate: RateGate,
        counters: RedisCounters,
        clock: Clock,
        local: LocalGuards,
        *,
        mode: Mode = "closed",
        replicas: int = 1,
        probe_seconds: float = PROBE_SECONDS,
    ) -> None:
        self._primary = primary
        self._enforcer = enforcer
        self._rate = rate_gate
        self._redis = counters
        self._clock = clock
        self._local = local
        self.mode: Mode = mode
        self._replicas = replicas
        self.breaker = Breaker(clock.monotonic, probe_seconds)
        self._outage: Outage | None = None
        self._owed: dict[str, Owed] = {}
        self._batch: Batch | None = None
        self._replay_lock = asyncio.Lock()
        self._replay = counters.client.register_script(lua_script("spendgate.guard", "replay"))
        #: calls admitted without Redis since start, and the outages seen
        self.local_admissions = 0
        self.last_outage_seconds: float | None = None

    @property
    def joint(self) -> bool:
        return self._primary.joint

    # -- admission ---------------------------------------------------------------------------
    async def admit(
        self,
        request_id: str,
        subject: Subject,
        tokens: int,
        worst_nanos: int,
        snapshot: PolicySnapshot,
    ) -> Guarded:
        """Through Redis while it answers; else refused (fail-closed) or admitted against
        local counters (fail-open). Raises the call's ``RedisError`` when it is the one
        that found Redis gone in fail-closed mode (the proxy answers 503)."""
        if self.breaker.probe_due():
            await self.recover()
        if self.breaker.up:
            try:
                return await self._primary.admit(request_id, subject, tokens, worst_nanos, snapshot)
            except UNREACHABLE as exc:
                self.trip(exc)
                if self.mode == "closed":
                    raise
        if self.mode == "closed":
            if self._holds_nothing(request_id, subject, tokens, worst_nanos, snapshot):
                return Guarded(RateAdmission(request_id, (), done=True), Admission("", 0, (), ()))
            raise StateUnavailable(
                "spendgate cannot reach its shared counters (Redis), so it cannot check "
                "budgets and limits; retry shortly"
            )
        return await self._admit_locally(request_id, subject, tokens, worst_nanos, snapshot)

    def _holds_nothing(
        self,
        request_id: str,
        subject: Subject,
        tokens: int,
        worst_nanos: int,
        snapshot: PolicySnapshot,
    ) -> bool:
        """No rate limit, budget or wallet applies (a model not allowed still raises 403)."""
        rate = self._rate.plan(
            snapshot.rate_limits,
            request_id,
            subject.key_id,
            subject.team_id,
            subject.org_id,
            subject.model,
            tokens,
            worst_nanos,
        )
        applied, wallets = self._enforcer.applicable(snapshot, subject, self._clock.now())
        return rate is None and not applied and not wallets

    async def _admit_locally(
        self,
        request_id: str,
        subject: Subject,
        tokens: int,
        worst_nanos: int,
        snapshot: PolicySnapshot,
    ) -> Guarded:
        outage = self._outage
        if outage is None:
            counters = OutageCounters(self._replicas)
            enforcer, rate_gate = self._local(counters)
            outage = Outage(
                counters, enforcer, CallGuard(rate_gate, enforcer), self._enforcer.epoch
            )
            self._outage = outage
            log.warning(
                "Redis unreachable: fail-open, admitting calls against this replica's "
                "share (1/%d) of each cap's headroom until it is back",
                self._replicas,
            )
        guarded = await outage.guard.admit(request_id, subject, tokens, worst_nanos, snapshot)
        for a in guarded.admission.budgets:
            outage.targets[a.bucket] = a
        for w in guarded.admission.wallets:
            outage.targets[wallet_bucket(w)] = w
        outage.running += 1
        outage.admitted += 1
        self.local_admissions += 1
        return LocalGuarded(guarded.rated, guarded.admission, outage)

    # -- after the call ----------------------------------------------------------------------
    async def settle(self, guarded: Guarded, tokens: int, cost_nanos: int) -> int | None:
        if isinstance(guarded, LocalGuarded):
            outage = guarded.outage
            remaining = await outage.guard.settle(guarded, tokens, cost_nanos)
            self._finished_locally(guarded, cost_nanos)
            return remaining
        try:
            return await self._primary.settle(guarded, tokens, cost_nanos)
        except UNREACHABLE as exc:
            # the provider answered: the spend is owed to Redis, the hold given back
            self.trip(exc)
            owed = self._owing(self._enforcer.epoch)
            if owed is not None:
                owed.add(guarded.admission, cost_nanos)
                if not guarded.admission.empty:
                    owed.releases.append(guarded.admission.reservation_id)
            raise

    def _finished_locally(self, guarded: LocalGuarded, cost_nanos: int) -> None:
        if guarded.finished:
            return
        guarded.finished = True
        outage = guarded.outage
        outage.running -= 1
        if outage.closed and cost_nanos:  # Redis came back while it ran: owed
            owed = self._owing(outage.epoch)
            if owed is not None:
                owed.add(guarded.admission, cost_nanos)

    async def unbilled(self, guarded: Guarded) -> None:
        if isinstance(guarded, LocalGuarded):
            await guarded.outage.guard.unbilled(guarded)
            self._finished_locally(guarded, 0)
            return
        try:
            await self._primary.unbilled(guarded)
        except UNREACHABLE as exc:
            self.trip(exc)
            self._release_later(guarded)
            raise

    async def release(self, guarded: Guarded) -> None:
        """Give back whatever is still held (idempotent). Redis unreachable: the holds
        are given back when it returns (or reaped), and the call is not failed for it."""
        if isinstance(guarded, LocalGuarded):
            await guarded.outage.guard.release(guarded)
            self._finished_locally(guarded, 0)
            return
        try:
            await self._primary.release(guarded)
        except UNREACHABLE as exc:
            self.trip(exc)
            self._release_later(guarded)

    def abandon(self, guarded: Guarded) -> None:
        if isinstance(guarded, LocalGuarded):
            guarded.outage.guard.abandon(guarded)
        else:
            self._primary.abandon(guarded)

    def _release_later(self, guarded: Guarded) -> None:
        owed = self._owing(self._enforcer.epoch)
        if owed is not None and not guarded.admission.empty:
            owed.releases.append(guarded.admission.reservation_id)

    # -- the breaker and the way back ------------------------------------------------------------
    def trip(self, exc: BaseException) -> None:
        if self.breaker.tripped():
            log.error(
                "shared counters (Redis) unreachable: %s; %s, probing every %.1f s",
                exc,
                "fail-open on local counters" if self.mode == "open" else "fail-closed",
                self.breaker.probe_seconds,
            )

    def _owing(self, epoch: str | None) -> Owed | None:
        """Where spend owed under ``epoch`` collects; None when the epoch was never known
        (nothing can be seeded under it: the ledger brings the spend)."""
        if epoch is None:
            return None
        return self._owed.setdefault(epoch, Owed())

    async def recover(self) -> None:
        """The probe: read the generation; if Redis answers, hand back what it has not
        counted, then let calls use it again. A failure keeps the breaker open."""
        if self.breaker.probing:
            return
        self.breaker.probing = True
        try:
            await self._redis.generation()
            outage = self._outage
            if outage is not None:
                self._close(outage)
                self._outage = None  # lost again before the hand-over: a new outage
            await self._send_owed()
            down = self.breaker.recovered()
            self.last_outage_seconds = down
            log.warning("shared counters (Redis) reachable again after %.1f s", down)
        except UNREACHABLE as exc:
            self.trip(exc)
        finally:
            self.breaker.probing = False

    def _close(self, outage: Outage) -> None:
        """Redis is back: what the outage settled past each seed is owed; calls still
        running add theirs when they finish."""
        outage.closed = True
        owed = self._owing(outage.epoch)
        if owed is None:
            log.warning("outage spend not sent to Redis (its epoch was never known)")
            return
        for bucket, amount in outage.counters.outage_spend().items():
            owed.amounts[bucket] = owed.amounts.get(bucket, 0) + amount
            target = outage.targets.get(bucket)
            if isinstance(target, Wallet):
                owed.wallets[bucket] = target
            elif target is not None:
                owed.budgets[bucket] = target

    async def tick(self) -> None:
        """Housekeeping: probe when due, and send owed spend that is waiting."""
        if self.breaker.probe_due():
            await self.recover()
        elif self.breaker.up and (self._owed or self._batch is not None):
            try:
                await self._send_owed()
            except UNREACHABLE as exc:
                self.trip(exc)

    async def _send_owed(self) -> None:
        """Send every owed batch (one marker each, kept until its reply arrives)."""
        async with self._replay_lock:
            while True:
                if self._batch is None:
                    if not self._owed:
                        return
                    epoch, owed = next(iter(self._owed.items()))
                    del self._owed[epoch]
                    if owed.empty:
                        continue
                    self._batch = Batch(new_id("rpl"), epoch, owed)
                await self._apply(self._batch)
                self._batch = None

    async def _apply(self, batch: Batch) -> None:
        owed = batch.owed
        buckets = [b for b, amount in owed.amounts.items() if amount > 0]
        prefix = self._redis.prefix
        keys = [self._redis.generation_key, f"{prefix}replayed:{batch.marker}"]
        keys += [prefix + b for b in buckets]
        args: list[str | int] = [batch.epoch, MARKER_TTL_SECONDS]
        args += [owed.amounts[b] for b in buckets]
        reply = await self._replay(keys=keys, args=args)
        outcome = int(reply[0])
        if outcome == -1:
            log.warning(
                "spend owed to Redis not added: its counters were lost meanwhile and are "
                "seeded again from the ledger, which has it"
            )
        elif outcome == 1:
            results = [(int(reply[1 + 2 * i]), int(reply[2 + 2 * i])) for i in range(len(buckets))]
            log.warning(
                "added spend made without Redis to %d live counters: %s",
                len(buckets),
                ", ".join(f"{b} +{owed.amounts[b]}" for b in buckets),
            )
            await self._fire(owed, buckets, results)
        for reservation_id in owed.releases:
            await self._redis.release(reservation_id)

    async def _fire(self, owed: Owed, buckets: list[str], results: list[tuple[int, int]]) -> None:
        """Thresholds the added spend crossed (and wallet levels), as a settle fires them."""
        budgets, wallets = [], []
        budget_results: list[tuple[int, int]] = []
        wallet_results: list[tuple[int, int]] = []
        for bucket, (before, after) in zip(buckets, results, strict=True):
            if before < 0:
                continue
            if bucket in owed.budgets:
                budgets.append(owed.budgets[bucket])
                budget_results.append((before, after))
            elif bucket in owed.wallets:
                wallets.append(owed.wallets[bucket])
                wallet_results.append((before, after))
        admission = Admission("", 0, tuple(budgets), tuple(wallets))
        await self._enforcer.booked(admission, budget_results + wallet_results)

    # -- what /readyz and /metrics show --------------------------------------------------------
    def status(self, now: float | None = None) -> dict[str, Any]:
        outage = self._outage
        since = self.breaker.since
        now = self._clock.monotonic() if now is None else now
        owed = sum(sum(o.amounts.values()) for o in self._owed.values())
        if self._batch is not None:
            owed += sum(self._batch.owed.amounts.values())
        return {
            "redis": "ok" if self.breaker.up else "unreachable",
            "redis_failure_mode": f"fail-{self.mode}",
            "redis_down_seconds": round(now - since, 3) if since is not None else 0.0,
            "redis_local_admissions": outage.admitted if outage is not None else 0,
            "redis_owed_nanos": owed,
        }
