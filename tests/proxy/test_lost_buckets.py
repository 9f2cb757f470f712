"""A call still running when Redis comes back empty (issue 23.2, found by the chaos test):
its settle finds its budget's bucket gone, so it adds nothing there; another replica
then seeds the bucket from the ledger before this call's row has reached the database.
Without more, the counter misses that call's spend until the next reconciliation, and a
hard cap can be passed by it. The row is marked ``uncounted`` instead and the bucket
caught up from it once written (``spendgate.guard.enforcement.lost_buckets``).

Two gateways in this process share one SQLite file and one Redis key prefix on the
machine's real Redis; "Redis restarted empty" is every key under that prefix deleted."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

import spendgate.app
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import REDIS_URL, RunningGateway, start_gateway

NANOS = Decimal(10**9)


@pytest.fixture
def replicas(
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[RunningGateway, RunningGateway, str]]:
    # Housekeeping runs once at start, then only when a test asks (``catch_up``): a round
    # 5 s later fell, on a loaded machine, between a lost settle and the test's catch-up,
    # and seeded the lost bucket by the frozen clock (no call started before "now").
    monkeypatch.setattr(spendgate.app, "HOUSEKEEPING_SECONDS", 3600.0)
    prefix = f"sgtest:{uuid.uuid4().hex}:"
    env = {"SPENDGATE_REDIS_URL": REDIS_URL, "SPENDGATE_REDIS_PREFIX": prefix}
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    started = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        started.append(start_gateway(database, upstream[1].url, tmp_path / name, env_extra=env))
    try:
        yield started[0], started[1], prefix
    finally:
        for gw in started:
            gw.admin.close()
            gw.handle.stop()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def chat(
    gw: RunningGateway, key: str, content: str = "hi", model: str = "gpt-4o-mini"
) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 20,
        },
        timeout=30,
    )


def restart_empty(prefix: str) -> None:
    """What a Redis restarted empty looks like to the gateways: every key of theirs gone."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(*client.scan_iter(match=f"{prefix}*", count=1000))
    finally:
        client.close()


def budget(gw: RunningGateway, scope_type: str, scope_id: str, **extra: Any) -> str:
    body = {
        **extra,
        "scope_type": scope_type,
        "scope_id": scope_id,
        "amount_usd": "1",
        "hard_limit": True,
        "period": "monthly",
        "timezone": "UTC",
    }
    return str(gw.post("/admin/budgets", body)["id"])


def across_a_restart(
    a: RunningGateway,
    fake: FakeUpstream,
    key: str,
    prefix: str,
    meanwhile: Callable[[], None] = lambda: None,
) -> httpx.Response:
    """A call of ``key`` through A that is with the provider when Redis restarts empty;
    ``meanwhile`` runs after the restart, before the call ends. From here on A's ledger
    rows wait until asked for (``RunningGateway.ledger``). Returns its answer (a 200)."""
    a.app.services.ledger._flush_seconds = 3600
    time.sleep(0.2)  # the writer's current wait ends
    answers: list[httpx.Response] = []
    fake.answer_gate = threading.Event()  # held with the provider until let go below
    slow = threading.Thread(target=lambda: answers.append(chat(a, key, "hi [[gated]]")))
    slow.start()
    # with the provider, its holds taken (a fixed pause was too short on a loaded machine:
    # Redis restarted before the call was admitted, and nothing was left uncounted)
    deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
    while not any("[[gated]]" in str(r.json) for r in list(fake.requests)):
        assert slow.is_alive() and time.monotonic() < deadline, answers
        time.sleep(0.01)
    restart_empty(prefix)
    meanwhile()
    fake.answer_gate.set()
    slow.join()
    assert [r.status_code for r in answers] == [200]
    return answers[0]


def written(a: RunningGateway, b: RunningGateway, late: httpx.Response) -> list[dict[str, Any]]:
    """A's rows written now; every ledger row, the ``late`` call's checked uncounted."""
    a.ledger()
    rows = b.ledger()
    mine = [r for r in rows if r["request_id"] == late.headers["x-request-id"]]
    assert [r["uncounted"] for r in mine] == [True]
    return rows


