"""Counters in Redis (``redis://`` / ``rediss://``), shared by every replica.

Every operation is one round trip: a Lua script from ``lua/`` run with EVALSHA (on the
pipelined connection of ``redis_wire``, reloaded once if the server forgot it), or a
single read command. Reserve and settle live in ``_lib.lua`` as functions of (KEYS, ARGV), so
``spendgate.guard`` can run them in one script with the rate limiter's acquire and
settle on the proxy's hot path. Keys, under a prefix (default ``sg:``):

* ``<prefix><bucket>``: a hash with ``spent``, ``reserved`` and, for wallets, ``cap``;
* ``<prefix>r:<reservation id>``: a hash from bucket key to the amount it holds there;
* ``<prefix>reservations``: a sorted set of live reservation ids scored by expires_at,
  which ``reap`` walks (a live call's holder moves its expiry forward: ``renew``);
* ``<prefix>gen``: the generation hash, ``epoch`` and ``version`` (see ``spendgate.counters``).

Buckets get no TTL. Budget buckets are named per period (``b:<budget>:<period key>:<rule digest>``),
so a finished period's hash is simply left behind (a few dozen bytes each); delete or
expire them out of band if that ever matters. A bucket that vanishes (a restart without
persistence, a FLUSHDB) is noticed by its lost epoch and seeded again from the ledger;
``settle`` and ``add_cap`` never re-create one, and ``reserve`` given the caller's
generation checks it in the same script (a restart just before would otherwise have it
re-create the buckets holding only its holds). Eviction of single keys would not be
noticed that way, so run Redis with ``maxmemory-policy noeviction``.

Figures are integers in nano-dollars, exact to the nano across the whole 64-bit range
Redis stores (HINCRBY), far beyond the API's largest amount ($1e9, 10**18 nanos). Lua's
numbers are doubles, exact only below 2**53 nanos (about $9,007,199), so the scripts
use them only while every figure involved stays below that, and past it add and compare
the figures' texts with ``lua/_nanos.lua`` (put in front of every script, the rate
limiter's too), which splits each into two exact parts. Figures travel both ways as
integers or their decimal strings, never as floats.

Reservation keys are derived inside ``reap.lua``, so one Redis instance is assumed (on
a cluster, put every key in one slot with a hash-tagged prefix such as ``{sg}:``).
Driver errors (``redis.exceptions.RedisError``) propagate to the caller, which maps
them at the boundary.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from spendgate import counters
from spendgate.counters import BucketState, Generation, Hold, PolicyStale, Refusal, Settlement
from spendgate.counters.redis_pool import lua_script, once_more, pooled_client
from spendgate.counters.redis_wire import PipelinedRedis, Script


def _cap(value: Any) -> int | None:
    return None if value is None else int(value)


def generation_reply(epoch: Any, version: Any) -> Generation:
    """A generation as Redis returns it (bytes or str; a missing epoch reads as '')."""
    text = epoch.decode() if isinstance(epoch, bytes) else str(epoch or "")
    return Generation(text, int(version or 0))


def _int(value: Any) -> int:
    """A figure from a reply (bytes, str, int or nil) as an int; nil reads as 0."""
    return 0 if value is None else int(value)


class RedisCounters(counters.Counters):
    """The ``Counters`` protocol over ``redis.asyncio.Redis``; owns and closes its client."""

    shared = True

    def __init__(self, client: Redis, *, prefix: str = "sg:") -> None:
        self._redis = client
        #: the scripts' connection (one, pipelined; ``spendgate.guard`` runs its own on it)
        self.wire = PipelinedRedis(client)
        self._prefix = prefix
        self._zset = f"{prefix}reservations"
        #: the generation hash (epoch, policy version)
        self.generation_key = f"{prefix}gen"
        self._generation = self._script("generation")
        self._renew = self._script("renew")
        self._raise_to = self._script("raise_to")
        self._seed = self._script("seed")
        self._catch_up = self._script("catch_up")
        self._reserve = self._script("reserve")
        self._settle = self._script("settle")
        self._release = self._script("release")
        self._reap = self._script("reap")
        self._add_cap = self._script("add_cap")

    def _script(self, name: str) -> Script:
        """``lua/<name>.lua`` with the shared helpers from ``_lib.lua`` in front."""
        return self.wire.script(lua_script("spendgate.counters", name))

    @classmethod
    def from_url(
        cls, url: str, *, prefix: str = "sg:", max_connections: int = 50, pool_timeout: float = 5.0
    ) -> RedisCounters:
        """See :func:`spendgate.counters.redis_pool.pooled_client`."""
        client = pooled_client(url, max_connections=max_connections, pool_timeout=pool_timeout)
        return cls(client, prefix=prefix)

    @property
    def prefix(self) -> str:
        return self._prefix

    def _key(self, bucket: str) -> str:
        return self._prefix + bucket

    def _rkey(self, reservation_id: str) -> str:
        return f"{self._prefix}r:{reservation_id}"

    async def generation(self) -> Generation:
        epoch, version = await once_more(
            self._redis,
            lambda: self._generation(keys=[self.generation_key], args=[secrets.token_hex(8)]),
        )
        return generation_reply(epoch, version)

    async def bump(self) -> None:
        await once_more(self._redis, lambda: self._redis.hincrby(self.generation_key, "version"))

    async def seed(
        self, bucket: str, spent: int, cap: int | None = None, uncounted: int = 0
    ) -> bool:
        args = [spent, "" if cap is None else cap, uncounted]
        return bool(
            await once_more(self._redis, lambda: self._seed(keys=[self._key(bucket)], args=args))
        )

    async def exists(self, bucket: str) -> bool:
        return bool(await once_more(self._redis, lambda: self._redis.exists(self._key(bucket))))

    @property
    def client(self) -> Redis:
        """The connection pool's client (``spendgate.guard`` runs joint scripts on it)."""
        return self._redis

    # -- script keys and arguments, shared with the joint scripts of spendgate.guard --------
    def reserve_call(
        self, reservation_id: str, holds: Sequence[Hold], expires_at: float
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of ``ct_check`` + ``ct_record`` (``reserve.lua`` and the joint
        acquire put their generation check in front)."""
        keys = [self._zset, self._rkey(reservation_id), *(self._key(h.bucket) for h in holds)]
        args: list[str | int] = [reservation_id, repr(float(expires_at))]
        for hold in holds:
            args += [
                hold.amount,
                "" if hold.cap is None else hold.cap,
                "1" if hold.use_stored_cap else "0",
            ]
        return keys, args

    @staticmethod
    def reserve_reply(refused: Any, holds: Sequence[Hold]) -> Refusal | None:
        """``ct_check``'s refusal: (index, spent, reserved, cap) of every hold that did
        not fit, flat, the first first."""
        if refused is None:
            return None
        return Refusal.of(
            [
                Refusal(
                    holds[int(refused[i]) - 1].bucket,
                    _int(refused[i + 1]),
                    _int(refused[i + 2]),
                    _int(refused[i + 3]),
                )
                for i in range(0, len(refused), 4)
            ]
        )

    @staticmethod
    def seen_reply(flat: Any) -> tuple[int, ...]:
        """Each hold's bucket's spent as the reserve read it."""
        return tuple(_int(spent) for spent in flat or ())

    def settle_call(
        self, reservation_id: str, settlements: Sequence[Settlement]
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of ``settle.lua`` (``ct_settle``)."""
        keys = [self._zset, self._rkey(reservation_id), *(self._key(s.bucket) for s in settlements)]
        args: list[str | int] = [reservation_id]
        for settlement in settlements:
            args += [settlement.reserved, settlement.actual]
        return keys, args

    @staticmethod
    def settle_reply(flat: Any) -> list[tuple[int, int, int | None]]:
        """(spent before, spent after, cap) per settlement."""
        return [
            (_int(flat[i]), _int(flat[i + 1]), _cap(flat[i + 2])) for i in range(0, len(flat), 3)
        ]

    def release_call(self, reservation_id: str) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of ``release.lua``."""
        return [self._zset, self._rkey(reservation_id)], [reservation_id]

    # -- the Counters protocol ---------------------------------------------------------------
    async def reserve_seen(
        self,
        reservation_id: str,
        holds: Sequence[Hold],
        expires_at: float,
        generation: Generation | None = None,
    ) -> Refusal | tuple[int, ...]:
        keys, args = self.reserve_call(reservation_id, holds, expires_at)
        planned = ["", ""] if generation is None else [generation.epoch, generation.version]
        kind, body = await self._reserve(keys=[self.generation_key, *keys], args=[*planned, *args])
        if int(kind) == 3:
            raise PolicyStale(generation_reply(*body))
        if int(kind) == 2:
            refusal = self.reserve_reply(body, holds)
            assert refusal is not None
            return refusal
        return self.seen_reply(body)

    async def settle(
        self, reservation_id: str, settlements: Sequence[Settlement]
    ) -> list[tuple[int, int]]:
        keys, args = self.settle_call(reservation_id, settlements)
        flat = await self._settle(keys=keys, args=args)
        return [(before, after) for before, after, _ in self.settle_reply(flat)]

    async def release(self, reservation_id: str) -> None:
        keys, args = self.release_call(reservation_id)
        await once_more(self._redis, lambda: self._release(keys=keys, args=args))

    async def reap(self, now: float) -> int:
        args = [repr(float(now)), self._prefix]
        return _int(await once_more(self._redis, lambda: self._reap(keys=[self._zset], args=args)))

    async def renew(self, reservation_ids: Sequence[str], expires_at: float) -> None:
        if reservation_ids:
            args = [repr(float(expires_at)), *reservation_ids]
            await once_more(self._redis, lambda: self._renew(keys=[self._zset], args=args))

    async def add_cap(self, bucket: str, amount: int) -> None:
        await self._add_cap(keys=[self._key(bucket)], args=[amount])

    async def raise_to(
        self, bucket: str, field: str, floor: int, uncounted: int | None = None
    ) -> int | None:
        args = [field, floor, "" if uncounted is None else uncounted]
        before = await self._raise_to(keys=[self._key(bucket)], args=args)
        return None if before is None else int(before)

    async def catch_up(self, bucket: str, uncounted: int) -> int | None:
        reply = await self._catch_up(keys=[self._key(bucket)], args=[uncounted])
        return None if reply is None else int(reply)

    async def state(self, bucket: str) -> BucketState | None:
        spent, reserved, cap = await once_more(
            self._redis, lambda: self._redis.hmget(self._key(bucket), ["spent", "reserved", "cap"])
        )
        if spent is None and reserved is None and cap is None:
            return None
        return BucketState(_int(spent), _int(reserved), None if cap is None else int(cap))

    async def aclose(self) -> None:
        await self.wire.aclose()
        await self._redis.aclose()
