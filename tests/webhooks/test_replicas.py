"""Two real gateways (``spendgate serve``) on one PostgreSQL share the webhook outbox:
both delivery workers poll it, and each delivery is attempted exactly once, by one of
them. (The forecast refresh's lease is proven the same way, loop against loop, in
``tests/store/test_forecast_store.py``.)"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from spendgate.testing.fake_upstream import serve_in_thread
from spendgate.testing.processes import ManagedProcess, PrivateRedis, Replica, UpstreamProcess
from spendgate.testing.webhook_receiver import Receiver

MASTER = "sg-master-replicas-webhooks-4c2d"
ADMIN = {"authorization": f"Bearer {MASTER}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
ENDPOINTS = 4


def post(replica: ManagedProcess, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{replica.url}{path}", json=body, headers=ADMIN, timeout=30)
    assert response.status_code in (200, 201), response.text
    return response.json()


def get(replica: ManagedProcess, path: str) -> Any:
    response = httpx.get(f"{replica.url}{path}", headers=ADMIN, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_gateways_attempt_each_delivery_once(database_url: str, tmp_path: Path) -> None:
    """Calls through both gateways cross a budget's alert levels; four endpoints subscribe
    to them. Every delivery is attempted once and received once, verified, whichever
    gateway's worker took it."""
    receiver = Receiver()
    hook = serve_in_thread(receiver)
    with PrivateRedis() as redis, UpstreamProcess.start(tmp_path) as upstream:
        config = tmp_path / "spendgate.toml"
        config.write_text(f"""
[gateway]
ledger_flush_seconds = 0.05
[providers.openai]
kind = "openai"
base_url = "{upstream.url}/v1"
api_key = "upstream-secret"
[models."gpt-4o-mini"]
provider = "openai"
""")
        env = {
            "SPENDGATE_MASTER_KEY": MASTER,
            "SPENDGATE_DATABASE_URL": database_url,
            "SPENDGATE_REDIS_URL": redis.url,
            "SPENDGATE_WEBHOOK_ALLOW_PRIVATE": "1",
        }
        started = [
            Replica.start(tmp_path / name, env, config=config, workdir=_dir(tmp_path / name))
            for name in ("a", "b")
        ]
        try:
            _scenario(started, receiver, f"{hook.url}/hook")
        finally:
            for replica in started:
                replica.close()
            hook.stop()


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _scenario(replicas: list[ManagedProcess], receiver: Receiver, url: str) -> None:
    a, b = replicas
    org = post(a, "/admin/orgs", {"name": "acme"})
    key = post(a, "/admin/keys", {"name": "k", "org_id": org["id"]})["key"]
    calls = [
        httpx.Client(base_url=r.url, headers={"authorization": f"Bearer {key}"}) for r in replicas
    ]
    cost = float(calls[0].post("/v1/chat/completions", json=CHAT).headers["x-spendgate-cost-usd"])
    endpoints = []
    for _ in range(ENDPOINTS):
        made = post(b, "/admin/webhooks", {"url": url, "event_types": ["budget.*"]})
        receiver.secrets.append(made["secret"])
        endpoints.append(made["id"])
    post(
        a,
        "/admin/budgets",
        {
            "scope_type": "org",
            "scope_id": org["id"],
            "amount_usd": f"{cost * 10:.9f}",
            "alert_percentages": [20, 40, 60, 80],
            "period": "monthly",
            "timezone": "UTC",
        },
    )
    for n in range(10):  # 10 % a call after the first: every level crossed, alternately
        assert calls[n % 2].post("/v1/chat/completions", json=CHAT).status_code == 200
    for client in calls:
        client.close()

    deadline = time.monotonic() + 60
    while True:
        deliveries = [d for e in endpoints for d in get(a, f"/admin/webhooks/{e}/deliveries")]
        if len(deliveries) >= ENDPOINTS * 5 and all(d["status"] != "pending" for d in deliveries):
            break
        assert time.monotonic() < deadline, f"deliveries not done: {deliveries}"
        time.sleep(0.2)

    # 20/40/60/80 % alerts and the 75 % soft limit, each to every endpoint
    assert len(deliveries) == ENDPOINTS * 5
    assert {d["status"] for d in deliveries} == {"succeeded"}
    assert [d["attempts"] for d in deliveries] == [1] * len(deliveries)
    assert [len(d["attempt_log"]) for d in deliveries] == [1] * len(deliveries)
    received = Counter(r.headers["webhook-id"] for r in receiver.received)
    assert sorted(received.values()) == [1] * len(deliveries)
    assert set(received) == {d["message_id"] for d in deliveries}
    assert all(r.verified for r in receiver.received)
