"""Memory of the in-process rate limiter's windows at a given call rate, whatever the
machine's speed.

``rss_bench`` reads the windows' bytes too, but what they hold is 60 s of calls, so it
depends on how fast that run happened to go (4,300 calls/s on a quiet machine, a tenth
of it on a busy one). Here the time is passed in: ``--calls`` calls, one every
1/``--rate`` s, go through ``MemoryRateLimiter`` with the bench key's checks (an rpm and
a tpm window of 60 s, the tokens reserved and then settled to a smaller actual), and the
windows' bytes (``sys.getsizeof`` of their arrays: allocated room included) are printed
every ``--every`` calls, with the most seen between rows (sampled every 1,000 calls)::

    .venv/bin/python bench/rate_window_bench.py                 # 4,300 calls/s, 1M calls
    .venv/bin/python bench/rate_window_bench.py --rate 800
"""

from __future__ import annotations

import argparse
import sys
import time

from spendgate.ratelimit import Check, Granted
from spendgate.ratelimit.memory import MemoryRateLimiter

RPM = Check("key:requests", "requests", 10**7, 60.0, 1)
TPM = Check("key:tokens", "tokens", 10**10, 60.0, 4_123)
ACTUAL = {"key:requests": 1, "key:tokens": 1_234}


def window_bytes(limiter: MemoryRateLimiter) -> int:
    return sum(sys.getsizeof(w.gaps) + sys.getsizeof(w.amounts) for w in limiter._windows.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=4_300.0, help="calls per second")
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--every", type=int, default=100_000)
    args = p.parse_args()
    limiter = MemoryRateLimiter()
    checks = [RPM, TPM]
    most = 0
    started = time.process_time()
    print(f"{args.rate:,.0f} calls/s: 60 s of calls is {60 * args.rate:,.0f} entries a window")
    print("| calls | windows MiB | most since last row MiB | entries held | CPU µs/call |")
    print("|--:|--:|--:|--:|--:|")
    for i in range(1, args.calls + 1):
        now = 1.8e9 + i / args.rate
        rid = f"r{i}"
        assert isinstance(limiter.acquire_now(rid, checks, now, now + 600), Granted)
        limiter.settle_now(rid, ACTUAL)
        if i % 1_000 == 0:
            most = max(most, window_bytes(limiter))
        if i % args.every == 0:
            held = sum(len(w.gaps) for w in limiter._windows.values())
            cpu = (time.process_time() - started) / i * 1e6
            print(
                f"| {i:,} | {window_bytes(limiter) / 2**20:.2f} | {most / 2**20:.2f} "
                f"| {held:,} | {cpu:.1f} |",
                flush=True,
            )
            most = 0


if __name__ == "__main__":
    main()
