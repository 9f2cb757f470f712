"""What one proxied call costs in backend round trips, counted on the real backends.

The gateway is served as usual, behind a thin ASGI wrapper that marks each HTTP
request's context; every task the request starts inherits the mark. Two spies count
what runs under it: SQLAlchemy's ``before_cursor_execute`` on the gateway's engine
(SQL statements) and the Redis connection's ``send_packed_command`` (one per round
trip; a pipeline is one). Background work (the ledger flush, the hold heartbeat, the
policy refresh) carries no mark and is not counted: it is not on a call's path.

The budget is the hot path's design (``spendgate.guard``): with Redis, one round trip
before the upstream call and one after it, whatever the policies; no SQL statement
once the key and policies are cached, on either backend.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection
from sqlalchemy import event

from spendgate.app import Gateway
from spendgate.counters import redis_wire
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import RunningGateway, start_gateway

CALLS = 8
_BULK = re.compile(rb"\*(\d+)\r\n\$(\d+)\r\n")


@dataclass
class Spent:
    """Round trips and statements made on behalf of one request."""

    redis: list[list[str]] = field(default_factory=list)  # commands of each round trip
    sql: list[str] = field(default_factory=list)


_current: contextvars.ContextVar[Spent | None] = contextvars.ContextVar("spent", default=None)


def command_names(packed: Any) -> list[str]:
    """The command names in one packed RESP write (several for a pipeline)."""
    raw = packed if isinstance(packed, bytes) else b"".join(bytes(p) for p in packed)
    names, at = [], 0
    while (m := _BULK.match(raw, at)) is not None:
        argc, size = int(m.group(1)), int(m.group(2))
        names.append(raw[m.end() : m.end() + size].decode().upper())
        at = m.end() + size + 2
        for _ in range(argc - 1):  # skip the arguments
            arg = re.compile(rb"\$(\d+)\r\n").match(raw, at)
            assert arg is not None, raw[at : at + 40]
            at = arg.end() + int(arg.group(1)) + 2
    return names


class Watched:
    """The gateway as uvicorn serves it, with each HTTP request's spending recorded."""

    def __init__(self, app: Gateway) -> None:
        self.app = app
        self.requests: list[Spent] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        spent = Spent()
        self.requests.append(spent)
        token = _current.set(spent)
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Count Redis round trips on every real connection while the test runs: redis-py's
    pooled ones and the scripts' pipelined one (``counters.redis_wire``)."""
    original = AbstractConnection.send_packed_command
    pipelined = redis_wire._Protocol.send

    def note(command: Any) -> None:
        spent = _current.get()
        if spent is not None:
            spent.redis.append(command_names(command))

    async def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        note(command)
        await original(self, command, check_health)

    def counting_pipelined(self: redis_wire._Protocol, packed: bytes) -> Any:
        note(packed)
        return pipelined(self, packed)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    monkeypatch.setattr(redis_wire._Protocol, "send", counting_pipelined)
    yield


def watched_gateway(
    database_url: str, upstream_url: str, tmp_path: Path
) -> tuple[RunningGateway, Watched]:
    holder: list[Watched] = []

    def wrap(app: Gateway) -> Watched:
        holder.append(Watched(app))
        return holder[0]

    running = start_gateway(database_url, upstream_url, tmp_path, wrap=wrap)

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        spent = _current.get()
        if spent is not None:
            spent.sql.append(sql.split(None, 1)[0].upper())

    event.listen(running.app.services.engine.sync_engine, "before_cursor_execute", statement)
    return running, holder[0]


def governed_key(gw: RunningGateway) -> str:
    """A key under a hard-capped budget, an rpm/tpm rate limit and a funded org wallet."""
    org = gw.post("/admin/orgs", {"name": f"perf-{uuid.uuid4().hex[:8]}"})["id"]
    key = gw.create_key(org_id=org)
    gw.post(
        "/admin/budgets",
        {"scope_type": "key", "scope_id": key["id"], "amount_usd": "1000", "hard_limit": True},
    )
    gw.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "*", "rpm": 100_000, "tpm": 10**9},
    )
    gw.post("/admin/wallets", {"scope_type": "org", "scope_id": org, "initial_topup_usd": "500"})
    return str(key["key"])


def spend_of_calls(gw: RunningGateway, watched: Watched, secret: str, stream: bool) -> list[Spent]:
    """``CALLS`` chat calls after one warm-up call (which loads the key and seeds the
    counters); what each of the counted calls spent."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream"] = True
    headers = {"authorization": f"Bearer {secret}"}
    with gw.admin.__class__(base_url=gw.url, headers=headers) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        first = len(watched.requests)
        for _ in range(CALLS):
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            if stream:
                assert b"[DONE]" in response.content
    return watched.requests[first:]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_everything_on_costs_two_redis_round_trips_and_no_sql(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
    spied: None,
    stream: bool,
) -> None:
    """Budget + rate limit + wallet on one key: with PostgreSQL + Redis each call makes
    exactly two Redis round trips (the joint acquire before the upstream, the joint
    finish after it: one EVALSHA each) and no SQL statement; with SQLite and in-process
    counters, no Redis and no SQL at all."""
    gw, watched = watched_gateway(database_url, upstream[1].url, tmp_path)
    try:
        calls = spend_of_calls(gw, watched, governed_key(gw), stream)
    finally:
        gw.admin.close()
        gw.handle.stop()
    assert len(calls) == CALLS
    shared = database_url.startswith("postgresql")
    for spent in calls:
        assert spent.sql == []
        assert spent.redis == ([["EVALSHA"], ["EVALSHA"]] if shared else [])


def test_key_only_call_reads_the_policy_version_once(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
    spied: None,
) -> None:
    """A key with no budget, rate limit or wallet: with PostgreSQL + Redis, one Redis
    round trip (the policy version, so a policy added on another replica binds at once;
    calls in flight together share it) and no SQL; embedded, nothing at all."""
    gw, watched = watched_gateway(database_url, upstream[1].url, tmp_path)
    try:
        calls = spend_of_calls(gw, watched, gw.create_key()["key"], stream=False)
    finally:
        gw.admin.close()
        gw.handle.stop()
    shared = database_url.startswith("postgresql")
    for spent in calls:
        assert spent.sql == []
        assert spent.redis == ([["EVALSHA"]] if shared else [])
