"""A proxied call's guard: its rate limits and its budget and wallet holds, taken before
the upstream call and settled (or given back) after it.

Either way below, the rate limits are checked first (a call over both a rate limit
and a budget gets the rate limit's 429), and a refusal by either leaves nothing held by
the other.

* **In turn** (memory backends, or Redis backends on different databases): the rate
  gate, then the enforcer, each with its own backend call; a budget refusal releases
  the rate-limit entries just taken. In Redis that is two round trips before the call
  (three with the generation read below) and two after.
* **Joint** (both backends on one Redis database): ``JointRedis`` runs both halves of
  each phase in one Lua script, so the hot path pays one round trip before the call
  and one after, and a budget refusal never writes a rate-limit entry at all.

Shared counters carry a generation (``spendgate.counters``): the joint acquire compares
it with the one this process's policy snapshot was loaded at, and a call with nothing
to hold reads it (one command). In turn it is read before the rate gate (the rate
limits' policies), and the counters' reserve compares it again in its own script: Redis
may have restarted empty in between, and holds taken then would re-create lost buckets.
A difference raises ``PolicyStale`` before any hold is taken (in turn, the rate-limit
entries just taken are released): the caller reloads (``Enforcer.resync``) and plans
the call again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from redis.exceptions import RedisError

from spendgate.core.budget_rules import Subject
from spendgate.counters import Counters, Generation, PolicyStale, Refusal, Settlement
from spendgate.counters.redis import RedisCounters
from spendgate.guard.enforcement import UNKNOWN, Admission, Enforcer, lost_buckets
from spendgate.guard.redis import JointRedis, same_database
from spendgate.guard.shared_read import SharedRead
from spendgate.ratelimit import RateLimiter
from spendgate.ratelimit.gate import RateAdmission, RateGate
from spendgate.ratelimit.redis import RedisRateLimiter
from spendgate.store.policies import PolicySnapshot

log = logging.getLogger("spendgate.guard")


@dataclass(slots=True)
class Guarded:
    """What a call holds while it runs: its rate-limit reservation and its budget one."""

    #: its settle goes to the shared counters (False: to an outage's local ones, so its
    #: ledger row is marked ``uncounted`` and the counters take it from there)
    counted: ClassVar[bool] = True

    rated: RateAdmission
    admission: Admission

    @property
    def uncounted(self) -> bool:
        """Its spend is not in the shared counters (settled to an outage's local ones, or
        into buckets Redis lost): its ledger row says so, and the counters take the spend
        from there (``Counters.catch_up``)."""
        return not self.counted or bool(self.admission.lost)


def joint_backend(limiter: RateLimiter, counters: Counters) -> JointRedis | None:
    """The joint scripts when both backends are Redis on one database; else None."""
    if (
        isinstance(limiter, RedisRateLimiter)
        and isinstance(counters, RedisCounters)
        and same_database(limiter.client, counters.client)
    ):
        return JointRedis(limiter, counters)
    return None


class CallGuard:
    def __init__(self, rate_gate: RateGate, enforcer: Enforcer) -> None:
        self._rate = rate_gate
        self._enforcer = enforcer
        self._joint = joint_backend(rate_gate.limiter, enforcer.counters)
        #: the generation read of calls with nothing to hold, shared while one is in flight
        self._generation = SharedRead(enforcer.counters.generation)

    @property
    def joint(self) -> bool:
        """True when each call phase is one Redis round trip for both backends."""
        return self._joint is not None

    async def admit(
        self,
        request_id: str,
        subject: Subject,
        tokens: int,
        worst_nanos: int | None,
        snapshot: PolicySnapshot,
    ) -> Guarded:
        """Take the rate limits and the holds for ``worst_nanos``, or refuse: 429
        ``rate_limit_exceeded``, 429 ``budget_exceeded``, 402 ``insufficient_funds``, 403
        for a model the rate limits do not allow. ``worst_nanos`` None: the price is
        unknown, refused by any spend limit, hard cap or wallet that applies."""
        expected = snapshot.generation or UNKNOWN
        if self._joint is None:
            if self._enforcer.counters.shared:  # counters in Redis, rate limits elsewhere
                await self._check(expected)
            return await self._admit_in_turn(request_id, subject, tokens, worst_nanos, snapshot)
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
        money = await self._enforcer.plan(subject, worst_nanos, snapshot)
        admission = (
            money.admission if money is not None else self._enforcer.unheld(subject, snapshot)
        )
        if rate is None and money is None:
            await self._check(expected, fail_open=True)
            return Guarded(_no_rate_limit(request_id), admission)
        outcome = await self._joint.acquire(expected, rate, money)
        if isinstance(outcome, Generation):
            raise PolicyStale(outcome)
        if isinstance(outcome, Refusal):
            assert money is not None
            self._enforcer.refuse(money, outcome)
        rated = self._rate.outcome(rate, outcome) if rate is not None else None
        self._enforcer.holding(admission)
        return Guarded(rated or _no_rate_limit(request_id), admission)

    async def _check(self, expected: Generation, *, fail_open: bool = False) -> None:
        """Raise ``PolicyStale`` unless the counters' generation is ``expected``.
        ``fail_open``: a call with nothing to hold goes on if Redis cannot be reached
        (nothing it could be held against is reachable either; see the README)."""
        try:
            current = await self._generation()
        except RedisError as exc:
            if not fail_open:
                raise
            log.warning("policy version not checked, Redis unreachable: %s", exc)
            return
        if current != expected:
            raise PolicyStale(current)

    async def _admit_in_turn(
        self,
        request_id: str,
        subject: Subject,
        tokens: int,
        worst_nanos: int | None,
        snapshot: PolicySnapshot,
    ) -> Guarded:
        rated = await self._rate.admit(
            snapshot.rate_limits,
            request_id,
            subject.key_id,
            subject.team_id,
            subject.org_id,
            subject.model,
            tokens,
            worst_nanos,
        )
        try:
            admission = await self._enforcer.admit(subject, worst_nanos, snapshot)
        except BaseException:
            await self._rate.release(rated)
            raise
        return Guarded(rated, admission)

    async def settle(self, guarded: Guarded, tokens: int, cost_nanos: int) -> int | None:
        """The call was forwarded and cost ``cost_nanos`` for ``tokens``: book both; returns
        the tightest budget's remaining nanos (None without a budget)."""
        rated, admission = guarded.rated, guarded.admission
        if self._joint is None:
            remaining = await self._enforcer.settle(admission, cost_nanos)
            await self._rate.settle(rated, tokens, cost_nanos)
            return remaining
        if self._enforcer.changed_since(admission):
            await self._enforcer.late(admission)
        parts = self._enforcer.settlements(admission, cost_nanos)
        actual = self._rate.actuals(rated, tokens, cost_nanos)
        results = await self._finish(guarded, actual, actual is not None, parts, parts is not None)
        if parts is None:
            return None
        admission.lost = lost_buckets(parts, results)
        return self._enforcer.booked_with_caps(admission, results)

    def abandon(self, guarded: Guarded) -> None:
        """Settling failed (Redis unreachable): forget both halves here, so nothing tries
        again and the holds are no longer renewed; Redis's reaper gives them back."""
        self._rate.releasing(guarded.rated)
        self._enforcer.releasing(guarded.admission)

    async def unbilled(self, guarded: Guarded) -> None:
        """The call was forwarded but is not billed (a provider error): it counts as a
        request with no tokens or spend, and its budget and wallet holds are given back."""
        if self._joint is None:
            await self._rate.settle(guarded.rated, 0, 0)
            await self._enforcer.release(guarded.admission)
            return
        actual = self._rate.actuals(guarded.rated, 0, 0)
        await self._finish(
            guarded, actual, actual is not None, None, self._enforcer.releasing(guarded.admission)
        )

    async def release(self, guarded: Guarded) -> None:
        """The call never reached the provider (or ended in a way not settled above): give
        back whatever is still held. Idempotent."""
        if self._joint is None:
            if not guarded.rated.done:  # after a settle (the usual end) nothing is left
                await self._rate.release(guarded.rated)
            if guarded.admission.outstanding:
                await self._enforcer.release(guarded.admission)
            return
        await self._finish(
            guarded,
            None,
            self._rate.releasing(guarded.rated),
            None,
            self._enforcer.releasing(guarded.admission),
        )

    async def _finish(
        self,
        guarded: Guarded,
        actual: Mapping[str, int] | None,
        rate: bool,
        parts: Sequence[Settlement] | None,
        money: bool,
    ) -> list[tuple[int, int, int | None]]:
        """One joint script for whichever halves are still open (``rate``, ``money``):
        settled with ``actual``/``parts``, released when those are None."""
        if not rate and not money:
            return []
        assert self._joint is not None
        return await self._joint.finish(
            guarded.rated.reservation_id if rate else None,
            actual,
            guarded.admission.reservation_id if money else None,
            parts,
        )


def _no_rate_limit(request_id: str) -> RateAdmission:
    return RateAdmission(request_id, (), done=True)