def catch_up(gw: RunningGateway, every_counter: bool = False) -> None:
    """What ``gw``'s housekeeping runs every few seconds (``every_counter``: as after any
    outage); its frozen clock moved on, since a catch-up counts calls started before now."""
    guard = gw.app.services.guard
    if every_counter:
        guard.check_all()
    gw.clock.advance(1)
    gw.run(guard.tick())


def ticket_granted(a: RunningGateway) -> tuple[str, str, dict[str, Any], dict[str, Any], str]:
    """An org, a team, a key of the team and the team's empty wallet with tickets on; the
    key's first call opens a ticket, approved for 100 times what it asked. Returns the
    org id, the team id, the key, the wallet and the ticket id."""
    org = a.post("/admin/orgs", {"name": f"tickets-{uuid.uuid4().hex[:8]}"})["id"]
    team = a.post("/admin/teams", {"name": "research", "org_id": org})["id"]
    key = a.create_key(org_id=org, team_id=team)
    wallet = a.post("/admin/wallets", {"scope_type": "team", "scope_id": team, "tickets": "on"})
    refusal = chat(a, key["key"])
    assert refusal.status_code == 402, refusal.text
    ticket = refusal.json()["error"]["ticket"]
    a.post(
        f"/admin/tickets/{ticket['id']}/approve",
        {
            "reason": "lost buckets",
            "amount_usd": str(Decimal(ticket["missing_usd"]) * 100),
            "more_than_asked": True,
        },
        status=200,
    )
    time.sleep(0.3)  # B's next admission finds the new policy version and reloads
    return org, team, key, wallet, ticket["id"]


def spent(gw: RunningGateway, budget_id: str) -> Decimal:
    return Decimal(gw.get(f"/admin/budgets/{budget_id}/status")["spent_usd"])


def cost(rows: list[dict[str, Any]]) -> Decimal:
    return Decimal(sum(r["cost_nanos"] for r in rows)) / NANOS


def test_a_call_settled_into_a_bucket_redis_lost_is_caught_up_whoever_seeds_it(
    replicas: tuple[RunningGateway, RunningGateway, str], fake: FakeUpstream
) -> None:
    """A call is with the provider when Redis restarts empty; it settles into nothing (its
    bucket is gone), and replica B seeds the bucket from the ledger before A has written
    the call's row. The row is marked uncounted and A's catch-up adds it: the live
    counter equals the ledger."""
    a, b, prefix = replicas
    key = a.create_key()
    budget_id = budget(a, "key", key["id"])
    assert chat(a, key["key"]).status_code == 200
    a.ledger()  # flushed: the bucket is seeded and has that call
    late = across_a_restart(a, fake, key["key"], prefix)
    # its settle read no spend: no budget figure rather than the whole cap as "remaining"
    assert "x-spendgate-budget-remaining-usd" not in late.headers
    # B finds the counters lost and seeds the bucket from the ledger: A's row is not there
    assert chat(b, key["key"]).status_code == 200
    rows = [r for r in written(a, b, late) if r["key_id"] == key["id"]]
    catch_up(a)
    assert len(rows) == 3 and spent(b, budget_id) == cost(rows)


def test_a_call_settled_into_buckets_redis_lost_is_caught_up_once_whoever_seeds_them(
    replicas: tuple[RunningGateway, RunningGateway, str], fake: FakeUpstream
) -> None:
    """A call under a key budget and an org budget is with the provider when Redis
    restarts empty. Replica B seeds the org budget's bucket (a call of another key of
    the org) while it runs; the key budget's bucket is seeded again by nobody. The
    call's settle adds its cost to neither (one of its buckets is gone: added to the
    org's, the catch-up of its uncounted row would count it there twice), and A's
    catch-up brings it to each exactly once: both live counters equal the ledger, also
    after a catch-up of every counter."""
    a, b, prefix = replicas
    slow_key = a.create_key()
    org_id = slow_key["org_id"]
    other_key = a.create_key(org_id=org_id)
    by_key, by_org = budget(a, "key", slow_key["id"]), budget(a, "org", org_id)
    assert chat(a, slow_key["key"]).status_code == 200
    a.ledger()  # flushed: both buckets are seeded and have that call

    def b_seeds_the_org_bucket() -> None:  # from a ledger without the running call
        assert chat(b, other_key["key"]).status_code == 200

    late = across_a_restart(a, fake, slow_key["key"], prefix, b_seeds_the_org_bucket)
    rows = written(a, b, late)
    catch_up(a)
    catch_up(b, every_counter=True)

    assert spent(b, by_key) == cost([r for r in rows if r["key_id"] == slow_key["id"]])
    assert spent(b, by_org) == cost([r for r in rows if r["org_id"] == org_id])
    assert len(rows) == 3


