"""Server time per console page with a large ledger (default: 1,000,000 rows on PostgreSQL).

    .venv/bin/python bench/console_bench.py [--rows 1000000] [--budgets 20] [--repeat 30]
        [--forecast-repeat 5] [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--keep]

Builds (untimed) a fresh database with one org, 8 teams with a key each, ``--budgets``
team budgets, one more monthly team budget with categories (``CATEGORIES``: a model
family and a tag, so it counts only some of its team's calls) and ``--rows`` ledger rows
spread over the last 90 days (a third tagged ``search``, a third ``batch`` and
``search``, a third untagged; written by PostgreSQL itself with ``generate_series``, then
rolled up with ``store.rebuild``), then serves the gateway in a thread on 127.0.0.1 and
times ``--repeat`` requests of each page, signed in as the org admin, and
``--forecast-repeat`` recomputations of the forecast of a team budget, of the budget with
categories and of two org budgets (``ORG_BUDGETS``, made after the pages are timed)
(``GET /admin/forecasts/{id}?refresh=true``, the master key).
Printed: the first view's milliseconds (nothing kept yet: /usage reads every day from the
rollups), then p50, p95 and max of the views after it (a request on loopback: the server's
time plus a few hundred microseconds; /usage then reuses the figures of closed days, see
``console.usage_source.ClosedDays``). Goal (issue #16): p95 under 150 ms for /usage and
/usage/budgets.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spendgate.app import create_app
from spendgate.core.clock import FrozenClock
from spendgate.settings import load_settings
from spendgate.store.database import create_engine
from spendgate.store.rebuild import rebuild
from spendgate.testing.fake_upstream import serve_in_thread

MASTER = "sg-master-console-bench-0123456789"
NOW = datetime(2026, 3, 20, 15, 0, tzinfo=UTC)
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini", "claude-sonnet-4-5"]
TAG_SETS = ['["search"]', '["batch", "search"]', "[]"]
#: what the budget with categories counts of its team: the gpt-4o family, tagged search
CATEGORIES = {"models": ["gpt-4o*"], "tags": ["search"]}
#: org budgets whose forecasts are timed too (label: zone): one in the org's reporting
#: zone (UTC, its daily rollup's), one in another
ORG_BUDGETS = {"org (UTC)": "UTC", "org (Asia/Kolkata)": "Asia/Kolkata"}

FILL = """
INSERT INTO ledger (request_id, org_id, team_id, user_id, agent_id, key_id, tags, provider,
    model, upstream_model, kind, stream, status, http_status, input_tokens, output_tokens,
    cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_nanos, price_unknown,
    usage_estimated, latency_ms, started_at, finished_at, usage_implausible)
SELECT 'req_' || g, $1, ($2::text[])[1 + g % 8], NULL, NULL, ($3::text[])[1 + g % 8],
    ($7::text[])[1 + (g / 3) % 3]::jsonb, 'openai', ($4::text[])[1 + (g / 7) % 5],
    ($4::text[])[1 + (g / 7) % 5],
    'chat', false, CASE WHEN g % 50 = 0 THEN 'error' ELSE 'ok' END, 200,
    100 + g % 900, 50 + g % 400, 0, 0, 0, 1000 + (g * 7919) % 2000000, false, false, 300,
    $5::timestamptz - make_interval(secs => (g::float8 / $6) * 90 * 86400),
    $5::timestamptz - make_interval(secs => (g::float8 / $6) * 90 * 86400) + interval '1 s',
    false
