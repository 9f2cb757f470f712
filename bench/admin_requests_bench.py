"""Statements, round trips and milliseconds per admin API request on PostgreSQL.

    .venv/bin/python bench/admin_requests_bench.py [--repeat 100] [--show]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres] [--redis redis://127.0.0.1:6379/0]

Builds a fresh database (one org, a team, a budget, an org admin and a team admin with a
token each), serves the gateway in a thread with Redis (the PostgreSQL pairing) and, per
request kind, prints the SQL statements the gateway ran for one request (SQLAlchemy's
``before_cursor_execute``), the round trips to PostgreSQL (the client's ``Sync`` and
simple ``Query`` messages, counted by a loopback proxy the gateway connects through for
that pass only), pool checkouts, and p50 / mean milliseconds of ``--repeat`` requests
(a second gateway, connected directly). Each figure is of the requests after a warm-up
(each pooled connection has prepared its statements once).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spendgate.app import create_app
from spendgate.core.clock import FrozenClock
from spendgate.settings import load_settings
from spendgate.testing.fake_upstream import serve_in_thread

MASTER = "sg-master-admin-bench-0123456789"
NOW = datetime(2026, 3, 20, 15, 0, tzinfo=UTC)
SSL_REQUEST = struct.pack("!I", 80877103)


class RoundTrips:
    """A TCP proxy to PostgreSQL counting the client's round trips: each ``Sync`` ('S')
    or simple ``Query`` ('Q') message is one wait for the server's answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.count = host, port, 0
        self.loop = asyncio.new_event_loop()
        self.listen_port = 0
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.listen_port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(self._upstream(reader, up_writer), self._pipe(up_reader, writer))

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # an SSLRequest, then the startup message: neither has a type byte
                first = await reader.readexactly(4)
                body = await reader.readexactly(struct.unpack("!I", first)[0] - 4)
                writer.write(first + body)
                await writer.drain()
                if body[:4] != SSL_REQUEST:
                    break
            while True:
                head = await reader.readexactly(5)
                body = await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)
                if head[:1] in (b"S", b"Q"):
                    self.count += 1
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()


@dataclass
class Counts:
    statements: int = 0
    checkouts: int = 0
    #: with ``--show``: what the gateway ran, in order (checkouts as ``--``)
    log: list[str] | None = None


def serve(dsn: str, redis: str, tmp: str) -> tuple[Any, Any, Counts]:
    env = {
        "SPENDGATE_MASTER_KEY": MASTER,
        "SPENDGATE_DATABASE_URL": dsn,
        "SPENDGATE_REDIS_URL": redis,
        "SPENDGATE_REDIS_PREFIX": f"sgbench:{uuid.uuid4().hex}:",
        "SPENDGATE_SPOOL_DIR": str(Path(tmp) / f"spool-{uuid.uuid4().hex[:6]}"),
    }
    app = create_app(load_settings(env=env), clock=FrozenClock(NOW), env=env)
    handle = serve_in_thread(app)
    counts = Counts()
    engine = app.services.engine.sync_engine

    def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        counts.statements += 1
        if counts.log is not None:
            counts.log.append(" ".join(sql.split())[:110])

    def checkout(*_: Any) -> None:
        counts.checkouts += 1
        if counts.log is not None:
            counts.log.append("-- checkout")

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "checkout", checkout)
    return app, handle, counts


def world(url: str) -> dict[str, Any]:
    """An org, a team, a budget, and an org admin and a team admin with a token each."""
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {MASTER}"}) as master:

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            response = master.post(path, json=body)
            assert response.status_code == 201, response.text
            result: dict[str, Any] = response.json()
            return result

        run = uuid.uuid4().hex[:6]
        org = post("/admin/orgs", {"name": f"bench-{run}"})["id"]
        team = post("/admin/teams", {"org_id": org, "name": "t"})["id"]
        budget = post("/admin/budgets", {"scope_type": "team", "scope_id": team, "amount_usd": "5"})
        tokens = {}
        for role, teams in (("org_admin", []), ("team_admin", [team])):
            user = post(
                "/admin/users",
                {
                    "email": f"{role}-{run}@bench.example",
                    "role": role,
                    "org_id": org,
                    "team_ids": teams,
                },
            )["id"]
            tokens[role] = post("/admin/tokens", {"user_id": user, "name": role})["token"]
        return {"org": org, "team": team, "budget": budget["id"], "tokens": tokens}


