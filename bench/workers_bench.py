"""Multi-process scaling and added latency: ``spendgate serve --workers 1`` vs ``--workers 2``.

Two measurements (issue 19's goals "--workers 2 on the 2 cores with Redis scales >= 1.7x
over one" and "added p50 at c=1 under 0.5 ms in-process"):

1. Scaling. spendgate on PostgreSQL (a database made for the run) + Redis (a private
   ``redis-server``), with a budget, a rate limit and a wallet on the bench key (set far
   above the load, never binding), first with ``--workers 1``, then ``--workers 2``. Each
   gets a warm-up, then wrk at c=32 for ``--duration`` seconds. Reported: req/s, p50/p99,
   CPU seconds per call of the gateway's process group (the uvicorn supervisor and its
   workers, from /proc), CPU per call of the rest of the load (mock upstream + wrk + Redis,
   each also on its own) and of the PostgreSQL server processes of the run database's
   connections, and how busy the whole machine was. Then, to tell the gateway's own
   scaling cost from the cores': Redis commands (those inside scripts included) and read
   events (about one per round trip; calls that overlap share one) per call, PostgreSQL
   transactions per ledger row, and the CPU of the gateway's first process (with
   ``--workers 2``, the supervisor alone).
2. Added latency. The embedded mode (SQLite + in-process counters), key-only and with
   everything on, pinned to core 0 as in gateway_bench.py, at c=1: gateway p50 minus the
   bare upstream's p50 at c=1.

The mock upstream (``--upstream``). ``nginx`` (the default) answers every chat call with
one fixed completion for the bench's model, with usage, from its config
(``nginx_upstream.py``: one process, no access log): about 0.02 ms of CPU per call, where
spendgate's Python fake upstream (``--upstream fake``, the one the figures before
2026-12-05 used) takes about 0.14 ms, a third of what the gateway itself takes. The
gateway prices nginx's answer as any other (a ledger row with a cost). nginx must be
installed (Debian: ``apt-get install -y nginx``); the script says so and stops if not.
Both measurements use the chosen upstream (the latency rows subtract its own p50).

What the ratio can and cannot show on a 2-core machine. The gateway is not alone: the
mock upstream, wrk and Redis are pinned to core 1 (PostgreSQL, not pinned, takes little);
the gateway is not pinned, so with one worker the scheduler gives it core 0 more or less to
itself, and with two workers the second one shares core 1 with the load. Two workers can
then only reach about ``2 cores / (CPU per call of gateway + upstream + wrk + Redis +
PostgreSQL)`` calls per second; the script prints that ceiling and the ratio it allows. So:

* a ratio near that ceiling, with gateway CPU per call flat from 1 to 2 workers, means the
  gateway scales and the limit is the cores (buy cores, or move the load elsewhere);
* gateway CPU per call that grows with the workers (contention on Redis, locks, a
  supervisor doing work) is the gateway's own scaling cost, whatever the ratio;
* a ratio of 1.7x is only possible here if the load side costs under ~18 % of the
  gateway's CPU per call; the machine being near 100 % busy with two workers says the
  cores, not the gateway, stopped it. On a busy shared machine none of the absolute
  figures mean anything: compare ratios from one quiet run. The upstream's CPU per call
  is a control: it does the same work whatever the gateway does, so if it too rises
  from one row to the next, something else on the machine made every process slower.

Run from the repo root:
``.venv/bin/python bench/workers_bench.py [--duration 10] [--upstream nginx|fake] [--rev REV]``.
Standard library only (plus gateway_bench.py's helpers); every child runs in its own
process group and is killed in ``finally``; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gateway_bench import (
    CLK_TCK,
    GATEWAY_CORE,
    MODEL,
    RESULTS,
    Bench,
    Procs,
    WrkResult,
    _on_signal,
    core_ticks,
    cpu_seconds,
    log,
    machine_ready,
    run_wrk,
    spendgate_source,
    write_lua,
)
from nginx_upstream import MISSING as NGINX_MISSING
from nginx_upstream import nginx_binary

#: the mock upstreams --upstream chooses from (gateway_bench.Bench.start_upstream)
UPSTREAMS = ("nginx", "fake")
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hello benchmark"}]}


@dataclass
class Point:
    name: str
    conns: int
    wrk: WrkResult
    gateway_ms: float  # CPU ms per call of the gateway's process group
    load_ms: float  # CPU ms per call of the mock upstream + wrk + Redis
    load_parts: dict[str, float]  # load_ms split: "upstream", "wrk", "redis" → ms per call
    busy_pct: float  # the whole machine, all cores, % busy (includes VM steal)
    db_ms: float = float("nan")  # CPU ms per call of the PostgreSQL connections to the run's db
    redis_cmds: float = float("nan")  # Redis commands per call, in the row
    redis_reads: float = float("nan")  # Redis read events per call (~ round trips), in the row
    db_tx: float = float("nan")  # database transactions per ledger row, the server's whole life
    leader_ms: float = float("nan")  # gateway_ms's share of the group's leader (the supervisor
    # with --workers > 1; with one worker uvicorn serves in that process)


def _children_cpu() -> float:
    """CPU seconds of this script's reaped children (wrk runs as one)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _pids_cpu(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds (gone ones count 0)."""
    ticks = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        ticks += sum(int(f) for f in stat[stat.rindex(")") + 2 :].split()[11:13])
    return ticks / CLK_TCK


