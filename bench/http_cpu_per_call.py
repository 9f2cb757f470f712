"""Instructions per call of the whole server, HTTP included: ``spendgate serve`` under callgrind.

``cpu_per_call.py`` counts the ASGI app alone (no socket, the simulated provider); a
real call also pays the ASGI server (uvicorn: HTTP parsing, the ASGI messages), the
upstream HTTP client and the hand-off to the ledger spool's thread. This script counts
all of it: the fake upstream (``spendgate.testing.fake_upstream``) runs normally, and
``spendgate serve`` (embedded: SQLite + in-process counters) runs under ``valgrind
--tool=callgrind`` with counting off; after a warm-up, ``callgrind_control`` switches it
on, ``wrk`` sends calls with ``--conc`` connections for ``--seconds``, and the count is
dumped; then the same for an idle window of ``--idle`` seconds (no calls). Instructions
per call = (calls window - idle window scaled to its length) / calls wrk completed: work
on a timer (webhook outbox poll, housekeeping), which would otherwise count more per
call the slower the calls run, is taken out. Every thread of the gateway counts, kernel
time does not (``fdatasync``, sockets). The ledger's database writes are not counted:
its flush period is set to 1,000 s, so none falls in either window (``cpu_per_call.py``
counts them, in batches).

    .venv/bin/python bench/http_cpu_per_call.py                      # key only and all, c=1
    .venv/bin/python bench/http_cpu_per_call.py --limits all --conc 1 16 --stream

Slow (a few minutes a row on a loaded machine); the count does not depend on the load.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway_bench import (
    RESULTS,
    Bench,
    Procs,
    _on_signal,
    log,
    machine_ready,
    run_wrk,
    spendgate_source,
    write_lua,
)
from workers_bench import BODY

_TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)
#: background periods under valgrind (see the docstring)
SLOWED = "ledger_flush_seconds = 1000.0\nkey_cache_seconds = 1000.0\n"


def callgrind(pid: int, *command: str) -> None:
    subprocess.run(["callgrind_control", *command, str(pid)], check=True, stdout=subprocess.DEVNULL)


def instructions(dump: Path) -> int:
    found = _TOTALS.search(dump.read_bytes())
    if found is None:
        raise SystemExit(f"no totals in {dump}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--limits", nargs="+", choices=("none", "all"), default=["none", "all"])
    p.add_argument("--conc", type=int, nargs="+", default=[1])
    p.add_argument("--seconds", type=float, default=40.0, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=20.0, help="uncounted seconds per row")
    p.add_argument("--idle", type=float, default=20.0, help="counted idle seconds per row")
    p.add_argument("--stream", action="store_true", help="streamed calls (stream: true)")
    p.add_argument("--rev", help="measure this git revision's spendgate/ (default: the tree)")
    p.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = p.parse_args(argv)
    if not machine_ready(("wrk", "valgrind", "callgrind_control")):
        return 2
    RESULTS.mkdir(exist_ok=True)
    logdir = RESULTS / "logs-http-cpu"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="spendgate-http-cpu-"))
    out_dir = args.keep or tmp / "callgrind"
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = Procs(logdir)
    b = Bench(argparse.Namespace(), tmp, logdir, procs)
    body = dict(BODY, stream=True) if args.stream else BODY
    kind = "stream" if args.stream else "plain"
    rows: list[str] = []
    try:
        b.source, b.src_env = spendgate_source(args.rev, tmp)
        b.start_upstream()
        for limits in args.limits:
            for conc in args.conc:
                label = f"http-{limits}-{kind}-c{conc}"
                out = out_dir / f"callgrind.{label}"
                wrap = [
                    "valgrind",
                    "--tool=callgrind",
                    f"--callgrind-out-file={out}",
                    "--dump-instr=no",
                    "--instr-atstart=no",
                ]
                sg, base, key = b.start_spendgate(
                    label, limits, "embedded", wrap=wrap, gateway_toml=SLOWED
                )
                url = f"{base}/v1/chat/completions"
                lua = write_lua(tmp / f"{label}.lua", body, key)
                run_wrk(url, lua, conc, args.warmup, logdir, f"{label} warmup")
                callgrind(sg.pid, "-i", "on")
                res = run_wrk(url, lua, conc, args.seconds, logdir, label)
                callgrind(sg.pid, "-d")  # dump 1: the calls (and the timers)
                quiet = time.monotonic()
                time.sleep(args.idle)
                callgrind(sg.pid, "-d")  # dump 2: the timers alone
                quiet = time.monotonic() - quiet
                callgrind(sg.pid, "-i", "off")
                time.sleep(1.0)
                busy, idle = (instructions(Path(f"{out}.{n}")) for n in (1, 2))
                bad = res.non2xx + res.socket_errors
                per = (busy - idle * res.seconds / quiet) / max(res.requests, 1)
                row = f"| {limits} | {kind} | {conc} | {res.requests} | {per / 1e6:.3f} |"
                row += f" {bad} errors |" if bad else ""
                rows.append(row)
                log(row)
                procs.stop(label)
    finally:
        procs.stop_all()
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    print("| policies | calls | in flight | calls counted | M instr./call |\n|---|---|--:|--:|--:|")
    print("\n".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.pop("SPENDGATE_CONFIG", None)
    sys.exit(main())
