"""The Redis client both shared-state backends (budget counters, rate limits) use, and
how their Lua scripts are put together."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from spendgate.errors import StateUnavailable

log = logging.getLogger("spendgate")

T = TypeVar("T")


def lua_library(package: str, name: str = "_lib") -> str:
    """``<package>/lua/<name>.lua``: a backend's helpers and operations, as functions."""
    return (files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def lua_script(package: str, name: str, *libraries: str) -> str:
    """The text Redis runs for ``<package>/lua/<name>.lua``: exact money arithmetic
    (``spendgate/counters/lua/_nanos.lua``, which every script's figures go through), the
    given libraries (default: the package's own), then the script. One script can't call
    another, so every script carries the functions it uses."""
    body = (files(package) / "lua" / f"{name}.lua").read_text(encoding="utf-8")
    nanos = lua_library("spendgate.counters", "_nanos")
    return "\n".join((nanos, *(libraries or (lua_library(package),)), body))


#: a Redis that does not answer a connect (a dead host drops packets) costs this much, once
#: per probe of the circuit breaker (``spendgate.guard.failover``), not once per call
CONNECT_TIMEOUT_SECONDS = 2.0
#: a command with no reply by then counts as Redis unreachable (a hung server)
COMMAND_TIMEOUT_SECONDS = 5.0


def pooled_client(url: str, *, max_connections: int = 50, pool_timeout: float = 5.0) -> Redis:
    """``redis://host:6379/0`` or ``rediss://…``. Calls share a pool of up to
    ``max_connections``; a burst beyond that waits up to ``pool_timeout`` seconds for a free
    connection instead of failing at once. Closing the client closes the pool."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
        socket_timeout=COMMAND_TIMEOUT_SECONDS,
    )
    return Redis.from_pool(pool)


def counters_failed(exc: RedisError, checking: str) -> StateUnavailable:
    """The 503 for a call whose ``checking`` (e.g. "budgets and limits") needed Redis and
    did not get it: fail closed. Unreachable is logged as such; any other Redis error (a
    script refusing, say) is a bug, logged with its traceback."""
    # a Redis that takes no write (full, a replica) is as good as away: no traceback
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OutOfMemoryError | ReadOnlyError):
        log.error("shared counters unreachable: %s", exc)
        return StateUnavailable(
            f"spendgate cannot reach its shared counters (Redis), so it "
            f"cannot check {checking}; retry shortly"
        )
    log.error("shared counters failed", exc_info=exc)
    return StateUnavailable(
        f"spendgate's shared counters (Redis) failed, so it cannot check {checking}; retry shortly"
    )


async def once_more(client: Redis, call: Callable[[], Awaitable[T]]) -> T:
    """``call()``; if the connection breaks, drop every idle pooled connection and run it
    once more. After Redis restarts, each pooled connection is dead and would fail one
    call each: the first failure clears them all. Only for calls that are safe to run
    twice (reads, seeds, releases, an acquire under one reservation id): a settle is
    never repeated (it would count twice)."""
    try:
        return await call()
    except RedisConnectionError:
        await client.connection_pool.disconnect(inuse_connections=False)
        return await call()