def test_a_ticket_grant_left_alone_by_a_lost_settle_is_caught_up_too(
    replicas: tuple[RunningGateway, RunningGateway, str], fake: FakeUpstream
) -> None:
    """A call funded by a cost ticket holds its budget and the ticket's grant (not the
    team wallet). Redis restarts empty while it runs; B seeds the grant (a ticket-funded
    call of another model, outside the budget) but not the budget. The call's settle adds
    its cost to neither, and A's catch-up brings it to the grant as well as the budget:
    the grant's counter equals the key's ledger spend since the ticket was approved."""
    a, b, prefix = replicas
    _, _, key, wallet, ticket_id = ticket_granted(a)
    by_model = budget(a, "key", key["id"], categories={"models": ["gpt-4o-mini"]})
    assert chat(a, key["key"]).status_code == 200  # funded by the grant
    a.ledger()

    def b_seeds_the_grant() -> None:  # gpt-4o is outside the budget
        assert chat(b, key["key"], model="gpt-4o").status_code == 200

    late = across_a_restart(a, fake, key["key"], prefix, b_seeds_the_grant)
    rows = [r for r in written(a, b, late) if r["key_id"] == key["id"]]
    catch_up(a)

    client = redis.Redis.from_url(REDIS_URL)
    try:
        granted_spent = int(client.hget(f"{prefix}w:{ticket_id}", "spent") or 0)
    finally:
        client.close()
    assert len(rows) == 3 and Decimal(granted_spent) / NANOS == cost(rows)
    assert spent(b, by_model) == cost([r for r in rows if r["model"] == "gpt-4o-mini"])
    # a catch-up of every counter charges the team wallet nothing: the grant paid for
    # these calls, the uncounted one included
    catch_up(b, every_counter=True)
    assert b.get(f"/admin/wallets/{wallet['id']}")["balance_usd"] == "0.00"


def test_a_ticket_funded_call_caught_up_after_redis_lost_buckets_costs_the_wallet_nothing(
    replicas: tuple[RunningGateway, RunningGateway, str], fake: FakeUpstream
) -> None:
    """A team wallet with a top-up and a ticket granted to one key of the team. Redis
    restarts empty while a ticket-funded call runs; B seeds the wallet's bucket (a call
    of another key of the team, paid by the wallet) before that call's row is written.
    The row is uncounted; catching every counter up afterwards must bring it to the
    grant, not to the wallet, whose balance is its top-up less the other key's call."""
    a, b, prefix = replicas
    org, team, funded, wallet, _ = ticket_granted(a)
    other = a.create_key(org_id=org, team_id=team)
    a.post(f"/admin/wallets/{wallet['id']}/topups", {"amount_usd": "1"})
    time.sleep(0.3)

    def b_seeds_the_wallet() -> None:  # another key's call, paid by the wallet
        assert chat(b, other["key"]).status_code == 200

    late = across_a_restart(a, fake, funded["key"], prefix, b_seeds_the_wallet)
    rows = [r for r in written(a, b, late) if r["org_id"] == org]
    catch_up(a, every_counter=True)
    catch_up(b, every_counter=True)

    left = Decimal(1) - cost([r for r in rows if r["key_id"] == other["id"]])
    assert Decimal(b.get(f"/admin/wallets/{wallet['id']}")["balance_usd"]) == left
