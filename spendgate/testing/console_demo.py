"""A gateway with a month of spend, budgets and notifications, for looking at the console
(``scripts/screenshots.py``) and timing it (``bench/console_bench.py``).

Everything runs here: a fake upstream, the gateway with a frozen clock (both served by
uvicorn in threads on 127.0.0.1), an SQLite file or the PostgreSQL named. Spend is made
with the ``openai`` SDK through the proxy, as users make it.
"""

from __future__ import annotations

import asyncio
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai

from spendgate.app import Gateway, create_app
from spendgate.core.clock import FrozenClock
from spendgate.settings import load_settings
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle, serve_in_thread

MASTER = "sg-master-console-demo-0123456789"
PASSWORD = "console demo password"
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class DemoConsole:
    url: str
    app: Gateway
    clock: FrozenClock
    admin: httpx.Client
    org_id: str
    team_ids: list[str]
    budget_ids: list[str]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.admin.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def run(self, coro: Any) -> Any:
        assert self.app.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.app.loop).result(timeout=60)

    def user(self, email: str, body: dict[str, Any]) -> dict[str, Any]:
        """A user who signs in with ``PASSWORD``."""
        made = self.post("/admin/users", {"email": email, "org_id": self.org_id, **body})
        auth = self.app.console.state.console_auth
        self.run(auth.set_password(made["id"], PASSWORD, self.clock.now()))
        return dict(made)


def _config(tmp: Path, upstream_url: str) -> Path:
    path = tmp / "spendgate.toml"
    path.write_text(
        textwrap.dedent(f"""
        [gateway]
        ledger_flush_seconds = 0.05
        [providers.openai]
        kind = "openai"
        base_url = "{upstream_url}/v1"
        api_key_env = "OPENAI_KEY"
        [models."gpt-4o-mini"]
        provider = "openai"
        [models."gpt-4o"]
        provider = "openai"
        [models."gpt-4.1"]
        provider = "openai"
        [models."o3-mini"]
        provider = "openai"
        """)
    )
    return path


@contextmanager
def demo_console(tmp: Path, database_url: str | None = None) -> Iterator[DemoConsole]:
    """The gateway with an org, two teams, users of each role and nothing spent yet."""
    fake = FakeUpstream(models=("gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini"))
    upstream = serve_in_thread(fake)
    env = {
        "OPENAI_KEY": "upstream-secret",
        "SPENDGATE_MASTER_KEY": MASTER,
        "SPENDGATE_DATABASE_URL": database_url or f"sqlite:///{tmp / 'console.db'}",
        "SPENDGATE_SPOOL_DIR": str(tmp / "spool"),
    }
    settings = load_settings(config_path=str(_config(tmp, upstream.url)), env=env)
    clock = FrozenClock(START)
    app = create_app(settings, clock=clock, env=env)
    handle: ServerHandle = serve_in_thread(app)
    admin = httpx.Client(base_url=handle.url, headers={"authorization": f"Bearer {MASTER}"})
    try:
        org = admin.post("/admin/orgs", json={"name": f"acme-{uuid.uuid4().hex[:6]}"}).json()
        teams = [
            admin.post("/admin/teams", json={"name": n, "org_id": org["id"]}).json()["id"]
            for n in ("research", "support", "sales")
        ]
        yield DemoConsole(handle.url, app, clock, admin, org["id"], teams, [])
    finally:
        admin.close()
        handle.stop()
        upstream.stop()


def drive_month(demo: DemoConsole, days: int = 14, calls_per_day: int = 6) -> None:
    """Keys for each team calling several models every day from ``START`` on, then
    budgets on each team (one past its alerts), forecasts refreshed."""
    models = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini")
    clients = []
    for n, team in enumerate(demo.team_ids):
        key = demo.post("/admin/keys", {"name": f"app-{n}", "org_id": demo.org_id, "team_id": team})
        clients.append(openai.OpenAI(base_url=f"{demo.url}/v1", api_key=key["key"], max_retries=0))
    for name, team_no, amount in (("research monthly", 0, "0.02"), ("support monthly", 1, "0.5")):
        budget = demo.post(
            "/admin/budgets",
            {
                "name": name,
                "scope_type": "team",
                "scope_id": demo.team_ids[team_no],
                "amount_usd": amount,
                "soft_limit_percent": "100",
            },
        )
        demo.budget_ids.append(budget["id"])
    for day in range(days):
        for n, client in enumerate(clients):
            for c in range(calls_per_day + (day % 3) * n):
                client.chat.completions.create(
                    model=models[(c + n) % len(models)],
                    messages=[{"role": "user", "content": "summarise this " * (1 + c)}],
                )
        demo.clock.advance(86400)
    demo.admin.post("/admin/forecasts/refresh").raise_for_status()
