"""Budgets, exceptions, wallets and top-ups: stored policy, and spend seeds from the ledger."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.budget_rules import Budget, Categories, Raise, Subject
from spendgate.core.money import format_usd
from spendgate.core.rate_rules import RateLimit
from spendgate.core.wallet_paid import GrantSpend, grant_paid, wallet_paid
from spendgate.counters import Generation
from spendgate.errors import Conflict, NotFound, ValidationFailed
from spendgate.security.credentials import new_id
from spendgate.store import schema
from spendgate.store.database import delete_one, insert_new, transaction
from spendgate.store.ledger import cost_from_sums, exact_cost_sum
from spendgate.store.wallet_history import wallet_history

#: what a wallet's top-ups may add up to, $1,000,000,000: its balance, reservations and
#: spend then stay far inside the 64-bit integers Redis and the database count nanos in
MAX_WALLET_TOPUPS_NANOS = 10**18


def budget_from_row(row: dict[str, Any]) -> Budget:
    cats = row["categories"] or {}
    return Budget(
        id=row["id"],
        org_id=row["org_id"],
        scope_type=row["scope_type"],
        scope_id=row["scope_id"],
        tag=row["tag"],
        period=row["period"],
        timezone=row["timezone"],
        week_start=row["week_start"],
        amount_nanos=int(row["amount_nanos"]),
        alert_percentages=tuple(Decimal(p) for p in row["alert_percentages"]),
        soft_limit_percent=Decimal(row["soft_limit_percent"]),
        hard_limit=bool(row["hard_limit"]),
        hard_limit_percent=Decimal(row["hard_limit_percent"]),
        categories=Categories(
            **{k: tuple(cats.get(k) or ()) for k in ("providers", "models", "kinds", "tags")}
        ),
        name=row.get("name") or "",
    )


def rate_limit_from_row(row: dict[str, Any]) -> RateLimit:
    spend = row["max_spend_nanos"]
    return RateLimit(
        id=row["id"],
        scope_type=row["scope_type"],
        scope_id=row["scope_id"],
        model=row["model"],
        rpm=row["rpm"],
        tpm=None if row["tpm"] is None else int(row["tpm"]),
        max_concurrent=row["max_concurrent"],
        max_spend_nanos=None if spend is None else int(spend),
        spend_window_seconds=int(row["spend_window_seconds"]),
    )


def raise_from_row(row: dict[str, Any]) -> Raise:
    return Raise(
        amount_nanos=int(row["amount_nanos"]),
        percent=Decimal(row["percent"]),
        starts_at=row["starts_at"],
        expires_at=row["expires_at"],
    )


@dataclass(frozen=True, slots=True)
class Wallet:
    id: str
    org_id: str
    scope_type: str
    scope_id: str
    low_balance_nanos: int
    created_at: datetime
    #: a cost ticket's grant stands in for the wallet ``grant_of`` for its requester key
    #: (``spendgate.store.tickets``): its id is the ticket's, its scope that key, its
    #: funds ``grant_nanos`` from ``created_at`` (the approval) until ``expires_at``
    grant_of: str | None = None
    grant_nanos: int = 0
    expires_at: datetime | None = None
    #: what people call it (the wallet row's ``name``; a grant's is ``""``): pages label
    #: the wallet with it, read from the snapshot (no query on the proxy's path)
    name: str = ""

    def covers(self, subject: Subject) -> bool:
        """Whether the wallet pays for ``subject``'s calls (asked on every call)."""
        scope = self.scope_type
        if scope == "org":
            return subject.org_id == self.scope_id
        if scope == "team":
            return subject.team_id == self.scope_id
        if scope == "key":
            return subject.key_id == self.scope_id
        return False


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """Every budget, active exception and wallet, as loaded at one moment."""

    budgets: tuple[Budget, ...] = ()
    raises: dict[str, tuple[Raise, ...]] = field(default_factory=dict)
    wallets: tuple[Wallet, ...] = ()
    #: the same budgets and wallets by org, so a call looks only at its own org's
    by_org: dict[str, tuple[tuple[Budget, ...], tuple[Wallet, ...]]] = field(default_factory=dict)
    #: rate-limit rows by the key or team id they govern
    rate_limits: dict[str, tuple[RateLimit, ...]] = field(default_factory=dict)
    #: the counters' generation read just before loading (None: not loaded yet)
    generation: Generation | None = None
    #: approved cost-ticket grants by (wallet id, requester key id)
    grants: dict[tuple[str, str], Wallet] = field(default_factory=dict)

    def funding(self, wallet: Wallet, key_id: str, now: datetime) -> Wallet:
        """What funds a call of ``key_id`` that ``wallet`` covers: the key's approved
        ticket grant on that wallet while it lasts, else the wallet itself."""
        if not self.grants:
            return wallet
        grant = self.grants.get((wallet.id, key_id))
        if grant is None or grant.expires_at is None or grant.expires_at <= now:
            return wallet
        return grant

    @classmethod
    def build(
        cls,
        budgets: tuple[Budget, ...],
        raises: dict[str, tuple[Raise, ...]],
        wallets: tuple[Wallet, ...],
        limits: tuple[RateLimit, ...] = (),
        grants: tuple[Wallet, ...] = (),
    ) -> PolicySnapshot:
        orgs = {b.org_id for b in budgets} | {w.org_id for w in wallets}
        by_org = {
            org: (
                tuple(b for b in budgets if b.org_id == org),
                tuple(w for w in wallets if w.org_id == org),
            )
            for org in orgs
        }
        by_scope: dict[str, list[RateLimit]] = {}
        for limit in limits:
            by_scope.setdefault(limit.scope_id, []).append(limit)
        return cls(
            budgets,
            raises,
            wallets,
            by_org,
            {k: tuple(v) for k, v in by_scope.items()},
            grants={(g.grant_of or "", g.scope_id): g for g in grants},
        )


