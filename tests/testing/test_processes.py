"""The fault-test harness itself: private servers that really stop and come back, and a
gateway replica as a real ``spendgate serve`` process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import httpx
import openai
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from spendgate.testing.processes import PrivatePostgres, PrivateRedis, Replica, UpstreamProcess

MASTER = "sg-master-processes-test-0123"


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


def test_private_postgres_stops_and_starts_again() -> None:
    """A stopped private PostgreSQL refuses connections; started again, it answers, and
    its data survived."""
    with PrivatePostgres() as pg:
        assert asyncio.run(_select_one(pg.url)) == 1
        pg.stop()
        with pytest.raises(OSError):
            asyncio.run(_select_one(pg.url))
        pg.start()
        assert asyncio.run(_select_one(pg.url)) == 1


def test_private_redis_comes_back_empty() -> None:
    """Killed and started again, the private Redis has lost every key."""
    with PrivateRedis() as server:
        client = Redis.from_url(server.url)
        client.set("k", "v")
        server.kill()
        with pytest.raises(RedisConnectionError):
            client.get("k")
        server.start()
        assert Redis.from_url(server.url).get("k") is None


def test_a_persistent_private_redis_comes_back_with_its_keys() -> None:
    """``persist=True``: every write is on disk before it is acknowledged, so a kill -9
    and a start give back every key (an outage that lost nothing); its directory is gone
    afterwards."""
    with PrivateRedis(persist=True) as server:
        assert server.dir is not None
        Redis.from_url(server.url).set("k", "v")
        server.kill()
        server.start()
        assert Redis.from_url(server.url).get("k") == b"v"
    assert not server.dir.exists()


def test_a_replica_serves_the_sdk_on_private_servers(tmp_path: Path) -> None:
    """``spendgate serve`` on the private PostgreSQL and Redis, forwarding to the fake
    upstream process, answers the openai SDK and records the call."""
    with (
        PrivatePostgres() as pg,
        PrivateRedis() as redis,
        UpstreamProcess.start(tmp_path) as upstream,
    ):
        config = tmp_path / "spendgate.toml"
        config.write_text(f"""
[providers.openai]
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "upstream-secret"
[models."gpt-4o-mini"]
provider = "openai"
""")
        env = {
            "SPENDGATE_MASTER_KEY": MASTER,
            "SPENDGATE_DATABASE_URL": pg.url,
            "SPENDGATE_REDIS_URL": redis.url,
        }
        with Replica.start(tmp_path, env, config=config, workdir=tmp_path) as replica:
            admin = {"authorization": f"Bearer {MASTER}"}
            org = httpx.post(
                f"{replica.url}/admin/orgs", json={"name": "acme"}, headers=admin
            ).json()
            key = httpx.post(
                f"{replica.url}/admin/keys", json={"name": "k", "org_id": org["id"]}, headers=admin
            ).json()
            client = openai.OpenAI(base_url=f"{replica.url}/v1", api_key=key["key"])
            reply = client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.usage is not None and reply.usage.total_tokens > 0
            replica.terminate()
            assert "Application shutdown complete" in replica.output()
