"""Shared fixtures: real databases (SQLite file, the machine's PostgreSQL), a fake
upstream served on 127.0.0.1, and the gateway itself served by uvicorn in a thread
with a frozen clock."""

from __future__ import annotations

import asyncio
import os
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from spendgate.app import Gateway, create_app
from spendgate.core.clock import FrozenClock
from spendgate.settings import Settings, load_settings
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle, serve_in_thread

PG_ADMIN_DSN = os.environ.get("SPENDGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
MASTER_KEY = "sg-master-test-0123456789"
REDIS_URL = os.environ.get("SPENDGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
UPSTREAM_SECRETS = {
    "OPENAI_KEY": "upstream-openai-secret-1a2b",
    "ANTHROPIC_KEY": "upstream-anthropic-secret-3c4d",
    "AZURE_KEY": "upstream-azure-secret-5e6f",
    "GOOGLE_KEY": "upstream-google-secret-7a8b",
}


async def _pg_create(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _pg_drop(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend. PostgreSQL must be running: no skip."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'spendgate.db'}"
        return
    name = f"sg_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_create(name))
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_drop(name))


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[FakeUpstream, ServerHandle]]:
    fake = FakeUpstream(models=("gpt-4o-mini", "gpt-4o"))
    handle = serve_in_thread(fake)
    yield fake, handle
    handle.stop()


@pytest.fixture
def fake(upstream: tuple[FakeUpstream, ServerHandle]) -> Iterator[FakeUpstream]:
    """The shared fake upstream, with its knobs reset for each test."""
    fake_app = upstream[0]
    yield fake_app
    fake_app.fail_status = None
    fake_app.fail_count = None
    fake_app.delay_seconds = 0.0
    fake_app.stream_delay_seconds = 0.0
    fake_app.drop_stream_after = None
    fake_app.required_api_key = None
    if fake_app.stream_gate is not None:
        fake_app.stream_gate.set()
        fake_app.stream_gate = None
    fake_app.requests.clear()


def gateway_config(upstream_url: str, tmp_path: Path, extra: str = "") -> Path:
    """A TOML config routing real model names (and a few odd ones) to the fake upstream."""
    text = (
        textwrap.dedent(f"""
        [gateway]
        ledger_flush_seconds = 0.05

        [providers.openai]
        kind = "openai"
        base_url = "{upstream_url}/v1"
        api_key_env = "OPENAI_KEY"
        timeout_seconds = 5

        [providers.anthropic]
        kind = "anthropic"
        base_url = "{upstream_url}"
        api_key_env = "ANTHROPIC_KEY"

        [providers.azure]
        kind = "azure"
        base_url = "{upstream_url}"
        api_version = "2024-10-21"
        api_key_env = "AZURE_KEY"

        [providers.google]
        kind = "openai_compatible"
        base_url = "{upstream_url}/v1"
        api_key_env = "GOOGLE_KEY"

        [providers.local]
        kind = "openai_compatible"
        base_url = "{upstream_url}/v1"

        [models."gpt-4o-mini"]
        provider = "openai"
        [models."gpt-4o"]
        provider = "openai"
        [models."gpt-4.1"]
        provider = "openai"
        [models."o3-mini"]
        provider = "openai"
        [models."claude-sonnet-4-5"]
        provider = "anthropic"
        [models."claude-3-5-haiku-latest"]
        provider = "anthropic"
        price = {{ model = "claude-3-5-haiku", provider = "anthropic" }}
        [models."claude-opus-4-1"]
        provider = "anthropic"
        [models."azure-gpt-4o"]
        provider = "azure"
        upstream_model = "gpt4o-deployment"
        price = {{ model = "gpt-4o", provider = "openai" }}
        [models."gemini-2.5-flash"]
        provider = "google"
        price = {{ provider = "google" }}
        [models."gemini-2.5-pro"]
        provider = "google"
        price = {{ provider = "google" }}
        [models."llama-local"]
        provider = "local"
        upstream_model = "llama3.1:8b"
        price = {{ input_per_mtok = "0.10", output_per_mtok = "0.20" }}
        [models."mystery-model"]
        provider = "local"
        price = {{ model = "no-such-model-anywhere", provider = "openai" }}
    """)
        + extra
    )
    path = tmp_path / "spendgate.toml"
    path.write_text(text)
    return path


@asynccontextmanager
async def redis_keyspace() -> AsyncIterator[str]:
    """A fresh key prefix on the real Redis; every key under it is deleted afterwards."""
    prefix = f"sgtest:{uuid.uuid4().hex}:"
    admin = Redis.from_url(REDIS_URL)
    try:
        assert await admin.ping()  # a ConnectionError here fails the test loudly
        yield prefix
        keys = [key async for key in admin.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await admin.delete(*keys)
    finally:
        await admin.aclose()


@dataclass
class RunningGateway:
    url: str
    app: Gateway
    clock: FrozenClock
    handle: ServerHandle
    settings: Settings
    admin: httpx.Client

    def create_key(self, **fields: Any) -> dict[str, Any]:
        """An org (unless given) and a virtual key; returns the key object with its secret."""
        if "org_id" not in fields:  # org names are unique: a new org per key
            fields["org_id"] = self.post("/admin/orgs", {"name": f"acme-{uuid.uuid4().hex[:8]}"})[
                "id"
            ]
        return self.post("/admin/keys", {"name": "test-key", **fields})

    def post(self, path: str, body: dict[str, Any], status: int = 201) -> Any:
        response = self.admin.post(path, json=body)
        assert response.status_code == status, response.text
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        response = self.admin.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def ledger(self) -> list[dict[str, Any]]:
        """Every ledger row, flushed first (runs on the gateway's own loop)."""
        return self.run(self._ledger())

    async def _ledger(self) -> list[dict[str, Any]]:
        from spendgate.store.ledger import ledger_rows

        await self.app.services.ledger.flush()
        return await ledger_rows(self.app.services.engine, limit=10_000)

    def run(self, coro: Any) -> Any:
        loop = self.app.loop
        assert loop is not None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=30)


def start_gateway(
    database_url: str,
    upstream_url: str,
    tmp_path: Path,
    *,
    extra_config: str = "",
    demo: bool = False,
    env_extra: dict[str, str] | None = None,
    wrap: Callable[[Gateway], Any] | None = None,
) -> RunningGateway:
    """A gateway served in a thread; ``wrap`` (given the app) returns the ASGI app that
    uvicorn serves instead, e.g. one that watches every request."""
    config = gateway_config(upstream_url, tmp_path, extra_config)
    env = {
        **UPSTREAM_SECRETS,
        "SPENDGATE_MASTER_KEY": MASTER_KEY,
        "SPENDGATE_DATABASE_URL": database_url,
        # each test's ledger spool of its own (never the working directory's)
        "SPENDGATE_SPOOL_DIR": str(tmp_path / "spool"),
    }
    if database_url.startswith("postgresql"):
        # the scale-out pairing: PostgreSQL for the ledger, Redis for live counters
        env["SPENDGATE_REDIS_URL"] = REDIS_URL
    # a key prefix of its own: other tests' policy changes never reach this gateway
    env["SPENDGATE_REDIS_PREFIX"] = f"sgtest:{uuid.uuid4().hex}:"
    env.update(env_extra or {})
    settings = load_settings(config_path=str(config), env=env, demo=demo)
    clock = FrozenClock(datetime(2026, 3, 10, 15, 30, tzinfo=UTC))
    # the fake receivers listen on 127.0.0.1; a test may still say "0" in env_extra
    app = create_app(settings, clock=clock, env={"SPENDGATE_WEBHOOK_ALLOW_PRIVATE": "1", **env})
    handle = serve_in_thread(app if wrap is None else wrap(app))
    admin = httpx.Client(base_url=handle.url, headers={"authorization": f"Bearer {MASTER_KEY}"})
    return RunningGateway(handle.url, app, clock, handle, settings, admin)


@pytest.fixture
def gateway(
    database_url: str,
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
) -> Iterator[RunningGateway]:
    running = start_gateway(database_url, upstream[1].url, tmp_path, demo=True)
    yield running
    running.admin.close()
    running.handle.stop()
