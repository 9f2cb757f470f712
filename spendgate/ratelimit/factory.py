"""Pick a rate-limiter backend by URL, as the counters are picked: ``memory://`` or
``redis://``."""

from __future__ import annotations

from spendgate.ratelimit import RateLimiter
from spendgate.ratelimit.memory import MemoryRateLimiter
from spendgate.ratelimit.redis import RedisRateLimiter

REDIS_SCHEMES = ("redis://", "rediss://")


def rate_limiter_from_url(url: str | None, *, prefix: str = "sg:") -> RateLimiter:
    """None or ``memory://`` → one process's memory; ``redis://…``/``rediss://…`` → Redis,
    with every key under ``prefix``."""
    if url is None or url == "memory://":
        return MemoryRateLimiter()
    if url.startswith(REDIS_SCHEMES):
        return RedisRateLimiter.from_url(url, prefix=prefix)
    raise ValueError(f"unsupported rate-limit URL {url!r}: use memory:// or redis://…")
