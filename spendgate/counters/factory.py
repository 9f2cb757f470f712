"""Pick a counters backend by URL, as the stores are picked: ``memory://`` or ``redis://``."""

from __future__ import annotations

from spendgate.counters import Counters
from spendgate.counters.memory import MemoryCounters
from spendgate.counters.redis import RedisCounters

REDIS_SCHEMES = ("redis://", "rediss://")


def counters_from_url(url: str | None, *, prefix: str = "sg:") -> Counters:
    """None or ``memory://`` → one process's memory; ``redis://…``/``rediss://…`` → Redis,
    with every key under ``prefix``."""
    if url is None or url == "memory://":
        return MemoryCounters()
    if url.startswith(REDIS_SCHEMES):
        return RedisCounters.from_url(url, prefix=prefix)
    raise ValueError(f"unsupported counters URL {url!r}: use memory:// or redis://…")
