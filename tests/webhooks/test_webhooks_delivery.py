"""Deliveries end to end on every backend: real local receivers verify signatures with
the ``standardwebhooks`` library; the worker runs on a frozen clock, never sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.clock import FrozenClock
from spendgate.errors import ValidationFailed
from spendgate.store.database import create_engine, migrate
from spendgate.store.directory import Directory
from spendgate.store.events import list_events, record_event
from spendgate.testing.fake_upstream import ServerHandle, serve_in_thread
from spendgate.testing.processes import PrivatePostgres, free_port
from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks.outbox import (
    AttemptResult,
    claim_due,
    emit_event,
    fan_out,
    record_attempt,
)
from spendgate.webhooks.secrets_box import SecretBox
from spendgate.webhooks.store import EndpointSpec, WebhookStore, list_deliveries, redeliver
from spendgate.webhooks.tables import webhook_attempts, webhook_endpoints
from spendgate.webhooks.worker import DeliveryWorker
from tests.conftest import pool_watch

BOX = SecretBox("test-secret-key")
SOFT = {
    "budget_id": "bud_1",
    "scope_type": "org",
    "scope_id": None,
    "period": "2026-03",
    "period_end": "2026-04-01T00:00:00+00:00",
    "threshold": "soft",
    "percent": "90",
    "percent_used": "90",
    "spent_usd": "90.00",
    "amount_usd": "100.00",
}


@dataclass
class World:
    engine: AsyncEngine
    clock: FrozenClock
    store: WebhookStore
    org_id: str
    #: every worker made here, closed when the test ends
    workers: list[DeliveryWorker] = field(default_factory=list)

    def worker(
        self, name: str = "w1", engine: AsyncEngine | None = None, **kwargs: Any
    ) -> DeliveryWorker:
        worker = DeliveryWorker(
            engine or self.engine,
            self.clock,
            BOX,
            **{"allow_private": True, "worker_id": name, "rand": lambda: 0.5, **kwargs},
        )
        self.workers.append(worker)
        return worker

    async def endpoint(self, url: str, **spec: Any) -> tuple[dict[str, Any], str]:
        return await self.store.create(EndpointSpec(url=url, **spec), self.clock.now())

    async def emit(
        self,
        type_: str = "budget.soft_limit_reached",
        data: dict[str, Any] | None = None,
        dedup: str | None = None,
    ) -> str:
        async with self.engine.begin() as conn:
            row = await emit_event(
                conn,
                type_,
                dict(data or SOFT),
                self.clock.now(),
                org_id=self.org_id,
                dedup_key=dedup,
            )
        assert row is not None
        return str(row["id"])


@pytest.fixture
async def world(database_url: str) -> AsyncIterator[World]:
    engine = create_engine(database_url)
    await migrate(engine)
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    org = await Directory(engine).create_org("acme", clock.now())
    world = World(engine, clock, WebhookStore(engine, BOX, allow_private=True), org["id"])
    yield world
    for worker in world.workers:
        await worker.aclose()
    await engine.dispose()


@pytest.fixture
def serve() -> Iterator[Any]:
    handles: list[ServerHandle] = []

    def start(app: Receiver, port: int = 0) -> str:
        handle = serve_in_thread(app, port=port)
        handles.append(handle)
        return f"{handle.url}/hook"

    yield start
    for handle in handles:
        handle.stop()


#: PostgreSQL databases are slow to make; the backend-specific paths (leasing, restarts)
#: run on both, the rest on SQLite only
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@sqlite_only
async def test_endpoint_writes_in_a_transaction_hold_one_connection(world: World) -> None:
    """Creating, changing and rotating an endpoint in the caller's transaction read the
    endpoint and its scope through it. They took a second pooled connection while holding
    the first: 40 endpoint creations at once on SQLite ran the pool dry, and the requests
    waited out the pool timeout for a 503. Counted here: never two connections at once."""
    existing, _ = await world.endpoint("http://127.0.0.1:9/a")
    with pool_watch(world.engine) as watch:
        async with world.engine.begin() as conn:
            spec = EndpointSpec(url="http://127.0.0.1:9/b", scope_type="org", scope_id=world.org_id)
            await world.store.create(spec, world.clock.now(), conn)
            await world.store.update(
                existing["id"], {"scope_type": "org", "scope_id": world.org_id},
                world.clock.now(), conn,
            )  # fmt: skip
            await world.store.rotate_secret(existing["id"], world.clock.now(), conn=conn)
    assert watch.most == 1
    assert (await world.store.get(existing["id"]))["scope_id"] == world.org_id


async def test_signed_delivery_verifies_and_tampering_does_not(world: World, serve: Any) -> None:
    """The receiver's standardwebhooks check passes on the real delivery and rejects a
    tampered body, a wrong secret and a stale timestamp."""
    receiver = Receiver()
    url = serve(receiver)
    endpoint, secret = await world.endpoint(url, event_types=("budget.*",))
    receiver.secrets = [secret]
    event_id = await world.emit()
    assert await world.worker().run_once() == 1
    [got] = receiver.received
    assert got.verified, got.error
    assert got.json() == {
        "id": event_id,
        "type": "budget.soft_limit_reached",
        "timestamp": got.json()["timestamp"],
        "data": SOFT,
    }
    assert got.headers["webhook-id"].startswith("msg_")
    async with httpx.AsyncClient() as client:
        tampered = got.body.replace(b"90.00", b"00.00")
        assert (await client.post(url, content=tampered, headers=got.headers)).status_code == 401
    [delivery] = await list_deliveries(world.engine, endpoint["id"])
    assert delivery["status"] == "succeeded"
    assert delivery["attempt_log"][0]["response_code"] == 200

    wrong = Receiver(secrets=["whsec_" + "QUJD" * 8])
    other, _ = await world.endpoint(serve(wrong), event_types=("wallet.depleted",))
    await world.emit("wallet.depleted", {"wallet_id": "w_1", "balance_usd": "0.00"})
    await world.worker().run_once()
    assert wrong.received and not wrong.received[0].verified
    [failed] = await list_deliveries(world.engine, other["id"])
    assert failed["status"] == "pending" and failed["last_response_code"] == 401

    stale = Receiver(secrets=[secret])
    await world.store.update(endpoint["id"], {"url": serve(stale)}, world.clock.now())
    world.clock.set(world.clock.now() - timedelta(minutes=10))  # our clock lags the receiver's
    await world.emit(dedup="again")
    await world.worker().run_once()
    assert stale.received[0].error is not None and "too old" in stale.received[0].error


@sqlite_only
async def test_rotation_overlap_then_only_the_new_secret(world: World, serve: Any) -> None:
    """During the overlap both secrets verify; after it only the new one does."""
    receiver = Receiver()
    url = serve(receiver)
    endpoint, old = await world.endpoint(url)
    _, new = await world.store.rotate_secret(endpoint["id"], world.clock.now(), timedelta(hours=1))
    await world.emit(dedup="during")
    await world.worker().run_once()
    during = receiver.received[-1]
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Receiver(secrets=[secret]).check(during.body, during.headers) is None

    world.clock.advance(3601)
    await world.emit(dedup="after")
    await world.worker().run_once()
    after = receiver.received[-1]
    assert Receiver([new], world.clock.now).check(after.body, after.headers) is None
    assert Receiver([old], world.clock.now).check(after.body, after.headers) is not None
    row = await world.store.row(endpoint["id"])
    assert old not in str(row) and new not in str(row)  # stored encrypted only


async def test_receiver_down_then_up_retries_survive_a_restart(
    world: World, serve: Any, database_url: str
) -> None:
    """Connection refused twice (with backoff), a new worker on a fresh engine takes over,
    and the delivery lands once the receiver is up: nothing lost, one success."""
    port = free_port()
    receiver = Receiver()
    endpoint, secret = await world.endpoint(f"http://127.0.0.1:{port}/hook")
    receiver.secrets, receiver.now = [secret], world.clock.now
    await world.emit()
    first = world.worker("before-restart")
    assert await first.run_once() == 1
    assert await first.run_once() == 0  # backing off: not due yet
    world.clock.advance(5.1)
    assert await first.run_once() == 1
    [pending] = await list_deliveries(world.engine, endpoint["id"])
    assert pending["attempts"] == 2 and pending["status"] == "pending"
    assert pending["next_attempt_at"] == world.clock.now() + timedelta(minutes=5)
    assert all("Connect" in a["error"] for a in pending["attempt_log"])

    restarted = create_engine(database_url)  # "restart": new engine, new worker
    try:
        second = world.worker("after-restart", engine=restarted)
        serve(receiver, port=port)
        world.clock.advance(299)
        assert await second.run_once() == 0
        world.clock.advance(2)
        assert await second.run_once() == 1
    finally:
        await restarted.dispose()
    assert [r.verified for r in receiver.received] == [True]
    [done] = await list_deliveries(world.engine, endpoint["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 3


async def test_two_workers_never_send_one_delivery_twice(
    world: World, serve: Any, database_url: str
) -> None:
    """Two replicas (separate engines) race over 24 deliveries: each sent exactly once."""
    receiver = Receiver()
    await world.endpoint(serve(receiver))
    for n in range(12):
        await world.emit(dedup=f"e{n}")
    await world.endpoint(serve(receiver))  # a second endpoint for new events only
    for n in range(12, 18):
        await world.emit(dedup=f"e{n}")
    other = create_engine(database_url)
    try:
        a, b = world.worker("a", batch_size=4), world.worker("b", engine=other, batch_size=4)
        for _ in range(20):
            counts = await asyncio.gather(a.run_once(), b.run_once(), a.run_once())
            if not any(counts):
                break
    finally:
        await other.dispose()
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(ids) == 12 + 6 * 2
    assert len(set(ids)) == len(ids)


async def test_a_lease_blocks_others_until_it_expires(world: World, serve: Any) -> None:
    """A worker that died holding a lease delays the delivery, it does not lose it."""
    receiver = Receiver()
    await world.endpoint(serve(receiver))
    await world.emit()
    [claim] = await claim_due(
        world.engine, world.clock.now(), worker_id="dead", lease=timedelta(seconds=60), limit=10
    )
    assert await world.worker().run_once() == 0
    world.clock.advance(61)
    assert await world.worker().run_once() == 1
    assert len(receiver.received) == 1
    assert claim.delivery["status"] == "pending"


@sqlite_only
async def test_redelivery_keeps_the_message_id(world: World, serve: Any) -> None:
    receiver = Receiver()
    endpoint, _ = await world.endpoint(serve(receiver))
    await world.emit()
    await world.worker().run_once()
    [first] = await list_deliveries(world.engine, endpoint["id"])
    async with world.engine.begin() as conn:
        again = await redeliver(conn, endpoint["id"], first["id"], world.clock.now())
    assert again["redelivery_of"] == first["id"] and again["status"] == "pending"
    await world.worker().run_once()
    assert [r.headers["webhook-id"] for r in receiver.received] == [first["message_id"]] * 2


@sqlite_only
async def test_endpoint_disabled_after_five_days_of_failure(world: World, serve: Any) -> None:
    """Daily events all fail for five days: the endpoint is switched off and an event
    about it reaches another endpoint."""
    dead, _ = await world.endpoint(
        f"http://127.0.0.1:{free_port()}/hook", event_types=("budget.*",)
    )
    watcher = Receiver()
    await world.endpoint(serve(watcher), event_types=("webhook.*",))
    for day in range(5):
        await world.emit(dedup=f"day{day}")
        await world.worker().run_once()
        assert (await world.store.row(dead["id"]))["enabled"] is True
        world.clock.advance(86400)
    await world.emit(dedup="day5")
    await world.worker().run_once()
    row = await world.store.row(dead["id"])
    assert row["enabled"] is False and "failed since" in row["disabled_reason"]
    [event] = await list_events(world.engine, type_="webhook.endpoint_disabled")
    assert event["data"]["endpoint_id"] == dead["id"]
    await world.worker().run_once()
    assert [r.json()["type"] for r in watcher.received] == ["webhook.endpoint_disabled"]
    claimed = await world.worker().run_once()
    assert claimed == 0  # a disabled endpoint's deliveries wait


@sqlite_only
async def test_fan_out_is_idempotent_and_filters(world: World, serve: Any) -> None:
    """Type and scope filters pick endpoints; record_event fans out, and fanning the same
    event out again adds nothing."""
    team = await Directory(world.engine).create_team(world.org_id, "ml", world.clock.now())
    wanted, _ = await world.endpoint(
        serve(Receiver()), event_types=("budget.*",), scope_type="team", scope_id=team["id"]
    )
    await world.endpoint(serve(Receiver()), event_types=("wallet.*",))
    disabled, _ = await world.endpoint(serve(Receiver()), enabled=False)
    data = {**SOFT, "scope_type": "team", "scope_id": team["id"]}
    async with world.engine.begin() as conn:
        row = await record_event(
            conn, "budget.soft_limit_reached", data, world.clock.now(), org_id=world.org_id
        )
        assert row is not None
        first = await fan_out(conn, row)
        second = await fan_out(conn, row)
    assert first.delivery_ids == () and second.delivery_ids == ()
    assert len(await list_deliveries(world.engine, wanted["id"])) == 1
    async with world.engine.connect() as conn:
        assert (
            await conn.execute(sa.select(sa.func.count()).select_from(webhook_endpoints))
        ).scalar_one() == 3
    assert await list_deliveries(world.engine, disabled["id"]) == []


# -- Slack: the URL is the credential ------------------------------------------------------
SLACK_PATH = "services/T0SLACK/B0SLACK/XXXXslackSECRETpart"


async def stored_text(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        return str((await conn.execute(sa.select(webhook_endpoints))).all())


async def test_slack_url_encrypted_shown_masked_and_posted_to(
    world: World, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The real Slack URL is stored only encrypted and shown masked; the worker posts to
    it, and neither its logs (httpx logs request URLs) nor the delivery log name it."""
    caplog.set_level(logging.DEBUG)
    receiver = Receiver()
    base = serve(receiver).removesuffix("/hook")
    url = f"{base}/{SLACK_PATH}"
    masked = f"{base}/services/T…/B…/…"
    endpoint, _ = await world.endpoint(url, kind="slack", event_types=("budget.*",))
    assert endpoint["url"] == masked
    assert (await world.store.get(endpoint["id"]))["url"] == masked
    assert [e["url"] for e in await world.store.list()] == [masked]
    stored = await stored_text(world.engine)
    assert "XXXXslackSECRETpart" not in stored and masked in stored

    await world.emit()
    assert await world.worker().run_once() == 1
    [got] = receiver.received
    assert got.path == f"/{SLACK_PATH}" and "Budget soft limit reached" in got.json()["text"]
    [delivery] = await list_deliveries(world.engine, endpoint["id"])
    assert delivery["status"] == "succeeded"
    assert f"POST {masked}" in caplog.text  # httpx's request line, redacted
    assert "XXXXslackSECRETpart" not in caplog.text + str(delivery)


