"""Showback at scale: seed a ledger through the real write path, then time the reports.

    .venv/bin/python bench/showback_bench.py [--rows 10000000] [--backend sqlite|postgresql|both]
        [--pg-admin postgresql://postgres@127.0.0.1:5432/postgres] [--repeat 20]
        [--sqlite-path PATH] [--pg-database NAME] [--reports-only] [--bulk [--direct-fill]]

``--sqlite-path`` / ``--pg-database``: keep the seeded database there (created and
migrated if new) and reuse it on the next run: a database whose ledger already holds
rows is not seeded again (the seed column then says "reused").

Seeds ``--rows`` ledger rows over 13 months (500 keys, 40 teams, 30 models, a tag mix:
most keys tagged by environment, a few ``shared``, 10 % of keys without a team) through
``ledger.store_batch`` — the writer's own transaction, rollups included — in batches of
5,000. Then prints one table:

- the writer's CPU per row with and without the rollups (20,000 rows, batches of 500,
  ``time.process_time``): the cost of keeping rollups, paid off the request path;
- ``usage_report`` (what ``/admin/usage`` runs) for one month by team x model x day in
  Asia/Kathmandu, and for a year by month: p50 and p95 of ``--repeat`` runs;
- the statements of one month (every team's and the org's; the largest team's is one
  of them);
- a full rebuild of the rollups from the ledger (dry run: read, aggregate, compare).

``--bulk``: the database writes the ledger rows itself (``BULK_SQL``: PostgreSQL's
``generate_series``, SQLite's recursive CTE; the same keys, teams, models, tags and
prices, the calls spread evenly over the 13 months in time order, as a ledger grows),
then the rollups come from ``rebuild`` (not a dry run: what ``spendgate usage rebuild``
does), whose seconds the seed column adds. The writer seed manages 1,000-2,000 rows/s
here: 10M rows would take hours. Given again for a kept database whose ledger is
there, ``--bulk`` reruns that rebuild, which finishes the rollups of a seed stopped
during them (chunks already right are only compared). The check that follows (the
dry-run rebuild) must find the rollups equal to the ledger.

``--direct-fill`` (with ``--bulk``, bench only): the rollups come from ``direct_fill``
instead of ``rebuild`` — the narrow rollup by one ``INSERT … SELECT`` from the whole
ledger, the daily one refolded from it; the wide and tag rollups are left empty (the
reports timed here read neither), so only ``--reports-only`` makes sense on such a
database (the full run's dry-run check would find every wide row missing). At 10M rows:
143 s instead of the rebuild's 2,641 s.

``--reports-only``: time the two usage reports and nothing else (no statements, no
rebuild, no writer cost), adding the month report's client CPU (``time.process_time``,
which also holds SQLite's own work: it runs in this process), on PostgreSQL the CPU
of the backends serving it (``/proc/<pid>/stat`` of the database's connections: the
server must run on this machine), and its time with the JSON body ``/admin/usage``
sends. With the load average: on a shared machine wall
times move with it, CPU times much less.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spendgate.admin.usage import usage_json
from spendgate.store import daily, rollups, schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.ledger import LedgerEntry, Pending, insert_entries, store_batch
from spendgate.store.rebuild import _from_ledger, rebuild
from spendgate.store.rollups import usage_team_daily
from spendgate.store.showback import usage_report
from spendgate.store.statements import draw

START = datetime(2025, 3, 1, tzinfo=UTC)
END = datetime(2026, 4, 1, tzinfo=UTC)
TEAMS, KEYS, MODELS = 40, 500, 30
ORG = {"id": "org_bench", "name": "bench", "reporting_timezone": "Asia/Kathmandu"}


def keys_table(rng: np.random.Generator) -> list[tuple[str | None, list[str], list[str]]]:
    """Per key: its team (None for 10 %), tags, and the 1-4 models it calls."""
    out = []
    for k in range(KEYS):
        team = None if k % 10 == 9 else f"team_{int(rng.integers(0, TEAMS)):02d}"
        tags = [["prod"], ["prod", "search"], ["staging"], ["shared"], []][k % 5]
        models = [f"model-{int(m):02d}" for m in rng.choice(MODELS, int(rng.integers(1, 5)))]
        out.append((team, tags, models))
    return out


def batch(n0: int, size: int, rng: np.random.Generator, keys: list) -> list[Pending]:  # type: ignore[type-arg]
    span = int((END - START).total_seconds())
    seconds = rng.integers(0, span, size)
    which = rng.integers(0, KEYS, size)
    tokens = rng.integers(50, 4000, size)
    rows = []
    for i in range(size):
        team, tags, models = keys[int(which[i])]
        at = START + timedelta(seconds=int(seconds[i]))
        model = models[i % len(models)]
        cost = None if i % 997 == 0 else int(tokens[i]) * 1_700 + i % 13
        rows.append(Pending(LedgerEntry(
            f"r{n0 + i:09d}", ORG["id"], team, f"user_{int(which[i]) % 90}", None,
            f"key_{int(which[i]):03d}", tags, "openai" if int(model[-2:]) % 3 else "anthropic",
            model, model, "chat", False, "ok" if i % 50 else "upstream_error", 200,
            int(tokens[i]), int(tokens[i]) // 4, 0, 0, 0, cost, cost is None, False, 100, at, at,
        )))  # fmt: skip
    return rows


async def seed_org(conn) -> None:  # type: ignore[no-untyped-def]
    await conn.execute(
        schema.orgs.insert().values(
            id=ORG["id"], name=ORG["name"], created_at=START, reporting_timezone="Asia/Kathmandu"
        )
    )
    await conn.execute(schema.teams.insert(), [
        {"id": f"team_{t:02d}", "org_id": ORG["id"], "name": f"team {t}", "created_at": START}
        for t in range(TEAMS)])  # fmt: skip


async def seed(engine, rows: int) -> float:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(7)
    keys = keys_table(rng)
    async with engine.begin() as conn:
        await seed_org(conn)
    began = time.perf_counter()
    done = 0
    while done < rows:
        size = min(5000, rows - done)
        part = batch(done, size, rng, keys)
        async with engine.begin() as conn:
            await store_batch(conn, part)
        done += size
        if done % 200_000 == 0:
            print(f"  seeded {done:,} rows ({time.perf_counter() - began:.0f} s)", file=sys.stderr)
    return time.perf_counter() - began


#: the bulk seed's rows, made by the database: row ``g`` (0-based) starts at
#: ``START + g * span / rows`` (evenly over the 13 months, in time order as a real ledger
#: grows), its key and tokens from multiplicative hashes of ``g`` (uniform like ``batch``'s
#: draws, and the same rows on both backends), the rest as ``batch`` makes them
BULK = """
INSERT INTO ledger (request_id, org_id, team_id, user_id, agent_id, key_id, tags, provider,
    model, upstream_model, kind, stream, status, http_status, input_tokens, output_tokens,
    cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_nanos, price_unknown,
    usage_estimated, latency_ms, started_at, finished_at, usage_implausible, uncounted)
