"""The rate limiter's and the budget counters' Redis scripts run as one, per call phase.

Before the upstream, ``acquire.lua`` checks that the caller's policies and seeded
buckets are of the current generation (``spendgate.counters``), then the rate-limit
windows and the budget and wallet holds, and records both or neither; after it,
``finish.lua`` settles (or releases) both. Each is one EVALSHA: the proxy pays two
round trips per call instead of four, and a budget refusal never leaves a rate-limit
entry behind, even for an instant.

Redis scripts can't call each other, so each joint script is the two backends' Lua
libraries (``ratelimit/lua/_lib.lua``, ``counters/lua/_lib.lua``) followed by its own
body, which calls their operations with its halves of KEYS and ARGV. The key and
argument layouts come from the backends themselves (``acquire_call``, ``reserve_call``,
…), so each half names exactly the keys its standalone script would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis

from spendgate.counters import Generation, Refusal, Settlement
from spendgate.counters.redis import RedisCounters, generation_reply
from spendgate.counters.redis_pool import lua_library, lua_script, once_more
from spendgate.guard.enforcement import HoldPlan
from spendgate.ratelimit import Denial, Granted
from spendgate.ratelimit.gate import RatePlan
from spendgate.ratelimit.redis import RedisRateLimiter

_NO_RATE_LIMIT = Granted(())
#: connection settings that decide which server and database a client talks to
_ADDRESS = ("host", "port", "path", "db", "username")


def same_database(first: Redis, second: Redis) -> bool:
    """True if both clients reach the same Redis database (the joint scripts need every
    key in one place)."""
    a, b = first.connection_pool, second.connection_pool
    if a is b:
        return True
    return a.connection_class is b.connection_class and all(
        a.connection_kwargs.get(name) == b.connection_kwargs.get(name) for name in _ADDRESS
    )


def joint_script(name: str) -> str:
    """The full text of ``lua/<name>.lua`` (``acquire`` or ``finish``) as Redis runs it:
    both backends' libraries, the joint helpers, then the script."""
    return lua_script(
        "spendgate.guard",
        name,
        *(lua_library(f"spendgate.{package}") for package in ("ratelimit", "counters", "guard")),
    )


def _mode(present: bool, settling: bool) -> str:
    return "" if not present else "s" if settling else "r"


class JointRedis:
    """One round trip per call phase for a ``RedisRateLimiter`` and a ``RedisCounters``
    on the same database; runs on the counters' pipelined connection."""

    def __init__(self, limiter: RedisRateLimiter, counters: RedisCounters) -> None:
        if not same_database(limiter.client, counters.client):
            raise ValueError("the rate limiter and the counters use different Redis databases")
        self._limiter = limiter
        self._counters = counters
        self._acquire = counters.wire.script(joint_script("acquire"))
        self.counters = counters
        self._finish = counters.wire.script(joint_script("finish"))

    async def acquire(
        self, generation: Generation, rate: RatePlan | None, money: HoldPlan | None
    ) -> Denial | Refusal | Granted | Generation:
        """Acquire ``rate``'s checks and reserve ``money``'s holds, both or neither, if
        the stored generation is still ``generation``; else nothing is written and the
        stored generation comes back (the caller reloads and plans again). A rate-limit
        denial wins over a budget refusal (the rate limits are checked first);
        ``Granted(())`` when there is no rate half. A broken connection is retried once
        under the same reservation ids: a repeated reserve of one id is given back whole
        by its settle or release."""
        rate_keys: list[str] = []
        rate_args: list[str | int] = []
        if rate is not None:
            rate_keys, rate_args = self._limiter.acquire_call(
                rate.reservation_id, rate.checks, rate.stamp, rate.expires_at
            )
        money_keys: list[str] = []
        money_args: list[str | int] = []
        if money is not None:
            money_keys, money_args = self._counters.reserve_call(
                money.admission.reservation_id, money.holds, money.expires_at
            )
        keys = [self._counters.generation_key, *rate_keys, *money_keys]
        header: list[str | int] = [
            len(rate_keys),
            len(rate_args),
            int(money is not None),
            generation.epoch,
            generation.version,
        ]
        args = header + rate_args + money_args
        kind, body, *seen = await once_more(
            self._counters.client, lambda: self._acquire(keys=keys, args=args)
        )
        if int(kind) == 3:
            return generation_reply(*body)
        if int(kind) == 0 and money is not None:
            money.admission.seen = self._counters.seen_reply(seen[0])
        return self._acquired(int(kind), body, rate, money)

    def _acquired(
        self, kind: int, body: Any, rate: RatePlan | None, money: HoldPlan | None
    ) -> Denial | Refusal | Granted:
        if kind == 2:
            assert money is not None
            refusal = self._counters.reserve_reply(body, money.holds)
            assert refusal is not None
            return refusal
        if rate is None:
            return _NO_RATE_LIMIT
        return self._limiter.acquire_reply(body, rate.checks, rate.stamp)

    async def finish(
        self,
        rate_id: str | None,
        rate_actual: Mapping[str, int] | None,
        money_id: str | None,
        settlements: Sequence[Settlement] | None,
    ) -> list[tuple[int, int, int | None]]:
        """Finish a call's rate-limit reservation ``rate_id`` and its budget/wallet
        reservation ``money_id`` (None: that half is not touched): settle with
        ``rate_actual``/``settlements``, or release when they are None. Returns the
        counters' settle results, (spent before, spent after, cap), or [] without one."""
        rate_keys: list[str] = []
        rate_args: list[str | int] = []
        if rate_id is not None:
            rate_keys, rate_args = (
                self._limiter.release_call(rate_id)
                if rate_actual is None
                else self._limiter.settle_call(rate_id, rate_actual)
            )
        money_keys: list[str] = []
        money_args: list[str | int] = []
        if money_id is not None:
            money_keys, money_args = (
                self._counters.release_call(money_id)
                if settlements is None
                else self._counters.settle_call(money_id, settlements)
            )
        keys = rate_keys + money_keys
        header: list[str | int] = [
            _mode(rate_id is not None, rate_actual is not None),
            _mode(money_id is not None, settlements is not None),
            len(rate_keys),
            len(rate_args),
        ]
        reply = await self._finish(keys=keys, args=header + rate_args + money_args)
        if money_id is None or settlements is None:
            return []
        return self._counters.settle_reply(reply)