def grant_from_row(row: dict[str, Any]) -> Wallet:
    """An approved ticket as the wallet that funds its requester key's calls."""
    return Wallet(
        row["id"],
        row["org_id"],
        "key",
        row["key_id"],
        0,
        row["decided_at"],
        grant_of=row["wallet_id"],
        grant_nanos=int(row["granted_nanos"] or 0),
        expires_at=row["expires_at"],
    )


def _rows(result: Iterable[Any]) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in result]


class PolicyStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def snapshot(self, now: datetime) -> PolicySnapshot:
        async with self._engine.connect() as conn:
            budgets = _rows(await conn.execute(sa.select(schema.budgets)))
            raises = _rows(
                await conn.execute(
                    sa.select(schema.budget_exceptions).where(
                        schema.budget_exceptions.c.expires_at > now
                    )
                )
            )
            w = schema.wallets
            wallets = _rows(await conn.execute(sa.select(w).where(w.c.closed_at.is_(None))))
            limits = _rows(await conn.execute(sa.select(schema.rate_limits)))
            t = schema.wallet_tickets
            grants = _rows(
                await conn.execute(
                    sa.select(t).where(t.c.status == "approved", t.c.expires_at > now)
                )
            )
        by_budget: dict[str, list[Raise]] = {}
        for r in raises:
            by_budget.setdefault(r["budget_id"], []).append(raise_from_row(r))
        return PolicySnapshot.build(
            budgets=tuple(budget_from_row(b) for b in budgets),
            raises={k: tuple(v) for k, v in by_budget.items()},
            wallets=tuple(
                Wallet(
                    w["id"],
                    w["org_id"],
                    w["scope_type"],
                    w["scope_id"],
                    int(w["low_balance_nanos"]),
                    w["created_at"],
                    name=w["name"],
                )
                for w in wallets
            ),
            limits=tuple(rate_limit_from_row(r) for r in limits),
            grants=tuple(grant_from_row(g) for g in grants),
        )

    # -- budgets ---------------------------------------------------------------------
    async def create_budget(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        values = {"id": new_id("budget"), **values}
        await conn.execute(schema.budgets.insert().values(**values))
        return values

    async def get_budget(
        self, budget_id: str, conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        query = sa.select(schema.budgets).where(schema.budgets.c.id == budget_id)
        if conn is None:
            async with self._engine.connect() as own:
                row = (await own.execute(query)).first()
        else:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"budget {budget_id} not found")
        return dict(row._mapping)

    async def list_budgets(self, org_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(schema.budgets).order_by(schema.budgets.c.created_at, schema.budgets.c.id)
        if org_id is not None:
            query = query.where(schema.budgets.c.org_id == org_id)
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(query))

    async def update_budget(
        self, conn: AsyncConnection, budget_id: str, values: dict[str, Any]
    ) -> None:
        await conn.execute(
            schema.budgets.update().where(schema.budgets.c.id == budget_id).values(**values)
        )

    async def delete_budget(self, conn: AsyncConnection, budget_id: str) -> None:
        await conn.execute(
            schema.budget_exceptions.delete().where(
                schema.budget_exceptions.c.budget_id == budget_id
            )
        )
        await delete_one(conn, schema.budgets, budget_id, "budget")

    async def lock_budget(self, conn: AsyncConnection, budget_id: str) -> dict[str, Any]:
        """The budget's row, locked in the caller's transaction until it ends (404 if it
        is gone), so two changes that each check what the budget would allow with the
        other's figures (its amount, its exceptions) run one after the other: by a no-op
        UPDATE, which also takes SQLite's write lock (``SELECT … FOR UPDATE`` does
        nothing there)."""
        budgets = schema.budgets
        await conn.execute(
            budgets.update().where(budgets.c.id == budget_id).values(id=budgets.c.id)
        )
        return await self.get_budget(budget_id, conn)

    async def add_exception(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        values = {"id": new_id("exc"), **values}
        await conn.execute(schema.budget_exceptions.insert().values(**values))
        return values

    async def list_exceptions(
        self, budget_id: str | None = None, conn: AsyncConnection | None = None
    ) -> list[dict[str, Any]]:
        table = schema.budget_exceptions
        query = sa.select(table).order_by(table.c.created_at)
        if budget_id is not None:
            query = query.where(table.c.budget_id == budget_id)
        if conn is not None:
            return _rows(await conn.execute(query))
        async with self._engine.connect() as own:
            return _rows(await own.execute(query))

    async def expired_exceptions(
        self, now: datetime, since: datetime
    ) -> list[tuple[dict[str, Any], Budget]]:
        """Exceptions that ran out in ``[since, now]``, each with its budget."""
        exc, bud = schema.budget_exceptions, schema.budgets
        query = (
            sa.select(exc, *(c.label(f"budget.{c.name}") for c in bud.c))
            .join(bud, bud.c.id == exc.c.budget_id)
            .where(exc.c.expires_at <= now, exc.c.expires_at >= since)
        )
        async with self._engine.connect() as conn:
            rows = _rows(await conn.execute(query))
        prefix = "budget."
        return [
            (
                {k: v for k, v in r.items() if not k.startswith(prefix)},
                budget_from_row(
                    {k[len(prefix) :]: v for k, v in r.items() if k.startswith(prefix)}
                ),
            )
            for r in rows
        ]

    # -- wallets -----------------------------------------------------------------------
    async def create_wallet(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        """A new wallet; 409 naming the open wallet its scope already has (one per scope:
        two wallets on one scope would both have to fund every call)."""
        w = schema.wallets
        values = {"id": new_id("wallet"), "closed_at": None, "updated_at": None, **values}
        if await insert_new(conn, w, values, ["scope_type", "scope_id"], w.c.closed_at.is_(None)):
            return values
        existing = (
            await conn.execute(
                sa.select(w.c.id, w.c.name).where(
                    w.c.scope_type == values["scope_type"],
                    w.c.scope_id == values["scope_id"],
                    w.c.closed_at.is_(None),
                )
            )
        ).one()
        raise Conflict(
            f"{values['scope_type']} {values['scope_id']} already has wallet {existing.id} "
            f"({existing.name!r}); top it up, change it (PATCH /admin/wallets/{existing.id}) "
            f"or close it first (POST /admin/wallets/{existing.id}/close)"
        )

    async def get_wallet(
        self, wallet_id: str, conn: AsyncConnection | None = None
    ) -> dict[str, Any]:
        query = sa.select(schema.wallets).where(schema.wallets.c.id == wallet_id)
        async with transaction(self._engine, conn) as tx:
            row = (await tx.execute(query)).first()
        if row is None:
            raise NotFound(f"wallet {wallet_id} not found")
        return dict(row._mapping)

    async def update_wallet(
        self, conn: AsyncConnection, wallet_id: str, values: dict[str, Any]
    ) -> None:
        """Change an open wallet (409 if it was closed meanwhile)."""
        w = schema.wallets
        done = await conn.execute(
            w.update().where(w.c.id == wallet_id, w.c.closed_at.is_(None)).values(**values)
        )
        if done.rowcount != 1:
            raise Conflict(f"wallet {wallet_id} is closed; closed wallets do not change")

    async def list_wallets(self, org_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(schema.wallets).order_by(schema.wallets.c.created_at)
        if org_id is not None:
            query = query.where(schema.wallets.c.org_id == org_id)
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(query))

    async def add_topup(self, conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
        """Record a top-up in the caller's transaction; 422 if the wallet's top-ups would
        pass ``MAX_WALLET_TOPUPS_NANOS``. The wallet's row is locked while they are summed,
        so two top-ups at once cannot both pass: by a no-op UPDATE, which also takes
        SQLite's write lock (``SELECT … FOR UPDATE`` does nothing there)."""
        wallets, topups = schema.wallets, schema.wallet_topups
        locked = await conn.execute(
            wallets.update()
            .where(wallets.c.id == values["wallet_id"], wallets.c.closed_at.is_(None))
            .values(id=wallets.c.id)
        )
        if locked.rowcount != 1:
            raise Conflict(f"wallet {values['wallet_id']} is closed; it takes no top-ups")
        total = (
            await conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(topups.c.amount_nanos), 0)).where(
                    topups.c.wallet_id == values["wallet_id"]
                )
            )
        ).scalar_one()
        if int(total) + int(values["amount_nanos"]) > MAX_WALLET_TOPUPS_NANOS:
            raise ValidationFailed(
                f"amount_usd: a wallet's top-ups may add up to at most "
                f"${format_usd(MAX_WALLET_TOPUPS_NANOS)} (it has ${format_usd(int(total))})",
                param="amount_usd",
            )
        values = {"id": new_id("topup"), **values}
        await conn.execute(topups.insert().values(**values))
        return values

    async def list_topups(self, wallet_id: str) -> list[dict[str, Any]]:
        table = schema.wallet_topups
        async with self._engine.connect() as conn:
            return _rows(
                await conn.execute(
                    sa.select(table)
                    .where(table.c.wallet_id == wallet_id)
                    .order_by(table.c.created_at)
                )
            )

    async def topped_up(self, wallet_id: str) -> int:
        return (await self.topped_up_last(wallet_id))[0]

    async def topped_up_last(self, wallet_id: str) -> tuple[int, datetime | None]:
        """What the wallet's top-ups add up to, and when the last one was made (None:
        never topped up)."""
        table = schema.wallet_topups
        query = sa.select(
            sa.func.coalesce(sa.func.sum(table.c.amount_nanos), 0), sa.func.max(table.c.created_at)
        ).where(table.c.wallet_id == wallet_id)
        async with self._engine.connect() as conn:
            total, last = (await conn.execute(query)).one()
        return int(total), last

    async def funds(self, wallet: Wallet) -> int:
        """What ``wallet`` has been given to spend: a ticket grant its granted amount; a
        wallet its top-ups."""
        if wallet.grant_of is not None:
            return wallet.grant_nanos
        return await self.topped_up(wallet.id)

    async def wallet_spend(
        self, wallet: Wallet, until: datetime | None, since: datetime | None = None
    ) -> tuple[int, int]:
        """What ``wallet``'s counter counts of the ledger (calls started before ``until``),
        and the part of it on ``uncounted`` rows (``spend_split``): a wallet the spend of
        its scope since it was created less what its tickets' grants paid for (those calls
        are in the ledger, not paid from its balance); a grant its requester key's spend
        since the ticket was approved. Its seed, the reconciliation and the catch-up after
        an outage all read this one figure; with ``since``, only its calls started from
        then on. The rule is ``core.wallet_paid``'s (one span here; ``wallet_history``
        has one a day)."""
        start = wallet.created_at if since is None else max(since, wallet.created_at)
        spent, uncounted = await self.spend_split(wallet.org_id, start, until, wallet.covers)
        if wallet.grant_of is None:
            funded, funded_uncounted = await self.ticket_funded(wallet, until, since)
            [spent] = wallet_paid([spent], funded)
            uncounted -= funded_uncounted
        return spent, uncounted

    async def ticket_funded(
        self, wallet: Wallet, until: datetime | None, since: datetime | None = None
    ) -> tuple[list[GrantSpend], int]:
        """Each of ``wallet``'s ticket grants' key's spend while the grant lasted, in the
        span of calls started before ``until`` (and from ``since`` on if given), and
        before that span (what it had used of the grant by then); and the part of what
        the grants paid on ``uncounted`` ledger rows (the grants' counters take those
        calls, not the wallet's)."""
        grants: list[GrantSpend] = []
        uncounted = 0
        for row in await self.wallet_grants(wallet.id):
            start = row["decided_at"]
            end = row["closed_at"] or row["expires_at"]
            if until is not None:
                end = min(end, until)
            before = 0

            def of_key(s: Subject, key: str = row["key_id"]) -> bool:
                return s.key_id == key

            if since is not None and since > start:
                if since < end:
                    before, _ = await self.spend_split(wallet.org_id, start, since, of_key)
                start = since
            spent = late = 0
            if start < end:
                spent, late = await self.spend_split(wallet.org_id, start, end, of_key)
            grant = GrantSpend(int(row["granted_nanos"]), before, [spent])
            grants.append(grant)
            uncounted += min(late, grant_paid(grant)[0])
        return grants, uncounted

    async def wallet_grants(self, wallet_id: str) -> list[dict[str, Any]]:
        """The approved ticket grants of the wallet, ever."""
        t = schema.wallet_tickets
        async with self._engine.connect() as conn:
            return _rows(
                await conn.execute(
                    sa.select(t)
                    .where(t.c.wallet_id == wallet_id, t.c.decided_at.is_not(None))
                    .where(t.c.granted_nanos.is_not(None))
                )
            )

    async def wallet_history(
        self, wallet: Wallet, closed_at: datetime | None, bounds: Sequence[datetime]
    ) -> list[int]:
        """What ``wallet`` (closed at ``closed_at``, if it was) paid for the calls started
        in each span ``[bounds[i], bounds[i + 1])``: the figure ``wallet_spend`` counts,
        span by span, from one ledger or rollup read per source
        (``spendgate.store.wallet_history``), not one read per span."""
        return await wallet_history(
            self._engine, wallet, closed_at, bounds, await self.wallet_grants(wallet.id)
        )

    # -- rate limits -------------------------------------------------------------------
    async def create_rate_limit(
        self, conn: AsyncConnection, values: dict[str, Any]
    ) -> dict[str, Any]:
        values = {"id": new_id("rl"), **values}
        if not await insert_new(
            conn, schema.rate_limits, values, ["scope_type", "scope_id", "model"]
        ):
            raise Conflict(
                f"a rate limit for {values['scope_type']} {values['scope_id']} and "
                f"model {values['model']!r} already exists; update it instead"
            )
        return values

    async def get_rate_limit(self, limit_id: str) -> dict[str, Any]:
        table = schema.rate_limits
        async with self._engine.connect() as conn:
            row = (await conn.execute(sa.select(table).where(table.c.id == limit_id))).first()
        if row is None:
            raise NotFound(f"rate limit {limit_id} not found")
        return dict(row._mapping)

    async def list_rate_limits(self, org_id: str | None = None) -> list[dict[str, Any]]:
        table = schema.rate_limits
        query = sa.select(table).order_by(table.c.created_at, table.c.id)
        if org_id is not None:
            query = query.where(table.c.org_id == org_id)
        async with self._engine.connect() as conn:
            return _rows(await conn.execute(query))

    async def update_rate_limit(
        self, conn: AsyncConnection, limit_id: str, values: dict[str, Any]
    ) -> None:
        table = schema.rate_limits
        await conn.execute(table.update().where(table.c.id == limit_id).values(**values))

    async def delete_rate_limit(self, conn: AsyncConnection, limit_id: str) -> None:
        await delete_one(conn, schema.rate_limits, limit_id, "rate limit")

    # -- spend seeds from the ledger -------------------------------------------------------
    async def spend_matching(
        self, org_id: str, start: datetime, end: datetime | None, match: Any
    ) -> int:
        """Settled spend in ``[start, end)`` of calls for which ``match(subject)`` holds."""
        return (await self.spend_split(org_id, start, end, match))[0]

    async def spend_split(
        self, org_id: str, start: datetime, end: datetime | None, match: Any
    ) -> tuple[int, int]:
        """``spend_matching``, and the part of it the shared counters never counted
        (``ledger.uncounted``): what a counter seeded from this figure already holds."""
        return (await self.spend_split_many(org_id, start, end, [match]))[0]

    async def spend_split_many(
        self, org_id: str, start: datetime, end: datetime | None, matches: Sequence[Any]
    ) -> list[tuple[int, int]]:
        """``spend_split`` for each of ``matches`` (budgets or wallets of one org over one
        window), from one query: a page of budgets seeds its counters with one scan.

        Aggregated in SQL by every attribute a budget or wallet can filter on, then
        matched here, so the result set stays small however many calls there were.
        """
        t = schema.ledger
        dims = (
            t.c.team_id,
            t.c.user_id,
            t.c.agent_id,
            t.c.key_id,
            t.c.tags,
            t.c.provider,
            t.c.model,
            t.c.kind,
        )
        uncounted = sa.case((t.c.uncounted, t.c.cost_nanos), else_=0)
        query = (
            sa.select(
                *dims,
                *exact_cost_sum(t.c.cost_nanos),
                *(c.label(f"uncounted_{c.name}") for c in exact_cost_sum(uncounted)),
            )
            .where(t.c.org_id == org_id, t.c.started_at >= start)
            .group_by(*dims)
        )
        if end is not None:
            query = query.where(t.c.started_at < end)
        totals = [[0, 0] for _ in matches]
        async with self._engine.connect() as conn:
            for (
                team,
                user,
                agent,
                key,
                tags,
                provider,
                model,
                kind,
                whole,
                rest,
                missed_whole,
                missed_rest,
            ) in await conn.execute(query):
                subject = Subject(
                    org_id, team, user, agent, key, tuple(tags or ()), provider, model, kind
                )
                cost = missed = None
                for match, sums in zip(matches, totals, strict=True):
                    if match(subject):
                        if cost is None:
                            cost = cost_from_sums(whole, rest)
                            missed = cost_from_sums(missed_whole, missed_rest)
                        sums[0] += cost
                        sums[1] += missed or 0
        return [(total, missed) for total, missed in totals]