SELECT {request_id}, :org, k.team, k.user_id, NULL, k.key_id, k.tags, m.provider, m.model,
    m.model, 'chat', {false}, CASE WHEN r.g % 50 = 0 THEN 'upstream_error' ELSE 'ok' END, 200,
    r.tok, r.tok / 4, 0, 0, 0, CASE WHEN r.g % 997 = 0 THEN NULL ELSE r.tok * 1700 + r.g % 13 END,
    {unpriced}, {false}, 100, {at}, {at}, {false}, {false}
FROM ({numbers}) AS r
JOIN bench_keys AS k ON k.k = r.k
JOIN bench_key_models AS m ON m.k = r.k AND m.i = r.g % k.n_models
"""
_NUMBERS = (
    "SELECT g, g * 48271 % 2147483647 % {keys} AS k, 50 + g * 16807 % 2147483647 % 3950 AS tok"
)
BULK_SQL = {
    "postgresql": BULK.format(
        request_id="'r' || lpad(r.g::text, 9, '0')",
        false="false",
        unpriced="r.g % 997 = 0",
        at="to_timestamp(:t0 + r.g * :span / :rows)",
        numbers=_NUMBERS.format(keys=KEYS)
        + " FROM generate_series(CAST(:lo AS BIGINT), CAST(:hi AS BIGINT) - 1) AS g",
    ),
    "sqlite": BULK.format(
        request_id="printf('r%09d', r.g)",
        false="0",
        unpriced="r.g % 997 = 0",
        at="strftime('%Y-%m-%d %H:%M:%S.000000', :t0 + r.g * :span / :rows, 'unixepoch')",
        numbers="WITH RECURSIVE s(g) AS "
        "(SELECT :lo UNION ALL SELECT g + 1 FROM s WHERE g + 1 < :hi) "
        + _NUMBERS.format(keys=KEYS)
        + " FROM s",
    ),
}


async def direct_fill(engine, start: datetime, end: datetime) -> None:  # type: ignore[no-untyped-def]
    """Bench only (``--direct-fill``): the narrow rollup filled straight from the ledger
    by one ``INSERT … SELECT`` over the whole range (the rebuild's own ``SELECT``,
    ``rebuild._from_ledger``, with the narrow key: the same sums as folding the wide
    rows), then the daily one from it (``daily.lock_zones``: the org's zone row and its
    refold, as the writer makes it). No chunks, no comparison; the wide and tag rollups
    stay empty (the reports timed here read neither)."""
    dialect = engine.dialect.name
    lo = sa.bindparam("lo", start, type_=schema.UTCDateTime())
    hi = sa.bindparam("hi", end, type_=schema.UTCDateTime())
    table = rollups.usage_team_rollup
    async with engine.begin() as conn:
        if dialect == "postgresql":
            await conn.exec_driver_sql("SET LOCAL work_mem = '1GB'")
            await conn.exec_driver_sql("SET LOCAL jit = off")
        t0 = time.perf_counter()
        names = ", ".join(c.name for c in table.columns)
        insert = f"INSERT INTO {table.name} ({names}) {_from_ledger(dialect, table)}"
        await conn.execute(sa.text(insert).bindparams(lo, hi))
        print(f"  {table.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        t0 = time.perf_counter()
        await daily.lock_zones(conn, [ORG["id"]])
        print(f"  usage_team_daily: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


async def bulk_seed(engine, rows: int, fill=rebuild) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The database writes the ledger rows itself (``BULK_SQL``, 1M rows a transaction),
    then the rollups come from the set-based ``rebuild`` (what ``spendgate usage rebuild``
    runs); returns the seconds of each."""
    keys = keys_table(np.random.default_rng(7))
    dialect = engine.dialect.name
    json_type = "JSONB" if dialect == "postgresql" else "TEXT"
    began = time.perf_counter()
    async with engine.connect() as conn:
        async with conn.begin():
            await seed_org(conn)
            await conn.exec_driver_sql(
                f"CREATE TEMPORARY TABLE bench_keys (k INTEGER PRIMARY KEY, team TEXT, "
                f"user_id TEXT, key_id TEXT, tags {json_type}, n_models INTEGER)"
            )
            await conn.exec_driver_sql(
                "CREATE TEMPORARY TABLE bench_key_models "
                "(k INTEGER, i INTEGER, model TEXT, provider TEXT, PRIMARY KEY (k, i))"
            )
            cast = "CAST(:tags AS JSONB)" if dialect == "postgresql" else ":tags"
            await conn.execute(
                sa.text(f"INSERT INTO bench_keys VALUES (:k, :team, :user, :key, {cast}, :n)"),
                [
                    {"k": k, "team": team, "user": f"user_{k % 90}", "key": f"key_{k:03d}",
                     "tags": json.dumps(tags), "n": len(models)}
                    for k, (team, tags, models) in enumerate(keys)
                ],
            )  # fmt: skip
            await conn.execute(
                sa.text("INSERT INTO bench_key_models VALUES (:k, :i, :model, :provider)"),
                [
                    {"k": k, "i": i, "model": m,
                     "provider": "openai" if int(m[-2:]) % 3 else "anthropic"}
                    for k, (_team, _tags, models) in enumerate(keys)
                    for i, m in enumerate(models)
                ],
            )  # fmt: skip
        span = int((END - START).total_seconds())
        done = 0
        while done < rows:
            size = min(1_000_000, rows - done)
            params = {"org": ORG["id"], "t0": int(START.timestamp()), "span": span,
                      "rows": rows, "lo": done, "hi": done + size}  # fmt: skip
            async with conn.begin():
                await conn.execute(sa.text(BULK_SQL[dialect]), params)
            done += size
            print(f"  bulk: {done:,} ledger rows ({time.perf_counter() - began:.0f} s)",
                  file=sys.stderr)  # fmt: skip
        if dialect == "postgresql":
            await conn.commit()
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("ANALYZE ledger")
    ledger_s = time.perf_counter() - began
    began = time.perf_counter()
    await fill(engine, START, END)
    return ledger_s, time.perf_counter() - began


