"""The hot path's pipelined Redis connection (``counters.redis_wire``), on real servers:
replies matched to calls when many overlap, redis-py's error types, a forgotten script
loaded again, a lost connection failing its calls and the next call connecting again,
and the database number of the URL honoured."""

from __future__ import annotations

import asyncio
from functools import partial

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from spendgate.counters.redis_pool import pooled_client
from spendgate.counters.redis_wire import PipelinedRedis
from spendgate.testing.processes import PrivateRedis
from tests.conftest import REDIS_URL

ECHO = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2}"


async def test_overlapping_calls_each_get_their_own_reply() -> None:
    """500 script calls in flight at once on one connection: each gets the reply to its
    own command (Redis answers in order; the connection matches them in order)."""
    client = pooled_client(REDIS_URL)
    wire = PipelinedRedis(client)
    try:
        echo = wire.script(ECHO)
        replies = await asyncio.gather(
            *(echo(keys=[f"k{i}"], args=[f"v{i}", i]) for i in range(500))
        )
        assert replies == [[f"k{i}".encode(), f"v{i}".encode(), 2 * i] for i in range(500)]
    finally:
        await wire.aclose()
        await client.aclose()


async def test_a_script_error_is_a_redis_error_and_the_connection_goes_on() -> None:
    client = pooled_client(REDIS_URL)
    wire = PipelinedRedis(client)
    try:
        broken = wire.script("return redis.call('NOSUCHCOMMAND')")
        with pytest.raises(ResponseError):
            await broken(keys=[], args=[])
        assert await wire.script(ECHO)(keys=["a"], args=["b", 4]) == [b"a", b"b", 8]
        assert issubclass(ResponseError, RedisError)
    finally:
        await wire.aclose()
        await client.aclose()


async def test_a_forgotten_script_is_loaded_again() -> None:
    """After SCRIPT FLUSH (as after a restart) the EVALSHA is refused with NOSCRIPT: the
    script is loaded and run once more, and the caller sees only the reply."""
    with PrivateRedis() as server:
        client = pooled_client(server.url)
        wire = PipelinedRedis(client)
        try:
            echo = wire.script(ECHO)
            assert await echo(keys=["a"], args=["b", 1]) == [b"a", b"b", 2]
            await client.script_flush()
            assert await echo(keys=["c"], args=["d", 2]) == [b"c", b"d", 4]
        finally:
            await wire.aclose()
            await client.aclose()


async def test_a_lost_connection_fails_its_calls_then_connects_again() -> None:
    """Redis killed: the call gets redis-py's ConnectionError (so ``once_more`` and the
    proxy's fail-closed 503 work as before), never a hang; once Redis is back, the next
    call connects again by itself."""
    with PrivateRedis() as server:
        client = pooled_client(server.url)
        wire = PipelinedRedis(client)
        try:
            echo = wire.script(ECHO)
            assert await echo(keys=["a"], args=["b", 1]) == [b"a", b"b", 2]
            await asyncio.to_thread(server.kill)
            with pytest.raises(RedisConnectionError):
                await echo(keys=["a"], args=["b", 1])
            await asyncio.to_thread(server.start)
            assert await echo(keys=["e"], args=["f", 3]) == [b"e", b"f", 6]
        finally:
            await wire.aclose()
            await client.aclose()


async def test_a_redis_still_loading_its_data_is_away_not_a_failed_call() -> None:
    """A Redis restarted with its data answers ``LOADING`` until it has read it back (for
    seconds, with a large data set): that is redis-py's ``BusyLoadingError``, a
    ConnectionError, so the breaker keeps the replica in its outage mode. As a plain
    ResponseError it reached the proxy as a failed call: a 503 in fail-open mode (CI:
    ``test_fail_open_stays_within_each_replicas_share...[redis-kept-its-data]``).
    ``key-load-delay`` (microseconds a key) keeps this Redis loading for the test."""
    with PrivateRedis(persist=True) as server:
        client = pooled_client(server.url)
        async with client.pipeline(transaction=False) as pipe:
            for i in range(20_000):  # one command a key: its append-only file reads slowly
                pipe.set(f"k{i}", "v")
            await pipe.execute()
        await client.aclose()
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(
            partial(server.start, loaded=False),
            "--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024",
        )  # fmt: skip
        client = pooled_client(server.url)
        wire = PipelinedRedis(client)
        try:
            with pytest.raises(RedisConnectionError, match="LOADING"):
                await wire.script(ECHO)(keys=["a"], args=["b", 1])
        finally:
            await wire.aclose()
            await client.aclose()


async def test_the_urls_database_is_the_one_written() -> None:
    with PrivateRedis() as server:
        url = server.url.rsplit("/", 1)[0] + "/3"
        client = pooled_client(url)
        wire = PipelinedRedis(client)
        other = Redis.from_url(server.url)  # database 0
        try:
            await wire.script("return redis.call('SET', KEYS[1], ARGV[1])")(
                keys=["wired"], args=["yes"]
            )
            assert await client.get("wired") == b"yes"
            assert await other.get("wired") is None
        finally:
            await wire.aclose()
            await client.aclose()
            await other.aclose()
