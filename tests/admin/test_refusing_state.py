"""A hard-capped budget whose cap refuses calls says so in its status: ``refusing`` (with
``refusing_since`` and the refused call's worst case) while less than a call's worst case
is left, though not all of the cap is used; raising the amount, granting an exception and
a new period each clear it, and a refusal at the new cap sets it again. Real calls through
the proxy (the openai SDK, the simulated provider); SQLite with memory counters and
PostgreSQL with Redis."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import openai
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.testing.fake_upstream import FakeUpstream, serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks import formats
from spendgate.webhooks.catalog import Event
from spendgate.webhooks.outbox import resolve_reset_periods
from tests.conftest import MASTER_KEY, RunningGateway

MSG = [{"role": "user", "content": "s"}]
NANO = Decimal("0.000000001")
MICRO = Decimal("0.000001")
#: a call whose worst case (4,000 output tokens) dwarfs a small call's
BIG: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 4000, "messages": MSG}


def _call(client: openai.OpenAI) -> Decimal:
    return Decimal(
        client.chat.completions.with_raw_response.create(
            model="demo-small", max_tokens=20, messages=MSG
        ).headers["x-spendgate-cost-usd"]
    )


def _refused(client: openai.OpenAI) -> Decimal:
    """A call the hard cap refuses (429 budget_exceeded) for its worst case (some of the
    cap is left): the worst case its message gives."""
    try:
        client.chat.completions.create(model="demo-small", max_tokens=20, messages=MSG)
    except openai.RateLimitError as exc:
        body: Any = exc.body
        assert body["code"] == "budget_exceeded", body
        found = re.search(r"this call may cost up to \$([0-9.]+)", body["message"])
        assert found is not None, body["message"]  # refused for its worst case, room left
        return Decimal(found.group(1))
    raise AssertionError("the hard cap let the call through")


def _status(gateway: RunningGateway, budget_id: str) -> dict[str, Any]:
    gateway.run(gateway.app.services.drain())  # the refusal's event is stored off the call
    return gateway.get(f"/admin/budgets/{budget_id}/status")


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _cli_out(gateway: RunningGateway, *args: str) -> str:
    result = CliRunner().invoke(
        cli,
        [*args, "--url", gateway.url],
        env={"SPENDGATE_MASTER_KEY": MASTER_KEY, "COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def _cli(gateway: RunningGateway, *args: str) -> dict[str, str]:
    """A CLI answer shown as a table: in 80 columns, one ``column  value`` line each."""
    fields = [line.split(None, 1) for line in _cli_out(gateway, *args).splitlines()]
    return {f[0]: f[1] if len(f) > 1 else "" for f in fields if f}


def _capped_key(gateway: RunningGateway, amount: Decimal) -> tuple[openai.OpenAI, dict[str, Any]]:
    """A new key's client and a hard-capped budget of ``amount`` on it."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    budget = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd=f"{amount:f}", hard_limit=True
    )
    return client, budget


def _nearly_used_up(
    gateway: RunningGateway,
) -> tuple[openai.OpenAI, Decimal, Decimal, dict[str, Any]]:
    """A key's client, a call's cost, a quarter of it (less than a call's worst case) and
    the key's hard-capped budget of three calls and that quarter, after three calls."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    cost = _call(client)  # each of these calls costs the same (the simulated provider)
    slack = (cost / 4).quantize(NANO)
    budget = gateway.create_budget(
        scope_type="key",
        scope_id=key["id"],
        amount_usd=f"{cost * 3 + slack:f}",
        hard_limit=True,
    )
    _call(client)
    _call(client)
    return client, cost, slack, budget


def _two_tight_caps(
    gateway: RunningGateway,
) -> tuple[openai.OpenAI, dict[str, Any], list[dict[str, Any]]]:
    """A new org's key, its client, and two hard-capped budgets (the key's, then the
    org's) that each leave less than a call's worst case after three calls (one made
    here): a fourth call is refused by both."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    cost = _call(client)
    slack = (cost / 4).quantize(NANO)
    tight = [
        gateway.create_budget(
            scope_type=scope, scope_id=target, amount_usd=f"{amount:f}", hard_limit=True
        )
        for scope, target, amount in (
            ("key", key["id"], cost * 3 + slack),
            ("org", key["org_id"], cost * 3 + slack * 2),
        )
    ]
    return client, key, tight