async def writer_cost(url: str) -> tuple[float, float]:
    """CPU µs per row: ``insert_entries`` alone, then ``store_batch`` (with rollups)."""
    rng = np.random.default_rng(11)
    keys = keys_table(rng)
    out = []
    for with_rollups in (False, True):
        engine = create_engine(url)
        await migrate(engine)
        cpu = 0.0
        for b in range(40):
            part = batch(10**8 * (2 if with_rollups else 1) + b * 500, 500, rng, keys)
            async with engine.begin() as conn:
                t0 = time.process_time()
                if with_rollups:
                    await store_batch(conn, part)
                else:
                    await insert_entries(conn, [p.entry for p in part])
                cpu += time.process_time() - t0
        await engine.dispose()
        out.append(cpu / 20_000 * 1e6)
    return out[0], out[1]


async def timed(repeat: int, make) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    times, size = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = await make()
        times.append((time.perf_counter() - t0) * 1000)
        size = len(result)
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)], size


async def cpu_ms(repeat: int, make) -> float:  # type: ignore[no-untyped-def]
    """Median CPU ms of this process per run (SQLite's work included: it runs here)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        await make()
        times.append((time.process_time() - t0) * 1000)
    return statistics.median(times)


def _backends_cpu(pids: list[int]) -> float:
    """utime + stime of these PostgreSQL backends, in seconds (``/proc``: the server is
    on this machine)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def backend_cpu_ms(engine, repeat: int, make) -> float:  # type: ignore[no-untyped-def]
    """Mean CPU ms per run of the PostgreSQL backends serving this database (the pool's
    connections; a clock tick is 10 ms, so over ``repeat`` runs)."""
    await make()  # the pool's connection opened
    async with engine.connect() as conn:
        query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        pids = [int(p) for p in (await conn.exec_driver_sql(query)).scalars()]
    before = _backends_cpu(pids)
    for _ in range(repeat):
        await make()
    return (_backends_cpu(pids) - before) / repeat * 1000


