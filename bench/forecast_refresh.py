"""Time a forecast refresh of many budgets: ``refresh_all`` end to end, and by phase.

    .venv/bin/python bench/forecast_refresh.py [--budgets 10000] [--workers 2]
        [--database-url sqlite:////tmp/spendgate-forecast-bench.db]

Builds (untimed) one org with one virtual key per budget, a key-scoped monthly budget on
each, and ``--days`` days of ledger rows (``--calls`` calls a day per key, each key its own
level and weekly pattern) rolled up as an operator repairs rollups (``store.rebuild``:
forecasts read them), then times the refresh with a process pool of ``--workers``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.forecasts import (
    HISTORY_DAYS,
    DailySpend,
    compute,
    jobs_for,
    refresh_all,
    spend_by_day,
    store,
)
from spendgate.store.policies import budget_from_row
from spendgate.store.rebuild import rebuild
from spendgate.store.rollups import usage_rollup

NOW = datetime(2026, 3, 17, 14, 0, tzinfo=UTC)


def budget_row(i: int) -> dict[str, Any]:
    return {
        "id": f"b_{i:05d}",
        "org_id": "org_1",
        "name": f"b {i}",
        "scope_type": "key",
        "scope_id": f"key_{i:05d}",
        "tag": None,
        "period": "monthly",
        "timezone": ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")[i % 4],
        "week_start": "monday",
        "amount_nanos": 3000 * 10**9,
        "alert_percentages": ["50", "75", "90"],
        "soft_limit_percent": "75",
        "hard_limit": i % 2 == 0,
        "hard_limit_percent": "100",
        "categories": {},
        "created_at": NOW,
        "updated_at": NOW,
    }


def ledger_rows(i: int, days: int, calls: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    level = rng.uniform(20, 120) * 1e9 / calls
    week = rng.uniform(0.2, 1.3, 7)
    rows = []
    for d in range(days):
        day = NOW - timedelta(days=days - d)
        for c in range(calls):
            at = day + timedelta(minutes=int(rng.integers(0, 1440)))
            cost = int(level * week[at.weekday()] * rng.lognormal(0, 0.3))
            rows.append(
                {
                    "request_id": f"r_{i}_{d}_{c}",
                    "org_id": "org_1",
                    "team_id": None,
                    "user_id": None,
                    "agent_id": None,
                    "key_id": f"key_{i:05d}",
                    "tags": [],
                    "provider": "openai",
                    "model": "gpt-4o",
                    "upstream_model": "gpt-4o",
                    "kind": "chat",
                    "stream": False,
                    "status": "ok",
                    "http_status": 200,
                    "input_tokens": 1,
                    "output_tokens": 1,
                    "cache_read_tokens": 0,
                    "cache_write_tokens": 0,
                    "reasoning_tokens": 0,
                    "cost_nanos": cost,
                    "price_unknown": False,
                    "usage_estimated": False,
                    "latency_ms": 1,
                    "started_at": at,
                    "finished_at": at,
                }
            )
    return rows


async def build(url: str, budgets: int, days: int, calls: int) -> Any:
    engine = create_engine(url)
    await migrate(engine)
    async with engine.begin() as conn:
        if (await conn.execute(schema.budgets.select().limit(1))).first() is None:
            rng = np.random.default_rng(7)
            await conn.execute(schema.orgs.insert().values(id="org_1", name="b", created_at=NOW))
            await conn.execute(schema.budgets.insert(), [budget_row(i) for i in range(budgets)])
            for i in range(budgets):
                await conn.execute(schema.ledger.insert(), ledger_rows(i, days, calls, rng))
        rows = [dict(r._mapping) for r in await conn.execute(schema.budgets.select())]
        counted = sa.select(sa.func.count()).select_from(schema.ledger)
        count = (await conn.execute(counted)).scalar_one()
        rolled = (await conn.execute(sa.select(usage_rollup.c.bucket).limit(1))).first()
    if rolled is None:  # written behind the ledger writer's back: rolled up once
        await rebuild(engine, NOW - timedelta(days=days + 1), NOW + timedelta(hours=1))
        if engine.dialect.name == "postgresql":  # the planner needs the rollup's statistics
            async with engine.begin() as conn:
                await conn.execute(sa.text("ANALYZE"))
    return engine, [budget_from_row(r) for r in rows], count


async def phases(engine: Any, budgets: list[Any], pool: Executor) -> dict[str, float]:
    out: dict[str, float] = {}
    t = time.perf_counter()
    start = NOW - timedelta(days=HISTORY_DAYS + 2)
    ledger = await spend_by_day(engine, start, NOW, {b.timezone for b in budgets})
    out["spend by day"], t = time.perf_counter() - t, time.perf_counter()
    jobs = jobs_for(budgets, DailySpend(ledger, NOW), NOW, {})
    out["daily series"], t = time.perf_counter() - t, time.perf_counter()
    forecasts = await compute(jobs, NOW, pool)
    out["forecasts"], t = time.perf_counter() - t, time.perf_counter()
    async with engine.begin() as conn:
        await store(conn, jobs, forecasts, NOW)
    out["store"] = time.perf_counter() - t
    methods: dict[str, int] = {}
    for f in forecasts:
        methods[f.method] = methods.get(f.method, 0) + 1
    print("methods:", methods)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=HISTORY_DAYS + 1)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default="sqlite:////tmp/spendgate-forecast-bench.db")
    args = parser.parse_args()
    t = time.perf_counter()
    engine, budgets, rows = await build(args.database_url, args.budgets, args.days, args.calls)
    print(f"{len(budgets)} budgets, {rows} ledger rows ({time.perf_counter() - t:.0f} s setup)")
    with ProcessPoolExecutor(args.workers) as pool:
        await compute([], NOW, pool)
        list(pool.map(abs, range(args.workers)))  # start the workers before timing
        timings = await phases(engine, budgets, pool)
        print(" | ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
        t = time.perf_counter()
        done = await refresh_all(engine, budgets, NOW, executor=pool)
        total = time.perf_counter() - t
    print(
        f"refresh_all: {len(done.forecasts)} budgets in {total:.1f} s "
        f"({args.workers} worker processes)"
    )
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
