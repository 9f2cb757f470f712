"""``PolicyStore.wallet_history`` (the wallet page's daily debits, a few grouped reads)
against ``PolicyStore.wallet_spend`` (the balance's figure, read span by span)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.wallet_paid import GrantSpend, grant_paid, wallet_paid
from spendgate.store import schema
from spendgate.store.database import create_engine, migrate
from spendgate.store.ledger import LedgerEntry, Pending, store_batch
from spendgate.store.policies import PolicyStore, Wallet

DAY0 = datetime(2026, 5, 4, tzinfo=UTC)
DAY = timedelta(days=1)
OPENED = DAY0 + timedelta(hours=10, minutes=7, seconds=30)  # inside a quarter hour
CLOSED = DAY0 + 2 * DAY + timedelta(hours=10, minutes=5)
APPROVED = DAY0 + timedelta(hours=12, minutes=3)
EXPIRES = DAY0 + DAY + timedelta(hours=12, minutes=9)
SCOPES = {"org": "org_1", "team": "team_a", "key": "key_1"}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


def _call(n: int, at: datetime, cost: int | None, key: str = "key_1") -> Pending:
    team = "team_a" if key == "key_1" else "team_b"
    return Pending(
        LedgerEntry(
            f"req_{n:04d}", "org_1", team, None, None, key, [], "openai", "m", "m", "chat",
            False, "ok", 200, 10, 5, 0, 0, 0, cost, cost is None, False, 3, at, at,
        )
    )  # fmt: skip


#: (when, nano-dollars, key): key_1 is team_a's, key_2 team_b's (the org's either way)
CALLS = [
    (DAY0 + timedelta(hours=9), 100, "key_1"),  # before the wallet opened
    (OPENED - timedelta(seconds=20), 1, "key_1"),  # the same quarter hour, before
    (OPENED - timedelta(seconds=10), 2, "key_2"),
    (OPENED, 4, "key_1"),  # the opening instant: the wallet's
    (OPENED + timedelta(minutes=3), 8, "key_2"),
    (DAY0 + timedelta(hours=11), 50, "key_1"),
    (DAY0 + timedelta(hours=11), None, "key_1"),  # no price
    (APPROVED + timedelta(seconds=1), 200, "key_1"),  # the grant's
    (APPROVED + timedelta(minutes=1), 16, "key_2"),
    (DAY0 + DAY + timedelta(hours=8), 250, "key_1"),  # the grant's last 100, 150 not
    (EXPIRES - timedelta(seconds=1), 32, "key_1"),  # the grant is used up
    (EXPIRES + timedelta(seconds=1), 70, "key_1"),  # the grant has expired
    (DAY0 + 2 * DAY + timedelta(hours=9), 5, "key_1"),
    (CLOSED - timedelta(seconds=1), 64, "key_2"),  # the quarter hour it closed in
    (CLOSED, 1000, "key_1"),  # the closing instant: not the wallet's
    (CLOSED + timedelta(minutes=2), 128, "key_2"),
    (DAY0 + 2 * DAY + timedelta(hours=11), 1000, "key_1"),  # after the wallet closed
]


@pytest.mark.parametrize("scope", list(SCOPES))
@pytest.mark.parametrize("closed", [True, False], ids=["closed", "open"])
@pytest.mark.parametrize("zone", ["UTC", "Asia/Kathmandu"])
async def test_history_is_the_balances_figure_day_by_day(
    engine: AsyncEngine, scope: str, closed: bool, zone: str
) -> None:
    """An org, team or key wallet opened and closed inside a quarter hour, with a ticket
    grant on key_1 used up on the second day: each day's debit in ``wallet_history`` is
    ``wallet_spend`` over that day, and the days add up to the wallet's whole spend. An
    org's whole days come from the daily rollup when its reporting zone is UTC, from the
    quarter-hour rollup when it is not, the cut quarter hours from the ledger."""
    store = PolicyStore(engine)
    async with engine.begin() as conn:
        await conn.execute(
            schema.orgs.insert().values(
                id="org_1", name="acme", created_at=DAY0, reporting_timezone=zone
            )
        )
        row = await store.create_wallet(
            conn,
            {"org_id": "org_1", "name": "w", "scope_type": scope, "scope_id": SCOPES[scope],
             "low_balance_nanos": 0, "created_at": OPENED},
        )  # fmt: skip
        await conn.execute(
            schema.wallet_tickets.insert().values(
                id="tkt_1", org_id="org_1", wallet_id=row["id"], key_id="key_1",
                status="approved", asked_nanos=300, refusals=1, created_at=APPROVED,
                last_refused_at=APPROVED, decided_at=APPROVED, granted_nanos=300,
                expires_at=EXPIRES,
            )
        )  # fmt: skip
        await store_batch(conn, [_call(n, at, c, k) for n, (at, c, k) in enumerate(CALLS)])
    wallet = Wallet(row["id"], "org_1", scope, SCOPES[scope], 0, OPENED)
    closed_at = CLOSED if closed else None
    days = [DAY0 - DAY + i * DAY for i in range(5)]  # a day before it opened to one after
    history = await store.wallet_history(wallet, closed_at, days)
    each = []
    for start in days[:-1]:
        end = start + DAY if closed_at is None else min(start + DAY, closed_at)
        each.append((await store.wallet_spend(wallet, end, start))[0] if start < end else 0)
    whole, _ = await store.wallet_spend(wallet, closed_at)
    assert history == each
    assert sum(history) == whole
    org = scope == "org"  # key_1 is the whole of team_a
    expected = [
        0,
        4 + 50 + (8 + 16 if org else 0),
        150 + 70 + 32,
        5 + (64 if org else 0) + (0 if closed else 1000 + (128 if org else 0) + 1000),
    ]
    assert history == expected


def test_a_grant_pays_its_keys_first_calls_span_by_span() -> None:
    """``core.wallet_paid``: a grant of 300 with 250 used before the spans pays 50 of the
    first span's 80 and nothing after; the wallet pays the rest of its scope's spend."""
    grant = GrantSpend(300, 250, [80, 40])
    assert grant_paid(grant) == [50, 0]
    assert wallet_paid([100, 90], [grant]) == [50, 90]
    assert wallet_paid([7], []) == [7]
    assert grant_paid(GrantSpend(300, 400, [10])) == [0]