FROM generate_series(1::bigint, $6::bigint) AS g
"""


async def _create_db(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(admin_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _fill(dsn: str, org: str, teams: list[str], keys: list[str], rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(FILL, org, teams, keys, MODELS, NOW, rows, TAG_SETS)
        await conn.execute("ANALYZE ledger")
    finally:
        await conn.close()
    # the rollups are written with the ledger; rows written behind its back are rolled
    # up the way an operator repairs them (``spendgate usage rebuild``)
    engine = create_engine(dsn.replace("postgres://", "postgresql://"))
    try:
        await rebuild(engine, NOW - timedelta(days=91), NOW + timedelta(hours=1))
    finally:
        await engine.dispose()
    # the planner needs statistics of the rollups just written (autovacuum would gather
    # them in time, but may be off or late): without them it sorts 100,000s of rows on disk
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--budgets", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--forecast-repeat", type=int, default=5)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    name = f"sg_console_bench_{uuid.uuid4().hex[:8]}"
    base = args.pg.rsplit("/", 1)[0]
    asyncio.run(_create_db(args.pg, name))
    try:
        run(args, f"{base}/{name}")
    finally:
        if not args.keep:
            asyncio.run(_drop_db(args.pg, name))


def run(args: argparse.Namespace, dsn: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "SPENDGATE_MASTER_KEY": MASTER,
            "SPENDGATE_DATABASE_URL": dsn,
            "SPENDGATE_SPOOL_DIR": str(Path(tmp) / "spool"),
        }
        settings = load_settings(env=env)
        app = create_app(settings, clock=FrozenClock(NOW), env=env)
        handle = serve_in_thread(app)
        try:
            measure(args, dsn, handle.url)
        finally:
            handle.stop()


def measure(args: argparse.Namespace, dsn: str, url: str) -> None:
    """Set up (untimed), then time each page."""
    headers = {"authorization": f"Bearer {MASTER}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as admin:
        org = admin.post("/admin/orgs", json={"name": "bench"}).json()["id"]
        teams = [
            admin.post("/admin/teams", json={"name": f"t{i}", "org_id": org}).json()["id"]
            for i in range(8)
        ]
        keys = [
            admin.post("/admin/keys", json={"name": f"k{i}", "org_id": org, "team_id": t}).json()[
                "id"
            ]
            for i, t in enumerate(teams)
        ]
        user = admin.post(
            "/admin/users", json={"email": "a@bench.test", "role": "org_admin", "org_id": org}
        ).json()
        admin.put(
            f"/admin/users/{user['id']}/console-password", json={"password": "bench password"}
        ).raise_for_status()
        started = time.perf_counter()
        asyncio.run(_fill(dsn.replace("postgresql://", "postgres://"), org, teams, keys, args.rows))
        print(
            f"filled and rolled up {args.rows:,} ledger rows "
            f"in {time.perf_counter() - started:.1f} s"
        )
        budget = ""
        for i in range(args.budgets):
            budget = admin.post(
                "/admin/budgets",
                json={
                    "name": f"b{i}",
                    "scope_type": "team",
                    "scope_id": teams[i % 8],
                    "amount_usd": "50",
                },
            ).json()["id"]
        picky = admin.post(
            "/admin/budgets",
            json={
                "name": "categories",
                "scope_type": "team",
                "scope_id": teams[0],
                "amount_usd": "50",
                "categories": CATEGORIES,
            },
        )
        picky.raise_for_status()
        some = picky.json()["id"]
        status = admin.get(f"/admin/budgets/{some}/status").json()
        print(f"the budget with categories {CATEGORIES}: ${status['spent_usd']} spent this period")
    pages = {
        "/usage (30 days by model)": "/usage",
        "/usage (90 days by team, weekly)": "/usage?preset=90d&group_by=team&grain=week",
        "/usage with a budget": f"/usage?preset=mtd&budget={budget}",
        "/usage with a budget with categories": f"/usage?preset=mtd&budget={some}",
        f"/usage/budgets ({args.budgets + 1} budgets)": "/usage/budgets",
        "/usage/budgets/{id} (plain)": f"/usage/budgets/{budget}",
        "/usage/budgets/{id} (categories)": f"/usage/budgets/{some}",
        "/notifications": "/notifications",
    }
    with httpx.Client(base_url=url, timeout=120) as browser:
        browser.get("/login")
        browser.post(
            "/login",
            data={
                "email": "a@bench.test",
                "password": "bench password",
                "csrf_token": browser.cookies["sg_csrf"],
            },
        )
        print(f"\n{'page':40} {'first ms':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
        for label, path in pages.items():
            t0 = time.perf_counter()
            browser.get(path).raise_for_status()
            first = (time.perf_counter() - t0) * 1000
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                browser.get(path).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
            print(
                f"{label:40} {first:9.1f} {statistics.median(times):8.1f} "
                f"{_percentile(times, 0.95):8.1f} {max(times):8.1f}"
            )
    # after the pages: a stored forecast would change what their first views do
    with httpx.Client(base_url=url, headers=headers, timeout=120) as admin:
        forecasts = {"plain": budget, "with categories": some}
        for label, zone in ORG_BUDGETS.items():  # made now: the pages above never show them
            made = admin.post(
                "/admin/budgets",
                json={
                    "name": label,
                    "scope_type": "org",
                    "scope_id": org,
                    "amount_usd": "5000",
                    "timezone": zone,
                },
            )
            made.raise_for_status()
            forecasts[label] = made.json()["id"]
        print(f"\n{'forecast recomputed':40} {'first ms':>9} {'p50 ms':>8} {'max ms':>8}")
        for label, budget_id in forecasts.items():
            times = []
            for _ in range(1 + args.forecast_repeat):
                t0 = time.perf_counter()
                admin.get(f"/admin/forecasts/{budget_id}?refresh=true").raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
            rest = times[1:] or times
            print(
                f"{'budget ' + label:40} {times[0]:9.1f} {statistics.median(rest):8.1f} "
                f"{max(rest):8.1f}"
            )


if __name__ == "__main__":
    main()
