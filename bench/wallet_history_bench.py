"""The wallet page's history on a big ledger: time its daily debits and days to empty.

    .venv/bin/python bench/wallet_history_bench.py [--rows 1000000] [--repeat 5]
        [--backend sqlite|postgresql|both] [--sqlite-path PATH] [--pg-database NAME]
        [--pg-admin postgresql://postgres@127.0.0.1:5432/postgres]

Seeds ``--rows`` ledger rows over the 30 days before ``NOW`` with ``showback_bench``'s
bulk seed (500 keys, 40 teams, 30 models, one org; the database writes the rows itself)
and its ``direct_fill`` (the narrow and daily rollups, as the writer keeps them). Then
opens three wallets that cross every edge the history has:

- ``org``: the org's wallet, opened 29.6 days ago (its first day partial), open;
- ``team``: ``team_03``'s, opened 20 days ago at 13:37, closed 2 days ago at 09:11, with
  an approved ticket whose $5 grant funded one of the team's keys for 3.5 days;
- ``key``: ``key_007``'s, opened 25 days ago at 06:05, open;
- ``org, UTC days``: the org's again, its daily rollup refolded into UTC days (the
  default reporting zone; the seed's is Asia/Kathmandu).

and times what the console's wallet page (``/wallets/{id}``) computes from the ledger:
its 30 days of debits (``console.wallets._daily_debits``) and days to empty
(``_runway``): p50 and p95 of ``--repeat`` runs, in this process (SQLite's work too).
The ``check`` column: the 30 debits add up to ``PolicyStore.wallet_spend`` over the same
span (the balance's figure), or the bench stops.

``--sqlite-path`` / ``--pg-database``: keep the seeded database and reuse it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import showback_bench as seeding

from spendgate.console.wallets import HISTORY_DAYS, _daily_debits, _runway
from spendgate.core.clock import FrozenClock
from spendgate.store import daily, schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.policies import PolicyStore, Wallet

NOW = datetime(2026, 4, 1, 15, 30, tzinfo=UTC)
DAY = timedelta(days=1)
seeding.START, seeding.END = NOW - 30 * DAY, NOW
ORG = seeding.ORG["id"]


def _wallet(wid: str, scope: tuple[str, str], opened: datetime, closed: datetime | None) -> dict:  # type: ignore[type-arg]
    return {
        "id": wid, "org_id": ORG, "name": wid, "scope_type": scope[0], "scope_id": scope[1],
        "low_balance_nanos": 0, "created_at": opened, "closed_at": closed, "updated_at": None,
    }  # fmt: skip


WALLETS = {
    "org": _wallet("wallet_org", ("org", ORG), NOW - timedelta(days=29.6), None),
    "team": _wallet(
        "wallet_team",
        ("team", "team_03"),
        (NOW - 20 * DAY).replace(hour=13, minute=37),
        (NOW - 2 * DAY).replace(hour=9, minute=11),
    ),
    "key": _wallet(
        "wallet_key", ("key", "key_007"), (NOW - 25 * DAY).replace(hour=6, minute=5), None
    ),
}


async def open_wallets(engine: Any) -> None:
    """The three wallets (again, if a kept database has them) and the team's ticket."""
    async with engine.begin() as conn:
        await conn.execute(schema.wallet_tickets.delete())
        await conn.execute(schema.wallets.delete())
        await conn.execute(schema.wallets.insert(), list(WALLETS.values()))
        key = (
            await conn.execute(
                sa.select(schema.ledger.c.key_id)
                .where(schema.ledger.c.team_id == "team_03")
                .limit(1)
            )
        ).scalar_one()
        approved = NOW - timedelta(days=10, hours=3)
        await conn.execute(
            schema.wallet_tickets.insert().values(
                id="tkt_bench", org_id=ORG, wallet_id="wallet_team", key_id=key,
                team_id="team_03", status="expired", asked_nanos=10**9, refusals=1,
                created_at=approved, last_refused_at=approved, decided_at=approved,
                granted_nanos=5 * 10**9, expires_at=approved + timedelta(days=3, hours=12),
            )
        )  # fmt: skip


