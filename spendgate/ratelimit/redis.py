"""Rate-limit logs in Redis (``redis://`` / ``rediss://``), shared by every replica.

Every operation is one round trip: a Lua script from ``lua/`` (with ``_lib.lua`` in
front) run with EVALSHA. The scripts are thin: the operations live in ``_lib.lua`` as
functions of (KEYS, ARGV), so ``spendgate.guard`` can run an acquire together with the
budget counters' reserve in one script (and a settle with theirs) on the proxy's hot path.

Keys, under a prefix (default ``sg:``), for a bucket ``B``:

* ``<prefix>rl:B:z``: a sorted set of reservation ids, scored by entry time (window
  buckets) or by ``expires_at`` (concurrency slots);
* ``<prefix>rl:B:a``: for window buckets, a hash from reservation id to amount, plus
  ``#total``, the running sum, so a check costs O(entries leaving), not O(window);
* ``<prefix>rl:r:<reservation id>``: a hash from bucket to ``w``/``c``, until settled;
* ``<prefix>rl:reservations``: live reservation ids scored by ``expires_at``, for reap.

Window keys carry a TTL of their window (plus a second) from their last write, and
slot keys one past their latest ``expires_at``; so an idle bucket vanishes by itself.
TTLs run on Redis's clock while entries are stamped with the ``now`` passed in, which
is fine as long as the two roughly agree (tests with a frozen clock finish long
before any TTL fires).

Stamps travel as ``repr(float)`` and come back as Redis's 17-digit scores, so both
backends compute ``retry_after`` and ``reset_seconds`` from the same doubles. Keys of
the buckets a reservation touched are derived inside the scripts, so one Redis instance
is assumed (on a cluster, use a hash-tagged prefix such as ``{sg}:``). Driver errors
(``redis.exceptions.RedisError``) propagate; the caller maps them at the boundary.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from spendgate.counters.redis_pool import lua_script, pooled_client
from spendgate.ratelimit import Check, CheckResult, Denial, Granted, validate

#: how long a reservation's record outlives its ``expires_at`` (seconds)
RECORD_GRACE = 60


def _script(client: Redis, name: str) -> AsyncScript:
    """Register ``lua/<name>.lua`` with the shared helpers from ``_lib.lua`` in front."""
    return client.register_script(lua_script("spendgate.ratelimit", name))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisRateLimiter:
    """The ``RateLimiter`` protocol over ``redis.asyncio.Redis``; owns and closes its client."""

    def __init__(self, client: Redis, *, prefix: str = "sg:") -> None:
        self._redis = client
        self._prefix = prefix
        self._zset = f"{prefix}rl:reservations"
        self._acquire = _script(client, "acquire")
        self._settle = _script(client, "settle")
        self._release = _script(client, "release")
        self._reap = _script(client, "reap")
        self._usage = _script(client, "usage")

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "sg:", max_connections: int = 50, pool_timeout: float = 5.0
    ) -> RedisRateLimiter:
        """See :func:`spendgate.counters.redis_pool.pooled_client`."""
        client = pooled_client(url, max_connections=max_connections, pool_timeout=pool_timeout)
        return cls(client, prefix=prefix)

    @property
    def prefix(self) -> str:
        return self._prefix

    def _rkey(self, reservation_id: str) -> str:
        return f"{self._prefix}rl:r:{reservation_id}"

    @property
    def client(self) -> Redis:
        return self._redis

    # -- script keys and arguments, shared with the joint scripts of spendgate.guard --------
    def acquire_call(
        self, reservation_id: str, checks: Sequence[Check], now: float, expires_at: float
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of ``acquire.lua`` (``rl_check`` + ``rl_record``)."""
        validate(reservation_id, checks)
        live = max(1, math.ceil(expires_at - now))
        prefix = self._prefix
        keys = [self._zset, f"{prefix}rl:r:{reservation_id}"]
        args: list[str | int] = [
            reservation_id,
            repr(float(now)),
            repr(float(expires_at)),
            live + RECORD_GRACE,
        ]
        for bucket, kind, limit, window_seconds, amount in checks:
            base = f"{prefix}rl:{bucket}"
            keys += [f"{base}:z", f"{base}:a"]
            if kind == "concurrency":
                args += [bucket, "c", limit, "", 1, live + 1]
            else:
                args += [
                    bucket,
                    "w",
                    limit,
                    repr(float(now) - float(window_seconds)),
                    amount,
                    math.ceil(window_seconds) + 1,
                ]
        return keys, args

    @staticmethod
    def acquire_reply(reply: Any, checks: Sequence[Check], now: float) -> Denial | Granted:
        index = int(reply[0])
        if index:
            check = checks[index - 1]
            fit = _text(reply[2])
            retry = float(fit) - (now - check.window_seconds) if fit else None
            return Denial(index - 1, check, int(reply[1]), retry)
        results: list[CheckResult] = []
        for i, check in enumerate(checks):
            used_after, oldest = int(reply[1 + 2 * i]), reply[2 + 2 * i]
            reset = float(oldest) - (now - check.window_seconds) if oldest else 0.0
            results.append(CheckResult(check.limit, max(0, check.limit - used_after), reset))
        return Granted(tuple(results))

    def settle_call(
        self, reservation_id: str, actual: Mapping[str, int]
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of ``settle.lua`` (``rl_settle``)."""
        args: list[str | int] = [self._prefix, reservation_id]
        for bucket, amount in actual.items():
            args += [bucket, amount]
        return [self._zset, self._rkey(reservation_id)], args

    def release_call(self, reservation_id: str) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of ``release.lua`` (``rl_release``)."""
        return [self._zset, self._rkey(reservation_id)], [self._prefix, reservation_id]

    # -- the RateLimiter protocol ------------------------------------------------------------
    async def acquire(
        self, reservation_id: str, checks: Sequence[Check], now: float, expires_at: float
    ) -> Denial | Granted:
        keys, args = self.acquire_call(reservation_id, checks, now, expires_at)
        return self.acquire_reply(await self._acquire(keys=keys, args=args), checks, now)

    async def settle(self, reservation_id: str, actual: Mapping[str, int], now: float) -> None:
        keys, args = self.settle_call(reservation_id, actual)
        await self._settle(keys=keys, args=args)

    async def release(self, reservation_id: str, now: float) -> None:
        keys, args = self.release_call(reservation_id)
        await self._release(keys=keys, args=args)

    async def usage(self, checks: Sequence[Check], now: float) -> list[int]:
        if not checks:
            return []
        keys: list[str] = []
        args: list[str] = []
        for check in checks:
            base = f"{self._prefix}rl:{check.bucket}"
            keys += [f"{base}:z", f"{base}:a"]
            if check.kind == "concurrency":
                args += ["c", repr(float(now))]
            else:
                args += ["w", repr(float(now) - float(check.window_seconds))]
        return [int(v) for v in await self._usage(keys=keys, args=args)]

    async def reap(self, now: float) -> int:
        return int(await self._reap(keys=[self._zset], args=[self._prefix, repr(float(now))]))

    async def aclose(self) -> None:
        await self._redis.aclose()