@contextmanager
def _stream_in_flight(client: openai.OpenAI, fake: FakeUpstream, **request: Any) -> Iterator[None]:
    """Inside: a streamed call of ``request`` holds its worst case, its first chunk
    received and the rest held back by ``fake``; on leaving, it ends and settles."""
    gate, started = threading.Event(), threading.Event()
    fake.stream_gate = gate  # every stream sends its first chunk, then waits for this

    def stream() -> None:
        for _ in client.chat.completions.create(**request, stream=True):
            started.set()

    with ThreadPoolExecutor(1) as pool:
        streaming = pool.submit(stream)
        try:
            assert started.wait(30)
            yield
        finally:
            gate.set()
        streaming.result(30)


def test_a_cap_refusing_calls_says_refusing_until_room_is_made(gateway: RunningGateway) -> None:
    client, cost, slack, budget = _nearly_used_up(gateway)
    path = f"/admin/budgets/{budget['id']}"
    before = _status(gateway, budget["id"])
    assert before["state"] == "over_soft_limit"  # nothing refused yet

    worst = _refused(client)
    first = gateway.clock.now()
    status = _status(gateway, budget["id"])
    left = Decimal(status["remaining_to_hard_usd"])
    assert Decimal(status["spent_usd"]) == cost * 3
    assert left == slack < worst  # not all of the cap is used: not blocked
    assert status["state"] == "refusing"
    assert _when(status["refusing_since"]) == first
    assert Decimal(status["refused_worst_case_usd"]) == worst
    assert "hard:100" in status["thresholds_fired"]  # the refusal reached the hard limit
    assert all(t.split(":")[0] in ("alert", "soft", "hard") for t in status["thresholds_fired"])
    events = gateway.get("/admin/events", type="budget.calls_refused")
    assert [e["data"]["budget_id"] for e in events] == [budget["id"]]
    assert Decimal(events[0]["data"]["worst_case_usd"]) == worst
    assert Decimal(events[0]["data"]["remaining_usd"]) == left
    audited = gateway.get("/admin/audit", action="budget.calls_refused")["entries"]
    assert [(e["actor_id"], e["target_id"]) for e in audited] == [("enforcer", budget["id"])]
    # the CLI's table and JSON say the same
    table = _cli(gateway, "budgets", "status", budget["id"])
    assert table["state"] == "refusing"
    assert table["refused_worst_case_usd"] == status["refused_worst_case_usd"]
    assert table["refusing_since"].startswith("2026-03-10")
    as_json = json.loads(_cli_out(gateway, "budgets", "status", budget["id"], "--json"))
    assert as_json["state"] == "refusing"
    assert as_json["refusing_since"] == status["refusing_since"]
    # every further refusal at this cap is the same fact: stored once
    gateway.clock.advance(60)
    _refused(client)
    assert _when(_status(gateway, budget["id"])["refusing_since"]) == first
    assert len(gateway.get("/admin/events", type="budget.calls_refused")) == 1

    # raising the amount makes room: no longer refusing ...
    gateway.admin.patch(path, json={"amount_usd": f"{cost * 4 + slack:f}"})
    status = _status(gateway, budget["id"])
    assert status["state"] not in ("refusing", "blocked")
    assert status["refusing_since"] is None and status["refused_worst_case_usd"] is None
    # ... until the raise is used up and the new cap refuses a call: refusing again
    _call(client)
    gateway.clock.advance(60)
    _refused(client)
    status = _status(gateway, budget["id"])
    assert status["state"] == "refusing"
    assert _when(status["refusing_since"]) == gateway.clock.now()
    assert len(gateway.get("/admin/events", type="budget.calls_refused")) == 2

    # an exception makes room too
    gateway.post(
        f"{path}/exceptions",
        {"amount_usd": str(cost * 2), "reason": "launch", "expires_at": "2026-03-30T00:00:00Z"},
    )
    status = _status(gateway, budget["id"])
    assert status["state"] not in ("refusing", "blocked")
    assert status["refusing_since"] is None

    # refused again at the cap with the exception, then a new period starts afresh
    _call(client)
    _call(client)
    _refused(client)
    assert _status(gateway, budget["id"])["state"] == "refusing"
    gateway.clock.set(datetime.fromisoformat("2026-04-01T00:00:01+00:00"))
    status = _status(gateway, budget["id"])
    assert status["period_key"] != before["period_key"]
    assert Decimal(status["spent_usd"]) == 0
    assert status["state"] == "ok"
    assert status["refusing_since"] is None


