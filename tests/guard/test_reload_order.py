"""Reloads of the policies happen one at a time: a timed reload that read the budgets
before an admin change committed cannot install them after the change's own reload did
(on SQLite with in-process counters nothing else would notice, and a new hard cap did
not bind until the next timed reload) — on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Any

import openai
import pytest

from spendgate.store.policies import PolicySnapshot
from tests.conftest import RunningGateway

CALL: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "max_tokens": 20,
    "messages": [{"role": "user", "content": "s"}],
}


def test_a_budget_made_during_a_timed_reload_binds_at_once(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The timed reload reads the budgets, then a hard cap is created (its own reload
    runs), then the timed reload ends: the next call is refused by the cap."""
    enforcer = gateway.app.services.enforcer
    store = enforcer._store
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(**CALL)  # spent: a cap below it refuses the next call

    loop = gateway.app.loop
    assert loop is not None
    read, release = threading.Event(), asyncio.Event()
    load = store.snapshot

    async def held_after_reading(now: datetime) -> PolicySnapshot:
        snapshot = await load(now)
        if not read.is_set():  # the timed reload: held once it has read the rows
            read.set()
            await release.wait()
        return snapshot

    monkeypatch.setattr(store, "snapshot", held_after_reading)
    timed = asyncio.run_coroutine_threadsafe(enforcer.refresh(), loop)
    assert read.wait(30)
    made: list[dict[str, Any]] = []
    creating = threading.Thread(
        target=lambda: made.append(
            gateway.create_budget(
                scope_type="key", scope_id=key["id"], amount_usd="0.000001", hard_limit=True
            )
        )
    )
    creating.start()
    creating.join(2)  # its reload waits for the timed one to end (before: it went first)
    loop.call_soon_threadsafe(release.set)
    timed.result(30)
    creating.join(30)
    assert made, "the budget was not created"
    assert any(b.id == made[0]["id"] for b in enforcer._snapshot.budgets)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**CALL)
