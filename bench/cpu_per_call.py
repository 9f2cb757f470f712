"""Instructions per proxied call, counted by valgrind's callgrind: repeatable on a busy machine.

Wall-clock and CPU-time figures on a shared 2-core machine move by ±20 % from run to run;
an instruction count does not depend on what else runs. Each configuration runs in its
own ``python`` under ``valgrind --tool=callgrind``: the gateway is started in-process
(``hot_path_bench.gateway``, the real ASGI app, no socket) against the simulated demo
provider and warmed up, uncounted (``--instr-atstart=no``); then ``callgrind_control``
switches counting on, ``--calls`` chat calls are driven with ``--conc`` in flight, the
ledger is flushed, and the count is dumped. It covers exactly the measured calls, every
thread of the process included (the ledger's writes too). PostgreSQL and Redis run in
their own processes and are not counted, nor is kernel time: this is the gateway's own
user-space work. Under valgrind a call is ~50-300x slower, so the periods of background
work (ledger flush, policy reload, housekeeping, key cache, webhook outbox poll) are
stretched by ``--stretch``: at full speed they amortise to nearly nothing per call, and
unstretched they would be counted as if calls were that much rarer.

    .venv/bin/python bench/cpu_per_call.py                 # the table, all configurations
    .venv/bin/python bench/cpu_per_call.py --calls 2400 --conc 1 16
    .venv/bin/python bench/cpu_per_call.py --configs embedded:all shared:all
    .venv/bin/python bench/cpu_per_call.py --stream --conc 1   # streamed calls

Configurations are ``backend:policies``: ``embedded`` is SQLite + in-process counters,
``shared`` PostgreSQL (127.0.0.1:5432) + Redis (127.0.0.1:6379); ``none`` is a key and
nothing else, ``all`` a hard-capped budget, an rpm/tpm rate limit and a funded org wallet
(never binding). Each configuration takes a few minutes (more on a loaded machine).
``--keep DIR`` keeps the callgrind files for ``callgrind_annotate``.

The ratios printed are the issue #19 goals: everything on vs key only in-process (goal
≤ 1.2×) and PostgreSQL + Redis vs embedded with everything on (goal ≤ 1.3×).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = ("embedded:none", "embedded:all", "shared:none", "shared:all")
_TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


def callgrind(*command: str) -> None:
    """Ask the callgrind running this process to ``command`` (``-i on``: count from now
    on, ``-d``: dump the counts so far)."""
    subprocess.run(
        ["callgrind_control", *command, str(os.getpid())], check=True, stdout=subprocess.DEVNULL
    )


async def child(
    config: str, calls: int, conc: int, warmup: int, stretch: float, work: Path, stream: bool
) -> None:
    """Runs under callgrind: start the gateway, warm up, and dump around ``calls`` calls."""
    import orjson
    from hot_path_bench import BODY, admin, call, gateway

    body = orjson.dumps({**orjson.loads(BODY), "stream": True}) if stream else BODY

    backend, policies = config.split(":")
    async with gateway(backend == "shared", work, stretch) as app:
        secret = await admin(app, policies)

        async def drive(n: int) -> None:
            async def worker() -> None:
                for _ in range(n // conc):
                    status = await call(app, secret, body)
                    assert status == 200, status

            await asyncio.gather(*(worker() for _ in range(conc)))
            await app.services.ledger.flush()

        await drive(warmup)
        callgrind("-i", "on")  # start-up and warm-up ran uncounted (and ~5× faster)
        await drive(calls)
        callgrind("-d")  # dump 1: the measured calls only
        callgrind("-i", "off")


def instructions(dump: Path) -> int:
    found = _TOTALS.search(dump.read_bytes())
    if found is None:
        raise SystemExit(f"no totals in {dump}")
    return int(found.group(1))


def measure(
    config: str, calls: int, conc: int, warmup: int, stretch: float, out: Path, stream: bool
) -> float:
    """Instructions per call of one configuration, in a fresh process under callgrind."""
    stem = out / f"callgrind.{config.replace(':', '-')}.c{conc}{'.stream' if stream else ''}"
    env = dict(os.environ, PYTHONHASHSEED="0", SPENDGATE_CONFIG="")
    env.pop("SPENDGATE_CONFIG")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={stem}",
        "--dump-instr=no",
        "--instr-atstart=no",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        config,
        "--calls",
        str(calls),
        "--conc",
        str(conc),
        "--warmup",
        str(warmup),
        "--stretch",
        str(stretch),
        *(["--stream"] if stream else []),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{config} c={conc} failed:\n{done.stderr[-3000:]}")
    measured = Path(f"{stem}.1")
    calls_run = calls // conc * conc
    return instructions(measured) / calls_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    p.add_argument("--calls", type=int, default=1200, help="measured calls per configuration")
    p.add_argument("--conc", type=int, nargs="+", default=[16], help="calls in flight")
    p.add_argument("--warmup", type=int, default=320)
    p.add_argument(
        "--stretch",
        type=float,
        default=10_000.0,
        help="periods of background work × this (valgrind's slowdown; see hot_path_bench)",
    )
    p.add_argument("--stream", action="store_true", help="streamed calls (stream: true)")
    p.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import uvloop

        sys.path.insert(0, str(HERE))
        with tempfile.TemporaryDirectory(prefix="sg-cpu-") as tmp:
            uvloop.run(
                child(
                    args.child,
                    args.calls,
                    args.conc[0],
                    args.warmup,
                    args.stretch,
                    Path(tmp),
                    args.stream,
                )
            )
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    out = args.keep or Path(tempfile.mkdtemp(prefix="sg-callgrind-"))
    out.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], float] = {}
    print("| backends:policies | in flight | instructions/call (M) |\n|---|--:|--:|", flush=True)
    for conc in args.conc:
        for config in args.configs:
            per = measure(config, args.calls, conc, args.warmup, args.stretch, out, args.stream)
            results[config, conc] = per
            print(f"| {config} | {conc} | {per / 1e6:.3f} |", flush=True)
    print()
    ratios = (
        ("everything on / key only, embedded (goal ≤ 1.2)", "embedded:all", "embedded:none"),
        ("everything on / key only, PostgreSQL + Redis", "shared:all", "shared:none"),
        ("PostgreSQL + Redis / embedded, everything on (goal ≤ 1.3)", "shared:all", "embedded:all"),
        ("PostgreSQL + Redis / embedded, key only", "shared:none", "embedded:none"),
    )
    print("| ratio | in flight | × |\n|---|--:|--:|")
    for label, top, bottom in ratios:
        for conc in args.conc:
            if (top, conc) in results and (bottom, conc) in results:
                print(f"| {label} | {conc} | {results[top, conc] / results[bottom, conc]:.2f} |")
    if args.keep is None:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
