"""SIGTERM to ``spendgate serve`` while calls run on past the shutdown drain
(``[gateway] shutdown_drain_seconds``): uvicorn cuts them, and each is still billed (a
stream for what the provider produced, a call still waiting for its answer at its worst
case: ``incomplete``, usage estimated), told to its client, and written to the database
before the process exits (README, *Failure behaviour*: SIGTERM)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from spendgate.core.money import format_usd
from spendgate.settings import normalise_database_url
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from spendgate.testing.processes import ManagedProcess, Replica
from tests.conftest import MASTER_KEY, UPSTREAM_SECRETS, gateway_config

PROMPT = [{"role": "user", "content": "think about it for a long time"}]


async def ledger_row(database_url: str, request_id: str) -> dict[str, Any] | None:
    engine = create_async_engine(normalise_database_url(database_url))
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.text(
                        "SELECT status, usage_estimated, input_tokens, output_tokens, "
                        "cost_nanos FROM ledger WHERE request_id = :id"
                    ),
                    {"id": request_id},
                )
            ).first()
    finally:
        await engine.dispose()
    return None if row is None else dict(row._mapping)


@contextlib.asynccontextmanager
async def served(
    database_url: str, upstream_url: str, tmp_path: Path
) -> AsyncIterator[tuple[ManagedProcess, httpx.AsyncClient, str]]:
    """``spendgate serve`` with a 1 s drain; a client and a virtual key for it."""
    config = gateway_config(upstream_url, tmp_path, gateway_extra="shutdown_drain_seconds = 1")
    env = {
        **UPSTREAM_SECRETS,
        "SPENDGATE_MASTER_KEY": MASTER_KEY,
        "SPENDGATE_DATABASE_URL": database_url,
        "SPENDGATE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    replica = await asyncio.to_thread(Replica.start, tmp_path, env, config=config)
    try:
        admin = {"authorization": f"Bearer {MASTER_KEY}"}
        async with httpx.AsyncClient(base_url=replica.url, headers=admin, timeout=30) as client:
            org = (await client.post("/admin/orgs", json={"name": "acme"})).json()
            made = await client.post("/admin/keys", json={"name": "k", "org_id": org["id"]})
            client.headers["authorization"] = f"Bearer {made.json()['key']}"
            yield replica, client, made.json()["key"]
    finally:
        replica.close()


async def stopped(replica: ManagedProcess) -> None:
    """SIGTERM, and the process gone after a clean shutdown."""
    code = await asyncio.to_thread(replica.terminate)
    assert code in (0, -15), replica.output()
    assert "Application shutdown complete" in replica.output()


async def test_a_stream_cut_by_shutdown_is_billed_told_and_written_before_exit(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
) -> None:
    """A stream that outlives the 1 s drain: its client gets the cost comment and an
    error event (not a bare cut), and after the exit its ledger row is in the database
    (``incomplete``, billed on an estimate of what was produced); no spool file is left."""
    fake.stream_gate = threading.Event()  # the provider streams its first event, then thinks
    async with served(database_url, upstream[1].url, tmp_path) as (replica, client, _):
        body = {"model": "gpt-4o-mini", "messages": PROMPT, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            request_id = response.headers["x-request-id"]
            chunks = response.aiter_raw()
            assert (await anext(chunks)).startswith(b"data: ")
            stopping = asyncio.create_task(stopped(replica))
            rest = b"".join([chunk async for chunk in chunks])
            await stopping

    assert rest.startswith(b": x-spendgate-cost-usd ")
    assert b"status=incomplete usage=estimated" in rest
    assert b'"code":"shutting_down"' in rest.replace(b" ", b"")
    assert b"[DONE]" not in rest  # the client is not told its answer was whole
    row = await ledger_row(database_url, request_id)
    assert row is not None, replica.output()
    assert row["status"] == "incomplete" and row["usage_estimated"]
    assert row["input_tokens"] > 0 and row["cost_nanos"] > 0
    assert list((tmp_path / "spool").glob("*.spool")) == []


async def test_a_call_cut_by_shutdown_before_its_answer_is_billed_at_its_worst_case(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
) -> None:
    """A call (not streamed) whose provider is still working when the 1 s drain runs
    out: the provider had the request and bills it, so the call is booked at its worst
    case (as a timeout after the request went out is), ``incomplete`` with estimated
    usage, and its client gets 503 ``shutting_down`` saying what was billed."""
    async with served(database_url, upstream[1].url, tmp_path) as (replica, client, _):
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "[[slow:20]] long reasoning"}],
            "max_tokens": 1000,
        }
        asked = asyncio.create_task(client.post("/v1/chat/completions", json=body))
        while not any(r.json and "[[slow:20]]" in str(r.json) for r in fake.requests):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await stopped(replica)
        answer = await asked

    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "shutting_down"
    billed = answer.headers["x-spendgate-cost-usd"]
    row = await ledger_row(database_url, answer.headers["x-request-id"])
    assert row is not None, replica.output()
    assert row["status"] == "incomplete" and row["usage_estimated"]
    assert row["output_tokens"] == 1000 and row["cost_nanos"] > 0
    assert billed == format_usd(row["cost_nanos"])
    assert list((tmp_path / "spool").glob("*.spool")) == []
