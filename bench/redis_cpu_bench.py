"""Redis's own CPU per proxied call in the PostgreSQL + Redis mode, everything on.

The gateway runs in this process as in ``hot_path_bench.py`` (ASGI calls straight into
the app, the simulated provider), on a fresh PostgreSQL database and a Redis of the
bench's own (``redis-server`` on a free port, core 1, nothing on disk), so no other
program's commands are counted. The key has a hard-capped budget, an rpm/tpm rate limit
and a funded org wallet (``policies=all``), never binding. After a warm-up the Redis
statistics are reset; then ``--calls`` calls run, ``--conc`` at a time, and the ledger is
flushed. Reported per gateway call, from Redis itself:

* ``INFO commandstats``: each command's calls and µs (``usec``). The commands a script
  runs are counted under their own names too, and their time is also inside the
  script's (``EVALSHA``/``FCALL``), so the script rows are the whole of a script's cost;
* ``INFO cpu``: ``used_cpu_sys`` + ``used_cpu_user`` of the Redis process, whatever it
  spent the time on (commands, reading and writing sockets, its timers);
* with ``--callgrind``: Redis runs under ``valgrind --tool=callgrind``, and the
  instructions it executed during the measured calls (user space: its own code, Lua and
  libc; not the kernel's socket work), which unlike the times above do not depend on
  what else the machine is doing. (Under valgrind Redis is ~50× slower: use fewer calls.)

``--repeat N`` runs the measured phase N times on the same gateway. Before/after a
change, run this file against an export of the old code::

    .venv/bin/python bench/redis_cpu_bench.py [--calls 4000] [--conc 16] [--repeat 3]
    .venv/bin/python bench/redis_cpu_bench.py --callgrind --calls 1000 --repeat 2
    PYTHONPATH=<export of an old rev> .venv/bin/python bench/redis_cpu_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from gateway_targets import SharedBackends
from hot_path_bench import BODY, admin, call, gateway
from redis.asyncio import Redis

import spendgate

#: commands that run a script (their µs include the commands the script runs)
SCRIPT_COMMANDS = ("evalsha", "eval", "fcall", "fcall_ro")
#: a dump's count (its ``summary:`` line can be garbage after instrumentation was off)
_TOTALS = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class Callgrind:
    """The bench's Redis under callgrind: instructions counted only between ``on`` and
    ``dump`` (``callgrind_control``), each dump a file of its own."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.pid = 0
        self.dumps = 0

    def wrapper(self) -> tuple[str, ...]:
        return (
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.out / 'redis.callgrind'}",
            "--dump-instr=no",
            "--instr-atstart=no",
        )

    def _control(self, *command: str) -> None:
        subprocess.run(
            ["callgrind_control", *command, str(self.pid)], check=True, capture_output=True
        )

    def on(self) -> None:
        self._control("-i", "on")

    def dump(self) -> int:
        """Instructions since ``on``; counting stops."""
        self._control("-d")
        self._control("-i", "off")
        self.dumps += 1
        found = _TOTALS.search((self.out / f"redis.callgrind.{self.dumps}").read_bytes())
        assert found is not None
        return int(found.group(1))


async def measure(
    app: Any, secret: str, redis: Redis, calls: int, conc: int, grind: Callgrind | None
) -> dict[str, Any]:
    per = calls // conc

    async def worker() -> None:
        for _ in range(per):
            status = await call(app, secret, BODY)
            assert status == 200, status

    await app.services.ledger.flush()
    await redis.config_resetstat()
    cpu0 = cpu_seconds(await redis.info("cpu"))
    if grind is not None:
        grind.on()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    await app.services.ledger.flush()
    wall = time.perf_counter() - started
    instructions = grind.dump() if grind is not None else 0
    cpu1 = cpu_seconds(await redis.info("cpu"))
    stats = await redis.info("commandstats")
    done = per * conc
    commands = {
        name.removeprefix("cmdstat_"): (int(v["calls"]) / done, int(v["usec"]) / done)
        for name, v in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config")
    }
    return {
        "cpu_us": (cpu1 - cpu0) * 1e6 / done,
        "commands": commands,
        "wall_s": wall,
        "instructions": instructions / done,
    }


async def run(
    args: argparse.Namespace, work: Path, redis_url: str, grind: Callgrind | None
) -> None:
    redis = Redis.from_url(redis_url)
    async with gateway(True, work, redis_url=redis_url) as app:
        secret = await admin(app, "all")
        for _ in range(max(1, args.calls // 4 // args.conc)):  # warm-up: seeds, scripts, caches
            await asyncio.gather(*(call(app, secret, BODY) for _ in range(args.conc)))
        print(f"spendgate from {Path(spendgate.__file__).parent}; load {os.getloadavg()}")
        print(
            "| run | Redis CPU µs/call (INFO cpu) | script µs/call | Redis instr./call "
            "(callgrind) | commands/call |"
        )
        print("|--:|--:|--:|--:|---|")
        for i in range(args.repeat):
            r = await measure(app, secret, redis, args.calls, args.conc, grind)
            scripts = sum(us for name, (_, us) in r["commands"].items() if name in SCRIPT_COMMANDS)
            top = sorted(r["commands"].items(), key=lambda kv: -kv[1][1])
            listed = ", ".join(f"{n} {c:.2f}× {us:.1f} µs" for n, (c, us) in top if c >= 0.01)
            counted = f"{r['instructions']:,.0f}" if grind is not None else "–"
            print(
                f"| {i + 1} | {r['cpu_us']:.1f} | {scripts:.1f} | {counted} | {listed} |",
                flush=True,
            )
    await redis.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--conc", type=int, default=16)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--callgrind", action="store_true", help="count Redis's instructions too")
    args = p.parse_args()
    os.environ.pop("SPENDGATE_CONFIG", None)
    with tempfile.TemporaryDirectory(prefix="sg-rediscpu-") as tmp:
        grind = Callgrind(Path(tmp)) if args.callgrind else None
        backends = SharedBackends(
            free_port(), "1", Path(tmp), grind.wrapper() if grind is not None else ()
        )
        backends.start()
        try:
            if grind is not None:
                grind.pid = backends.redis_cpu_pid() or 0
            url = backends.env()["SPENDGATE_REDIS_URL"]
            uvloop.run(run(args, Path(tmp), url, grind))
        finally:
            backends.stop()


if __name__ == "__main__":
    main()