@sqlite_only
async def test_slack_url_kept_out_of_transport_errors(world: World) -> None:
    """An HTTP error naming the URL is logged in the delivery log with the URL masked."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    url = f"http://127.0.0.1:9/{SLACK_PATH}"
    endpoint, _ = await world.endpoint(url, kind="slack")
    await world.emit()
    async with DeliveryWorker(
        world.engine, world.clock, BOX, allow_private=True, transport=httpx.MockTransport(refuse)
    ) as worker:
        assert await worker.run_once() == 1
    [delivery] = await list_deliveries(world.engine, endpoint["id"])
    assert delivery["last_error"] == (
        "ConnectError: cannot reach http://127.0.0.1:9/services/T…/B…/…"
    )


@sqlite_only
async def test_slack_url_patch_and_legacy_rows(world: World, serve: Any) -> None:
    """Giving the masked URL back keeps the real one; leaving Slack needs a new URL; a row
    from before revision 0008 (plaintext URL) is delivered, shown masked, then sealed."""
    receiver = Receiver()
    base = serve(receiver).removesuffix("/hook")
    url = f"{base}/{SLACK_PATH}"
    endpoint, _ = await world.endpoint(url, kind="slack")
    changed = await world.store.update(
        endpoint["id"], {"url": endpoint["url"], "description": "ops"}, world.clock.now()
    )
    assert changed["description"] == "ops"
    assert world.store.url_of(await world.store.row(endpoint["id"])) == url
    with pytest.raises(ValidationFailed) as refused:
        await world.store.update(endpoint["id"], {"kind": "webhook"}, world.clock.now())
    assert refused.value.param == "url"
    plain = await world.store.update(
        endpoint["id"], {"kind": "webhook", "url": f"{base}/hook"}, world.clock.now()
    )
    assert plain["url"] == f"{base}/hook"
    assert (await world.store.row(endpoint["id"]))["url_encrypted"] is None

    async with world.engine.begin() as conn:  # as revision 0007 stored it
        await conn.execute(
            webhook_endpoints.update()
            .where(webhook_endpoints.c.id == endpoint["id"])
            .values(kind="slack", url=url, url_encrypted=None)
        )
    assert (await world.store.get(endpoint["id"]))["url"] == f"{base}/services/T…/B…/…"
    await world.emit()
    assert await world.worker().run_once() == 1
    assert receiver.received[-1].path == f"/{SLACK_PATH}"
    assert await world.store.seal_urls() == 1
    assert await world.store.seal_urls() == 0
    row = await world.store.row(endpoint["id"])
    assert "XXXXslackSECRETpart" not in str(row) and world.store.url_of(row) == url


@sqlite_only  # the world's clock and HTTP client; its database is a PostgreSQL of its own
async def test_an_answer_is_recorded_once_the_database_is_back_not_sent_again(
    world: World, serve: Any
) -> None:
    """The receiver accepts; the database is stopped before the worker can record it (the
    chaos test's outage). The worker, alive and holding the lease, keeps the answer and
    records it once the database is back: the message is not sent again when the lease
    expires. It used to raise, leave the delivery leased and pending, and the next worker
    past the lease sent the same message a second time (the chaos test's ``{2, 1}``)."""
    with PrivatePostgres() as pg:
        engine = create_engine(pg.url)
        try:
            await migrate(engine)
            clock = world.clock
            store = WebhookStore(engine, BOX, allow_private=True)
            org = await Directory(engine).create_org("acme", clock.now())
            stopped = threading.Event()

            class StopsTheDatabase(Receiver):
                async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                    if scope["type"] == "http" and not stopped.is_set():
                        pg.stop()  # before it answers 200: the worker's write finds it down
                        stopped.set()
                    await super().__call__(scope, receive, send)

            receiver = StopsTheDatabase()
            endpoint, _ = await store.create(EndpointSpec(url=serve(receiver)), clock.now())
            async with engine.begin() as conn:
                await emit_event(
                    conn, "budget.soft_limit_reached", dict(SOFT), clock.now(), org_id=org["id"]
                )
            worker = world.worker(engine=engine)
            first = asyncio.create_task(worker.run_once())
            await asyncio.to_thread(stopped.wait, 30)
            await asyncio.sleep(0.5)  # the write is failing now
            await asyncio.to_thread(pg.start)
            with contextlib.suppress(Exception):  # before the fix: the write's error
                await first
            clock.advance(3600)  # well past any lease
            await world.worker("w2", engine=engine).run_once()
            [done] = await list_deliveries(engine, endpoint["id"])
        finally:
            await engine.dispose()
    assert [r.answered for r in receiver.received] == [200]
    assert done["status"] == "succeeded" and done["attempts"] == 1


@sqlite_only
async def test_recording_an_attempt_again_logs_it_once(world: World, serve: Any) -> None:
    """The worker records again after a write the database dropped; if the first commit
    landed (only its answer was lost), the attempt is not logged a second time."""
    await world.endpoint(serve(Receiver()))
    await world.emit()
    [claim] = await claim_due(
        world.engine, world.clock.now(), worker_id="w", lease=timedelta(seconds=60), limit=1
    )
    result = AttemptResult(ok=True, response_code=200, latency_ms=3)
    now = world.clock.now()
    assert await record_attempt(world.engine, claim, result, now, now, 0.5) == "succeeded"
    assert await record_attempt(world.engine, claim, result, now, now, 0.5) == "succeeded"
    async with world.engine.connect() as conn:
        attempts = await conn.scalar(sa.select(sa.func.count()).select_from(webhook_attempts))
    assert attempts == 1


@sqlite_only
async def test_a_round_asked_for_during_another_waits_for_it(world: World, serve: Any) -> None:
    """One worker's rounds never overlap: a round asked for while the worker's own loop
    has a delivery in flight (here, held at the receiver) returns only once that attempt
    is made and logged, so whoever asked sees it delivered. Overlapping, the second round
    found nothing to claim and returned at once (tests that drove the gateway's worker
    by hand failed now and then on a loaded machine)."""
    answered = threading.Event()
    release = threading.Event()

    class Slow(Receiver):
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                answered.set()
                await asyncio.to_thread(release.wait, 30)
            await super().__call__(scope, receive, send)

    receiver = Slow()
    endpoint, _ = await world.endpoint(serve(receiver))
    await world.emit()
    worker = world.worker()
    first = asyncio.create_task(worker.run_once())
    await asyncio.to_thread(answered.wait, 30)  # the first round's request is at the receiver
    second = asyncio.create_task(worker.run_once())
    seen: list[int] = []  # what the receiver had logged when the second round ended
    second.add_done_callback(lambda _: seen.append(len(receiver.received)))
    await asyncio.sleep(0.2)  # time for an overlapping round to claim nothing and end
    release.set()
    assert (await first, await second) == (1, 0)
    assert seen == [1]
    [done] = await list_deliveries(world.engine, endpoint["id"])
    assert done["status"] == "succeeded" and len(receiver.received) == 1


@sqlite_only
async def test_a_receiver_answering_a_byte_at_a_time_is_cut_off_at_the_timeout(
    world: World,
) -> None:
    """The attempt's timeout bounds the whole attempt, not each read: a receiver (or a
    proxy in front of it) that sends its headers a line every 0.1 s for 4 s would
    otherwise hold the attempt, and its worker's round, as long as it likes, past the
    lease, after which another replica sends the delivery again. Cut off at 0.5 s, the
    attempt is a failure, retried on the usual schedule."""
    stop = asyncio.Event()

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(40):
            if stop.is_set():
                break
            writer.write(b"x-drip-%d: 1\r\n" % n)
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(b"content-length: 2\r\n\r\nok")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        endpoint, _ = await world.endpoint(f"http://127.0.0.1:{port}/hook")
        await world.emit()
        assert await world.worker(timeout_seconds=0.5).run_once() == 1
    finally:
        stop.set()
        server.close()
        await server.wait_closed()
    [pending] = await list_deliveries(world.engine, endpoint["id"])
    assert pending["status"] == "pending" and pending["attempts"] == 1
    [attempt] = pending["attempt_log"]
    assert attempt["response_code"] is None and "0.5 s" in attempt["error"]
    assert pending["next_attempt_at"] == world.clock.now() + timedelta(seconds=5)
