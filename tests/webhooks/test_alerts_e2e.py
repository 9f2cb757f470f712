"""From proxied calls to a verified webhook: a budget's 50/75/90 alerts and soft limit,
crossed by concurrent openai-SDK calls through the gateway, each delivered exactly once,
signed, to a receiver that verifies with the standardwebhooks library."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import openai

from spendgate.testing.fake_upstream import ServerHandle
from spendgate.testing.webhook_receiver import Receiver
from tests.conftest import RunningGateway

MSG = [{"role": "user", "content": "same prompt every time"}]


async def _burst(url: str, key: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> int:
            response = await client.post(
                url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}"},
                json={"model": "demo-small", "messages": MSG, "max_tokens": 30},
            )
            return response.status_code

        return await asyncio.gather(*(one() for _ in range(n)))


def test_thresholds_reach_a_verifying_receiver_once(
    gateway: RunningGateway, receiver: tuple[Receiver, ServerHandle]
) -> None:
    """100 concurrent calls cross 50/75/90 and the soft limit: four signed deliveries."""
    app, handle = receiver
    key = gateway.create_key()
    endpoint = gateway.post(
        "/admin/webhooks", {"url": handle.url + "/hook", "event_types": ["budget.*"]}
    )
    app.secrets.append(endpoint["secret"])
    raw = openai.OpenAI(
        base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0
    ).chat.completions.with_raw_response.create(model="demo-small", messages=MSG, max_tokens=30)
    cost = Decimal(raw.headers["x-spendgate-cost-usd"])
    gateway.post(
        "/admin/budgets",
        {
            "scope_type": "key",
            "scope_id": key["id"],
            "amount_usd": str(cost * 100),
            "alert_percentages": [50, 75, 90],
            "soft_limit_percent": 75,
        },
    )
    assert asyncio.run(_burst(gateway.url, key["key"], 100)) == [200] * 100
    gateway.run(gateway.app.services.drain())
    for _ in range(3):
        gateway.run(gateway.app.services.webhooks.worker.run_once())
    delivered = [r.json() for r in app.verified]
    assert len(app.received) == len(delivered) == 4
    kinds = sorted((d["type"], d["data"]["percent"]) for d in delivered)
    assert kinds == [
        ("budget.soft_limit_reached", "75"),
        ("budget.threshold_crossed", "50"),
        ("budget.threshold_crossed", "75"),
        ("budget.threshold_crossed", "90"),
    ]
    assert all(Decimal(d["data"]["amount_usd"]) == cost * 100 for d in delivered)
    log = gateway.get(f"/admin/webhooks/{endpoint['id']}/deliveries")
    assert len(log) == 4


def test_slack_names_the_budget_and_the_threshold(
    gateway: RunningGateway, receiver: tuple[Receiver, ServerHandle]
) -> None:
    """A call crosses a named budget's 50 % alert: the Slack message names the budget (not
    only its id) and the threshold, and links to the budget's console page under the
    public URL."""
    app, handle = receiver
    key = gateway.create_key()
    gateway.post(
        "/admin/webhooks",
        {
            "url": handle.url + "/services/T0/B0/slack",
            "kind": "slack",
            "event_types": ["budget.threshold_crossed"],
        },
    )
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="demo-small", messages=MSG, max_tokens=30
    )
    cost = Decimal(raw.headers["x-spendgate-cost-usd"])
    made = gateway.post(
        "/admin/budgets",
        {
            "name": "search prod",
            "scope_type": "key",
            "scope_id": key["id"],
            "amount_usd": str(cost * 3),
            "alert_percentages": [50],
            "soft_limit_percent": 100,
        },
    )
    client.chat.completions.create(model="demo-small", messages=MSG, max_tokens=30)
    gateway.run(gateway.app.services.drain())
    for _ in range(3):
        gateway.run(gateway.app.services.webhooks.worker.run_once())
    [message] = [r.json() for r in app.received]
    text = message["text"]
    assert f"budget search prod ({made['id']})" in text
    assert "threshold alert 50%" in text
    assert f"{gateway.settings.public_url}/usage/budgets/{made['id']}" in text