Request = Callable[[httpx.Client, dict[str, Any]], httpx.Response]
_n = iter(range(10**9))

REQUESTS: list[tuple[str, str, Request]] = [
    ("GET /admin/keys", "master", lambda c, w: c.get("/admin/keys")),
    ("GET /admin/keys", "org_admin", lambda c, w: c.get("/admin/keys")),
    ("GET /admin/keys", "team_admin", lambda c, w: c.get("/admin/keys")),
    (
        "POST /admin/keys (audited)",
        "org_admin",
        lambda c, w: c.post(
            "/admin/keys", json={"name": f"k{next(_n)}", "org_id": w["org"], "team_id": w["team"]}
        ),
    ),
    (
        "POST /admin/budgets (audited)",
        "team_admin",
        lambda c, w: c.post(
            "/admin/budgets",
            json={"scope_type": "team", "scope_id": w["team"], "amount_usd": f"{next(_n) + 1}"},
        ),
    ),
    ("GET /admin/budgets/{id}", "team_admin", lambda c, w: c.get(f"/admin/budgets/{w['budget']}")),
    ("GET /admin/audit", "org_admin", lambda c, w: c.get("/admin/audit", params={"limit": 20})),
]


def client(url: str, w: dict[str, Any], who: str) -> httpx.Client:
    secret = MASTER if who == "master" else w["tokens"][who]
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {secret}"})


def count_pass(dsn: str, redis: str, tmp: str, show: bool) -> dict[str, tuple[float, float, float]]:
    """Statements, round trips and checkouts per request, through the counting proxy."""
    host, _, rest = dsn.split("@", 1)[1].partition(":")
    port = int(rest.split("/", 1)[0])
    proxy = RoundTrips(host, port)
    proxied = dsn.replace(f"@{host}:{port}/", f"@127.0.0.1:{proxy.listen_port}/")
    _, handle, counts = serve(proxied, redis, tmp)
    out = {}
    try:
        w = world(handle.url)
        for name, who, request in REQUESTS:
            with client(handle.url, w, who) as c:
                for _ in range(5):  # warm up: statements prepared on the pooled connections
                    assert request(c, w).status_code < 300
                time.sleep(0.2)  # let work after the answer (ledger flush, events) settle
                n = 20
                before = (counts.statements, proxy.count, counts.checkouts)
                for _ in range(n):
                    request(c, w)
                time.sleep(0.2)
                after = (counts.statements, proxy.count, counts.checkouts)
                spent = (a - b for a, b in zip(after, before, strict=True))
                out[f"{name} as {who}"] = tuple(x / n for x in spent)
                if show:
                    counts.log = []
                    request(c, w)
                    time.sleep(0.2)
                    print(f"\n{name} as {who}:", *counts.log, sep="\n  ")
                    counts.log = None
    finally:
        handle.stop()
    return out  # type: ignore[return-value]


def time_pass(dsn: str, redis: str, tmp: str, repeat: int) -> dict[str, tuple[float, float]]:
    _, handle, _ = serve(dsn, redis, tmp)
    out = {}
    try:
        w = world(handle.url)
        for name, who, request in REQUESTS:
            with client(handle.url, w, who) as c:
                for _ in range(5):
                    request(c, w)
                times = []
                for _ in range(repeat):
                    start = time.perf_counter()
                    request(c, w)
                    times.append((time.perf_counter() - start) * 1000)
                out[f"{name} as {who}"] = (statistics.median(times), statistics.fmean(times))
    finally:
        handle.stop()
    return out


async def _admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--show", action="store_true", help="print each request's statements")
    args = parser.parse_args()
    name = f"sg_admin_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(args.pg, f'CREATE DATABASE "{name}"'))
    dsn = f"{args.pg.rsplit('/', 1)[0]}/{name}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            counted = count_pass(dsn, args.redis, tmp, args.show)
            timed = time_pass(dsn, args.redis, tmp, args.repeat)
    finally:
        asyncio.run(_admin(args.pg, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(f"{'request':<44} {'stmts':>6} {'trips':>6} {'checkouts':>9} {'p50 ms':>7} {'mean':>6}")
    for key, (statements, trips, checkouts) in counted.items():
        p50, mean = timed[key]
        print(
            f"{key:<44} {statements:>6.1f} {trips:>6.1f} {checkouts:>9.1f} {p50:>7.2f} {mean:>6.2f}"
        )


if __name__ == "__main__":
    main()