async def timed(repeat: int, make: Any) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await make()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]


async def noop() -> None:
    return None


async def run(backend: str, url: str, rows: int, repeat: int) -> list[dict[str, str]]:
    engine = create_engine(url)
    await migrate(engine)
    async with engine.connect() as conn:
        have = (await conn.execute(sa.select(sa.func.count()).select_from(schema.ledger))).scalar()
    seed = "reused"
    if not have:
        ledger_s, fill_s = await seeding.bulk_seed(engine, rows, seeding.direct_fill)
        seed = f"{ledger_s:.0f} s + rollups {fill_s:.0f} s"
    if backend == "PostgreSQL":
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
    await open_wallets(engine)
    store = PolicyStore(engine)
    svc = SimpleNamespace(
        policies=store, clock=FrozenClock(NOW), ledger=SimpleNamespace(flush=noop)
    )
    out = []
    for name, row in [*WALLETS.items(), ("org, UTC days", WALLETS["org"])]:
        if name == "org, UTC days":
            await zone(engine, "UTC")
        shown = {**row, "status": "closed" if row["closed_at"] else "open", "balance_usd": "100"}
        debits = await _daily_debits(svc, shown, HISTORY_DAYS)  # type: ignore[arg-type]
        first = NOW.date() - timedelta(days=HISTORY_DAYS - 1)
        since = datetime.combine(first, datetime.min.time(), UTC)
        until = row["closed_at"] or NOW + DAY
        wallet = Wallet(row["id"], ORG, row["scope_type"], row["scope_id"], 0, row["created_at"])
        whole, _ = await store.wallet_spend(wallet, until, since)
        assert sum(debits.values()) == whole, (name, sum(debits.values()), whole)
        history = await timed(repeat, lambda r=shown: _daily_debits(svc, r, HISTORY_DAYS))  # type: ignore[misc]
        runway = await timed(repeat, lambda r=shown: _runway(svc, r))  # type: ignore[misc]
        out.append({
            "backend": backend,
            "ledger rows": f"{int(have or rows):,}",
            "seed": seed,
            "wallet": name,
            "30-day history": f"p50 {history[0]:.0f} ms, p95 {history[1]:.0f} ms",
            "days to empty": f"p50 {runway[0]:.0f} ms, p95 {runway[1]:.0f} ms",
            "check": f"debits = spend (${whole / 1e9:,.2f})",
            "load": f"{os.getloadavg()[0]:.1f}",
        })  # fmt: skip
    await zone(engine, seeding.ORG["reporting_timezone"])
    await engine.dispose()
    return out


async def zone(engine: Any, tz: str) -> None:
    """The org's daily rollup in days of ``tz`` (refolded, as a change of its reporting
    zone does)."""
    async with engine.begin() as conn:
        await daily.set_daily_zone(conn, ORG, tz)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sqlite-path", type=Path, default=None)
    parser.add_argument("--pg-database", default=None)
    args = parser.parse_args()
    results: list[dict[str, str]] = []
    tag = uuid.uuid4().hex[:6]
    if args.backend in ("sqlite", "both"):
        path = args.sqlite_path or Path(f"/tmp/sg-wallet-bench-{tag}.db")
        try:
            results += await run("SQLite", f"sqlite:///{path.resolve()}", args.rows, args.repeat)
        finally:
            if not args.sqlite_path:
                for p in path.parent.glob(f"{path.stem}*"):
                    p.unlink()
    if args.backend in ("postgresql", "both"):
        name = args.pg_database or f"sg_wallet_bench_{tag}"
        admin = await asyncpg.connect(args.pg_admin)
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            base = args.pg_admin.rsplit("/", 1)[0]
            results += await run("PostgreSQL", f"{base}/{name}", args.rows, args.repeat)
        finally:
            if not args.pg_database:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    seeding.print_table(results)


if __name__ == "__main__":
    asyncio.run(main())
