"""``kill -9`` of a replica between a call's settle in Redis and its spool record: the
wallet is debited, and its ``wallet.low_balance`` (in that record) is gone with the
process. Another replica, on the same PostgreSQL and Redis, recovers it once, marked
``recovered``, and delivers it signed.

Only the scale-out mode has this crash: a replica's in-process counters die with it, so
its lost call is lost from the balance too and the next call crosses the mark again.
The killed replica is a real ``spendgate serve`` process whose Redis traffic goes
through a proxy that lets the settle's command reach Redis and withholds its reply, so
the replica is killed while it waits for it, deterministically."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest

from spendgate.guard.redis import joint_script
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle, serve_in_thread
from spendgate.testing.processes import ManagedProcess, Replica
from spendgate.testing.webhook_receiver import Receiver
from tests.admin.test_budgets import events
from tests.conftest import MASTER_KEY, REDIS_URL, RunningGateway, start_gateway

CHAT: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 20,
}


class ReplyWithholder:
    """A TCP proxy in front of Redis. Each connection is forwarded both ways until a
    command for which ``trap`` (given the bytes the client sent, with a little of what
    came before) is true: that command goes on to Redis, and from then on no reply comes
    back on its connection. ``trapped`` is set once it has been sent on."""

    def __init__(self, target: tuple[str, int], trap: Callable[[bytes], bool]) -> None:
        self._target, self._trap = target, trap
        self.trapped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self._target)
            self._sockets += [client, server]
            held = threading.Event()
            threading.Thread(target=self._ask, args=(client, server, held), daemon=True).start()
            threading.Thread(target=self._answer, args=(server, client, held), daemon=True).start()

    def _ask(self, client: socket.socket, server: socket.socket, held: threading.Event) -> None:
        tail = b""
        while data := _recv(client):
            if not self.trapped.is_set() and self._trap(tail + data):
                held.set()  # before Redis has the command, so its reply is never sent on
                server.sendall(data)
                self.trapped.set()
                continue
            server.sendall(data)
            tail = (tail + data)[-512:]

    @staticmethod
    def _answer(server: socket.socket, client: socket.socket, held: threading.Event) -> None:
        while data := _recv(server):
            if not held.is_set():
                client.sendall(data)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@pytest.fixture
def survivor(
    pg_database: str, upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> Iterator[RunningGateway]:
    """The replica that lives (in this process, its clock frozen), on PostgreSQL and Redis."""
    (tmp_path / "survivor").mkdir()
    running = start_gateway(pg_database, upstream[1].url, tmp_path / "survivor")
    yield running
    running.admin.close()
    running.handle.stop()


def test_a_low_balance_lost_with_a_killed_replica_is_recovered_once(
    survivor: RunningGateway, upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> None:
    """The killed replica's call takes the wallet through its low mark (10 calls' worth
    topped up, the mark at 9): Redis has the debit, nobody has the event. The survivor's
    next call starts below the mark and crosses nothing. Once that call is older than
    the grace period the sweep fires the lost warning, with the settle's dedup key, and
    the receiver verifies it; a second sweep adds nothing."""
    gw = survivor
    key = gw.create_key()
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key["key"], max_retries=0)
    cost = Decimal(
        client.chat.completions.with_raw_response.create(**CHAT).headers["x-spendgate-cost-usd"]
    )
    gw.clock.advance(1)  # the wallet pays for calls from its creation on
    funds = {"initial_topup_usd": str(cost * 10), "low_balance_usd": str(cost * 9)}
    wallet = gw.post("/admin/wallets", {"scope_type": "key", "scope_id": key["id"], **funds})

    prefix = gw.settings.redis_prefix
    finish = hashlib.sha1(joint_script("finish").encode()).hexdigest().encode()
    bucket = f"{prefix}w:{wallet['id']}".encode()
    redis = urlsplit(REDIS_URL)
    proxy = ReplyWithholder(
        (redis.hostname or "127.0.0.1", redis.port or 6379),
        lambda sent: finish in sent and bucket in sent,
    )
    killed = start_replica(gw, upstream[1].url, tmp_path, proxy.port, prefix)
    try:
        doomed = openai.OpenAI(base_url=killed.url + "/v1", api_key=key["key"], max_retries=0)
        failed: list[openai.APIError] = []
        call = threading.Thread(target=_call, args=(doomed, failed), daemon=True)
        call.start()
        assert proxy.trapped.wait(60), (failed, killed.output())
        killed.kill()
        call.join(60)
        assert len(failed) == 1  # the client saw no answer
    finally:
        killed.close()
        proxy.close()

    receiver = Receiver(now=gw.clock.now)
    hooks = serve_in_thread(receiver)
    try:
        endpoint = {"url": hooks.url + "/hook", "event_types": ["wallet.*"]}
        receiver.secrets.append(gw.post("/admin/webhooks", endpoint)["secret"])
        state = gw.get(f"/admin/wallets/{wallet['id']}")
        assert Decimal(state["balance_usd"]) == cost * 9  # debited in Redis
        assert events(gw, "wallet.low_balance") == []
        client.chat.completions.create(**CHAT)  # 9 -> 8: from below the mark
        assert events(gw, "wallet.low_balance") == []

        sweeper = gw.app.services.sweeper
        assert sweeper is not None
        gw.clock.advance(11)
        assert gw.run(sweeper.sweep()) == 1
        [low] = events(gw, "wallet.low_balance")
        assert (low["data"]["wallet_id"], low["data"]["recovered"]) == (wallet["id"], True)
        assert gw.run(sweeper.sweep()) == 0
        gw.run(gw.app.services.webhooks.worker.run_once())
        [delivery] = receiver.received
        assert delivery.verified, delivery.error
        assert delivery.json()["id"] == low["id"]
    finally:
        hooks.stop()


def start_replica(
    gw: RunningGateway, upstream_url: str, tmp_path: Path, redis_port: int, prefix: str
) -> ManagedProcess:
    """``spendgate serve`` on the survivor's database and Redis key prefix, its Redis
    reached through the proxy on ``redis_port``."""
    config = tmp_path / "replica.toml"
    config.write_text(
        f'[providers.openai]\nkind = "openai"\nbase_url = "{upstream_url}/v1"\n'
        f'api_key = "upstream-secret"\n[models."gpt-4o-mini"]\nprovider = "openai"\n'
    )
    redis = urlsplit(REDIS_URL)
    env = {
        "SPENDGATE_MASTER_KEY": MASTER_KEY,
        "SPENDGATE_DATABASE_URL": gw.settings.database_url,
        "SPENDGATE_REDIS_URL": redis._replace(netloc=f"127.0.0.1:{redis_port}").geturl(),
        "SPENDGATE_REDIS_PREFIX": prefix,
        "SPENDGATE_SPOOL_DIR": str(tmp_path / "killed-spool"),
    }
    return Replica.start(tmp_path, env, config=config, workdir=tmp_path)


def _call(client: openai.OpenAI, failed: list[openai.APIError]) -> None:
    """A call through the replica about to be killed: it never answers."""
    try:
        client.chat.completions.create(**CHAT, timeout=60)
    except openai.APIError as exc:
        failed.append(exc)
