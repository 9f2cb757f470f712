"""Forecasts through the gateway: on demand, in the budget status, and the overrun event."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import openai

from spendgate.testing.fake_upstream import serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks.outbox import resolve_reset_periods
from tests.admin.test_budgets import one_call_cost
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
        # its period as every budget.* event names it (``core.event_data``): March in UTC
        march = {
            "period": "2026-03",
            "period_start": "2026-03-01T00:00:00+00:00",
            "period_end": "2026-04-01T00:00:00+00:00",
            "period_span": "20260301T000000Z/20260401T000000Z",
        }
        assert {k: data.get(k) for k in march} == march
        assert data["period_key"] == "2026-03"  # as first published
        assert data["scope_type"] == "key" and data["scope_id"] == key["id"]
    finally:
        handle.stop()


def test_a_forecast_overrun_incident_is_resolved_when_its_period_resets(
    gateway: RunningGateway,
) -> None:
    """A PagerDuty endpoint's incident for ``budget.forecast_overrun`` is of the budget's
    period window, as a threshold's is: triggered once, and resolved (once) when the
    period resets, not left open for good (the event named no period to resolve it by)."""
    receiver = Receiver(now=gateway.clock.now)
    handle = serve_in_thread(receiver)
    try:
        endpoint = gateway.create_pagerduty(f"{handle.url}/pd", "budget.forecast_overrun")
        key = gateway.create_key()
        gateway.clock.set(gateway.clock.now().replace(month=3, day=2, hour=13))
        cost = one_call_cost(gateway, key["key"])
        made = gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd=str(cost * 2))
        gateway.run(gateway.app.services.ledger.flush())
        forecast = gateway.get(f"/admin/forecasts/{made['id']}", refresh="true")
        assert forecast["overrun_band"] == 100
        gateway.run(gateway.app.services.drain())
        [event] = gateway.get("/admin/events", type="budget.forecast_overrun")

        def sent() -> list[tuple[str, str]]:
            deliveries = gateway.get(f"/admin/webhooks/{endpoint['id']}/deliveries")
            return sorted((d["event_id"], d["action"]) for d in deliveries)

        def received() -> list[tuple[str, str]]:
            for _ in range(3):
                gateway.run(gateway.app.services.webhooks.worker.run_once())
            return [(r.json()["event_action"], r.json()["dedup_key"]) for r in receiver.received]

        incident = f"spendgate:forecast:{made['id']}:20260301T000000Z/20260401T000000Z:100"
        engine = gateway.app.services.engine
        gateway.run(resolve_reset_periods(engine, gateway.clock.now()))
        assert sent() == [(event["id"], "trigger")]  # still March: open
        assert received() == [("trigger", incident)]
        gateway.clock.set(datetime.fromisoformat("2026-04-01T00:00:01+00:00"))
        gateway.run(resolve_reset_periods(engine, gateway.clock.now()))
        gateway.run(resolve_reset_periods(engine, gateway.clock.now()))
        assert sent() == [(event["id"], "resolve"), (event["id"], "trigger")]
        assert received() == [("trigger", incident), ("resolve", incident)]
    finally:
        handle.stop()


def test_a_resolve_is_not_sent_before_its_trigger(gateway: RunningGateway) -> None:
    """The trigger of a forecast-overrun incident failed once just before the period
    reset (its retry a few seconds later), and the reset queued the resolve: the resolve
    waits for the trigger to be delivered. Sent first, PagerDuty dropped it (no incident
    yet) and the late trigger opened an incident nothing resolved."""
    receiver = Receiver(now=gateway.clock.now)
    handle = serve_in_thread(receiver)
    try:
        gateway.create_pagerduty(f"{handle.url}/pd", "budget.forecast_overrun")
        key = gateway.create_key()
        gateway.clock.set(gateway.clock.now().replace(month=3, day=2, hour=13))
        cost = one_call_cost(gateway, key["key"])
        made = gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd=str(cost * 2))
        gateway.run(gateway.app.services.ledger.flush())
        assert gateway.get(f"/admin/forecasts/{made['id']}", refresh="true")["overrun_band"] == 100
        gateway.run(gateway.app.services.drain())
        worker, engine = gateway.app.services.webhooks.worker, gateway.app.services.engine

        def delivered() -> list[str]:
            return [r.json()["event_action"] for r in receiver.received if r.answered == 200]

        gateway.clock.set(datetime.fromisoformat("2026-03-31T23:59:58+00:00"))
        receiver.refuse = 1
        assert gateway.run(worker.run_once()) == 1  # the trigger: 503, again in ~5 s
        gateway.clock.set(datetime.fromisoformat("2026-04-01T00:00:01+00:00"))
        gateway.run(resolve_reset_periods(engine, gateway.clock.now()))
        gateway.run(worker.run_once())
        assert delivered() == []  # the resolve waits for its trigger
        gateway.clock.set(datetime.fromisoformat("2026-04-01T00:01:00+00:00"))
        for _ in range(3):
            gateway.run(worker.run_once())
        assert delivered() == ["trigger", "resolve"]
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


def test_a_stored_forecast_is_read_as_of_now(gateway: RunningGateway) -> None:
    """A forecast stored before a burst of spend landed below what the budget had already
    spent (P10–P90 and % of budget), and one stored before an exception or an amount edit
    kept the old amount in its %, its landing and its threshold days: read now, spend to
    date is a floor for every quantile, and the amount is the budget's current one (with
    the exceptions active now), on the forecast route and in the budget status alike."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)

    def call() -> Decimal:
        return Decimal(
            client.chat.completions.with_raw_response.create(
                model="demo-small", max_tokens=20, messages=[{"role": "user", "content": "s"}]
            ).headers["x-spendgate-cost-usd"]
        )

    gateway.clock.set(gateway.clock.now().replace(month=3, day=1, hour=12))
    cost = call()
    made = gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd=str(cost * 100))
    for _ in range(9):
        gateway.clock.advance(86400)
        call()
    stored = gateway.get(f"/admin/forecasts/{made['id']}", refresh="true")
    assert Decimal(stored["p90_usd"]) < cost * 60  # ~31 calls: well under the burst below
    for _ in range(60):  # a burst, after the forecast was stored (still fresh: not redone)
        call()
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    spent = Decimal(status["spent_usd"])
    assert spent == cost * 70
    for read in (gateway.get(f"/admin/forecasts/{made['id']}"), status["forecast"]):
        assert read["generated_at"] == stored["generated_at"]  # the stored one, read now
        assert Decimal(read["spent_usd"]) == spent
        assert all(Decimal(read[f"{q}_usd"]) >= spent for q in ("p10", "p50", "p90"))
        assert Decimal(read["percent_of_budget"]) >= Decimal(status["percent_used"]) == 70
        assert read["crossings"]["alert:50"] <= "2026-03-10"  # reached: today at the latest
        assert f"lands at ${read['p50_usd']} (P50, " in read["outlook"]

    # an exception: the forecast is of the amount with it, so recomputed (its days too)
    gateway.post(
        f"/admin/budgets/{made['id']}/exceptions",
        {"amount_usd": str(cost * 100), "reason": "launch", "expires_at": "2026-03-20T00:00:00Z"},
    )
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert Decimal(status["effective_amount_usd"]) == cost * 200
    for read in (gateway.get(f"/admin/forecasts/{made['id']}"), status["forecast"]):
        assert read["amount_usd"] == status["effective_amount_usd"]
        p50 = Decimal(read["p50_usd"])
        assert p50 >= spent
        assert Decimal(read["percent_of_budget"]) == (p50 * 100 / (cost * 200)).quantize(
            Decimal("0.01")
        )
        assert f"% of ${status['effective_amount_usd']})" in read["outlook"]
    # an amount edit likewise
    gateway.admin.patch(f"/admin/budgets/{made['id']}", json={"amount_usd": str(cost * 50)})
    status = gateway.get(f"/admin/budgets/{made['id']}/status")
    assert Decimal(status["effective_amount_usd"]) == cost * 150
    assert status["forecast"]["amount_usd"] == status["effective_amount_usd"]
    read = gateway.get(f"/admin/forecasts/{made['id']}")
    assert read["amount_usd"] == status["effective_amount_usd"]


def test_a_budget_refusing_calls_is_blocked_in_its_status(gateway: RunningGateway) -> None:
    """Spent at its hard cap: the status's ``state`` says blocked (calls are refused), not
    over the soft limit; an observing budget at the same spend is over its soft limit."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    cost = Decimal(
        client.chat.completions.with_raw_response.create(
            model="demo-small", max_tokens=20, messages=[{"role": "user", "content": "s"}]
        ).headers["x-spendgate-cost-usd"]
    )
    capped = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd=str(cost), hard_limit=True
    )
    observing = gateway.create_budget(scope_type="key", scope_id=key["id"], amount_usd=str(cost))
    refused = client.chat.completions.with_raw_response.create
    try:
        refused(model="demo-small", max_tokens=20, messages=[{"role": "user", "content": "s"}])
        raise AssertionError("the hard cap let a call through")
    except openai.RateLimitError:
        pass
    assert gateway.get(f"/admin/budgets/{capped['id']}/status")["state"] == "blocked"
    assert gateway.get(f"/admin/budgets/{observing['id']}/status")["state"] == "over_soft_limit"
