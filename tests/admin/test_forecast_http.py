"""Forecasts through the gateway: on demand, in the budget status, and the overrun event."""

from __future__ import annotations

from decimal import Decimal

import openai

from spendgate.testing.fake_upstream import serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from tests.conftest import RunningGateway


def test_forecast_on_demand_and_in_status(gateway: RunningGateway) -> None:
    """Ten days of steady spend: P50 lands near 31 days' worth; the status shows it, and a
    projected overrun of an observation-only budget fires budget.forecast_overrun once."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    gateway.clock.set(gateway.clock.now().replace(month=3, day=1, hour=12))
    cost = Decimal(
        client.chat.completions.with_raw_response.create(
            model="demo-small", max_tokens=20, messages=[{"role": "user", "content": "steady"}]
        ).headers["x-spendgate-cost-usd"]
    )
    made = gateway.post(
        "/admin/budgets",
        {
            "scope_type": "key",
            "scope_id": key["id"],
            "amount_usd": str(cost * 20),
            "period": "monthly",
        },
    )
    for _ in range(9):
        gateway.clock.advance(86400)
        client.chat.completions.create(
            model="demo-small", max_tokens=20, messages=[{"role": "user", "content": "steady"}]
        )
    forecast = gateway.get(f"/admin/forecasts/{made['id']}", refresh="true")
    assert Decimal(forecast["spent_usd"]) == cost * 10  # the last call too: flushed first
    assert forecast["history_days"] >= 9 and forecast["method"] != "none"
    p10, p50, p90 = (Decimal(forecast[k]) for k in ("p10_usd", "p50_usd", "p90_usd"))
    assert p10 <= p50 <= p90
    assert cost * 25 <= p50 <= cost * 37  # ~31 days of one call a day
    assert Decimal(forecast["percent_of_budget"]) > 100
    assert forecast["crossings"]["alert:50"] is not None
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert status["forecast"]["p50_usd"] == forecast["p50_usd"]
    gateway.run(gateway.app.services.drain())
    overruns = gateway.get("/admin/events", type="budget.forecast_overrun")
    assert len(overruns) == 1 and overruns[0]["data"]["budget_id"] == made["id"]
    gateway.get(f"/admin/forecasts/{made['id']}", refresh="true")
    assert len(gateway.get("/admin/events", type="budget.forecast_overrun")) == 1


def test_a_projected_overrun_reaches_a_verifying_receiver_once(gateway: RunningGateway) -> None:
    """A hard-capped budget's first afternoon spends at a rate far past its month: the
    forecast of recorded spend stops at the cap and names the day it is reached (the issue:
    P50 7,067 % and a 200 % overrun); one signed budget.forecast_overrun says so (band 100,
    no further band) at a receiver that verifies it with the standardwebhooks library."""
    receiver = Receiver(now=gateway.clock.now)
    handle = serve_in_thread(receiver)
    try:
        key = gateway.create_key()
        endpoint = gateway.post(
            "/admin/webhooks",
            {"url": handle.url + "/hook", "event_types": ["budget.forecast_overrun"]},
        )
        receiver.secrets.append(endpoint["secret"])
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
        gateway.clock.set(gateway.clock.now().replace(month=3, day=2, hour=13))  # in UTC
        cost = Decimal(
            client.chat.completions.with_raw_response.create(
                model="demo-small", max_tokens=20, messages=[{"role": "user", "content": "busy"}]
            ).headers["x-spendgate-cost-usd"]
        )
        made = gateway.post(
            "/admin/budgets",
            {
                "scope_type": "key",
                "scope_id": key["id"],
                "amount_usd": str(cost * 10),
                "hard_limit": True,
                "hard_limit_percent": 120,
            },
        )
        for _ in range(3):
            client.chat.completions.create(
                model="demo-small", max_tokens=20, messages=[{"role": "user", "content": "busy"}]
            )
        gateway.run(gateway.app.services.ledger.flush())
        forecast = gateway.get(f"/admin/forecasts/{made['id']}", refresh="true")
        assert (forecast["method"], forecast["history_days"]) == ("today_rate", 0)
        # recorded spend stops at the hard cap (120 % of 10 calls): bounded, and dated
        assert Decimal(forecast["uncapped_p50_usd"]) > cost * 12
        assert Decimal(forecast["p50_usd"]) == Decimal(forecast["hard_cap_usd"]) == cost * 12
        assert forecast["overrun_band"] == 100 and forecast["confidence"] == "low"
        assert forecast["hits_hard_cap_on"] is not None
        assert forecast["outlook"].startswith(
            f"will hit the hard cap (${forecast['hard_cap_usd']}) on {forecast['hits_hard_cap_on']}"
        )
        gateway.get(f"/admin/forecasts/{made['id']}", refresh="true")
        gateway.run(gateway.app.services.drain())
        for _ in range(3):
            gateway.run(gateway.app.services.webhooks.worker.run_once())
        [delivered] = [r.json() for r in receiver.verified]
        assert len(receiver.received) == 1
        assert delivered["type"] == "budget.forecast_overrun"
        assert delivered["data"]["budget_id"] == made["id"]
        data = delivered["data"]
        assert (data["band_percent"], data["limit"]) == (100, "hard_limit")
        assert data["hits_hard_cap_on"] == forecast["hits_hard_cap_on"]
        assert data["p50_usd"] == data["hard_cap_usd"] == forecast["hard_cap_usd"]
        assert data["outlook"] == forecast["outlook"] and data["confidence"] == "low"
    finally:
        handle.stop()


def test_refresh_takes_the_org_from_the_body(gateway: RunningGateway) -> None:
    """``{"org_id": …}`` in the body refreshes that org's budgets only; it used to be
    ignored, so the master key refreshed every org. A field the route does not read, or
    ``org_id`` in the query string, is 422, not ignored."""
    orgs = [gateway.post("/admin/orgs", {"name": f"refresh-{n}"})["id"] for n in range(2)]
    for org in orgs:
        key = gateway.create_key(org_id=org)
        gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd="10")
    assert gateway.post("/admin/forecasts/refresh", {}, status=200)["refreshed"] == 2
    one = gateway.post("/admin/forecasts/refresh", {"org_id": orgs[0]}, status=200)
    assert one["refreshed"] == 1
    no_body = gateway.admin.post("/admin/forecasts/refresh")
    assert no_body.status_code == 200 and no_body.json()["refreshed"] == 2
    for response in (
        gateway.admin.post("/admin/forecasts/refresh", json={"org": orgs[0]}),
        gateway.admin.post("/admin/forecasts/refresh", params={"org_id": orgs[0]}),
    ):
        assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "org_id"
