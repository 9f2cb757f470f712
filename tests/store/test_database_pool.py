"""Each process's PostgreSQL pool is sized by ``database_pool_size`` and
``database_max_overflow`` (file or environment), so replicas × workers × their sum can
be kept under the server's ``max_connections``; a pool that small still serves a burst
of requests (they wait for a connection, none fails)."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from spendgate.errors import ConfigError
from spendgate.settings import load_settings
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import MASTER_KEY, RunningGateway, start_gateway


def test_the_pool_is_sized_from_the_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[gateway]\ndatabase_pool_size = 3\ndatabase_max_overflow = 0\n")
    from_file = load_settings(config_path=str(config), env={})
    assert (from_file.database_pool_size, from_file.database_max_overflow) == (3, 0)
    env = {"SPENDGATE_DATABASE_POOL_SIZE": "4", "SPENDGATE_DATABASE_MAX_OVERFLOW": "1"}
    from_env = load_settings(config_path=str(config), env=env)
    assert (from_env.database_pool_size, from_env.database_max_overflow) == (4, 1)
    defaults = load_settings(env={})
    assert (defaults.database_pool_size, defaults.database_max_overflow) == (10, 20)
    with pytest.raises(ConfigError, match="SPENDGATE_DATABASE_POOL_SIZE must be a whole"):
        load_settings(env={"SPENDGATE_DATABASE_POOL_SIZE": "many"})


@pytest.fixture
def small_pool(
    pg_database: str, upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> Iterator[RunningGateway]:
    env = {"SPENDGATE_DATABASE_POOL_SIZE": "2", "SPENDGATE_DATABASE_MAX_OVERFLOW": "0"}
    running = start_gateway(pg_database, upstream[1].url, tmp_path, env_extra=env)
    yield running
    running.admin.close()
    running.handle.stop()


def test_a_pool_of_two_holds_two_connections_under_a_burst(small_pool: RunningGateway) -> None:
    """Thirty admin reads at once on a pool of 2 + 0: each answers 200, and the database
    never sees more than two connections of this gateway (the default pool opens up to
    thirty)."""
    gw = small_pool
    engine = gw.app.services.engine
    assert (engine.pool.size(), engine.pool._max_overflow) == (2, 0)  # type: ignore[attr-defined]
    org = gw.post("/admin/orgs", {"name": "acme"})
    database = engine.url.database
    seen: list[int] = []

    async def count() -> int:
        async with engine.connect() as conn:  # one of the two: counts itself
            row = await conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d"), {"d": database}
            )
            return int(row.scalar_one())

    def read(_: int) -> int:
        with httpx.Client(base_url=gw.url, headers={"authorization": f"Bearer {MASTER_KEY}"}) as c:
            status = c.get("/admin/usage", params={"org_id": org["id"]}).status_code
        seen.append(gw.run(count()))
        return status

    with ThreadPoolExecutor(max_workers=30) as pool:
        statuses = list(pool.map(read, range(30)))
    assert statuses == [200] * 30
    assert max(seen) <= 2, seen
