"""A live stream keeps its hold across replicas (issue 23.3), with real processes: two
``spendgate serve`` replicas on the machine's PostgreSQL (a fresh database) and Redis (a
key prefix of their own), called with the ``openai`` SDK.

The reaper used to release a call's reservation a fixed time after it was taken, even
while its stream still ran: a second call then fitted under the cap and both were
billed. Now the replica running the call renews its holds on a heartbeat. The replicas
here hold for 3 s and beat every 0.5 s (``hold_seconds``, ``hold_heartbeat_seconds``),
and reap every ``HOUSEKEEPING_SECONDS``; a stream held open well past hold + reap
interval must still count against the cap on the other replica. Without the heartbeat
the hold lapses at 3 s, a reaper releases it by ~8 s, and a refused call then passes.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from spendgate.app import HOUSEKEEPING_SECONDS
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle, serve_in_thread
from spendgate.testing.processes import Replica
from tests.conftest import REDIS_URL
from tests.proxy.test_enforcement_faults import MASTER, Fleet, hard_budget

HOLD_SECONDS = 3
#: the stream stays open this long: past the hold, plus a reap on each replica, plus slack
OPEN_SECONDS = HOLD_SECONDS + 2 * HOUSEKEEPING_SECONDS
#: one call's worst case is ~$0.0006 (1,000 output tokens at $0.60/M): room for one only
CAP = Decimal("0.0008")


@pytest.fixture
def gated_upstream() -> Iterator[tuple[ServerHandle, threading.Event]]:
    """The fake upstream: every stream sends its first chunk, then waits for the gate."""
    gate = threading.Event()
    fake = FakeUpstream()
    fake.stream_gate = gate
    handle = serve_in_thread(fake)
    try:
        yield handle, gate
    finally:
        gate.set()
        handle.stop()


@pytest.fixture
def pair(
    tmp_path: Path, gated_upstream: tuple[ServerHandle, threading.Event], pg_database: str
) -> Iterator[Fleet]:
    """Two replicas sharing PostgreSQL and Redis, holding for 3 s, renewing every 0.5 s."""
    upstream, _ = gated_upstream
    config = tmp_path / "spendgate.toml"
    config.write_text(f"""
[gateway]
ledger_flush_seconds = 0.05
upstream_timeout_seconds = 30
hold_seconds = {HOLD_SECONDS}
hold_heartbeat_seconds = 0.5
[providers.openai]
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "upstream-secret"
[models."gpt-4o-mini"]
provider = "openai"
""")
    database = pg_database
    env = {
        "SPENDGATE_MASTER_KEY": MASTER,
        "SPENDGATE_DATABASE_URL": database,
        "SPENDGATE_REDIS_URL": REDIS_URL,
        "SPENDGATE_REDIS_PREFIX": f"sgtest:{uuid.uuid4().hex}:",
        "SPENDGATE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    replicas = []
    try:
        for _ in range(2):  # one after the other (each migrates: a no-op on this copy)
            replicas.append(Replica.start(tmp_path, env, config=config, workdir=tmp_path))
        yield Fleet(replicas, database)
    finally:
        for replica in replicas:
            replica.close()


def client(fleet: Fleet, n: int, secret: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{fleet.replicas[n].url}/v1", api_key=secret, max_retries=0, timeout=60
    )


async def refused_on(replica: openai.AsyncOpenAI) -> str | None:
    """One worst-case-sized call; the error code when refused, None when served."""
    try:
        await replica.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=1000
        )
    except openai.APIStatusError as exc:
        assert exc.status_code == 429, exc.response.text
        body: Any = exc.body
        return str(body.get("code")) if isinstance(body, dict) else exc.response.text
    return None


async def test_a_live_stream_keeps_its_hold_on_every_replica(
    pair: Fleet, gated_upstream: tuple[ServerHandle, threading.Event]
) -> None:
    """A hard cap with room for one call's worst case. A stream through replica 0 is held
    open for ``OPEN_SECONDS`` (hold 3 s, reaped every 5 s): every call through replica 1
    meanwhile is refused 429 ``budget_exceeded``, and the hold is still counted at the
    end. Then the stream finishes: the ledger's spend is within the cap, and each
    threshold's event (the alert the stream's cost crossed, the hard limit the refusals
    reached) was stored exactly once."""
    _, gate = gated_upstream
    fleet = pair
    key = fleet.new_key()
    budget = fleet.admin(
        0, "POST", "/admin/budgets", {**hard_budget(key["id"], CAP), "alert_percentages": [25]}
    )
    streaming, other = client(fleet, 0, key["key"]), client(fleet, 1, key["key"])
    try:
        opened = time.monotonic()
        stream = await streaming.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a long answer [[reasoning:600]]"}],
            max_tokens=1000,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = stream.__aiter__()
        await chunks.__anext__()  # the first chunk: the call was admitted, its hold taken
        status = fleet.admin(1, "GET", f"/admin/budgets/{budget['id']}/status")
        held = Decimal(status["reserved_usd"])
        assert CAP / 2 < held <= CAP, status

        refusals: list[str | None] = []
        while time.monotonic() - opened < OPEN_SECONDS:
            refusals.append(await refused_on(other))
            await asyncio.sleep(0.5)
        assert refusals and set(refusals) == {"budget_exceeded"}, refusals
        status = fleet.admin(1, "GET", f"/admin/budgets/{budget['id']}/status")
        assert Decimal(status["reserved_usd"]) == held, "the live stream's hold was released"

        gate.set()
        rest = [chunk async for chunk in chunks]
        assert rest and rest[-1].usage is not None and rest[-1].usage.completion_tokens > 600
    finally:
        gate.set()
        await streaming.close()
        await other.close()

    spent = await fleet.spent(key["id"])
    assert CAP / 4 <= spent <= CAP, f"spent {spent} on a {CAP} cap"
    events = fleet.admin(1, "GET", "/admin/events?limit=1000")
    fired = sorted(
        (e["type"], e["data"].get("percent", ""))
        for e in events
        if e["type"].startswith("budget.") and e["data"].get("budget_id") == budget["id"]
    )
    # refused for the live stream's hold alone: no budget.calls_refused (not ``refusing``)
    assert fired == [("budget.hard_limit_reached", "100"), ("budget.threshold_crossed", "25")]
