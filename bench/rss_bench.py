"""Resident memory of one gateway process over many calls: does it stay flat?

The gateway runs in-process (``hot_path_bench.gateway``: the real ASGI app, the demo
provider, no socket) with a key under a hard-capped budget, an rpm/tpm rate limit and a
funded org wallet; ``--calls`` chat calls are driven ``--conc`` at a time and the
process's RSS (``/proc/self/statm``) is printed every ``--every`` calls, after the ledger
is flushed. The issue #19 goal: flat within ±10 % from 100k to 1M calls, in both modes::

    .venv/bin/python bench/rss_bench.py                 # SQLite + in-process counters
    .venv/bin/python bench/rss_bench.py --shared        # PostgreSQL + Redis

``--detail`` adds, per row, where the memory is: malloc's bytes in use and free (kept
by the process) over all its arenas, SQLite's own bytes in use (every connection), the
threads, the database connections opened so far and the distinct SQL texts executed.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from hot_path_bench import BODY, admin, call, gateway
from sqlalchemy import event

from spendgate.app import Gateway
from spendgate.ratelimit.memory import MemoryRateLimiter

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


class Detail:
    """Where the memory is, for ``--detail`` (glibc's ``mallinfo2``, libsqlite3's
    ``sqlite3_memory_used``: the library the ``sqlite3`` module is linked against)."""

    def __init__(self, app: Gateway) -> None:
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"))
        self.libc.mallinfo2.restype = _Mallinfo2
        self.sqlite = ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
        self.sqlite.sqlite3_memory_used.restype = ctypes.c_int64
        self.connects = 0
        limiter = app.services.rate_gate.limiter
        self.limiter = limiter if isinstance(limiter, MemoryRateLimiter) else None
        self.statements: set[str] = set()
        engine = app.services.engine.sync_engine
        event.listen(engine.pool, "connect", self._connected)
        event.listen(engine, "before_cursor_execute", self._statement)

    def _connected(self, *_args: object) -> None:
        self.connects += 1

    def _statement(self, _conn: object, _cursor: object, sql: str, *_args: object) -> None:
        self.statements.add(sql)

    def header(self) -> str:
        return (
            " malloc used MiB | malloc free MiB | SQLite MiB | rate windows MiB "
            "| threads | connects | SQL texts |"
        )

    def row(self) -> str:
        info = self.libc.mallinfo2()
        sqlite = self.sqlite.sqlite3_memory_used() / 2**20
        threads = len(os.listdir("/proc/self/task"))
        return (
            f" {(info.uordblks + info.hblkhd) / 2**20:.1f} | {info.fordblks / 2**20:.1f} "
            f"| {sqlite:.1f} | {self.windows() / 2**20:.1f} "
            f"| {threads} | {self.connects} | {len(self.statements)} |"
        )

    def windows(self) -> int:
        """Bytes the in-process rate limiter's window arrays hold, allocated room included
        (``sys.getsizeof`` of an array counts its capacity, not just its items)."""
        if self.limiter is None:
            return 0
        windows = self.limiter._windows.values()
        return sum(sys.getsizeof(w.gaps) + sys.getsizeof(w.amounts) for w in windows)


async def run(args: argparse.Namespace, work: Path) -> None:
    async with gateway(args.shared, work) as app:
        secret = await admin(app, args.policies)
        detail = Detail(app) if args.detail else None
        done = 0
        first: float | None = None
        started = time.monotonic()
        head = "| calls | RSS MiB | vs first row | peak RSS MiB | wall s | most rows unwritten |"
        if detail is not None:
            head += detail.header()
        print(head + "\n" + "|--:" * (head.count("|") - 1) + "|")

        async def worker(n: int) -> None:
            for _ in range(n):
                status = await call(app, secret, BODY)
                assert status == 200, status

        lag = 0  # the most rows waiting for the database, sampled every 50 ms

        async def sample_lag() -> None:
            nonlocal lag
            while True:
                lag = max(lag, app.services.ledger.pending)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample_lag())
        while done < args.calls:
            lag = 0
            await asyncio.gather(*(worker(args.every // args.conc) for _ in range(args.conc)))
            await app.services.ledger.flush()
            done += args.every // args.conc * args.conc
            rss = rss_mib()
            first = first or rss
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            line = (
                f"| {done:,} | {rss:.1f} | {100 * (rss / first - 1):+.1f} % | {peak:.1f} "
                f"| {time.monotonic() - started:.0f} | {lag:,} |"
            )
            print(line + (detail.row() if detail is not None else ""), flush=True)
        sampler.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", action="store_true", help="PostgreSQL + Redis, not SQLite")
    p.add_argument("--calls", type=int, default=1_000_000)
    p.add_argument("--every", type=int, default=100_000)
    p.add_argument("--conc", type=int, default=16)
    p.add_argument("--policies", choices=("none", "all"), default="all")
    p.add_argument("--detail", action="store_true", help="malloc, SQLite, threads per row")
    args = p.parse_args()
    os.environ.pop("SPENDGATE_CONFIG", None)
    with tempfile.TemporaryDirectory(prefix="sg-rss-") as tmp:
        uvloop.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
