"""The hot path's Redis scripts on one pipelined connection per process.

Every proxied call runs one or two Lua scripts (``spendgate.guard``). Through
redis-py's ``AsyncScript`` each costs ~80-110 µs of CPU in the client alone (a pooled
connection checked out and back, health checks, retries, command packing and reply
parsing in Python), as much as the rest of the call. Here a script call is one
``EVALSHA`` written straight onto a shared connection, packed and parsed by hiredis:
~10 µs. Calls that overlap are pipelined for free: each writes its command at once and
waits for its reply, and Redis answers in order (a FIFO of futures). Redis runs one
command at a time anyway, so one connection loses nothing to a pool.

What is the same as redis-py, so callers don't change: the reply values (bytes, ints,
lists, None), the errors (``redis.exceptions``: ``ConnectionError`` when the connection
breaks, so ``once_more`` can retry; ``ResponseError`` for a script error), and a server
that forgot a script (``NOSCRIPT``) gets it again once. A broken connection fails the
calls waiting on it and the next call connects again. Commands sent in one turn of the
event loop while replies are outstanding (calls that overlap) leave in one socket write.
Servers reached over TLS keep redis-py's scripts (``script`` returns ``AsyncScript`` then).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import BusyLoadingError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class Script(Protocol):
    """A registered Lua script, called as redis-py's ``AsyncScript`` is."""

    async def __call__(
        self, keys: Sequence[Any] | None = None, args: Sequence[Any] | None = None
    ) -> Any: ...


class _Protocol(asyncio.Protocol):
    """One connection: commands written in order, replies matched to them in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[asyncio.Future[Any]] = deque()
        #: commands sent in this turn of the loop, written together by ``_write``
        self._outgoing: list[bytes] = []
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a caller that gave up (cancelled, timed out) is skipped
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """Send one packed command; its reply's future. With no reply outstanding it is
        written at once (a lone call waits for nothing); otherwise calls overlap, and
        what they send in this turn of the event loop goes out in one write at its end."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if not self._waiting:
            self.transport.write(packed)
        else:
            if not self._outgoing:
                loop.call_soon(self._write)
            self._outgoing.append(packed)
        self._waiting.append(waiter)
        return waiter

    def _write(self) -> None:
        out, self._outgoing = self._outgoing, []
        # a closing transport fails the waiters in ``connection_lost``
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    @property
    def open(self) -> bool:
        return self.lost is None and self.transport is not None and not self.transport.is_closing()


def _time_out(waiter: asyncio.Future[Any]) -> None:
    """A reply that did not come in time: its caller gets ``redis.TimeoutError``; the
    reply, if it comes later, is skipped (``data_received`` passes over done futures)."""
    if not waiter.done():
        waiter.set_exception(RedisTimeoutError("Redis did not answer in time"))


class PipelinedRedis:
    """Scripts on one pipelined connection to the server ``client`` talks to."""

    def __init__(self, client: Redis) -> None:
        pool = client.connection_pool
        self._client = client
        self._kwargs = dict(pool.connection_kwargs)
        self._unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
        #: TLS: left to redis-py (``script`` hands out its ``AsyncScript``)
        self.supported = not issubclass(pool.connection_class, SSLConnection)
        self._conn: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Lock | None = None

    def script(self, text: str) -> Script:
        """A script to call with ``keys`` and ``args``, over this connection when it can."""
        if not self.supported:
            return self._client.register_script(text)
        return _PipelinedScript(self, text)

    async def call(self, *args: Any) -> Any:
        """One command; its reply (an error reply raises ``ResponseError``). Two calls
        per proxied call come here, so the common case awaits nothing but the reply:
        the open connection is taken without a coroutine, and the timeout is one timer
        that fails the reply's future (``asyncio.wait_for`` costs a second future, a
        done-callback and an extra wake-up per call)."""
        loop = asyncio.get_running_loop()
        conn = self._conn
        if conn is None or not conn.open or self._loop is not loop:
            conn = await self._connection()
        waiter = conn.send(hiredis.pack_command(args))
        timeout = self._kwargs.get("socket_timeout")
        if timeout is None:
            reply = await waiter
        else:
            timer = loop.call_later(timeout, _time_out, waiter)
            try:
                reply = await waiter
            finally:
                timer.cancel()
        if isinstance(reply, ResponseError):
            raise _error(reply)
        return reply

    async def _connection(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._loop is not loop:
            self._connecting, self._loop = asyncio.Lock(), loop
        async with self._connecting:
            if self._conn is not None and self._conn.open and self._loop is loop:
                return self._conn
            self._conn = await self._connect(loop)
            return self._conn

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        kw = self._kwargs
        timeout = kw.get("socket_connect_timeout") or kw.get("socket_timeout") or 10.0
        try:
            async with asyncio.timeout(timeout):
                if self._unix:
                    _, conn = await loop.create_unix_connection(_Protocol, kw["path"])
                else:
                    _, conn = await loop.create_connection(
                        _Protocol, kw.get("host", "localhost"), kw.get("port", 6379)
                    )
                hello: list[tuple[Any, ...]] = []
                if kw.get("password"):
                    user = kw.get("username")
                    hello.append(
                        ("AUTH", user, kw["password"]) if user else ("AUTH", kw["password"])
                    )
                if kw.get("db"):
                    hello.append(("SELECT", kw["db"]))
                for reply in await asyncio.gather(
                    *(conn.send(hiredis.pack_command(c)) for c in hello)
                ):
                    if isinstance(reply, ResponseError):
                        conn.transport.close()  # type: ignore[union-attr]
                        raise reply
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
        return conn

    async def aclose(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None


class WritesRefused(RedisConnectionError):
    """Redis answers but takes no write now: full (``OOM``, under ``maxmemory-policy
    noeviction``), a replica (``READONLY``: a failover pointed us at the old primary), or
    refusing writes since it cannot save (``MISCONF``), or a replica cut from its primary
    (``MASTERDOWN``). No script of spendgate's can run there: for the breaker it is Redis
    being away, fail-open or fail-closed as configured, not a call that failed."""


#: error replies that mean ``WritesRefused`` (redis-py: ``OutOfMemoryError``,
#: ``ReadOnlyError``, a plain ``ResponseError`` for the others)
WRITES_REFUSED = ("OOM ", "READONLY ", "MISCONF ", "MASTERDOWN ")


def _error(reply: ResponseError) -> Exception:
    """An error reply as redis-py raises it where the type matters: ``LOADING`` (a Redis
    restarted with its data, still reading it) is a ``BusyLoadingError``, a
    ``ConnectionError`` as in redis-py, so the breaker treats it as Redis being away
    (fail-open or fail-closed) and not as a call that failed (a 503 in fail-open mode);
    a Redis that takes no write is ``WritesRefused``, for the same reason."""
    message = str(reply)
    if message.startswith("LOADING"):
        return BusyLoadingError(message)
    if message.startswith(WRITES_REFUSED):
        return WritesRefused(message)
    return reply


class _PipelinedScript:
    def __init__(self, wire: PipelinedRedis, text: str) -> None:
        self._wire = wire
        self._text = text
        self.sha = hashlib.sha1(text.encode("utf-8")).hexdigest()

    async def __call__(
        self, keys: Sequence[Any] | None = None, args: Sequence[Any] | None = None
    ) -> Any:
        keys, args = keys or (), args or ()
        try:
            return await self._wire.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # the server forgot it (a restart, SCRIPT FLUSH): load it again, as redis-py does
        await self._wire.call("SCRIPT", "LOAD", self._text)
        return await self._wire.call("EVALSHA", self.sha, len(keys), *keys, *args)