def test_blocked_stays_blocked_and_a_call_too_big_for_the_whole_cap_sets_nothing(
    gateway: RunningGateway,
) -> None:
    """Spent at the cap: ``blocked`` (worse than refusing), with the refusal's time. A call
    whose worst case alone is over the whole cap would not fit an empty period: it says
    nothing about the budget, which stays ``ok``."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    cost = _call(client)
    capped = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd=str(cost), hard_limit=True
    )
    try:
        client.chat.completions.create(model="demo-small", max_tokens=20, messages=MSG)
        raise AssertionError("the hard cap let the call through")
    except openai.RateLimitError as exc:
        assert "has reached its hard limit" in str(exc)
    status = _status(gateway, capped["id"])
    assert status["state"] == "blocked"
    assert _when(status["refusing_since"]) == gateway.clock.now()

    big, tiny = _capped_key(gateway, (cost / 100).quantize(NANO))
    _refused(big)
    status = _status(gateway, tiny["id"])
    assert status["state"] == "ok"
    assert status["refusing_since"] is None


def test_every_cap_that_refuses_a_call_says_refusing(gateway: RunningGateway) -> None:
    """A call refused by two hard caps at once (its key's and its org's, each with less
    left than its worst case) makes both ``refusing``, each with its own
    ``budget.calls_refused`` and ``budget.hard_limit_reached`` (only the first one the
    call was checked against was marked); a hard-capped budget with room is not."""
    client, key, tight = _two_tight_caps(gateway)
    roomy = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="100", hard_limit=True, period="daily"
    )
    _call(client)
    _call(client)

    worst = _refused(client)

    for budget in tight:
        status = _status(gateway, budget["id"])
        assert status["state"] == "refusing", budget
        assert _when(status["refusing_since"]) == gateway.clock.now()
        assert Decimal(status["refused_worst_case_usd"]) == worst
    assert _status(gateway, roomy["id"])["state"] == "ok"
    for type_ in ("budget.calls_refused", "budget.hard_limit_reached"):
        events = gateway.get("/admin/events", type=type_)
        assert sorted(e["data"]["budget_id"] for e in events) == sorted(b["id"] for b in tight)


def test_each_refusing_caps_pagerduty_incident_resolves_when_its_period_resets(
    gateway: RunningGateway,
) -> None:
    """A PagerDuty endpoint gets a ``trigger`` for each budget a call was refused by (one
    incident per budget, period and cap: the event's dedup key). Raising the amount does
    not resolve it (a raise that runs out can make the same refusal hold again, and no
    new event would re-open it); the period's reset does, for each, once."""
    receiver = Receiver(now=gateway.clock.now)
    handle = serve_in_thread(receiver)
    try:
        endpoint = gateway.create_pagerduty(f"{handle.url}/pd", "budget.calls_refused")
        client, _, tight = _two_tight_caps(gateway)
        _call(client)
        _call(client)
        _refused(client)
        gateway.run(gateway.app.services.drain())
        events = gateway.get("/admin/events", type="budget.calls_refused")
        assert sorted(e["data"]["budget_id"] for e in events) == sorted(b["id"] for b in tight)

        def sent() -> list[tuple[str, str]]:
            deliveries = gateway.get(f"/admin/webhooks/{endpoint['id']}/deliveries")
            return sorted((d["event_id"], d["action"]) for d in deliveries)

        triggers = sorted((e["id"], "trigger") for e in events)
        assert sent() == triggers
        gateway.admin.patch(f"/admin/budgets/{tight[0]['id']}", json={"amount_usd": "100"})
        engine = gateway.app.services.engine
        gateway.run(resolve_reset_periods(engine, gateway.clock.now()))
        assert sent() == triggers  # still March: open

        gateway.clock.set(datetime.fromisoformat("2026-04-01T00:00:01+00:00"))
        gateway.run(resolve_reset_periods(engine, gateway.clock.now()))
        gateway.run(resolve_reset_periods(engine, gateway.clock.now()))
        assert sent() == sorted(triggers + [(e["id"], "resolve") for e in events])
    finally:
        handle.stop()


def test_a_hard_limit_below_the_amount_names_its_cap_in_the_events(
    gateway: RunningGateway,
) -> None:
    """A budget of four and a half calls with its hard limit at 80 % (3.6 calls) refuses
    the fourth: the events of that refusal carry the cap (``hard_limit_usd``) and read
    "spent … of <amount> (hard limit <cap>)", as Slack and PagerDuty show them (a bare
    "spent $3 of $4.5" would not say why calls are refused)."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    cost = _call(client)
    amount = (cost * Decimal("4.5")).quantize(NANO)
    cap = (amount * 4 / 5).quantize(NANO, rounding=ROUND_FLOOR)
    budget = gateway.create_budget(
        scope_type="key",
        scope_id=key["id"],
        amount_usd=f"{amount:f}",
        hard_limit=True,
        hard_limit_percent="80",
        alert_percentages=["50"],
        soft_limit_percent="75",
    )
    _call(client)
    _call(client)
    _refused(client)
    assert _status(gateway, budget["id"])["state"] == "refusing"

    for type_ in ("budget.hard_limit_reached", "budget.calls_refused"):
        [event] = gateway.get("/admin/events", type=type_)
        d = event["data"]
        assert Decimal(d["hard_limit_usd"]) == cap and Decimal(d["amount_usd"]) == amount
        said = formats.summary(Event.from_envelope(event))
        assert f"of ${d['amount_usd']} (hard limit ${d['hard_limit_usd']})" in said, said


def test_room_held_only_by_a_call_in_flight_is_not_refusing(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A stream in flight holds its worst case; a call refused only because of that hold
    (what is spent leaves room for it: the 429 says retry) sets nothing, since the room
    comes back when the stream settles, and then the same call is served. Were it
    ``refusing``, it would say so for the rest of the period."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    budget = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="1", hard_limit=True
    )

    with _stream_in_flight(client, fake, **BIG):
        held = Decimal(_status(gateway, budget["id"])["reserved_usd"])
        assert held > 0
        # the cap: the stream's hold and a millionth of a dollar
        gateway.admin.patch(
            f"/admin/budgets/{budget['id']}", json={"amount_usd": f"{held + MICRO:f}"}
        )
        small = client.chat.completions.with_raw_response.create
        try:
            small(model="gpt-4o-mini", max_tokens=20, messages=MSG)
            raise AssertionError("the stream's hold left room for the call")
        except openai.RateLimitError as exc:
            assert "in flight" in str(exc)
            assert exc.response.headers.get("x-should-retry") != "false"
        status = _status(gateway, budget["id"])
        assert status["state"] == "ok" and status["refusing_since"] is None
    status = _status(gateway, budget["id"])
    assert Decimal(status["reserved_usd"]) == 0 and status["refusing_since"] is None
    small(model="gpt-4o-mini", max_tokens=20, messages=MSG)  # the room is back: served


def test_the_429_names_a_cap_only_a_reset_opens_over_one_held_by_calls_in_flight(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A call refused by two caps at once: its key's, full only of a stream in flight
    (room comes back when it settles: retry), and its org's, full of what is spent (only
    the reset opens it: three calls spent, a quarter of one left). The 429 names the
    org's and says not to retry; it named the first cap checked (the key's) and told the
    client to retry a call that cannot pass."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    cost = _call(client)
    _call(client)
    _call(client)
    held_by_stream = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="1", hard_limit=True
    )

    with _stream_in_flight(client, fake, **BIG):
        status = _status(gateway, held_by_stream["id"])
        room = Decimal(status["reserved_usd"]) + Decimal(status["spent_usd"]) + MICRO
        gateway.admin.patch(
            f"/admin/budgets/{held_by_stream['id']}", json={"amount_usd": f"{room:f}"}
        )
        spent_up = gateway.create_budget(
            scope_type="org",
            scope_id=key["org_id"],
            amount_usd=f"{cost * 3 + (cost / 4).quantize(NANO):f}",
            hard_limit=True,
        )
        try:
            client.chat.completions.create(model="demo-small", max_tokens=20, messages=MSG)
            raise AssertionError("both caps let the call through")
        except openai.RateLimitError as exc:
            body: Any = exc.body
            assert body["code"] == "budget_exceeded", body
            assert spent_up["id"] in body["message"], body["message"]
            assert exc.response.headers.get("x-should-retry") == "false"
        assert _status(gateway, spent_up["id"])["state"] == "refusing"
    assert _status(gateway, held_by_stream["id"])["refusing_since"] is None
    # the stream was in flight when the org's budget was made: it counts there too once
    # it settles (``Enforcer.late``), and its cost used the rest of the cap up
    assert _status(gateway, spent_up["id"])["state"] == "blocked"


def test_a_wallet_short_beside_a_refusing_budget_says_depleted(gateway: RunningGateway) -> None:
    """A call refused by its key's hard cap and by its org's wallet at once: the wallet's
    ``wallet.depleted`` fires as well as the budget's events (only the first refusal the
    call was checked against fired its event, so an empty wallet could go unannounced)."""
    client, _, _, budget = _nearly_used_up(gateway)
    org_id = gateway.get(f"/admin/budgets/{budget['id']}")["org_id"]
    wallet = gateway.post(
        "/admin/wallets",
        {"scope_type": "org", "scope_id": org_id, "initial_topup_usd": f"{MICRO:f}"},
    )

    _refused(client)

    assert _status(gateway, budget["id"])["state"] == "refusing"
    [event] = gateway.get("/admin/events", type="wallet.depleted")
    assert event["data"]["wallet_id"] == wallet["id"]


def test_a_wallet_held_only_by_a_call_in_flight_is_not_depleted(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A wallet with room for one call's worst case and a half: a stream in flight holds
    one, so an identical call is refused (402) although the balance covers it. That is
    no ``wallet.depleted``: the event is once per top-up, and fired with the money still
    there it would be missing when the wallet really runs dry (as a budget, whose
    refusal by calls in flight sets nothing)."""
    key = gateway.create_key()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    wallet = gateway.post(
        "/admin/wallets",
        {"scope_type": "org", "scope_id": key["org_id"], "initial_topup_usd": f"{MICRO:f}"},
    )
    try:  # the call's worst case, from the 402 of a wallet holding a millionth of a dollar
        client.chat.completions.create(**BIG)
        raise AssertionError("a millionth of a dollar funded the call")
    except openai.APIStatusError as exc:
        assert exc.status_code == 402, exc
        found = re.search(r"call may cost up to \$([0-9.]+)", str(exc))
        assert found is not None, str(exc)
        worst = Decimal(found.group(1))
    topup = (worst * Decimal("1.5")).quantize(NANO)
    gateway.post(f"/admin/wallets/{wallet['id']}/topups", {"amount_usd": f"{topup:f}"})
    # the first 402 (a millionth of a dollar: depleted) may still be on its way to the
    # events table; counted before it lands, it would look like the second's
    gateway.run(gateway.app.services.drain())
    before = len(gateway.get("/admin/events", type="wallet.depleted"))

    with _stream_in_flight(client, fake, **BIG):
        try:
            client.chat.completions.create(**BIG)
            raise AssertionError("the stream's hold left room for the call")
        except openai.APIStatusError as exc:
            assert exc.status_code == 402, exc
        gateway.run(gateway.app.services.drain())
        assert len(gateway.get("/admin/events", type="wallet.depleted")) == before
    client.chat.completions.create(**BIG)  # the stream settled below its hold: served