async def run(
    backend: str,
    url: str,
    writer_url: str,
    rows: int,
    repeat: int,
    reports_only: bool = False,
    bulk: bool = False,
    filler=rebuild,  # type: ignore[no-untyped-def]
) -> dict[str, str]:
    """Seed ``url`` (unless it holds rows), time the reports there; the writer's cost is
    measured in the fresh, empty database ``writer_url``."""
    engine = create_engine(url)
    await migrate(engine)
    async with engine.connect() as conn:
        have = (await conn.execute(sa.select(sa.func.count()).select_from(schema.ledger))).scalar()
        # the daily rollup is the last one a bulk seed fills
        rolled = (
            await conn.execute(sa.select(sa.func.count()).select_from(usage_team_daily))
        ).scalar()
    seconds = fill = None
    how = filler.__name__
    if not have and bulk:
        seconds, fill = await bulk_seed(engine, rows, filler)
    elif not have:
        seconds = await seed(engine, rows)
    elif bulk or not rolled:  # a bulk seed stopped during its rollups: finish them
        t0 = time.perf_counter()
        await rebuild(engine, START, END)
        fill, how = time.perf_counter() - t0, "rebuild"
    if backend == "PostgreSQL":  # what autovacuum does after a bulk load, done now
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql("VACUUM ANALYZE")
    rows = rows if not have else int(have)
    month_start = datetime(2026, 2, 28, 18, 15, tzinfo=UTC)  # Mar 1 in Kathmandu (+5:45)
    month_end = datetime(2026, 3, 31, 18, 15, tzinfo=UTC)
    year_start = datetime(2025, 3, 31, 18, 15, tzinfo=UTC)
    tz = "Asia/Kathmandu"
    dims = ["day", "team", "model"]
    # what the app does once started (``app.py``): what lives as long as the process is
    # kept out of the cyclic GC's full passes. Without it each full pass here rescanned
    # ~166k objects (~100 ms at load 5), about one per 10 month reports at 10M rows: the
    # bench's p95, not the server's
    gc.freeze()
    month = await timed(
        repeat, lambda: usage_report(engine, dims, month_start, month_end, ORG["id"], timezone=tz)
    )
    year = await timed(
        repeat,
        lambda: usage_report(engine, ["month"], year_start, month_end, ORG["id"], timezone=tz),
    )
    if reports_only:

        async def document() -> list[bytes]:
            rows = await usage_report(engine, dims, month_start, month_end, ORG["id"], timezone=tz)
            return [usage_json(dims, month_start, month_end, tz, rows, rows)]

        cpu = await cpu_ms(repeat, document)
        as_json = await timed(repeat, document)
        server = ""
        if backend == "PostgreSQL":
            server = f", PostgreSQL CPU {await backend_cpu_ms(engine, repeat, document):.0f} ms"
        await engine.dispose()
        return {
            "backend": backend,
            "rows": f"{rows:,}",
            "month team x model x day": f"p50 {month[0]:.0f} ms, p95 {month[1]:.0f} ms "
            f"({month[2]:,} rows)",
            "the same with its JSON": f"p50 {as_json[0]:.0f} ms, p95 {as_json[1]:.0f} ms, "
            f"client CPU {cpu:.0f} ms{server}",
            "year by month": f"p50 {year[0]:.0f} ms, p95 {year[1]:.0f} ms",
            "load average": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        }
    statement = await timed(max(3, repeat // 4), lambda: draw(engine, ORG, "2026-03", tz))
    t0 = time.perf_counter()
    report = await rebuild(engine, START, END, dry_run=True)
    rebuild_s = time.perf_counter() - t0
    assert report.difference_count == 0, report.differences[:3]
    await engine.dispose()
    before, after = await writer_cost(writer_url)
    return {
        "backend": backend,
        "rows": f"{rows:,} (rollup rows {report.rollup_rows:,})",
        "seed": (f"{seconds:.0f} s ({rows / seconds:,.0f} rows/s)" if seconds else "reused")
        + (f", bulk; rollups by {how} {fill:.0f} s" if fill else ""),
        "writer CPU/row": f"{before:.0f} µs -> {after:.0f} µs with rollups",
        "month team x model x day":
            f"p50 {month[0]:.0f} ms, p95 {month[1]:.0f} ms ({month[2]:,} rows)",
        "year by month": f"p50 {year[0]:.0f} ms, p95 {year[1]:.0f} ms",
        "statements of a month": f"p50 {statement[0]:.0f} ms, p95 {statement[1]:.0f} ms",
        "full rebuild (dry run)": f"{rebuild_s:.1f} s ({report.ledger_rows:,} ledger rows)",
    }  # fmt: skip


def print_table(results: list[dict[str, str]]) -> None:
    """One markdown row per result, the first result's keys as the header."""
    keys = list(results[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in results:
        print("| " + " | ".join(r[k] for k in keys) + " |")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--sqlite-path", type=Path, default=None)
    parser.add_argument("--pg-database", default=None)
    parser.add_argument("--reports-only", action="store_true")
    parser.add_argument("--bulk", action="store_true")
    parser.add_argument("--direct-fill", action="store_true")
    args = parser.parse_args()
    results = []
    tag = uuid.uuid4().hex[:6]
    base = args.pg_admin.rsplit("/", 1)[0]
    if args.backend in ("sqlite", "both"):
        path = args.sqlite_path or Path(f"/tmp/sg-showback-bench-{tag}.db")
        writer = Path(f"/tmp/sg-showback-writer-{tag}.db")
        try:
            url = f"sqlite:///{path.resolve()}"
            results.append(
                await run(
                    "SQLite",
                    url,
                    f"sqlite:///{writer}",
                    args.rows,
                    args.repeat,
                    args.reports_only,
                    args.bulk,
                    direct_fill if args.direct_fill else rebuild,
                )
            )
        finally:
            for made in (writer, *(() if args.sqlite_path else (path,))):
                for p in made.parent.glob(f"{made.stem}*"):
                    p.unlink()
    if args.backend in ("postgresql", "both"):
        name = args.pg_database or f"sg_showback_bench_{tag}"
        writer_db = f"sg_showback_writer_{tag}"
        admin = await asyncpg.connect(args.pg_admin)
        known = "SELECT 1 FROM pg_database WHERE datname = $1"
        if not await admin.fetchval(known, name):
            await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.execute(f'CREATE DATABASE "{writer_db}"')
        try:
            results.append(
                await run(
                    "PostgreSQL",
                    f"{base}/{name}",
                    f"{base}/{writer_db}",
                    args.rows,
                    args.repeat,
                    args.reports_only,
                    args.bulk,
                    direct_fill if args.direct_fill else rebuild,
                )
            )
        finally:
            drop = [writer_db] if args.pg_database else [writer_db, name]
            for db in drop:
                await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            await admin.close()
    print_table(results)


if __name__ == "__main__":
    asyncio.run(main())
