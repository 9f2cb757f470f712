"""CPU per proxied call inside one process, with no network and no neighbours' noise.

The gateway is built with ``create_app`` and started on this loop; each call is handed
to its ASGI entry point directly (no HTTP server, no socket), against the in-process
simulated provider (``--demo`` models). What is left is spendgate's own work per call:
authentication, planning, the guard (rate limit, budget, wallet holds and settle), the
ledger row and its spool write, and the background ledger flush. Run for each policy set
and backend::

    .venv/bin/python bench/hot_path_bench.py                   # embedded: SQLite
    .venv/bin/python bench/hot_path_bench.py --shared          # PostgreSQL + Redis

The shared mode uses a fresh database on the local PostgreSQL (127.0.0.1:5432) and a
key prefix of its own on the local Redis (127.0.0.1:6379), both removed afterwards.
Figures are process CPU (``time.process_time``) per call, every thread included, so the
ledger's background writes count. Compare rows of one run; ``wrk`` numbers through a
real server are in ``gateway_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import uvloop
from redis.asyncio import Redis

from spendgate import app as gateway_app
from spendgate.app import Gateway, create_app
from spendgate.core.clock import SystemClock
from spendgate.settings import Settings, load_settings

MASTER = "sg-master-bench-0123456789abcdef"
PG = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/0"
BODY = orjson.dumps(
    {"model": "demo-small", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
)


async def call(app: Gateway, secret: str, body: bytes) -> int:
    """One POST /v1/chat/completions straight into the app; the response status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 4100),
        "headers": [
            (b"host", b"127.0.0.1:4100"),
            (b"authorization", f"Bearer {secret}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # a client that stays connected
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def admin(app: Gateway, policies: str) -> str:
    """An org and key with ``policies`` ("none" or "all": budget, rate limit, wallet)."""
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {MASTER}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = await c.post(path, json=body)
            assert r.status_code < 300, r.text
            return dict(r.json())

        org = (await post("/admin/orgs", {"name": f"bench-{uuid.uuid4().hex[:8]}"}))["id"]
        key = await post("/admin/keys", {"name": "bench", "org_id": org})
        if policies == "all":
            kid = key["id"]
            await post(
                "/admin/budgets",
                {"scope_type": "key", "scope_id": kid, "amount_usd": "1000000", "hard_limit": True},
            )
            await post(
                "/admin/rate-limits",
                {"scope_type": "key", "scope_id": kid, "model": "*", "rpm": 10**7, "tpm": 10**10},
            )
            await post(
                "/admin/wallets",
                {"scope_type": "org", "scope_id": org, "initial_topup_usd": "1000000"},
            )
        return str(key["key"])


async def measure(app: Gateway, secret: str, calls: int, conc: int) -> float:
    """CPU µs per call for ``calls`` calls, ``conc`` in flight at a time."""
    per = calls // conc

    async def worker() -> None:
        for _ in range(per):
            status = await call(app, secret, BODY)
            assert status == 200, status

    await asyncio.gather(*(worker() for _ in range(conc)))  # warm-up: seeds, caches
    await app.services.ledger.flush()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(conc)))
    await app.services.ledger.flush()
    return (time.process_time() - cpu) * 1e6 / (per * conc)


def stretched(settings: Settings, factor: float) -> Settings:
    """``settings`` with the periods of background work ``factor`` times longer, and a
    ledger batch that never fills during a run: the rows are written by the flushes the
    bench asks for. (A full batch wakes the writer, whose flush also takes the rows that
    arrive while it writes, a few at a time; under valgrind how many depended on thread
    scheduling: one call at a time, 1,200 calls, made 23 SQLite executemany calls in one
    run and 49 in another, ~60,000 instructions a call apart.)"""
    gateway_app.HOUSEKEEPING_SECONDS *= factor
    gateway_app.SWEEP_SECONDS *= factor
    return dataclasses.replace(
        settings,
        ledger_batch_size=max(settings.ledger_batch_size, 1_000_000),
        ledger_flush_seconds=settings.ledger_flush_seconds * factor,
        key_cache_seconds=settings.key_cache_seconds * factor,
        hold_seconds=settings.hold_seconds * factor,
        hold_heartbeat_seconds=settings.hold_heartbeat_seconds * factor,
        reconcile_seconds=settings.reconcile_seconds * factor,
    )


