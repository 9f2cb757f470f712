"""What the policy-version check costs a call with no budget, wallet or rate limit.

Such a call used to make no Redis round trip; now it reads the counters' generation
(one EVALSHA of ``counters/lua/generation.lua``) so that a budget created on another
replica binds on its very next call. This measures that read on the machine's Redis
(``SPENDGATE_TEST_REDIS``, default 127.0.0.1:6379/0), under a key prefix of its own,
sequentially (c=1) and with 16 and 64 calls in flight, and prints a table::

    .venv/bin/python bench/policy_check_bench.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

from spendgate.counters.redis import RedisCounters
from spendgate.guard.shared_read import SharedRead

REDIS_URL = os.environ.get("SPENDGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def run(
    counters: RedisCounters, calls: int, concurrency: int, shared: bool
) -> tuple[float, float]:
    """(wall µs per call, CPU µs per call) for ``calls`` checks, ``concurrency`` at a
    time, each its own read or (``shared``) as the proxy does them (``SharedRead``)."""
    per_worker = calls // concurrency
    read = SharedRead(counters.generation) if shared else counters.generation

    async def worker() -> None:
        for _ in range(per_worker):
            await read()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = per_worker * concurrency
    return (
        (time.perf_counter() - wall) / done * 1e6,
        (time.process_time() - cpu) / done * 1e6,
    )


async def main(calls: int) -> None:
    prefix = f"sgbench:{uuid.uuid4().hex}:"
    counters = RedisCounters.from_url(REDIS_URL, prefix=prefix)
    try:
        await run(counters, 1000, 1, False)  # warm up: the script cached, connections open
        print("| calls in flight | reads | wall µs per check | CPU µs per check (this process) |")
        print("|---|---|---|---|")
        for concurrency in (1, 16, 64):
            for shared in (False, True):
                wall, cpu = await run(counters, calls, concurrency, shared)
                kind = "shared (as the proxy)" if shared else "one per call"
                print(f"| {concurrency} | {kind} | {wall:.1f} | {cpu:.1f} |")
    finally:
        await counters.client.delete(counters.generation_key)
        await counters.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    asyncio.run(main(parser.parse_args().calls))
