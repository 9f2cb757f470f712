"""Redis unreachable: a circuit breaker in front of ``CallGuard``, and, in fail-open mode,
local counters for the outage whose spend reaches Redis's counters once it is back.

* **The breaker.** The first call that cannot reach Redis (connection refused, reset or
  timed out) trips it. While it is open no call touches Redis: a dead Redis costs its
  connect timeout once per ``probe_seconds`` (one probe: a read of the generation), not
  on every call; calls that arrive while a probe runs wait for its outcome. The probe
  that reaches Redis again first catches the counters up with what was spent meanwhile
  (below), and only then lets calls use Redis.
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

**Back to Redis, once.** What Redis has not counted (an outage's spend, the cost of a
call whose settle could not reach Redis, a call admitted locally that finished after
Redis came back) is in the ledger, on rows marked ``uncounted``. The probe that finds
Redis again flushes this process's ledger and *catches up* each bucket this process
counted without Redis (``Reconciler.reconcile(only=…)``, grace 0): the bucket stores how
much of the ledger's uncounted spend it already holds, and takes only the rest
(``Counters.catch_up``), before any call uses Redis again. However many replicas do it,
and in whatever order their rows reach the database, the outage's spend is counted
once; and as spend Redis did count is not part of the figure, calls settled in Redis
whose rows are still on their way to the database are not lost to it (a raise to the
ledger's whole total, the first design, lost them). After recovery the counters equal
the ledger. (A Redis that came back empty has no such buckets: they are seeded from the
ledger, which has the spend. A call still running when it came back settles into a
bucket that is gone, or not seeded again yet: the settle adds nothing there, so its row
is marked ``uncounted`` too and the bucket caught up from it once the row is written
(``enforcement.lost_buckets``), whichever replica seeded it and whenever the row
arrived.) Thresholds the catch-up crosses fire then, with their
usual dedup keys; Redis reservations of calls whose settle failed are given back. A
call counted without Redis is done at ``release``, once its ledger row is on disk: one
still writing it when the probe read the ledger is caught up at the next tick. That
tick also catches up every live counter (``check_all``, as at start and after a dead
process's spool was replayed): a replica killed before Redis came back leaves its
outage's spend in the ledger and on no live process's list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import SQLAlchemyError

from spendgate.core.budget_rules import Subject
from spendgate.core.clock import Clock
from spendgate.counters import Counters
from spendgate.counters.outage import OutageCounters
from spendgate.counters.redis import RedisCounters
from spendgate.errors import DatabaseUnavailable, StateUnavailable
from spendgate.guard import CallGuard, Guarded
from spendgate.guard.enforcement import Admission, Enforcer, wallet_bucket
from spendgate.ratelimit.gate import RateAdmission, RateGate
from spendgate.store.policies import PolicySnapshot

log = logging.getLogger("spendgate.guard.failover")

#: what counts as "Redis unreachable" (``WritesRefused``, a Redis that answers but takes
#: no write, is a ``RedisConnectionError``; redis-py's own classes of it for the pooled
#: connections); any other Redis error is a bug and propagates
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OutOfMemoryError, ReadOnlyError)
Mode = Literal["closed", "open"]
#: how often a replica that lost Redis tries it again
PROBE_SECONDS = 1.0
#: (enforcer, rate gate) like the primary ones, over the given counters and process memory
LocalGuards = Callable[[Counters], tuple[Enforcer, RateGate]]
#: catch these buckets' (None: every bucket's) live counters up with the ledger's
#: uncounted spend; how many took some
Reconcile = Callable[[set[str] | None], Awaitable[int]]


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
    #: calls admitted here and not finished yet, and in all
    running: int = 0
    admitted: int = 0
    #: every bucket counted here: Redis is behind on them until caught up
    buckets: set[str] = field(default_factory=set)
    #: Redis is back and this outage's spend has been handed over
    closed: bool = False


@dataclass(slots=True)
class LocalGuarded(Guarded):
    """A call admitted against an outage's local counters."""

    counted: ClassVar[bool] = False

    outage: Outage
    finished: bool = False


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
        reconcile: Reconcile,
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
        self._reconcile = reconcile
        self.mode: Mode = mode
        self._replicas = replicas
        self.breaker = Breaker(clock.monotonic, probe_seconds)
        enforcer.counters_reachable = lambda: self.breaker.up
        self._outage: Outage | None = None
        #: buckets Redis may count less than the ledger for, and reservations to give back
        self._behind: set[str] = set()
        self._releases: list[str] = []
        #: per reservation, buckets of a call Redis missed whose ledger row is not written yet
        self._unrecorded: dict[str, list[str]] = {}
        #: catch every live counter up with the ledger at the next tick: at start, after an
        #: outage, after a dead process's spool was replayed (``check_all``)
        self._check_all = True
        #: what the catch-up running now has taken off the lists above (``status``)
        self._catching: set[str] = set()
        self._checking_all = False
        self._catch_up_lock = asyncio.Lock()
        #: set when the probe running now is done (calls arriving meanwhile wait for it)
        self._probe: asyncio.Event | None = None
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
        worst_nanos: int | None,
        snapshot: PolicySnapshot,
    ) -> Guarded:
        """Through Redis while it answers; else refused (fail-closed) or admitted against
        local counters (fail-open). Raises the call's ``RedisError`` when it is the one
        that found Redis gone in fail-closed mode (the proxy answers 503)."""
        if self.breaker.probe_due() or self.breaker.probing:
            await self.recover()  # or wait for the probe running: Redis may be back
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
        worst_nanos: int | None,
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
        worst_nanos: int | None,
        snapshot: PolicySnapshot,
    ) -> Guarded:
        outage = self._outage
        if outage is None:
            counters = OutageCounters(self._replicas)
            enforcer, rate_gate = self._local(counters)
            outage = Outage(counters, enforcer, CallGuard(rate_gate, enforcer))
            self._outage = outage
            log.warning(
                "Redis unreachable: fail-open, admitting calls against this replica's "
                "share (1/%d) of each cap's headroom until it is back",
                self._replicas,
            )
        guarded = await outage.guard.admit(request_id, subject, tokens, worst_nanos, snapshot)
        outage.buckets.update(buckets_of(guarded.admission))
        outage.running += 1
        outage.admitted += 1
        self.local_admissions += 1
        return LocalGuarded(guarded.rated, guarded.admission, outage)

    # -- after the call ----------------------------------------------------------------------
    async def settle(self, guarded: Guarded, tokens: int, cost_nanos: int) -> int | None:
        if isinstance(guarded, LocalGuarded):
            return await guarded.outage.guard.settle(guarded, tokens, cost_nanos)
        try:
            remaining = await self._primary.settle(guarded, tokens, cost_nanos)
        except UNREACHABLE as exc:
            # the provider answered: the ledger has the spend, Redis gets it from there
            self.trip(exc)
            self._behind_on(guarded)
            raise
        if guarded.admission.lost:  # caught up once its (uncounted) row is written
            self._unrecorded[guarded.admission.reservation_id] = list(guarded.admission.lost)
        return remaining

    def _finished_locally(self, guarded: LocalGuarded) -> None:
        """At ``release``, so after the call's ledger row was written: a catch-up that
        read the ledger before then (the probe's, while the row was still on its way to
        the spool) missed this spend, so it is caught up again at the next tick."""
        if guarded.finished:
            return
        guarded.finished = True
        guarded.outage.running -= 1
        if guarded.outage.closed:  # Redis came back while it ran: caught up at the next tick
            self._behind.update(buckets_of(guarded.admission))

    async def unbilled(self, guarded: Guarded) -> None:
        if isinstance(guarded, LocalGuarded):
            await guarded.outage.guard.unbilled(guarded)
            return
        try:
            await self._primary.unbilled(guarded)
        except UNREACHABLE as exc:
            self.trip(exc)
            self._behind_on(guarded)
            raise

    async def release(self, guarded: Guarded) -> None:
        """Give back whatever is still held (idempotent). Redis unreachable: the holds
        are given back when it returns (or reaped), and the call is not failed for it.

        The proxy calls it last, after the call's ledger row is on disk (``_book``): only
        from here is the call's spend one a catch-up can read, so this is where a call
        counted without Redis is done ("Back to Redis, once")."""
        if isinstance(guarded, LocalGuarded):
            await guarded.outage.guard.release(guarded)
            self._finished_locally(guarded)
            return
        try:
            await self._primary.release(guarded)
        except UNREACHABLE as exc:
            self.trip(exc)
            self._behind_on(guarded)
        owed = self._unrecorded.pop(guarded.admission.reservation_id, None)
        if owed is not None:
            self._behind.update(owed)

    def abandon(self, guarded: Guarded) -> None:
        if isinstance(guarded, LocalGuarded):
            guarded.outage.guard.abandon(guarded)
        else:
            self._primary.abandon(guarded)

    def _behind_on(self, guarded: Guarded) -> None:
        """A Redis-admitted call's settle or release did not reach Redis: its reservation
        is given back when Redis answers, its buckets caught up once its ledger row is
        written (``release``)."""
        if not guarded.admission.empty:
            self._unrecorded[guarded.admission.reservation_id] = buckets_of(guarded.admission)
            self._releases.append(guarded.admission.reservation_id)

    # -- the breaker and the way back ------------------------------------------------------------
    def trip(self, exc: BaseException) -> None:
        if self.breaker.tripped():
            log.error(
                "shared counters (Redis) unreachable: %s; %s, probing every %.1f s",
                exc,
                "fail-open on local counters" if self.mode == "open" else "fail-closed",
                self.breaker.probe_seconds,
            )

    async def recover(self) -> None:
        """The probe: read the generation; if Redis answers, catch up every bucket counted
        without it with the ledger's uncounted spend, then let calls use it again. Redis
        failing again keeps the breaker open; the database failing does not (the buckets
        stay behind and are caught up at a later tick)."""
        if self._probe is not None:
            await self._probe.wait()
            return
        self._probe = asyncio.Event()
        self.breaker.probing = True
        try:
            await self._redis.generation()
            outage = self._outage
            if outage is not None:
                outage.closed = True
                self._behind.update(outage.buckets)
                self._outage = None  # lost again before the catch-up: a new outage
            await self._catch_up()
            self._check_all = True  # and every other counter at the next tick
            down = self.breaker.recovered()
            self.last_outage_seconds = down
            log.warning("shared counters (Redis) reachable again after %.1f s", down)
        except UNREACHABLE as exc:
            self.trip(exc)
        finally:
            self.breaker.probing = False
            probe, self._probe = self._probe, None
            probe.set()

    def check_all(self) -> None:
        """Catch every live counter up with the ledger at the next tick. Spend made without
        Redis by a process that died before it was back is in the ledger (its rows were
        written, or replayed from its spool) but on no live process's list: this process
        starts with it set, sets it when it finds Redis back, and when it replays a dead
        process's spool (``LedgerWriter.on_replayed``)."""
        self._check_all = True

    async def tick(self) -> None:
        """Housekeeping: probe when due, and catch up buckets still behind."""
        if self.breaker.probe_due():
            await self.recover()
        elif self.breaker.up and (self._behind or self._releases or self._check_all):
            try:
                await self._catch_up(everything=True)
            except UNREACHABLE as exc:
                self.trip(exc)

    async def _catch_up(self, *, everything: bool = False) -> None:
        """Catch the buckets behind (``everything``: and, if ``check_all`` asked for it,
        every bucket) up with the ledger (this process's rows flushed first) and give back the
        reservations left in Redis. A database failure is logged and the buckets stay
        behind for the next tick; Redis failing raises (the caller trips). The probe
        leaves ``everything`` to the tick: calls wait for the probe, not for that."""
        async with self._catch_up_lock:
            buckets, self._behind = self._behind, set()
            releases, self._releases = self._releases, []
            check_all, self._check_all = (
                self._check_all and everything,
                self._check_all and not everything,
            )
            self._catching, self._checking_all = buckets, check_all
            try:
                if buckets:
                    caught = await self._reconcile(buckets)
                    log.warning(
                        "%d of %d live counters caught up with the ledger after Redis was "
                        "unreachable or lost them",
                        caught,
                        len(buckets),
                    )
                if check_all and (caught := await self._reconcile(None)):
                    log.warning("%d more live counters caught up with the ledger", caught)
                for reservation_id in releases:
                    await self._redis.release(reservation_id)
            except UNREACHABLE:
                self._behind |= buckets
                self._releases += releases
                self._check_all |= check_all
                raise
            except (SQLAlchemyError, OSError, DatabaseUnavailable) as exc:
                self._behind |= buckets
                self._releases += releases
                self._check_all |= check_all
                log.warning("live counters not caught up yet, database unavailable: %s", exc)
            finally:
                self._catching, self._checking_all = set(), False

    # -- what /readyz and /metrics show --------------------------------------------------------
    def status(self) -> dict[str, Any]:
        outage = self._outage
        since = self.breaker.since
        now = self._clock.monotonic()
        return {
            "redis": "ok" if self.breaker.up else "unreachable",
            "redis_failure_mode": self.mode,  # the config's own word: closed | open
            "redis_down_seconds": round(now - since, 3) if since is not None else 0.0,
            "redis_local_admissions": outage.admitted if outage is not None else 0,
            "redis_buckets_behind": len(
                self._behind.union(self._catching, *self._unrecorded.values())
            ),
            "redis_catch_up_pending": self._check_all or self._checking_all,
        }


def buckets_of(admission: Admission) -> list[str]:
    return [a.bucket for a in admission.budgets] + [wallet_bucket(w) for w in admission.wallets]