@contextlib.asynccontextmanager
async def gateway(
    shared: bool, work: Path, stretch: float = 1.0, redis_url: str = REDIS
) -> AsyncIterator[Gateway]:
    """A started gateway with the demo models: SQLite in ``work``, or (``shared``) a fresh
    PostgreSQL database and a key prefix of its own on ``redis_url``, both removed afterwards.

    ``stretch`` multiplies every period of background work (ledger flush, key cache,
    policy reload, housekeeping, hold heartbeat, reconciliation, the webhook outbox poll
    and its maintenance): under a profiler that slows calls down N times, a stretch of N
    keeps that work's share per call as it is at full speed, instead of N times larger."""
    database = f"sg_hotpath_{uuid.uuid4().hex[:10]}"
    env = {"SPENDGATE_MASTER_KEY": MASTER, "SPENDGATE_SPOOL_DIR": str(work / "spool")}
    if "SPENDGATE_SPOOL_SYNC" in os.environ:  # to compare the spool's sync modes
        env["SPENDGATE_SPOOL_SYNC"] = os.environ["SPENDGATE_SPOOL_SYNC"]
    if shared:
        admin_db = await asyncpg.connect(f"{PG}/postgres")
        await admin_db.execute(f'CREATE DATABASE "{database}"')
        env |= {
            "SPENDGATE_DATABASE_URL": f"{PG}/{database}",
            "SPENDGATE_REDIS_URL": redis_url,
            "SPENDGATE_REDIS_PREFIX": f"sgbench:{uuid.uuid4().hex}:",
        }
    else:
        env["SPENDGATE_DATABASE_URL"] = f"sqlite:///{work / 'bench.db'}"
    try:
        settings = load_settings(env=env, demo=True)
        if stretch != 1.0:
            settings = stretched(settings, stretch)
        app = create_app(settings, clock=SystemClock(), env=env)
        if stretch != 1.0:
            app.services.enforcer._refresh_seconds *= stretch
            webhooks = app.services.webhooks  # the outbox poll (1 s) and its maintenance
            webhooks.worker._poll *= stretch
            webhooks.settings = dataclasses.replace(
                webhooks.settings,
                maintenance_seconds=webhooks.settings.maintenance_seconds * stretch,
            )
        await app.startup()
        try:
            yield app
        finally:
            await app.shutdown()
    finally:
        if shared:
            await admin_db.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin_db.close()
            redis = Redis.from_url(redis_url)
            keys = [k async for k in redis.scan_iter(match=env["SPENDGATE_REDIS_PREFIX"] + "*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()


async def run(args: argparse.Namespace, work: Path) -> None:
    async with gateway(args.shared, work) as app:
        for policies in args.policies:
            secret = await admin(app, policies)
            for conc in args.conc:
                us = await measure(app, secret, args.calls, conc)
                mode = "PostgreSQL + Redis" if args.shared else "SQLite, in-process"
                print(f"| {mode} | {policies} | {conc} | {us:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", action="store_true", help="PostgreSQL + Redis, not SQLite")
    p.add_argument("--calls", type=int, default=4000)
    p.add_argument("--conc", type=int, nargs="+", default=[1, 16])
    p.add_argument("--policies", nargs="+", choices=("none", "all"), default=["none", "all"])
    args = p.parse_args()
    os.environ.pop("SPENDGATE_CONFIG", None)
    print("| backends | policies | in flight | CPU µs/call |\n|---|---|--:|--:|")
    with tempfile.TemporaryDirectory(prefix="sg-hotpath-") as tmp:
        uvloop.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
