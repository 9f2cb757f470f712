"""Resident memory of one gateway process over many calls: does it stay flat?

The gateway runs in-process (``hot_path_bench.gateway``: the real ASGI app, the demo
provider, no socket) with a key under a hard-capped budget, an rpm/tpm rate limit and a
funded org wallet; ``--calls`` chat calls are driven ``--conc`` at a time and the
process's RSS (``/proc/self/statm``) is printed every ``--every`` calls, after the ledger
is flushed. The issue #19 goal: flat within ±10 % from 100k to 1M calls, in both modes::

    .venv/bin/python bench/rss_bench.py                 # SQLite + in-process counters
    .venv/bin/python bench/rss_bench.py --shared        # PostgreSQL + Redis
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path

import uvloop
from hot_path_bench import BODY, admin, call, gateway

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


async def run(args: argparse.Namespace, work: Path) -> None:
    async with gateway(args.shared, work) as app:
        secret = await admin(app, args.policies)
        done = 0
        first: float | None = None
        started = time.monotonic()
        print("| calls | RSS MiB | vs first row | peak RSS MiB | wall s |\n|--:|--:|--:|--:|--:|")

        async def worker(n: int) -> None:
            for _ in range(n):
                status = await call(app, secret, BODY)
                assert status == 200, status

        while done < args.calls:
            await asyncio.gather(*(worker(args.every // args.conc) for _ in range(args.conc)))
            await app.services.ledger.flush()
            done += args.every // args.conc * args.conc
            rss = rss_mib()
            first = first or rss
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"| {done:,} | {rss:.1f} | {100 * (rss / first - 1):+.1f} % | {peak:.1f} "
                f"| {time.monotonic() - started:.0f} |",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", action="store_true", help="PostgreSQL + Redis, not SQLite")
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--every", type=int, default=100_000)
    p.add_argument("--conc", type=int, default=16)
    p.add_argument("--policies", choices=("none", "all"), default="all")
    args = p.parse_args()
    os.environ.pop("SPENDGATE_CONFIG", None)
    with tempfile.TemporaryDirectory(prefix="sg-rss-") as tmp:
        uvloop.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
