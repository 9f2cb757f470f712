"""The Redis client both shared-state backends (budget counters, rate limits) use."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis


def pooled_client(url: str, *, max_connections: int = 50, pool_timeout: float = 5.0) -> Redis:
    """``redis://host:6379/0`` or ``rediss://…``. Calls share a pool of up to
    ``max_connections``; a burst beyond that waits up to ``pool_timeout`` seconds for a free
    connection instead of failing at once. Closing the client closes the pool."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections,
                                           timeout=pool_timeout)
    return Redis.from_pool(pool)
