"""Side-by-side gateway benchmark: spendgate vs LiteLLM proxy vs the bare fake upstream.

Run it through ``bash bench/run.sh [--quick]``, which installs wrk and the LiteLLM venv
first. Standard library only, so any Python 3.11+ can drive it.

Layout on a 2-core machine:

* core 0: the gateway under test (spendgate or LiteLLM), one process, one at a time
* core 1: the fake upstream (uvloop + httptools), wrk, and py-spy when profiling

Every child runs in its own process group and is killed in ``finally`` (and on
SIGINT/SIGTERM/SIGHUP), so nothing outlives the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_targets import (
    SharedBackends,
    install_portkey,
    portkey_argv,
    portkey_env,
    portkey_headers,
)
from nginx_upstream import MISSING as NGINX_MISSING
from nginx_upstream import nginx_argv, nginx_binary

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROJECT_VENV = ROOT / ".venv"
LITELLM_VENV = HERE / ".venv-litellm"
RESULTS = HERE / "results"

GATEWAY_CORE = "0"
LOAD_CORE = "1"
MASTER_KEY = "sg-master-bench-0123456789abcdef"
LITELLM_KEY = "sk-bench-litellm-0123456789"
UPSTREAM_KEY = "bench-upstream-key"
MODEL = "gpt-4o-mini"
#: what ``--with-limits`` puts on the bench key (never binding: set far above the load)
LIMIT_MODES = ("none", "ratelimit", "budget", "both", "all")
#: where spendgate keeps its state: SQLite + in-process counters, or PostgreSQL + Redis
BACKENDS = ("embedded", "shared")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def machine_ready(tools: tuple[str, ...]) -> bool:
    """The tools a run needs are installed and there are two cores (gateway on core 0,
    upstream + wrk on core 1); else say what is missing."""
    for tool in tools:
        if not shutil.which(tool):
            log(f"{tool} not found (wrk: run through bench/run.sh, which installs it)")
            return False
    if (os.cpu_count() or 1) < 2:
        log("needs at least 2 cores (gateway on core 0, upstream + wrk on core 1)")
        return False
    return True


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------
class Procs:
    """Children started in their own process groups; ``stop_all`` kills every group."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.live: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        out = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        log(f"start {name}: {' '.join(argv)}")
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        out.close()
        self.live[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self.live.pop(name, None)
        if proc is None:
            return
        _kill_group(proc, timeout)
        log(f"stopped {name} (exit {proc.returncode})")

    def stop_all(self) -> None:
        for name in list(self.live):
            try:
                self.stop(name, timeout=5.0)
            except Exception as exc:  # noqa: BLE001 (keep killing the rest)
                log(f"could not stop {name}: {exc!r}")


def _kill_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    pgid = proc.pid  # start_new_session: the child leads its own group
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue
        break
    # stragglers in the group (grandchildren that ignored SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


# -- /proc readings -----------------------------------------------------------------------------
def group_pids(pgid: int) -> list[int]:
    """Live processes of a process group (the server and any workers it forked)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # field 5 (pgrp), after state(3) and ppid(4)
            pids.append(int(entry))
    return pids


def cpu_seconds(pgid: int) -> float:
    """utime+stime (+ reaped children's) of every live process in the group, in seconds."""
    ticks = 0
    for pid in group_pids(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[11..14] = utime, stime, cutime, cstime (proc(5) fields 14-17)
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / CLK_TCK


def rss_mib(pgid: int) -> float:
    """VmRSS summed over the group, MiB."""
    kib = 0
    for pid in group_pids(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
        except OSError:
            continue
    return kib / 1024


def core_ticks(core: str) -> tuple[int, int]:
    """(busy, total) jiffies of one CPU from /proc/stat; busy includes VM steal."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            v = [int(x) for x in line.split()[1:9]]
            user, nice, system, idle, iowait, irq, softirq, steal = v
            busy = user + nice + system + irq + softirq + steal
            return busy, busy + idle + iowait
    return 0, 0


class CoreWatch:
    """Share of the gateway core used by anything *other* than the measured gateway."""

    def __init__(self, pgid: int | None) -> None:
        self.pgid = pgid
        self.busy0, self.total0 = core_ticks(GATEWAY_CORE)
        self.cpu0 = cpu_seconds(pgid) if pgid else 0.0

    def other_pct(self) -> float:
        busy, total = core_ticks(GATEWAY_CORE)
        mine = (cpu_seconds(self.pgid) - self.cpu0) * CLK_TCK if self.pgid else 0.0
        span = total - self.total0
        return max(0.0, 100.0 * (busy - self.busy0 - mine) / span) if span > 0 else float("nan")


# -- helpers ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str,
    url: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 30.0,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], name: str, logdir: Path, timeout: float = 120.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (logdir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited with {proc.returncode} before it was ready:\n{tail}")
        try:
            status, _ = http("GET", url, timeout=2.0)
            if status < 500:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} not ready at {url} after {timeout:.0f}s")


# -- wrk ----------------------------------------------------------------------------------------
LUA = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{auth}
"""


def write_lua(
    path: Path, body: dict[str, Any], token: str | None, headers: dict[str, str] | None = None
) -> Path:
    lines = [f'wrk.headers["Authorization"] = "Bearer {token}"'] if token else []
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in (headers or {}).items()]
    path.write_text(LUA.format(body=json.dumps(json.dumps(body)), auth="\n".join(lines)))
    return path


@dataclass
class WrkResult:
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    non2xx: int = 0
    socket_errors: int = 0
    raw: str = ""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    r = WrkResult(raw=out)
    if m := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out):
        r.requests = int(m.group(1))
        r.seconds = _ms(m.group(2) + m.group(3)) / 1e3
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        r.rps = float(m.group(1))
    if m := re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE):
        r.p50_ms = _ms(m.group(1))
    if m := re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE):
        r.p99_ms = _ms(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        r.non2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        r.socket_errors = sum(int(g) for g in m.groups())
    return r


def run_wrk(url: str, lua: Path, conns: int, seconds: float, logdir: Path, tag: str) -> WrkResult:
    argv = [
        "taskset",
        "-c",
        LOAD_CORE,
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    text = out.stdout + out.stderr
    with open(logdir / "wrk.log", "a") as f:
        f.write(f"\n===== {tag}: {' '.join(argv)}\n{text}")
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {text}")
    return parse_wrk(text)


# -- measurements -------------------------------------------------------------------------------
@dataclass
class Row:
    target: str
    scenario: str
    conns: int
    wrk: WrkResult
    cpu_ms_per_req: float
    rss_mib: float
    core_other_pct: float = float("nan")
    note: str = ""
    added_p50: float | None = None
    added_p99: float | None = None


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    logdir: Path
    procs: Procs
    rows: list[Row] = field(default_factory=list)
    flat: dict[str, Any] = field(default_factory=dict)
    profile: list[tuple[str, float, float]] = field(default_factory=list)
    profile_note: str = ""
    upstream_port: int = 0
    src_env: dict[str, str] = field(default_factory=dict)
    source: str = ""
    shared: SharedBackends | None = None
    notes: list[str] = field(default_factory=list)

    # ---- servers
    def start_upstream(self, kind: str = "fake") -> subprocess.Popen[bytes]:
        """The mock upstream on the load core: ``fake`` (spendgate's Python fake upstream,
        every endpoint and streaming) or ``nginx`` (a fixed chat completion, far less CPU
        per call; see nginx_upstream.py)."""
        self.upstream_port = free_port()
        if kind == "nginx":
            binary = nginx_binary()
            if binary is None:
                raise RuntimeError(NGINX_MISSING)
            server = nginx_argv(
                binary, self.tmp / "nginx", self.upstream_port, MODEL, self.logdir / "nginx.log"
            )
        else:
            server = [
                str(PROJECT_VENV / "bin/python"),
                "-m",
                "spendgate.testing.fake_upstream",
                "--port",
                str(self.upstream_port),
            ]
        proc = self.procs.start(
            "upstream",
            ["taskset", "-c", LOAD_CORE, *server],
            env={**os.environ, **self.src_env},
            cwd=self.tmp,
        )
        wait_ready(
            f"http://127.0.0.1:{self.upstream_port}/v1/models", proc, "upstream", self.logdir
        )
        return proc

    def start_spendgate(
        self,
        name: str = "spendgate",
        limits: str = "none",
        backend: str = "embedded",
        workers: int = 1,
        cores: str | None = GATEWAY_CORE,
        wrap: list[str] | None = None,
        gateway_toml: str = "",
    ) -> tuple[subprocess.Popen[bytes], str, str]:
        """``spendgate serve`` with ``workers`` processes, pinned to ``cores`` (None: not
        pinned), or run under ``wrap`` (e.g. valgrind) instead; ``gateway_toml`` goes in
        the config's ``[gateway]`` table; an org, a key and ``limits`` on it; returns
        (process, base URL, key)."""
        port = free_port()
        work = self.tmp / name
        if work.exists():
            shutil.rmtree(work)
        work.mkdir()
        cfg = work / "spendgate.toml"
        cfg.write_text(
            f"[gateway]\n{gateway_toml}\n"
            "[providers.up]\n"
            'kind = "openai"\n'
            f'base_url = "http://127.0.0.1:{self.upstream_port}/v1"\n'
            f'api_key = "{UPSTREAM_KEY}"\n\n'
            f'[models."{MODEL}"]\n'
            'provider = "up"\n'
        )
        env = {
            **os.environ,
            "SPENDGATE_MASTER_KEY": MASTER_KEY,
            "SPENDGATE_DATABASE_URL": f"sqlite:///{work}/bench.db",
            **self.src_env,
        }
        env.pop("SPENDGATE_REDIS_URL", None)
        env.pop("SPENDGATE_CONFIG", None)
        if backend == "shared":
            if self.shared is None:
                self.shared = SharedBackends(free_port(), LOAD_CORE, self.logdir)
                self.shared.start()
            else:
                self.shared.reset()
            env.update(self.shared.env())
        pin = ["taskset", "-c", cores] if cores is not None else []
        proc = self.procs.start(
            name,
            [
                *(pin if wrap is None else wrap),
                str(PROJECT_VENV / "bin/spendgate"),
                "serve",
                "--config",
                str(cfg),
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=env,
            cwd=work,
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/healthz", proc, name, self.logdir, 120.0 if wrap is None else 900.0)
        status, raw = http("POST", f"{base}/admin/orgs", {"name": "bench"}, MASTER_KEY)
        if status >= 300:
            raise RuntimeError(f"POST /admin/orgs -> {status}: {raw[:500]!r}")
        org_id = json.loads(raw)["id"]
        status, raw = http(
            "POST", f"{base}/admin/keys", {"name": "bench", "org_id": org_id}, MASTER_KEY
        )
        if status >= 300:
            raise RuntimeError(f"POST /admin/keys -> {status}: {raw[:500]!r}")
        key = json.loads(raw)
        for path, body in limit_rows(limits, key["id"], org_id):
            status, raw = http("POST", f"{base}{path}", body, MASTER_KEY)
            if status >= 300:
                raise RuntimeError(f"POST {path} -> {status}: {raw[:500]!r}")
        return proc, base, key["key"]

    def limit_modes(self) -> list[str]:
        """``--with-limits`` as a list of modes: absent → none; bare → both (as before)."""
        modes = self.args.with_limits
        if modes is None:
            return ["none"]
        return list(dict.fromkeys(modes)) or ["both"]

    def label(self, mode: str, backend: str = "embedded") -> str:
        """The report's target name: plain "spendgate" when one mode is measured on the
        embedded backends; else e.g. ``spendgate[all]``, ``spendgate[all,pg+redis]``."""
        if backend == "embedded" and self.runs() == [("embedded", mode)]:
            return "spendgate"
        return f"spendgate[{mode}{',pg+redis' if backend == 'shared' else ''}]"

    def runs(self) -> list[tuple[str, str]]:
        """(backend, limits mode) of each spendgate server measured, in order."""
        return [(b, m) for b in dict.fromkeys(self.args.backends) for m in self.limit_modes()]

    def start_portkey(self) -> tuple[subprocess.Popen[bytes], str]:
        install_portkey()
        port = free_port()
        work = self.tmp / "portkey"
        work.mkdir(exist_ok=True)
        proc = self.procs.start(
            "portkey", portkey_argv(GATEWAY_CORE, port), env=portkey_env(), cwd=work
        )
        base = f"http://127.0.0.1:{port}"
        # no health route without a provider: any answer from the router means it is up
        wait_ready(f"{base}/v1/models", proc, "portkey", self.logdir)
        return proc, base

    def start_litellm(self) -> tuple[subprocess.Popen[bytes], str, str]:
        port = free_port()
        work = self.tmp / "litellm"
        work.mkdir(exist_ok=True)
        cfg = work / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {MODEL}\n"
            "    litellm_params:\n"
            f"      model: openai/{MODEL}\n"
            f"      api_base: http://127.0.0.1:{self.upstream_port}/v1\n"
            f"      api_key: {UPSTREAM_KEY}\n"
            "general_settings:\n"
            f"  master_key: {LITELLM_KEY}\n"
            "litellm_settings:\n"
            "  telemetry: false\n"
            "  set_verbose: false\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL",))}
        env.update(
            {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                "LITELLM_TELEMETRY": "False",
                "DISABLE_SCHEMA_UPDATE": "True",
                "NO_DOCS": "True",
            }
        )
        proc = self.procs.start(
            "litellm",
            [
                "taskset",
                "-c",
                GATEWAY_CORE,
                str(LITELLM_VENV / "bin/litellm"),
                "--config",
                str(cfg),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
                "--telemetry",
                "False",
            ],
            env=env,
            cwd=work,
        )
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/health/liveliness", proc, "litellm", self.logdir, timeout=240)
        return proc, base, LITELLM_KEY

    # ---- load
    def measure(
        self, target: str, scenario: str, pgid: int, url: str, lua: Path, conns: int, seconds: float
    ) -> Row:
        cpu0 = cpu_seconds(pgid)
        watch = CoreWatch(None if target == "upstream" else pgid)
        res = run_wrk(url, lua, conns, seconds, self.logdir, f"{target} {scenario} c={conns}")
        cpu1 = cpu_seconds(pgid)
        other = watch.other_pct()
        rss = rss_mib(pgid)
        per = (cpu1 - cpu0) * 1e3 / res.requests if res.requests else float("nan")
        row = Row(target, scenario, conns, res, per, rss, other)
        self.rows.append(row)
        bad = f", NON-2XX {res.non2xx}" if res.non2xx else ""
        bad += f", SOCKET ERRORS {res.socket_errors}" if res.socket_errors else ""
        log(
            f"  {target:10s} {scenario:6s} c={conns:<3d} {res.rps:9.0f} req/s  "
            f"p50 {res.p50_ms:.3f} ms  p99 {res.p99_ms:.3f} ms  cpu {per:.3f} ms/req  "
            f"rss {rss:.1f} MiB  core{GATEWAY_CORE}-other {other:.0f}%{bad}"
        )
        return row

    def check_one(
        self,
        url: str,
        body: dict[str, Any],
        token: str | None,
        target: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        status, raw = http("POST", url, body, token, headers=headers)
        if status != 200:
            raise RuntimeError(f"{target}: probe request -> HTTP {status}: {raw[:800]!r}")
        if body.get("stream"):
            if b"[DONE]" not in raw:
                raise RuntimeError(f"{target}: stream without [DONE]: {raw[:800]!r}")
        else:
            json.loads(raw)["choices"]

    def suite(
        self,
        target: str,
        pgid: int,
        base: str,
        token: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        url = f"{base}/v1/chat/completions"
        plain = {"model": MODEL, "messages": [{"role": "user", "content": "hello benchmark"}]}
        stream = {**plain, "stream": True}
        lua_plain = write_lua(self.tmp / f"{target}-plain.lua", plain, token, headers)
        lua_stream = write_lua(self.tmp / f"{target}-stream.lua", stream, token, headers)
        self.check_one(url, plain, token, target, headers)
        try:
            self.check_one(url, stream, token, target, headers)
        except RuntimeError as exc:  # a gateway that cannot stream still gets its plain rows
            streams = False
            self.notes.append(f"{target}: no stream row, its probe failed: {exc}"[:600])
            log(f"{target}: stream probe failed, plain rows only: {exc}")
        else:
            streams = True
        log(f"{target}: warm-up {self.args.warmup:g}s at c=16")
        run_wrk(url, lua_plain, 16, self.args.warmup, self.logdir, f"{target} warmup")
        for conns in self.args.conns:
            self.measure(target, "plain", pgid, url, lua_plain, conns, self.args.duration)
        if streams:
            self.measure(
                target, "stream", pgid, url, lua_stream, self.args.stream_conns, self.args.duration
            )

    def rss_flatness(self, pgid: int, base: str, token: str) -> None:
        url = f"{base}/v1/chat/completions"
        plain = {"model": MODEL, "messages": [{"role": "user", "content": "hello benchmark"}]}
        lua = write_lua(self.tmp / "flat.lua", plain, token)
        marks = [self.args.flat_first, self.args.flat_total]
        done = 0
        non2xx = 0
        sockerr = 0
        rate = 2000.0
        rss_at: dict[int, float] = {}
        rss_at[0] = rss_mib(pgid)
        trail: list[tuple[int, float, float, float, float]] = []
        started = time.monotonic()
        for mark in marks:
            while done < mark:
                left = mark - done
                secs = max(1.0, min(30.0, left / max(rate, 1.0)))
                cpu0 = cpu_seconds(pgid)
                watch = CoreWatch(pgid)
                res = run_wrk(url, lua, 64, secs, self.logdir, f"flat {done}")
                per = (cpu_seconds(pgid) - cpu0) * 1e3 / max(res.requests, 1)
                done += res.requests
                trail.append((done, rss_mib(pgid), res.rps, per, watch.other_pct()))
                non2xx += res.non2xx
                sockerr += res.socket_errors
                if res.rps > 0:
                    rate = res.rps
            time.sleep(1.0)  # let the ledger flush its batch
            rss_at[done] = rss_mib(pgid)
            log(f"  rss after {done} requests: {rss_at[done]:.1f} MiB ({rate:.0f} req/s)")
        items = sorted(rss_at.items())
        (n1, r1), (n2, r2) = items[1], items[2]
        self.flat = {
            "n1": n1,
            "rss1": r1,
            "n2": n2,
            "rss2": r2,
            "rss0": items[0][1],
            "growth_pct": (r2 - r1) / r1 * 100.0,
            "non2xx": non2xx,
            "socket_errors": sockerr,
            "seconds": time.monotonic() - started,
            "rate": rate,
            "trail": trail,
        }

    def profile_spendgate(self, pid: int, base: str, token: str) -> None:
        pyspy = pyspy_path()
        if pyspy is None:
            self.profile_note = "py-spy not installed; profile skipped"
            return
        url = f"{base}/v1/chat/completions"
        plain = {"model": MODEL, "messages": [{"role": "user", "content": "hello benchmark"}]}
        lua = write_lua(self.tmp / "profile.lua", plain, token)
        secs = self.args.profile_seconds
        # Python frames only, sampled without pausing the process (least distortion); a
        # --native run pauses the process per sample and collapses throughput ~30x here.
        out = RESULTS / "profile.speedscope.json"
        ok, rps, msg = self._spy(pyspy, pid, url, lua, secs, out, ["--nonblocking"])
        if not ok:
            self.profile_note = msg
            return
        self.profile = top_own_time(out, 15)
        self.profile_note = (
            f"py-spy record, {secs}s at 200 Hz (--nonblocking, Python frames) under wrk c=16 "
            f"({rps:.0f} req/s while sampled). Own time aggregated per function (all lines); "
            "% of all non-idle samples of all threads. Time spent inside C code (uvloop, "
            "httptools, orjson, sqlite) is charged to the Python frame that called it: "
            "`Runner.run` is the uvloop event loop itself. File: "
            f"bench/results/{out.name} (open in speedscope.app)."
        )

    def _spy(
        self, pyspy: Path, pid: int, url: str, lua: Path, secs: int, out: Path, flags: list[str]
    ) -> tuple[bool, float, str]:
        out.unlink(missing_ok=True)
        spy = subprocess.Popen(
            [
                "taskset",
                "-c",
                LOAD_CORE,
                str(pyspy),
                "record",
                "-p",
                str(pid),
                "-d",
                str(secs),
                "-r",
                "200",
                "-o",
                str(out),
                "--format",
                "speedscope",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        text = b""
        try:
            time.sleep(0.5)
            res = run_wrk(url, lua, 16, secs, self.logdir, f"profile c=16 {flags}")
            text, _ = spy.communicate(timeout=secs + 60)
        finally:
            if spy.poll() is None:
                _kill_group(spy, 5.0)  # type: ignore[arg-type]
        with open(self.logdir / "py-spy.log", "ab") as f:
            f.write(text or b"")
        if spy.returncode != 0 or not out.exists():
            return (
                False,
                0.0,
                (
                    f"py-spy {' '.join(flags)} failed (exit {spy.returncode}): "
                    f"{(text or b'').decode(errors='replace')[-500:]}"
                ),
            )
        return True, res.rps, ""


def top_own_time(path: Path, n: int) -> list[tuple[str, float, float]]:
    """(function, own %, total %) for the n functions with the most own (self) samples.

    speedscope frames from py-spy are per line; they are merged per (function, file) here,
    and the function's hottest own-time line is named.
    """
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    key_of = [(f["name"], f.get("file") or "") for f in frames]
    own: Counter[tuple[str, str]] = Counter()
    own_line: Counter[int] = Counter()
    total: Counter[tuple[str, str]] = Counter()
    weight_sum = 0.0
    for prof in data["profiles"]:
        weights = prof.get("weights") or [1] * len(prof["samples"])
        for stack, w in zip(prof["samples"], weights, strict=False):
            if not stack:
                continue
            weight_sum += w
            own[key_of[stack[-1]]] += w
            own_line[stack[-1]] += w
            for k in {key_of[i] for i in stack}:
                total[k] += w
    out = []
    for key, w in own.most_common(n):
        name, file = key
        hot = max((i for i in own_line if key_of[i] == key), key=lambda i: own_line[i])
        short = re.sub(r".*/(site-packages|lib/python3\.\d+)/", "", file)
        short = re.sub(r".*/src/spendgate/", "spendgate/", short.replace(str(ROOT) + "/", ""))
        line = frames[hot].get("line")
        where = f"{short}:{line}" if file and line else short
        out.append(
            (f"`{name}` {where}".strip(), 100.0 * w / weight_sum, 100.0 * total[key] / weight_sum)
        )
    return out


# -- report -------------------------------------------------------------------------------------
def fmt(x: float | None, nd: int = 2) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x:,.{nd}f}"


def report(b: Bench, started: float) -> str:
    base = {(r.scenario, r.conns): r for r in b.rows if r.target == "upstream"}
    for r in b.rows:
        ref = base.get((r.scenario, r.conns))
        if r.target != "upstream" and ref is not None:
            r.added_p50 = r.wrk.p50_ms - ref.wrk.p50_ms
            r.added_p99 = r.wrk.p99_ms - ref.wrk.p99_ms
    lines = [
        f"# Gateway benchmark — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
        f"Command: `{' '.join(['bash bench/run.sh', *sys.argv[1:]])}`  ",
        (
            f"Mode: {'quick' if b.args.quick else 'full'}; wrk -t1, {b.args.duration:g}s per row, "
            f"--latency; {b.args.warmup:g}s warm-up at c=16 per server (not counted).  "
        ),
        (
            f"Machine: {os.cpu_count()} cores; gateway under test pinned to core {GATEWAY_CORE} "
            f"alone (one gateway at a time); **the fake upstream and wrk share core {LOAD_CORE}**, "
            "so the upstream baseline rows (and the highest gateway rates) are bounded by that "
            "shared core.  "
        ),
        f"spendgate measured: {b.source}.  ",
        f"Limits on the bench key (never binding): {', '.join(b.limit_modes())}.  ",
        f"Python {sys.version.split()[0]}; {tool_versions()}",
        "",
        (
            "| target | scenario | conc | req/s | p50 ms | p99 ms | +p50 ms | +p99 ms "
            "| CPU ms/req | RSS MiB | non-2xx | socket err | core-0 other % |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in b.rows:
        lines.append(
            f"| {r.target} | {r.scenario} | {r.conns} | {fmt(r.wrk.rps, 0)} "
            f"| {fmt(r.wrk.p50_ms, 3)} | {fmt(r.wrk.p99_ms, 3)} "
            f"| {fmt(r.added_p50, 3)} | {fmt(r.added_p99, 3)} "
            f"| {fmt(r.cpu_ms_per_req, 3)} | {fmt(r.rss_mib, 1)} "
            f"| {r.wrk.non2xx} | {r.wrk.socket_errors} | {fmt(r.core_other_pct, 0)} |"
        )
    lines += [
        "",
        (
            "CPU ms/req and RSS are of the process group in that row's *target* "
            "(upstream rows: the fake upstream itself; gateway rows: the gateway only, "
            "not the upstream). +p50/+p99 = gateway latency minus direct-upstream "
            "latency at the same concurrency and scenario. core-0 other % = share of the "
            "gateway core (core 0) used by anything but the measured gateway during the row "
            "(other programs on the machine, VM steal); above a few % the row is disturbed."
        ),
        "",
    ]
    if b.flat:
        f = b.flat
        lines += [
            "## RSS flatness (spendgate, c=64, fresh process)",
            "",
            "| after requests | RSS MiB |",
            "|--:|--:|",
            f"| 0 (after setup) | {fmt(f['rss0'], 1)} |",
            f"| {f['n1']:,} | {fmt(f['rss1'], 1)} |",
            f"| {f['n2']:,} | {fmt(f['rss2'], 1)} |",
            "",
            (
                f"Growth between the two marks: {f['growth_pct']:+.1f} % "
                f"(non-2xx {f['non2xx']}, socket errors {f['socket_errors']}, "
                f"{f['seconds']:.0f} s, last chunk {f['rate']:.0f} req/s)."
            ),
            "",
            (
                "<details><summary>every chunk: requests so far, RSS, req/s, gateway CPU ms/req, "
                f"core-{GATEWAY_CORE} use by other processes</summary>"
            ),
            "",
            "| requests | RSS MiB | req/s | CPU ms/req | core-0 other % |",
            "|--:|--:|--:|--:|--:|",
            *(
                f"| {n:,} | {r:.1f} | {rps:.0f} | {per:.3f} | {o:.0f} |"
                for n, r, rps, per, o in f["trail"]
            ),
            "",
            "</details>",
            "",
        ]
    lines += targets(b)
    lines += ratios(b)
    if b.profile or b.profile_note:
        lines += ["## spendgate profile: top functions by own time", "", b.profile_note, ""]
        if b.profile:
            lines += ["| # | function | own % | total % |", "|--:|---|--:|--:|"]
            for i, (name, own, tot) in enumerate(b.profile, 1):
                lines.append(f"| {i} | {name} | {own:.1f} | {tot:.1f} |")
            lines.append("")
    if b.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in b.notes] + [""]
    lines.append(
        f"Total bench time: {time.monotonic() - started:.0f} s. Logs of this run: "
        f"bench/results/logs/."
    )
    return "\n".join(lines) + "\n"


def limit_rows(mode: str, key_id: str, org_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Admin calls that put ``mode``'s enforcement on every call of the bench key: a
    hard-capped budget (reserve + settle), an rpm/tpm rate limit (acquire + settle),
    both, or all (both and a funded org wallet); all set far above the load, so they
    never refuse."""
    wallet = (
        "/admin/wallets",
        {"scope_type": "org", "scope_id": org_id, "initial_topup_usd": "1000000"},
    )
    budget = (
        "/admin/budgets",
        {"scope_type": "key", "scope_id": key_id, "amount_usd": "1000000", "hard_limit": True},
    )
    rate = (
        "/admin/rate-limits",
        {
            "scope_type": "key",
            "scope_id": key_id,
            "model": "*",
            "rpm": 10_000_000,
            "tpm": 10_000_000_000,
        },
    )
    return {
        "none": [],
        "ratelimit": [rate],
        "budget": [budget],
        "both": [budget, rate],
        "all": [budget, rate, wallet],
    }[mode]


def pyspy_path() -> Path | None:
    """py-spy from the bench venv, else the project's venv, else PATH."""
    for candidate in (LITELLM_VENV / "bin/py-spy", PROJECT_VENV / "bin/py-spy"):
        if candidate.exists():
            return candidate
    found = shutil.which("py-spy")
    return Path(found) if found else None


def targets(b: Bench) -> list[str]:
    first = b.label(b.runs()[0][1], b.runs()[0][0])
    sg = {(r.scenario, r.conns): r for r in b.rows if r.target == first}
    if not sg:
        return []
    out = [
        f"## spendgate targets (one core; rows of {first})",
        "",
        "| target | measured | met? |",
        "|---|---|---|",
    ]
    best = max((r for r in sg.values() if r.scenario == "plain"), key=lambda r: r.wrk.rps)
    out.append(
        f"| ≥ 2,500 req/s | {fmt(best.wrk.rps, 0)} req/s (best, c={best.conns}) "
        f"| {'yes' if best.wrk.rps >= 2500 else 'NO'} |"
    )
    c1 = sg.get(("plain", 1))
    if c1 is not None and c1.added_p50 is not None:
        out.append(
            f"| p50 added latency at c=1 < 0.5 ms | {c1.added_p50:.3f} ms "
            f"| {'yes' if c1.added_p50 < 0.5 else 'NO'} |"
        )
    st = next((r for r in sg.values() if r.scenario == "stream"), None)
    if st is not None:
        out.append(
            f"| streamed call < 1 ms CPU | {st.cpu_ms_per_req:.3f} ms "
            f"| {'yes' if st.cpu_ms_per_req < 1.0 else 'NO'} |"
        )
    if b.flat:
        g = b.flat["growth_pct"]
        out.append(
            f"| RSS flat within 10 % ({b.flat['n1']:,} → {b.flat['n2']:,} requests) "
            f"| {g:+.1f} % | {'yes' if abs(g) <= 10 else 'NO'} |"
        )
    errs = sum(
        r.wrk.non2xx + r.wrk.socket_errors for r in b.rows if r.target.startswith("spendgate")
    )
    errs += b.flat.get("non2xx", 0) + b.flat.get("socket_errors", 0) if b.flat else 0
    out.append(
        f"| no errors under load | {errs} non-2xx/socket errors | {'yes' if errs == 0 else 'NO'} |"
    )
    return [*out, ""]


def ratios(b: Bench) -> list[str]:
    """CPU per call of each spendgate row over its references in this same run: the
    key-only embedded server, the embedded server with the same limits, Portkey, LiteLLM
    (plain c=16 and stream rows). Absolute figures move with the machine's load; these
    ratios much less."""
    cpu = {(r.target, r.scenario, r.conns): r.cpu_ms_per_req for r in b.rows}
    refs = [("portkey", "Portkey"), ("litellm", "LiteLLM")]
    if ("embedded", "none") in b.runs():
        refs.insert(0, (b.label("none"), "key-only"))
    out = [
        "## CPU per call, as ratios within this run",
        "",
        "| spendgate row | scenario | CPU ms/req | "
        + " | ".join(f"× {n}" for _, n in refs)
        + " | × embedded, same limits |",
        "|---|---|--:|" + "--:|" * (len(refs) + 1),
    ]
    for backend, mode in b.runs():
        label = b.label(mode, backend)
        same = b.label(mode, "embedded")
        for scenario, conns in (("plain", 16), ("stream", b.args.stream_conns)):
            mine = cpu.get((label, scenario, conns))
            if mine is None:
                continue
            cells = [
                fmt(mine / cpu[(t, scenario, conns)]) if cpu.get((t, scenario, conns)) else "–"
                for t, _ in refs
            ]
            base = cpu.get((same, scenario, conns)) if backend == "shared" else None
            cells.append(fmt(mine / base) if base else "–")
            out.append(f"| {label} | {scenario} c={conns} | {fmt(mine, 3)} | {' | '.join(cells)} |")
    return [*out, ""]


def tool_versions() -> str:
    parts = []
    for name, argv in (
        (
            "spendgate",
            [
                str(PROJECT_VENV / "bin/python"),
                "-c",
                "import spendgate; print(spendgate.__version__)",
            ],
        ),
        (
            "litellm",
            [
                str(LITELLM_VENV / "bin/python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
        ),
        ("wrk", ["wrk", "-v"]),
    ):
        try:
            p = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
            text = (p.stdout + p.stderr).strip().splitlines()
            parts.append(f"{name} {text[0].split()[1] if name == 'wrk' else text[-1]}")
        except Exception:  # noqa: BLE001 (versions are decoration)
            parts.append(f"{name} ?")
    return ", ".join(parts)


def spendgate_source(rev: str | None, tmp: Path) -> tuple[str, dict[str, str]]:
    """Describe the spendgate code under test; export ``rev`` and return its PYTHONPATH."""

    def git(*a: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *a], capture_output=True, text=True, check=False
        )
        return out.stdout.strip()

    old = os.environ.get("PYTHONPATH")
    src = tmp / "src"
    src.mkdir()

    def env_for(path: Path) -> dict[str, str]:
        return {"PYTHONPATH": f"{path}{os.pathsep}{old}" if old else str(path)}

    if rev is None:
        # a snapshot, so edits made to the tree while the bench runs don't leak into it
        shutil.copytree(
            ROOT / "spendgate", src / "spendgate", ignore=shutil.ignore_patterns("__pycache__")
        )
        head = git("rev-parse", "--short", "HEAD") or "?"
        dirty = [
            line[3:]
            for line in git("status", "--porcelain", "--", "spendgate").splitlines()
            if line.strip()
        ]
        state = f" + uncommitted changes in {len(dirty)} path(s) under spendgate/" if dirty else ""
        return f"working tree, copied at start (HEAD {head}{state})", env_for(src)
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    if not sha:
        raise SystemExit(f"--rev {rev}: not a commit")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", sha, "spendgate"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    return f"git revision {rev} ({sha[:10]}), exported, not the working tree", env_for(src)


# -- main ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="RSS-flatness run of 20k vs 200k requests")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk row")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--conns", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--stream-conns", type=int, default=16)
    p.add_argument("--skip-litellm", action="store_true")
    p.add_argument("--skip-portkey", action="store_true")
    p.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=["embedded"],
        help="where spendgate keeps its state: embedded (SQLite, in-process counters) and/or\n"
        "shared (a fresh PostgreSQL database and a private Redis); each with every\n"
        "--with-limits mode, in order",
    )
    p.add_argument(
        "--with-limits",
        nargs="*",
        choices=LIMIT_MODES,
        default=None,
        metavar="MODE",
        help="enforcement on the bench key, never binding: none, ratelimit (rpm+tpm),\n"
        "budget (hard cap), both (the bare flag). Several modes: one spendgate run each,\n"
        "in order, e.g. --with-limits none ratelimit",
    )
    p.add_argument("--skip-flat", action="store_true")
    p.add_argument("--skip-profile", action="store_true")
    p.add_argument("--profile-seconds", type=int, default=10)
    p.add_argument("--flat-first", type=int, default=None)
    p.add_argument("--flat-total", type=int, default=None)
    p.add_argument(
        "--rev",
        default=None,
        help="benchmark spendgate as committed at this git revision (exported to a temp dir\n"
        "and put first on PYTHONPATH) instead of the working tree",
    )
    args = p.parse_args(argv)
    args.flat_first = args.flat_first or (20_000 if args.quick else 100_000)
    args.flat_total = args.flat_total or (200_000 if args.quick else 1_000_000)

    if not machine_ready(("wrk", "taskset")):
        return 2

    RESULTS.mkdir(exist_ok=True)
    logdir = RESULTS / "logs"
    if logdir.exists():
        shutil.rmtree(logdir)
    logdir.mkdir()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="spendgate-bench-"))
    procs = Procs(logdir)
    b = Bench(args, tmp, logdir, procs)
    code = 0
    try:
        b.source, b.src_env = spendgate_source(args.rev, tmp)
        log(f"spendgate source: {b.source}")
        up = b.start_upstream()
        b.suite("upstream", up.pid, f"http://127.0.0.1:{b.upstream_port}", None)

        for backend, mode in b.runs():
            label = b.label(mode, backend)
            sg, base, key = b.start_spendgate(label, mode, backend)
            b.suite(label, sg.pid, base, key)
            if not args.skip_profile and (backend, mode) == b.runs()[-1]:
                log(f"profiling {label} under c=16")
                b.profile_spendgate(sg.pid, base, key)
            procs.stop(label)

        if not args.skip_portkey:
            try:
                pk, base = b.start_portkey()
                b.suite("portkey", pk.pid, base, UPSTREAM_KEY, portkey_headers(b.upstream_port))
            except Exception as exc:  # noqa: BLE001 (report it, go on)
                b.notes.append(f"Portkey run failed: {exc}".replace("\n", " ")[:1500])
                log(f"Portkey run failed: {exc}")
            finally:
                procs.stop("portkey")

        if not args.skip_litellm:
            try:
                ll, base, key = b.start_litellm()
                b.suite("litellm", ll.pid, base, key)
            except Exception as exc:  # noqa: BLE001 (report it, go on)
                b.notes.append(f"LiteLLM run failed: {exc}".replace("\n", " ")[:1500])
                log(f"LiteLLM run failed: {exc}")
            finally:
                procs.stop("litellm")

        if not args.skip_flat:
            log(f"RSS flatness: {args.flat_first:,} vs {args.flat_total:,} requests at c=64")
            backend, mode = b.runs()[-1]
            sg, base, key = b.start_spendgate("spendgate-flat", mode, backend)
            b.rss_flatness(sg.pid, base, key)
            procs.stop("spendgate-flat")
    except BaseException as exc:
        code = 1
        b.notes.append(f"run aborted: {exc!r}"[:1500])
        log(f"ABORTED: {exc!r}")
        if not isinstance(exc, (Exception, SystemExit, KeyboardInterrupt)):
            raise
    finally:
        procs.stop_all()
        if b.shared is not None:
            b.shared.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        text = report(b, started)
        (RESULTS / "latest.md").write_text(text)
        print(text, flush=True)
        log("wrote bench/results/latest.md")
    return code


if __name__ == "__main__":
    sys.exit(main())
