"""Audit export benchmark: 1M entries in a SQLite file, streamed out in bounded memory.

    .venv/bin/python bench/audit_export.py                      # 1M entries, both paths
    .venv/bin/python bench/audit_export.py --entries 200000 --via store

Three steps, each in a fresh process so one step's memory does not count in another's:

1. ``build``: migrate a new SQLite file, then bulk-insert N entries whose chain is
   computed here (``spendgate.core.audit_chain.seal``), with plain ``sqlite3`` ``executemany``.
2. ``export --via store``: the route's JSONL generator over ``store.pages`` (keyset
   pagination); the bytes are counted and dropped.
3. ``export --via http``: ``GET /admin/audit/export`` on uvicorn, read with httpx
   streaming, in the same process (so RSS counts server and client).

Each export step reports time, bytes, and peak RSS (``resource.getrusage``) next to the
RSS before exporting; ``--verify`` also times ``store.verify`` over the whole chain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson

from spendgate.core.audit_chain import GENESIS, AuditEvent, derive_key, entry_key, head_mac, seal

KEY = "sg-master-bench"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
INSERT = (
    "INSERT INTO audit_log (id, seq, at, actor_type, actor_id, action, target_type,"
    " target_id, before, after, request_id, source_ip, prev_hash, hash, org_id, v, mac)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
ACTIONS = (
    "budget.updated",
    "key.created",
    "key.revoked",
    "wallet.topped_up",
    "budget.threshold_crossed",
)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        T0 + timedelta(seconds=n * 30),
        "admin",
        f"user_{n % 17}",
        ACTIONS[n % len(ACTIONS)],
        "budget",
        f"bud_{n % 1000}",
        before={"amount_usd": f"{n % 997}.00", "hard_limit": n % 2 == 0},
        after={"amount_usd": f"{n % 991}.50", "hard_limit": True},
        request_id=f"req_{n:012d}",
        source_ip="10.1.2.3",
    )


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def build(db: Path, entries: int) -> dict[str, Any]:
    from spendgate.store.database import create_engine, migrate

    db.unlink(missing_ok=True)

    async def schema() -> None:
        engine = create_engine(f"sqlite:///{db}")
        await migrate(engine)
        await engine.dispose()

    asyncio.run(schema())
    started = time.perf_counter()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA synchronous=OFF")
    prev, batch = GENESIS, []
    sealing = entry_key(derive_key(KEY))  # version-2 entries, MAC'd like the gateway's
    for n in range(1, entries + 1):
        e = seal(n, f"aud_{n:024x}", _event(n), prev, org_id="org_bench", sealing_key=sealing)
        ev = e.event
        batch.append(
            (
                e.id,
                n,
                _sqlite_time(ev.at),
                ev.actor_type,
                ev.actor_id,
                ev.action,
                ev.target_type,
                ev.target_id,
                orjson.dumps(ev.before).decode(),
                orjson.dumps(ev.after).decode(),
                ev.request_id,
                ev.source_ip,
                e.prev_hash,
                e.hash,
                e.org_id,
                e.version,
                e.mac,
            )
        )
        prev = e.hash
        if len(batch) == 20_000 or n == entries:
            conn.executemany(INSERT, batch)
            batch.clear()
    conn.execute(
        "UPDATE audit_chain_head SET seq = ?, hash = ?, mac = ? WHERE id = 1",
        (entries, prev, head_mac(derive_key(KEY), entries, prev)),
    )
    conn.commit()
    conn.close()
    return {
        "step": "build",
        "entries": entries,
        "seconds": time.perf_counter() - started,
        "db_mib": db.stat().st_size / 2**20,
    }


async def _export_store(engine: Any) -> int:
    from spendgate.admin.audit import EXPORT_BATCH, _jsonl
    from spendgate.store import audit as store

    up_to, _ = await store.head(engine)
    size = 0
    async for chunk in _jsonl(store.pages(engine, 0, up_to, (), EXPORT_BATCH)):
        size += len(chunk)  # the bytes a response would carry; dropped, like /dev/null
    return size


def _export_http(engine: Any) -> int:
    import httpx
    from fastapi import FastAPI

    from spendgate.admin.audit import router
    from spendgate.core.clock import SystemClock
    from spendgate.settings import Settings
    from spendgate.testing.fake_upstream import serve_in_thread

    api = FastAPI()
    api.include_router(router)
    api.state.services = SimpleNamespace(
        settings=Settings(master_key=KEY), clock=SystemClock(), engine=engine
    )
    handle = serve_in_thread(api)
    size = 0
    try:
        with (
            httpx.Client(
                base_url=handle.url, timeout=None, headers={"authorization": f"Bearer {KEY}"}
            ) as client,
            client.stream("GET", "/admin/audit/export", params={"format": "jsonl"}) as resp,
        ):
            resp.raise_for_status()
            for chunk in resp.iter_raw():
                size += len(chunk)
    finally:
        handle.stop()
    return size


def export(db: Path, via: str, verify: bool) -> dict[str, Any]:
    from spendgate.core.audit_chain import derive_key
    from spendgate.store import audit as store
    from spendgate.store.database import create_engine

    engine = create_engine(f"sqlite:///{db}")
    if via == "http":
        # uvicorn serves on its own loop, so the engine is created there by the route's
        # first use; this one only warms the imports
        asyncio.run(engine.dispose())
    before = peak_rss_mib()
    started = time.perf_counter()
    size = _export_http(engine) if via == "http" else asyncio.run(_export_store(engine))
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "step": f"export via {via}",
        "seconds": seconds,
        "mib": size / 2**20,
        "rss_before_mib": before,
        "peak_rss_mib": peak_rss_mib(),
    }
    if verify:
        started = time.perf_counter()
        now = datetime.now(UTC)
        verdict = asyncio.run(store.verify(engine, derive_key(KEY), now=now, batch=5000))
        result.update(
            verify_seconds=time.perf_counter() - started,
            verify_ok=verdict.ok,
            verified=verdict.checked,
            peak_rss_after_verify_mib=peak_rss_mib(),
        )
    asyncio.run(engine.dispose())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("step", nargs="?", choices=["all", "build", "export"], default="all")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path, default=Path("/tmp/spendgate-audit-bench.db"))
    parser.add_argument("--via", choices=["store", "http", "both"], default="both")
    parser.add_argument("--verify", action="store_true", help="also time store.verify")
    args = parser.parse_args()
    if args.step == "build":
        print(json.dumps(build(args.db, args.entries)))
        return
    if args.step == "export":
        print(json.dumps(export(args.db, args.via, args.verify)))
        return
    me = [sys.executable, __file__, "--db", str(args.db)]
    runs = [[*me, "build", "--entries", str(args.entries)]]
    for via in ["store", "http"] if args.via == "both" else [args.via]:
        runs.append([*me, "export", "--via", via, *(["--verify"] if args.verify else [])])
    for cmd in runs:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(
            "  ".join(
                f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
