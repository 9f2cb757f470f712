"""A policy change made through one replica binds on another for the very next call
(issue 21.1): two gateways on one PostgreSQL database and one Redis key prefix, each
with its own process state (key cache, policy snapshot, seeded buckets), as two
replicas would be. The second replica has served the key just before each change, so
without the policy version it would keep using what it had cached for seconds.

Both run in this process on the machine's PostgreSQL and Redis, with frozen clocks:
nothing here waits for a cache to expire."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from spendgate.admin.deps import Scope
from spendgate.console.key_limits import key_limits
from spendgate.core.access import MASTER_PRINCIPAL
from spendgate.core.money import format_usd
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from tests.conftest import RunningGateway, start_gateway

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def replicas(
    upstream: tuple[FakeUpstream, ServerHandle],
    fake: FakeUpstream,
    tmp_path: Path,
    pg_database: str,
) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    """Two gateways sharing a fresh PostgreSQL database and a Redis key prefix."""
    url = pg_database
    shared = {"SPENDGATE_REDIS_PREFIX": f"sgtest:{uuid.uuid4().hex}:"}
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    first = start_gateway(url, upstream[1].url, tmp_path / "a", demo=True, env_extra=shared)
    second = start_gateway(url, upstream[1].url, tmp_path / "b", demo=True, env_extra=shared)
    try:
        yield first, second
    finally:
        for gw in (first, second):
            gw.admin.close()
            gw.handle.stop()


def chat(gw: RunningGateway, secret: str) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {secret}"},
        json={"model": "demo-small", "messages": MSG, "max_tokens": 20},
    )


def hard_budget(key_id: str, amount: str) -> dict[str, Any]:
    return {
        "scope_type": "key",
        "scope_id": key_id,
        "amount_usd": amount,
        "hard_limit": True,
        "period": "monthly",
        "timezone": "UTC",
    }


def code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


def test_a_new_budget_and_a_lowered_one_bind_on_the_other_replica_at_once(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    """A hard budget created on A refuses B's next call; raised on A, B serves again;
    lowered on A, B refuses again; its hard limit switched off on A, B serves; switched
    on again, B refuses."""
    a, b = replicas
    key = a.create_key()
    assert chat(b, key["key"]).status_code == 200  # B has the key and a snapshot
    made = a.post("/admin/budgets", hard_budget(key["id"], "0.000001"))
    refused = chat(b, key["key"])
    assert refused.status_code == 429 and code(refused) == "budget_exceeded"
    raised = a.admin.patch(f"/admin/budgets/{made['id']}", json={"amount_usd": "5"})
    assert raised.status_code == 200
    assert chat(b, key["key"]).status_code == 200
    lowered = a.admin.patch(f"/admin/budgets/{made['id']}", json={"amount_usd": "0.000001"})
    assert lowered.status_code == 200
    assert chat(b, key["key"]).status_code == 429
    off = a.admin.patch(f"/admin/budgets/{made['id']}", json={"hard_limit": False})
    assert off.status_code == 200
    assert chat(b, key["key"]).status_code == 200
    on = a.admin.patch(f"/admin/budgets/{made['id']}", json={"hard_limit": True})
    assert on.status_code == 200
    assert code(chat(b, key["key"])) == "budget_exceeded"  # switched on: binds at once
    # B's status figures count what B spent: the counters are shared
    status = b.get(f"/admin/budgets/{made['id']}/status")
    assert status["spent_usd"] != "0.00" and status["reserved_usd"] == "0.00"


def test_a_refusal_on_one_replica_makes_the_status_refusing_on_both(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    """B's hard cap refuses a call with some of the cap left: A's status says
    ``refusing`` since then, as B's does (the refusal is stored in the shared database,
    the spend in the shared counters); an exception granted on A makes room on both at
    once (B read the exceptions from the snapshot it last loaded, so until its next call
    it said ``refusing`` without the exception; its forecast and the key's limits left it
    out too); raised on A, neither says it."""
    a, b = replicas
    key = a.create_key()
    cost = Decimal(chat(a, key["key"]).headers["x-spendgate-cost-usd"])
    slack = (cost / 4).quantize(Decimal("0.000000001"))
    made = a.post("/admin/budgets", hard_budget(key["id"], f"{cost * 2 + slack:f}"))
    assert chat(b, key["key"]).status_code == 200
    refused = chat(b, key["key"])
    assert code(refused) == "budget_exceeded" and "may cost up to" in refused.text
    b.run(b.app.services.drain())
    path = f"/admin/budgets/{made['id']}/status"
    seen = [gw.get(path) for gw in (a, b)]
    assert [s["state"] for s in seen] == ["refusing", "refusing"]
    assert seen[0] == seen[1]
    assert Decimal(seen[0]["remaining_to_hard_usd"]) == slack

    def grant(amount: int) -> Decimal:
        """An exception granted on A; the amount B must count now."""
        a.post(
            f"/admin/budgets/{made['id']}/exceptions",
            {"amount_usd": str(amount), "reason": "launch", "expires_at": "2026-03-30T00:00:00Z"},
        )
        return cost * 2 + slack + sum(range(1, amount + 1))

    # each read on B counts the exception granted on A just before: the key's limits (the
    # console's key page) ...
    raised_to = grant(1)
    row = b.get(f"/admin/keys/{key['id']}")
    reader = Scope(b.app.services, MASTER_PRINCIPAL)
    shown = b.run(key_limits(b.app.services, row, reader)).shown
    (limit,) = [h for h in shown if h.id == made["id"]]
    assert Decimal(format_usd(limit.limit)) == raised_to
    # ... the forecast ...
    raised_to = grant(2)
    assert Decimal(b.get(f"/admin/forecasts/{made['id']}")["amount_usd"]) == raised_to
    # ... and the status, as A's
    raised_to = grant(3)
    seen = [gw.get(path) for gw in (b, a)]
    assert [s["active_exceptions"] for s in seen] == [3, 3]
    assert seen[0] == seen[1] and seen[0]["refusing_since"] is None
    assert Decimal(seen[0]["effective_amount_usd"]) == raised_to
    raised = a.admin.patch(f"/admin/budgets/{made['id']}", json={"amount_usd": "5"})
    assert raised.status_code == 200
    for gw in (a, b):
        assert gw.get(path)["refusing_since"] is None


def test_a_revoked_or_rotated_key_is_refused_by_the_other_replica_at_once(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    """B has the key cached; revoked on A, B's next call is 401. A rotated key's old
    secret is refused by B at once, the new one served."""
    a, b = replicas
    revoked, rotated = a.create_key(), a.create_key()
    for key in (revoked, rotated):
        assert chat(b, key["key"]).status_code == 200
    a.post(f"/admin/keys/{revoked['id']}/revoke", {}, status=200)
    assert chat(b, revoked["key"]).status_code == 401
    fresh = a.post(f"/admin/keys/{rotated['id']}/rotate", {}, status=200)
    assert chat(b, rotated["key"]).status_code == 401
    assert chat(b, fresh["key"]).status_code == 200


def count(gw: RunningGateway, secret: str) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/messages/count_tokens",
        headers={"x-api-key": secret},
        json={"model": "demo-large", "messages": MSG},
    )


def test_a_key_revoked_on_one_replica_may_not_count_tokens_on_the_other(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    """A token count holds nothing, so no admission finds the policy version for it: it
    reads the version itself. B counted with the key (cached); revoked on A, B's next
    count is 401, not served from its cache."""
    a, b = replicas
    key = a.create_key()
    assert count(b, key["key"]).status_code == 200
    a.post(f"/admin/keys/{key['id']}/revoke", {}, status=200)
    refused = count(b, key["key"])
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "this API key has been revoked"


def test_wallets_rate_limits_and_exceptions_bind_on_the_other_replica_at_once(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    """An empty wallet made on A: B's next call is 402. A rate limit added on A binds
    on B's next two calls; deleted, it no longer does. An exception granted on A over a
    full hard budget lets B's next call through."""
    a, b = replicas
    key = a.create_key()
    assert chat(b, key["key"]).status_code == 200
    wallet = a.post("/admin/wallets", {"scope_type": "key", "scope_id": key["id"]})
    assert code(chat(b, key["key"])) == "insufficient_funds"
    a.post(f"/admin/wallets/{wallet['id']}/topups", {"amount_usd": "5"})
    assert chat(b, key["key"]).status_code == 200

    limit = a.post(
        "/admin/rate-limits", {"scope_type": "key", "scope_id": key["id"], "model": "*", "rpm": 1}
    )
    assert chat(b, key["key"]).status_code == 200
    assert code(chat(b, key["key"])) == "rate_limit_exceeded"
    assert a.admin.delete(f"/admin/rate-limits/{limit['id']}").status_code == 204
    assert chat(b, key["key"]).status_code == 200

    made = a.post("/admin/budgets", hard_budget(key["id"], "0.000001"))
    assert code(chat(b, key["key"])) == "budget_exceeded"
    a.post(
        f"/admin/budgets/{made['id']}/exceptions",
        {"amount_usd": "5", "reason": "launch", "expires_at": "2026-03-30T00:00:00Z"},
    )
    assert chat(b, key["key"]).status_code == 200