def group_cpu(pgid: int) -> Callable[[], float]:
    return lambda: cpu_seconds(pgid)


def measure(
    name: str,
    gateway_pgid: int | None,
    load: dict[str, Callable[[], float]],
    url: str,
    lua: Path,
    conns: int,
    seconds: float,
    logdir: Path,
    database: Callable[[], float] | None = None,
) -> Point:
    def gw() -> float:
        return cpu_seconds(gateway_pgid) if gateway_pgid is not None else 0.0

    def load_cpu() -> dict[str, float]:
        return {name: cpu() for name, cpu in load.items()} | {"wrk": _children_cpu()}

    def db() -> float:
        return database() if database is not None else float("nan")

    def leader() -> float:
        return _pids_cpu([gateway_pgid]) if gateway_pgid is not None else float("nan")

    gw0, load0, db0, leader0 = gw(), load_cpu(), db(), leader()
    busy0, total0 = core_ticks("")  # "cpu " = all cores
    res = run_wrk(url, lua, conns, seconds, logdir, f"{name} c={conns}")
    busy1, total1 = core_ticks("")
    n = res.requests or 1
    parts = {k: (v - load0[k]) * 1e3 / n for k, v in load_cpu().items()}
    point = Point(
        name,
        conns,
        res,
        (gw() - gw0) * 1e3 / n if gateway_pgid is not None else float("nan"),
        sum(parts.values()),
        parts,
        100.0 * (busy1 - busy0) / max(total1 - total0, 1),
        (db() - db0) * 1e3 / n,
        leader_ms=(leader() - leader0) * 1e3 / n,
    )
    bad = f", NON-2XX {res.non2xx}" if res.non2xx else ""
    bad += f", SOCKET ERRORS {res.socket_errors}" if res.socket_errors else ""
    log(
        f"  {name:22s} c={conns:<3d} {res.rps:8.0f} req/s  p50 {res.p50_ms:.3f} ms  "
        f"p99 {res.p99_ms:.3f} ms  gateway {point.gateway_ms:.3f} ms CPU/call  "
        f"load {point.load_ms:.3f} ({split(parts)})  PostgreSQL {point.db_ms:.3f}  "
        f"machine {point.busy_pct:.0f}% busy{bad}"
    )
    return point


def fmt(x: float, digits: int = 2) -> str:
    return "–" if x != x else f"{x:,.{digits}f}"  # NaN → dash


def split(parts: dict[str, float]) -> str:
    """The load's CPU per call by process, e.g. ``upstream 0.020 + wrk 0.040 + redis 0.100``."""
    return " + ".join(f"{k} {v:.3f}" for k, v in parts.items())


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(header, widths, strict=True))
    )
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return out


