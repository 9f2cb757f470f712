"""The rate-limit step of a proxied call: which rows govern it, acquire before the
call, settle to actual usage after, release if it was never forwarded.

The rules are in ``rules`` (pure); the windows in a ``RateLimiter`` backend; this
module wires them to the policy snapshot, the clock and the event sink.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from spendgate.core.clock import Clock
from spendgate.core.money import format_usd
from spendgate.core.pricing import unpriced_key, unpriced_refusal
from spendgate.core.rate_rules import (
    MINUTE,
    CheckTemplate,
    RateLimit,
    Unlisted,
    actuals_for,
    checks_for,
    denial_headers,
    describe,
    format_reset,
    granted_headers,
    matching,
    model_allowed,
    scope_rows,
)
from spendgate.errors import NotRetryable, PermissionDenied, SpendgateError
from spendgate.ratelimit import Check, Denial, Granted, RateLimiter
from spendgate.ratelimit.memory import MemoryRateLimiter

EmitEvent = Callable[[str, str, dict[str, Any], datetime, str | None], None]


class RateLimited(SpendgateError):
    status = 429
    code = "rate_limit_exceeded"
    kind = "rate_limit_exceeded"
    anthropic_kind = "rate_limit_error"

    def __init__(self, denial: Denial) -> None:
        super().__init__(describe(denial))
        self.denial = denial

    def headers(self) -> dict[str, str]:
        return denial_headers(self.denial)


class UnpricedSpend(NotRetryable):
    """A spend-velocity limit governs a call whose price is unknown: a cost nobody knows
    cannot be counted against $ per window, and no wait will price it."""

    status, code = RateLimited.status, RateLimited.code
    kind, anthropic_kind = RateLimited.kind, RateLimited.anthropic_kind


@dataclass(slots=True)
class RatePlan:
    """The checks one call must pass, and who it is for the ``ratelimit.exceeded`` event."""

    reservation_id: str
    key_id: str
    team_id: str | None
    org_id: str
    model: str
    rows: Sequence[RateLimit]
    template: CheckTemplate
    checks: list[Check]
    now: datetime
    stamp: float
    expires_at: float


@dataclass(slots=True)
class RateAdmission:
    reservation_id: str
    rows: Sequence[RateLimit]
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False
    #: the rows' checks, for ``settle`` (None: worked out from ``rows``)
    template: CheckTemplate | None = None


#: (model allowed, governing rows, their checks) for one key, team and model
Governing = tuple[bool, list[RateLimit], CheckTemplate]


def _not_allowed(model: str) -> PermissionDenied:
    return PermissionDenied(f"model {model!r} is not approved for this key", param="model")


class RateGate:
    def __init__(
        self,
        limiter: RateLimiter,
        clock: Clock,
        emit: EmitEvent,
        *,
        unlisted: Unlisted,
        reservation_seconds: float,
    ) -> None:
        self._limiter = limiter
        #: the limiter when it is this process's memory: each step a call, not an await
        self._local = limiter if type(limiter) is MemoryRateLimiter else None
        self._clock = clock
        self._emit = emit
        self._unlisted = unlisted
        self._reservation_seconds = reservation_seconds
        self._source: Mapping[str, tuple[RateLimit, ...]] | None = None
        self._cache: dict[tuple[str, str | None, str], Governing] = {}

    def _governing(
        self,
        limits: Mapping[str, tuple[RateLimit, ...]],
        key_id: str,
        team_id: str | None,
        model: str,
    ) -> Governing:
        """(model allowed, governing rows, their check template), cached per snapshot of
        the limits: on the hot path a call only fills in its amounts."""
        if limits is not self._source:
            self._source, self._cache = limits, {}
        cached = self._cache.get((key_id, team_id, model))
        if cached is None:
            rows = scope_rows(
                [*limits.get(key_id, ()), *limits.get(team_id or "", ())], key_id, team_id
            )
            governing = matching(rows, key_id, team_id, model)
            cached = (
                model_allowed(rows, model, self._unlisted),
                governing,
                CheckTemplate(governing),
            )
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[(key_id, team_id, model)] = cached
        return cached

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    async def admit(
        self,
        limits: Mapping[str, tuple[RateLimit, ...]],
        reservation_id: str,
        key_id: str,
        team_id: str | None,
        org_id: str,
        model: str,
        tokens: int,
        worst_nanos: int | None,
    ) -> RateAdmission:
        """Acquire the call's checks, or raise ``RateLimited`` (403 for a model not
        allowed; ``UnpricedSpend`` for a price unknown, ``worst_nanos`` None, under a
        spend limit). The in-process hot path: no plan object, the template's checks."""
        allowed, rows, template = self._governing(limits, key_id, team_id, model)
        if not allowed:
            raise _not_allowed(model)
        if template.empty:
            return RateAdmission(reservation_id, (), done=True)
        now = self._clock.now()
        if worst_nanos is None:
            worst_nanos = self._unpriced(rows, key_id, org_id, model, now)
        checks = template.checks(tokens, worst_nanos)
        stamp = now.timestamp()
        if self._local is not None:
            outcome = self._local.acquire_now(
                reservation_id, checks, stamp, stamp + self._reservation_seconds
            )
        else:
            outcome = await self._limiter.acquire(
                reservation_id, checks, stamp, stamp + self._reservation_seconds
            )
        if isinstance(outcome, Denial):
            self._refuse(outcome, key_id, team_id, org_id, model, now, stamp)
        return RateAdmission(
            reservation_id, rows, granted_headers(checks, outcome), False, template
        )

    def screen(
        self,
        limits: Mapping[str, tuple[RateLimit, ...]],
        key_id: str,
        team_id: str | None,
        model: str,
    ) -> None:
        """What binds a request that takes nothing from the limits (a token count): the
        model must be allowed (``unlisted_models = "deny"``: 403, as ``admit``), and no
        governing row may be a pause (``rpm = 0``, what an anomaly's pause writes: the
        429 of a call, not retryable). Nothing is acquired, no event raised."""
        allowed, rows, _ = self._governing(limits, key_id, team_id, model)
        if not allowed:
            raise _not_allowed(model)
        for row in rows:
            if row.rpm == 0:
                paused = Check(f"{row.id}:requests", "requests", 0, MINUTE, 1)
                raise RateLimited(Denial(0, paused, 0, None))

    def plan(
        self,
        limits: Mapping[str, tuple[RateLimit, ...]],
        reservation_id: str,
        key_id: str,
        team_id: str | None,
        org_id: str,
        model: str,
        tokens: int,
        worst_nanos: int | None,
    ) -> RatePlan | None:
        """What to acquire for this call, or None when no limit applies. ``admit`` split
        in two, so ``spendgate.guard`` can acquire together with the budget holds."""
        allowed, rows, template = self._governing(limits, key_id, team_id, model)
        if not allowed:
            raise _not_allowed(model)
        if template.empty:
            return None
        now = self._clock.now()
        if worst_nanos is None:
            worst_nanos = self._unpriced(rows, key_id, org_id, model, now)
        stamp = now.timestamp()
        return RatePlan(
            reservation_id,
            key_id,
            team_id,
            org_id,
            model,
            rows,
            template,
            template.checks(tokens, worst_nanos),
            now,
            stamp,
            stamp + self._reservation_seconds,
        )

    def _unpriced(
        self, rows: Sequence[RateLimit], key_id: str, org_id: str, model: str, now: datetime
    ) -> int:
        """A call whose price is unknown: refused (``UnpricedSpend``) when a governing row
        has a spend limit, announced (and audited) as ``price.unknown`` (``"refused":
        true``, once per org, model and day; not ``ratelimit.exceeded``: the limit was not
        reached); else its spend counts as 0 (requests, tokens and concurrency are counted
        as usual)."""
        row = next((r for r in rows if r.max_spend_nanos is not None), None)
        if row is None:
            return 0
        data = {"model": model, "key_id": key_id, "limit_id": row.id, "refused": True}
        key = unpriced_key(org_id, model, now, refused=True)
        self._emit("price.unknown", key, data, now, org_id)
        limit = (
            f"rate limit {row.id} ({row.scope_type} {row.scope_id}, model {row.model!r}, "
            f"${format_usd(row.max_spend_nanos or 0)} per "
            f"{format_reset(row.spend_window_seconds)})"
        )
        raise UnpricedSpend(unpriced_refusal(model, limit))

    def outcome(self, plan: RatePlan, outcome: Denial | Granted) -> RateAdmission:
        """The admission for a granted plan; for a denial, the event and ``RateLimited``."""
        if isinstance(outcome, Denial):
            self._refuse(
                outcome, plan.key_id, plan.team_id, plan.org_id, plan.model, plan.now, plan.stamp
            )
        return RateAdmission(
            plan.reservation_id,
            plan.rows,
            granted_headers(plan.checks, outcome),
            False,
            plan.template,
        )

    def _refuse(
        self,
        denial: Denial,
        key_id: str,
        team_id: str | None,
        org_id: str,
        model: str,
        now: datetime,
        stamp: float,
    ) -> NoReturn:
        """``ratelimit.exceeded`` (once per key, model and minute), then ``RateLimited``."""
        window = int(stamp // 60)
        self._emit(
            "ratelimit.exceeded",
            f"ratelimit:{key_id}:{model}:{window}",
            {
                "key_id": key_id,
                "team_id": team_id,
                "model": model,
                "limit_id": denial.check.bucket.split(":", 1)[0],
                "kind": denial.check.kind,
                # a spend limit is money: a USD decimal string, as all money in JSON
                **(
                    {"limit_usd": format_usd(denial.check.limit)}
                    if denial.check.kind == "spend"
                    else {"limit": denial.check.limit}
                ),
                # ISO 8601 UTC, as every other event's instants (not Unix seconds)
                "window_start": datetime.fromtimestamp(window * 60, UTC).isoformat(),
            },
            now,
            org_id,
        )
        raise RateLimited(denial)

    def actuals(
        self, admission: RateAdmission, tokens: int, cost_nanos: int
    ) -> dict[str, int] | None:
        """What settling ``admission`` writes, or None if it is done already; marks it done."""
        if admission.done:
            return None
        admission.done = True
        if admission.template is not None:
            return admission.template.actuals(tokens, cost_nanos)
        return actuals_for(admission.rows, tokens, cost_nanos)

    def releasing(self, admission: RateAdmission) -> bool:
        """True (and marks it done) if ``admission`` still holds something to give back."""
        if admission.done:
            return False
        admission.done = True
        return True

    async def settle(self, admission: RateAdmission, tokens: int, cost_nanos: int) -> None:
        """The call was forwarded: it counts as a request; tokens and spend become actual."""
        actual = self.actuals(admission, tokens, cost_nanos)
        if actual is None:
            return
        if self._local is not None:
            self._local.settle_now(admission.reservation_id, actual)
        else:
            await self._limiter.settle(
                admission.reservation_id, actual, self._clock.now().timestamp()
            )

    async def release(self, admission: RateAdmission) -> None:
        """The call never reached the provider: give everything back."""
        if not self.releasing(admission):
            return
        if self._local is not None:
            self._local.release_now(admission.reservation_id)
        else:
            await self._limiter.release(admission.reservation_id, self._clock.now().timestamp())

    async def usage(self, rows: Sequence[RateLimit]) -> list[tuple[RateLimit, Check, int]]:
        """Each limit of ``rows`` (one check per kind the row sets: requests, tokens,
        spend, concurrency) with what its bucket holds now: the counts the next call
        is checked against (the console's "use now" and headroom)."""
        checks = [(row, check) for row in rows for check in checks_for([row], 0, 0)]
        now = self._clock.now().timestamp()
        used = await self._limiter.usage([check for _, check in checks], now)
        return [(row, check, n) for (row, check), n in zip(checks, used, strict=True)]

    async def reap(self) -> int:
        return await self._limiter.reap(self._clock.now().timestamp())

    async def aclose(self) -> None:
        await self._limiter.aclose()