def test_a_cap_lowered_below_one_that_refused_a_call_is_refusing(gateway: RunningGateway) -> None:
    """An exception raised the cap, the raised cap refused a call, and the exception ran
    out by itself: the cap is back down, what is spent has not fallen, so a call that big
    is refused at the lower cap too and the budget is ``refusing`` since that refusal (it
    read "over soft limit" until the lower cap refused a call of its own). A call too big
    for the whole lowered cap would not fit an empty period: it sets nothing there."""
    client, cost, slack, budget = _nearly_used_up(gateway)
    path = f"/admin/budgets/{budget['id']}"
    # nothing refused at the budget's own cap: an exception first, which leaves too little
    gateway.post(
        f"{path}/exceptions",
        {"amount_usd": f"{slack:f}", "reason": "launch", "expires_at": "2026-03-10T16:30:00Z"},
    )
    worst = _refused(client)
    refused_at = gateway.clock.now()
    assert _status(gateway, budget["id"])["state"] == "refusing"

    gateway.clock.set(datetime.fromisoformat("2026-03-10T16:30:01+00:00"))  # it ran out
    status = _status(gateway, budget["id"])
    assert status["active_exceptions"] == 0
    assert Decimal(status["remaining_to_hard_usd"]) == slack < worst
    assert status["state"] == "refusing"
    assert _when(status["refusing_since"]) == refused_at
    assert Decimal(status["refused_worst_case_usd"]) == worst
    _refused(client)  # as the status says

    # lowered by hand below what the refused call needs, though not below what is spent:
    # that call would not fit an empty period at the lowered cap, so it says nothing there
    big, tight = _capped_key(gateway, cost + slack)
    _call(big)
    worst = _refused(big)
    assert _status(gateway, tight["id"])["state"] == "refusing"
    lowered = ((cost * 2 + worst) / 3).quantize(NANO)
    assert cost < lowered < worst
    gateway.admin.patch(f"/admin/budgets/{tight['id']}", json={"amount_usd": f"{lowered:f}"})
    status = _status(gateway, tight["id"])
    assert status["state"] == "over_soft_limit"
    assert status["refusing_since"] is None


