"""The rate-limit step of a proxied call: which rows govern it, acquire before the
call, settle to actual usage after, release if it was never forwarded.

The rules are in ``rules`` (pure); the windows in a ``RateLimiter`` backend; this
module wires them to the policy snapshot, the clock and the event sink.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spendgate.clock import Clock
from spendgate.errors import PermissionDenied, SpendgateError
from spendgate.ratelimit import Check, Denial, RateLimiter
from spendgate.ratelimit.rules import (
    RateLimit,
    Unlisted,
    actuals_for,
    checks_for,
    denial_headers,
    describe,
    granted_headers,
    matching,
    model_allowed,
    scope_rows,
)

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


@dataclass(slots=True)
class RateAdmission:
    reservation_id: str
    rows: Sequence[RateLimit]
    headers: dict[str, str] = field(default_factory=dict)
    done: bool = False


class RateGate:
    def __init__(self, limiter: RateLimiter, clock: Clock, emit: EmitEvent, *,
                 unlisted: Unlisted, reservation_seconds: float) -> None:
        self._limiter = limiter
        self._clock = clock
        self._emit = emit
        self._unlisted = unlisted
        self._reservation_seconds = reservation_seconds
        self._source: Mapping[str, tuple[RateLimit, ...]] | None = None
        self._cache: dict[tuple[str, str | None, str], tuple[bool, list[RateLimit]]] = {}

    def _governing(self, limits: Mapping[str, tuple[RateLimit, ...]], key_id: str,
                   team_id: str | None, model: str) -> tuple[bool, list[RateLimit]]:
        """(model allowed, governing rows), cached per snapshot of the limits."""
        if limits is not self._source:
            self._source, self._cache = limits, {}
        cached = self._cache.get((key_id, team_id, model))
        if cached is None:
            rows = scope_rows([*limits.get(key_id, ()), *limits.get(team_id or "", ())],
                              key_id, team_id)
            cached = (model_allowed(rows, model, self._unlisted),
                      matching(rows, key_id, team_id, model))
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[(key_id, team_id, model)] = cached
        return cached

    async def admit(self, limits: Mapping[str, tuple[RateLimit, ...]], reservation_id: str,
                    key_id: str, team_id: str | None, org_id: str, model: str, tokens: int,
                    worst_nanos: int) -> RateAdmission:
        allowed, rows = self._governing(limits, key_id, team_id, model)
        if not allowed:
            raise PermissionDenied(f"model {model!r} is not approved for this key",
                                   param="model")
        if not rows:
            return RateAdmission(reservation_id, (), done=True)
        checks: list[Check] = checks_for(rows, tokens, worst_nanos)
        if not checks:
            return RateAdmission(reservation_id, (), done=True)
        now = self._clock.now()
        stamp = now.timestamp()
        outcome = await self._limiter.acquire(reservation_id, checks, stamp,
                                              stamp + self._reservation_seconds)
        if isinstance(outcome, Denial):
            window = int(stamp // 60)
            self._emit("ratelimit.exceeded", f"ratelimit:{key_id}:{model}:{window}",
                       {"key_id": key_id, "team_id": team_id, "model": model,
                        "limit_id": outcome.check.bucket.split(":", 1)[0],
                        "kind": outcome.check.kind, "limit": outcome.check.limit,
                        "window_start": window * 60}, now, org_id)
            raise RateLimited(outcome)
        return RateAdmission(reservation_id, rows, granted_headers(checks, outcome))

    async def settle(self, admission: RateAdmission, tokens: int, cost_nanos: int) -> None:
        """The call was forwarded: it counts as a request; tokens and spend become actual."""
        if admission.done:
            return
        admission.done = True
        await self._limiter.settle(admission.reservation_id,
                                   actuals_for(admission.rows, tokens, cost_nanos),
                                   self._clock.now().timestamp())

    async def release(self, admission: RateAdmission) -> None:
        """The call never reached the provider: give everything back."""
        if admission.done:
            return
        admission.done = True
        await self._limiter.release(admission.reservation_id, self._clock.now().timestamp())

    async def reap(self) -> int:
        return await self._limiter.reap(self._clock.now().timestamp())

    async def aclose(self) -> None:
        await self._limiter.aclose()
