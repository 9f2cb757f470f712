"""Wallet levels the sweeper recovers: a ``wallet.low_balance`` whose settle's spool
record never reached the disk fires once, marked ``recovered``; a low mark raised above
the balance fires once per top-up, as the settles' own keys re-arm — on SQLite+memory
and PostgreSQL+Redis, through the admin API, the openai SDK and signed webhooks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from spendgate.core.money import usd_to_nanos
from spendgate.guard.enforcement import wallet_level_events
from spendgate.guard.sweeper import ThresholdSweeper
from spendgate.store.events import PendingEvent, fired_many
from spendgate.store.ledger import LedgerEntry
from spendgate.store.policies import Wallet
from spendgate.testing.fake_upstream import ServerHandle
from spendgate.testing.webhook_receiver import Receiver
from spendgate.webhooks import formats
from spendgate.webhooks.catalog import Event
from tests.admin.test_budgets import events, one_call_cost
from tests.conftest import RunningGateway


def sweeper_of(gateway: RunningGateway) -> ThresholdSweeper:
    sweeper = gateway.app.services.sweeper
    assert sweeper is not None
    return sweeper


def wallet_keys(gateway: RunningGateway, wallet_id: str) -> list[str]:
    """The dedup keys of the wallet's events stored so far."""
    prefix = f"wallet:{wallet_id}:"
    found = gateway.run(fired_many(gateway.app.services.engine, [prefix]))
    return sorted(f.key for f in found[prefix])


def listen(gateway: RunningGateway, receiver: tuple[Receiver, ServerHandle]) -> Receiver:
    """A webhook endpoint for ``wallet.*`` on ``receiver``, its secret known to it."""
    app, handle = receiver
    made = gateway.post(
        "/admin/webhooks", {"url": handle.url + "/hook", "event_types": ["wallet.*"]}
    )
    app.secrets.append(made["secret"])
    return app


def funded_key(
    gateway: RunningGateway, low_calls: int
) -> tuple[dict[str, Any], Decimal, dict[str, Any]]:
    """A key, what one of its calls costs, and its wallet: ten such calls' worth, its low
    mark ``low_calls`` calls' worth."""
    key = gateway.create_key()
    cost = one_call_cost(gateway, key["key"])
    gateway.clock.advance(1)  # the wallet pays for calls from its creation on
    funds = {"initial_topup_usd": str(cost * 10), "low_balance_usd": str(cost * low_calls)}
    wallet = gateway.post("/admin/wallets", {"scope_type": "key", "scope_id": key["id"], **funds})
    return key, cost, wallet


def delivered(gateway: RunningGateway, app: Receiver) -> list[dict[str, Any]]:
    """The bodies of every delivery the receiver verified (every one must verify)."""
    gateway.run(gateway.app.services.drain())
    for _ in range(3):
        gateway.run(gateway.app.services.webhooks.worker.run_once())
    assert all(r.verified for r in app.received), [r.error for r in app.received]
    return [r.json() for r in app.received]