def test_a_categories_edit_that_leaves_room_ends_refusing(gateway: RunningGateway) -> None:
    """A cap refusing demo-small calls (its three calls leave less than a call's worst
    case) is narrowed to demo-large: none of its spend counts any more, and the same
    call would pass, so it is no longer ``refusing`` (it stayed so for the rest of the
    period). Narrowed to demo-small instead, the spend is the same: refusing again, and a
    refusal under that rule is a fact of its own. Widened back: refusing, as before."""
    client, cost, slack, budget = _nearly_used_up(gateway)
    path = f"/admin/budgets/{budget['id']}"
    worst = _refused(client)
    first = _status(gateway, budget["id"])
    assert first["state"] == "refusing"

    assert gateway.admin.patch(path, json={"categories": {"models": ["demo-large"]}}).is_success
    narrowed = _status(gateway, budget["id"])
    assert Decimal(narrowed["spent_usd"]) == 0
    assert Decimal(narrowed["remaining_to_hard_usd"]) > worst
    assert narrowed["state"] == "ok"
    assert narrowed["refusing_since"] is None and narrowed["refused_worst_case_usd"] is None

    assert gateway.admin.patch(path, json={"categories": {"models": ["demo-small"]}}).is_success
    same_spend = _status(gateway, budget["id"])
    assert Decimal(same_spend["spent_usd"]) == cost * 3
    assert same_spend["state"] == "refusing"
    assert same_spend["refusing_since"] == first["refusing_since"]
    gateway.clock.advance(60)
    assert _refused(client) == worst
    assert _status(gateway, budget["id"])["state"] == "refusing"
    assert len(gateway.get("/admin/events", type="budget.calls_refused")) == 2

    assert gateway.admin.patch(path, json={"categories": {}}).is_success
    widened = _status(gateway, budget["id"])
    assert widened["state"] == "refusing"
    assert widened["refusing_since"] == first["refusing_since"]
    assert Decimal(widened["remaining_to_hard_usd"]) == slack