def report(scaling: list[Point], latency: list[Point], args: argparse.Namespace) -> str:
    cores = os.cpu_count() or 1
    lines = [
        f"spendgate --workers scaling, PostgreSQL + Redis, budget + rate limit + wallet, "
        f"wrk c={args.conns}, {args.duration:g} s a row, {cores} cores, "
        f"{args.upstream} upstream",
        "",
    ]
    if scaling:
        lines += table(
            [
                "server",
                "req/s",
                "p50 ms",
                "p99 ms",
                "gateway CPU ms/call",
                "load CPU ms/call",
                "PostgreSQL CPU ms/call",
                "machine busy %",
                "errors",
            ],
            [
                [
                    p.name,
                    fmt(p.wrk.rps, 0),
                    fmt(p.wrk.p50_ms, 3),
                    fmt(p.wrk.p99_ms, 3),
                    fmt(p.gateway_ms, 3),
                    fmt(p.load_ms, 3),
                    fmt(p.db_ms, 3),
                    fmt(p.busy_pct, 0),
                    str(p.wrk.non2xx + p.wrk.socket_errors),
                ]
                for p in scaling
            ],
        )
        lines += ["load CPU ms/call by process; Redis commands and read events (~ round trips)"]
        lines += ["per call; PostgreSQL transactions per ledger row (warm-up included):"]
        lines += [
            f"  {p.name}: {split(p.load_parts)}; Redis {fmt(p.redis_cmds)} commands, "
            f"{fmt(p.redis_reads)} reads; PostgreSQL {fmt(p.db_tx, 3)} transactions; "
            f"gateway's first process {fmt(p.leader_ms, 3)} ms"
            for p in scaling
        ]
        lines.append("")
    if len(scaling) >= 2:
        one, many = scaling[0], scaling[-1]
        rps_ratio = many.wrk.rps / one.wrk.rps if one.wrk.rps else float("nan")
        cpu_ratio = many.gateway_ms / one.gateway_ms if one.gateway_ms else float("nan")
        up0, up1 = one.load_parts.get("upstream", 0.0), many.load_parts.get("upstream", 0.0)
        control = up1 / up0 if up0 else float("nan")
        db_ms = 0.0 if many.db_ms != many.db_ms else many.db_ms  # NaN: not measured
        per_call_s = (many.gateway_ms + many.load_ms + db_ms) / 1e3
        ceiling = cores / per_call_s if per_call_s > 0 else float("nan")
        allowed = ceiling / one.wrk.rps if one.wrk.rps else float("nan")
        lines += [
            f"{many.name} / {one.name}: req/s x{fmt(rps_ratio)} (goal >= 1.70), "
            f"gateway CPU/call x{fmt(cpu_ratio)} (1.00 = flat: no scaling cost of its own), "
            f"upstream CPU/call x{fmt(control)} (the control: not 1.00 = the machine changed)",
            f"the cores' ceiling at {many.name}'s CPU per call (gateway + load + PostgreSQL's "
            f"connections): {fmt(ceiling, 0)} req/s = x{fmt(allowed)} over {one.name}",
            "",
        ]
    if latency:
        up = next((p for p in latency if p.name == "upstream"), None)
        rows = []
        for p in latency:
            added = p.wrk.p50_ms - up.wrk.p50_ms if up is not None and p is not up else float("nan")
            added99 = (
                p.wrk.p99_ms - up.wrk.p99_ms if up is not None and p is not up else float("nan")
            )
            rows.append(
                [
                    p.name,
                    fmt(p.wrk.rps, 0),
                    fmt(p.wrk.p50_ms, 3),
                    fmt(added, 3),
                    fmt(added99, 3),
                    fmt(p.gateway_ms, 3),
                    str(p.wrk.non2xx + p.wrk.socket_errors),
                ]
            )
        lines += [
            f"Added latency at c=1, embedded (SQLite + in-process counters), gateway pinned to "
            f"core {GATEWAY_CORE} (goal: added p50 < 0.5 ms)",
            "",
            *table(
                ["server", "req/s", "p50 ms", "+p50 ms", "+p99 ms", "CPU ms/call", "errors"],
                rows,
            ),
            "",
        ]
    lines.append(
        "gateway CPU = the spendgate process group (supervisor + workers); load CPU = mock "
        f"upstream ({args.upstream}) + wrk + Redis; PostgreSQL CPU = the server processes of "
        "the run database's connections (not its checkpointer or WAL writer); machine busy = "
        "all cores from /proc/stat, other programs included. See the docstring of "
        "bench/workers_bench.py for what the ratio can show."
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured row")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each row")
    p.add_argument("--conns", type=int, default=32, help="wrk connections for the scaling rows")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts, in order")
    p.add_argument("--skip-scaling", action="store_true", help="only the c=1 latency rows")
    p.add_argument("--skip-latency", action="store_true", help="only the --workers rows")
    p.add_argument("--rev", help="measure this git revision's spendgate/ (default: the tree)")
    p.add_argument(
        "--upstream",
        choices=UPSTREAMS,
        default="nginx",
        help="the mock upstream on the load core: nginx (a fixed chat completion, the least\n"
        "CPU per call; the default) or fake (spendgate's Python fake upstream, as before)",
    )
    args = p.parse_args(argv)

    if not machine_ready(("wrk", "taskset", "redis-server", "psql")):
        return 2
    if args.upstream == "nginx" and nginx_binary() is None:
        log(NGINX_MISSING)
        return 2

    RESULTS.mkdir(exist_ok=True)
    logdir = RESULTS / "logs-workers"
    shutil.rmtree(logdir, ignore_errors=True)
    logdir.mkdir()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    tmp = Path(tempfile.mkdtemp(prefix="spendgate-workers-bench-"))
    procs = Procs(logdir)
    b = Bench(args, tmp, logdir, procs)
    scaling: list[Point] = []
    latency: list[Point] = []
    code = 0
    try:
        b.source, b.src_env = spendgate_source(args.rev, tmp)
        log(f"spendgate source: {b.source}")
        up = b.start_upstream(args.upstream)

        if not args.skip_latency:
            url = f"http://127.0.0.1:{b.upstream_port}/v1/chat/completions"
            lua = write_lua(tmp / "upstream.lua", BODY, None)
            run_wrk(url, lua, 16, args.warmup, logdir, "upstream warmup")
            latency.append(
                measure(
                    "upstream",
                    None,
                    {"upstream": group_cpu(up.pid)},
                    url,
                    lua,
                    1,
                    args.duration,
                    logdir,
                )
            )
            for mode, name in (("none", "key only"), ("all", "everything on")):
                label = f"embedded-{mode}"
                sg, base, key = b.start_spendgate(label, mode, "embedded")
                url = f"{base}/v1/chat/completions"
                b.check_one(url, BODY, key, label)
                lua = write_lua(tmp / f"{label}.lua", BODY, key)
                run_wrk(url, lua, 16, args.warmup, logdir, f"{label} warmup")
                latency.append(
                    measure(
                        name,
                        sg.pid,
                        {"upstream": group_cpu(up.pid)},
                        url,
                        lua,
                        1,
                        args.duration,
                        logdir,
                    )
                )
                if sg.poll() is not None:
                    raise RuntimeError(f"{label} exited during its row (see its log)")
                procs.stop(label)

        if not args.skip_scaling:
            for n in args.workers:
                label = f"workers-{n}"
                sg, base, key = b.start_spendgate(label, "all", "shared", workers=n, cores=None)
                url = f"{base}/v1/chat/completions"
                b.check_one(url, BODY, key, label)
                lua = write_lua(tmp / f"{label}.lua", BODY, key)
                run_wrk(url, lua, args.conns, args.warmup, logdir, f"{label} warmup")
                shared = b.shared
                assert shared is not None
                redis = shared.redis_cpu_pid()
                load = {"upstream": group_cpu(up.pid)}
                if redis is not None:
                    load["redis"] = group_cpu(redis)
                # the connections to the run's database, as they are when the row starts
                database = partial(_pids_cpu, shared.backend_pids())
                cmds0, reads0 = shared.redis_counts()
                point = measure(
                    f"--workers {n}",
                    sg.pid,
                    load,
                    url,
                    lua,
                    args.conns,
                    args.duration,
                    logdir,
                    database,
                )
                cmds1, reads1 = shared.redis_counts()
                calls = point.wrk.requests or 1
                point.redis_cmds = (cmds1 - cmds0) / calls
                point.redis_reads = (reads1 - reads0) / calls
                scaling.append(point)
                if sg.poll() is not None:
                    raise RuntimeError(f"{label} exited during its row (see its log)")
                procs.stop(label)
                tx, rows = shared.transactions()  # counted once the connections have closed
                point.db_tx = tx / rows if rows else float("nan")
    except BaseException as exc:
        code = 1
        log(f"ABORTED: {exc!r}")
        if not isinstance(exc, (Exception, SystemExit, KeyboardInterrupt)):
            raise
    finally:
        procs.stop_all()
        if b.shared is not None:
            b.shared.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        text = report(scaling, latency, args)
        (RESULTS / "workers.txt").write_text(text)
        print(text, flush=True)
        log(f"wrote bench/results/workers.txt; logs in {logdir.relative_to(RESULTS.parent.parent)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