def test_a_low_balance_whose_record_never_reached_the_disk_fires_once(
    gateway: RunningGateway,
    receiver: tuple[Receiver, ServerHandle],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The call that takes the balance through the low mark settles (the wallet is
    debited) and its spool record, which carries the event, never reaches the disk: what
    a ``kill -9`` between the two leaves. No later settle crosses the mark (they start
    below it), so before the sweeper nobody ever warned. Once the ledger's spend is
    through the mark and older than the grace period, the sweep fires it with the
    settle's dedup key, marked ``recovered``, delivered signed; later sweeps add nothing."""
    app = listen(gateway, receiver)
    key, cost, wallet = funded_key(gateway, low_calls=9)
    ledger = gateway.app.services.ledger
    lost: list[Sequence[PendingEvent]] = []

    async def never_written(entry: LedgerEntry, pending: Sequence[PendingEvent] = ()) -> bool:
        lost.append(pending)
        return True

    monkeypatch.setattr(ledger, "commit", never_written)
    one_call_cost(gateway, key["key"])  # balance 10 -> 9 calls' worth: through the mark
    monkeypatch.undo()
    assert [e.type for e in lost[0]] == ["wallet.low_balance"]  # lost with its record
    one_call_cost(gateway, key["key"])  # 9 -> 8: starts below the mark, crosses nothing
    state = gateway.get(f"/admin/wallets/{wallet['id']}")
    assert Decimal(state["balance_usd"]) == cost * 8 < Decimal(state["low_balance_usd"])
    assert events(gateway, "wallet.low_balance") == []

    sweeper = sweeper_of(gateway)
    assert gateway.run(sweeper.sweep()) == 0  # the ledger's call may still be in a spool
    gateway.clock.advance(11)
    assert gateway.run(sweeper.sweep()) == 1
    [low] = events(gateway, "wallet.low_balance")
    assert low["data"]["recovered"] is True
    assert low["data"]["wallet_id"] == wallet["id"]
    # the ledger has the second call only: its balance is what the event reports
    assert Decimal(low["data"]["balance_usd"]) == cost * 9
    topped = usd_to_nanos(cost * 10)
    assert wallet_keys(gateway, wallet["id"]) == [f"wallet:{wallet['id']}:low:{topped}"]
    assert gateway.run(sweeper.sweep()) == 0
    gateway.clock.advance(60)
    assert gateway.run(sweeper.sweep()) == 0

    [body] = delivered(gateway, app)
    assert (body["type"], body["id"]) == ("wallet.low_balance", low["id"])
    assert body["data"]["recovered"] is True


def test_a_raised_low_mark_warns_once_per_top_up_as_the_settles_do(
    gateway: RunningGateway, receiver: tuple[Receiver, ServerHandle]
) -> None:
    """A low mark raised (``PATCH``) above a balance that was above it after the last
    top-up fires ``wallet.low_balance`` at once, marked ``already_past``; raised again, no
    second one (the key's top-up total has not changed). A top-up that leaves the balance
    below the mark warns nobody, sweep or settle (the balance went through no mark since
    it); a top-up above it re-arms, and the next raise warns again. A low level fired by
    a settle is never fired again by a sweep."""
    app = listen(gateway, receiver)
    key, cost, wallet = funded_key(gateway, low_calls=2)
    path = f"/admin/wallets/{wallet['id']}"
    for _ in range(2):
        one_call_cost(gateway, key["key"])  # balance 8 calls' worth
    gateway.clock.advance(11)
    assert gateway.run(sweeper_of(gateway).sweep()) == 0  # above the mark: nothing
    assert gateway.admin.patch(path, json={"low_balance_usd": str(cost * 9)}).status_code == 200
    [first] = events(gateway, "wallet.low_balance")
    assert first["data"]["already_past"] is True
    assert Decimal(first["data"]["balance_usd"]) == cost * 8
    again = {"low_balance_usd": str(cost * Decimal("9.5"))}
    assert gateway.admin.patch(path, json=again).status_code == 200
    assert len(events(gateway, "wallet.low_balance")) == 1

    gateway.post(f"{path}/topups", {"amount_usd": str(cost)})  # 9 of 11: still below 9.5
    one_call_cost(gateway, key["key"])  # 9 -> 8, from below the mark
    gateway.clock.advance(11)
    assert gateway.run(sweeper_of(gateway).sweep()) == 0
    assert len(events(gateway, "wallet.low_balance")) == 1

    gateway.post(f"{path}/topups", {"amount_usd": str(cost * 10)})  # 18 of 21 topped up
    one_call_cost(gateway, key["key"])  # 18 -> 17
    half = Decimal("0.5")
    raised = {"low_balance_usd": str(cost * (17 + half))}
    assert gateway.admin.patch(path, json=raised).status_code == 200
    second = [e for e in events(gateway, "wallet.low_balance") if e["id"] != first["id"]]
    assert [e["data"]["already_past"] for e in second] == [True]

    # a settle's own crossing: the sweep leaves it alone
    gateway.post(f"{path}/topups", {"amount_usd": str(cost)})  # 18 of 22
    one_call_cost(gateway, key["key"])  # 18 -> 17: through 17.5
    gateway.clock.advance(11)
    assert gateway.run(sweeper_of(gateway).sweep()) == 0
    settled = [
        e
        for e in events(gateway, "wallet.low_balance")
        if "recovered" not in e["data"] and "already_past" not in e["data"]
    ]
    assert [Decimal(e["data"]["balance_usd"]) for e in settled] == [cost * 17]
    assert wallet_keys(gateway, wallet["id"]) == sorted(
        f"wallet:{wallet['id']}:low:{usd_to_nanos(cost * n)}" for n in (10, 21, 22)
    )
    assert len(delivered(gateway, app)) == 3


OPENED = datetime(2026, 3, 1, tzinfo=UTC)
WALLET = Wallet("wallet_w", "org_o", "team", "team_t", 20, OPENED)
GRANT = Wallet("tkt_t", "org_o", "key", "key_k", 20, OPENED, grant_of="wallet_w")


@pytest.mark.parametrize(
    ("wallet", "was", "left", "fired"),
    [
        (WALLET, 100, 21, []),
        (WALLET, 100, 20, ["wallet:wallet_w:low:100"]),
        (WALLET, 21, -5, ["wallet:wallet_w:low:100", "wallet:wallet_w:depleted:100"]),
        (WALLET, 20, 0, ["wallet:wallet_w:depleted:100"]),  # started at the mark
        (WALLET, 10, 5, []),  # a top-up that left it below the mark
        (WALLET, 0, -3, []),
        (GRANT, 100, 0, []),  # a ticket's grant is meant to be used up
    ],
)
def test_wallet_levels_are_gone_through_not_reached(
    wallet: Wallet, was: int, left: int, fired: list[str]
) -> None:
    """The settle's rule and the sweeper's: a level fires when the balance goes from
    above it to at or below it, keyed by the top-ups' total (100 here)."""
    assert [key for _, key, _ in wallet_level_events(wallet, was, left, 100)] == fired


def test_a_wallet_level_reads_by_the_wallet_name() -> None:
    """A console user found the bell's "Wallet depleted: wallet wallet_3a1a…, scope team
    team_a52…": the wallet's event now carries its name, and the notification, the Slack
    field and the PagerDuty summary read it first, the id after it (as a budget's do)."""
    named = Wallet("wallet_w", "org_o", "team", "team_t", 20, OPENED, name="team research")
    [(type_, _, data)] = wallet_level_events(named, 20, 0, 100)
    event = Event("evt_1", type_, OPENED, data)
    assert "wallet team research (wallet_w)" in formats.summary(event)
    assert ("Wallet", "team research (wallet_w)") in formats.facts(event)
