"""What limits a key's calls: every budget, wallet and rate limit they count against,
with the headroom left in each, and the one that runs out first (the *binding* limit).

The figures are the proxy's own: budgets and wallets from the enforcer
(``spendgate.guard.enforcement``: the same policy snapshot, period windows, exceptions
and live counters the proxy admits calls with; while a ticket's grant funds the key in
place of a wallet, the grant: ``PolicySnapshot.funding``), rate limits from the rate
gate (``spendgate.ratelimit.gate.RateGate.usage``: the same buckets ``acquire`` checks,
for every row of the key and of its team, whatever its model pattern). So the page shows
what the next call would meet. A budget limited to some models or providers, or a rate
limit on a model pattern, is listed too (it binds the key's calls to those). A rate-limit
row that governs no configured model (a pattern matching none of them, or one each of
whose models a more specific row governs: ``rate_rules.idle_rows``, the proxy's own
choice of row), or only models the key may not use (its ``models``:
``rate_rules.idle_for``), limits no call of the key: it is listed last, marked so, and
never binding.

Which runs out first: money limits (budgets, wallets) are drawn down by the same calls,
so among them the least dollars left binds; rate limits are in other units (requests,
tokens, calls in flight, dollars per window), so across kinds the smallest share left
binds, a money limit first on a tie.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

import sqlalchemy as sa

from spendgate.admin.deps import Scope
from spendgate.core import budget_rules as rules
from spendgate.core.access import Can, Owner
from spendgate.core.budget_windows import window_at
from spendgate.core.money import format_usd
from spendgate.core.rate_rules import RateLimit, idle_for, scope_rows
from spendgate.guard.enforcement import wallet_bucket
from spendgate.services import Services
from spendgate.store import schema
from spendgate.store.policies import Wallet

#: how each rate-limit kind is counted and named
RATE_UNITS = {
    "requests": ("requests", "per minute"),
    "tokens": ("tokens", "per minute"),
    "spend": ("usd", "per {window} s"),
    "concurrency": ("calls in flight", "at once"),
}


@dataclass(frozen=True, slots=True)
class Headroom:
    """One limit on a key's calls: what is left of it, now."""

    kind: str  # "budget", "wallet", "ticket grant" (in its wallet's place) or "rate limit"
    id: str
    name: str
    limit: int  # nano-dollars when ``unit`` is "usd", else a count
    used: int  # budgets and wallets: spent + reserved; rate limits: in the window now
    hard: bool  # refuses calls when used up (a wallet and a rate limit always do)
    only_some_calls: bool = False  # a budget with categories, a rate limit on some models
    unit: str = "usd"  # "usd", "requests", "tokens" or "calls in flight"
    per: str = ""  # a rate limit's window: "per minute", "per 600 s", "at once"
    #: why it limits no call (a rate-limit row governing no configured model:
    #: ``rate_rules.idle_rows``), so it is never the binding one; "" if it does
    idle: str = ""

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def share_left(self) -> Fraction:
        return Fraction(self.left, self.limit) if self.limit > 0 else Fraction(0)

    @property
    def money(self) -> bool:
        """A budget or wallet: drawn down by every call it covers, dollar for dollar."""
        return self.kind != "rate limit"

    def shown(self, amount: int) -> str:
        """``$1.25`` or ``58 requests``."""
        return f"${format_usd(amount)}" if self.unit == "usd" else f"{amount:,} {self.unit}"


def ranked(limits: Iterable[Headroom]) -> list[Headroom]:
    """Least headroom first: money limits by dollars left, rate limits by share left,
    each kind's first by share left (see the module's docstring); a refusing limit
    before an alerting one with as much left; last, the rows that limit no call."""
    limits = list(limits)
    money = sorted((h for h in limits if h.money), key=lambda h: (h.left, not h.hard, h.name))
    rates = sorted(
        (h for h in limits if not h.money and not h.idle),
        key=lambda h: (h.share_left, h.name, h.per),
    )
    out: list[Headroom] = []
    while money or rates:
        take_money = bool(money) and (not rates or money[0].share_left <= rates[0].share_left)
        out.append((money if take_money else rates).pop(0))
    return out + sorted((h for h in limits if h.idle), key=lambda h: (h.name, h.per))


def binding(limits: Iterable[Headroom]) -> Headroom | None:
    """The limit that runs out first: never one that limits no call."""
    order = [h for h in ranked(limits) if not h.idle]
    return order[0] if order else None


def subject_of(key: dict[str, Any]) -> rules.Subject:
    """A call by this key, whatever its model (categories are set aside by the caller)."""
    return rules.Subject(
        key["org_id"],
        key["team_id"],
        key["user_id"],
        key["agent_id"],
        key["id"],
        tuple(key["tags"]),
        "",
        "",
        "",
    )


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """The limits on a key's calls the reader may see, and how many others apply."""

    shown: list[Headroom]
    hidden: int = 0


#: a revoked key's: nothing limits it any more
NO_LIMITS = KeyLimits([])


async def _readable(scope: Scope, permission: Can, policy: rules.Budget | Wallet) -> bool:
    """Whether the reader may read this budget or wallet (``permission`` on its owner, as
    ``GET /admin/budgets/{id}`` or ``/admin/wallets/{id}`` asks): an org or tag budget, an
    org wallet or another team's user budget is not a team role's to see."""
    if scope.who.can(permission, Owner.of(policy.org_id)):
        return True  # an org-wide reader reads all of the org's: no owner to look up
    row = {"scope_type": policy.scope_type, "scope_id": policy.scope_id, "org_id": policy.org_id}
    owner = await scope.of_policy(row)
    return owner is not None and scope.who.can(permission, owner)


async def read_owners(svc: Services, scope: Scope, org_ids: Iterable[str]) -> None:
    """Look up the owners of these orgs' budgets and wallets at once, a query per scope
    type (``Scope.preload_policies``), so :func:`key_limits` for a list of keys asks
    :func:`_readable` of memory, not a query per key budget; an org-wide reader needs
    none."""
    if scope.who.org_wide:
        return
    snapshot = await svc.enforcer.current()
    await scope.preload_policies(
        {"scope_type": policy.scope_type, "scope_id": policy.scope_id}
        for org_id in set(org_ids)
        for policies in snapshot.by_org.get(org_id, ((), ()))
        for policy in policies
    )


async def key_limits(svc: Services, key: dict[str, Any], scope: Scope) -> KeyLimits:
    """Every budget, open wallet and rate limit the key's calls count against, now, that
    the reader (``scope.who``) may read; the others are only counted (``hidden``)."""
    now = svc.clock.now()
    snapshot = await svc.enforcer.current()  # with what another replica changed
    subject = subject_of(key)
    budgets, wallets = snapshot.by_org.get(key["org_id"], ((), ()))
    out: list[Headroom] = []
    hidden = 0
    for budget in budgets:
        if not rules.applies(replace(budget, categories=rules.Categories()), subject):
            continue
        if not await _readable(scope, Can.BUDGETS_READ, budget):
            hidden += 1
            continue
        amount = rules.effective_amount(budget, svc.enforcer.raises_for(budget.id), now)
        window = window_at(now, budget.period, budget.timezone, budget.week_start)
        state = await svc.enforcer.bucket_state(budget, window, amount)
        cap = rules.hard_cap_nanos(budget, amount)
        out.append(
            Headroom(
                "budget",
                budget.id,
                budget.name or budget.id,
                amount if cap is None else cap,
                state.spent + state.reserved,
                cap is not None,
                budget.categories != rules.Categories(),
            )
        )
    for wallet in wallets:
        if not wallet.covers(subject):
            continue
        if not await _readable(scope, Can.WALLETS_READ, wallet):
            hidden += 1
            continue
        funder = snapshot.funding(wallet, key["id"], now)  # the key's ticket grant, if any
        await svc.enforcer.seed_wallet(funder)
        found = await svc.counters.state(wallet_bucket(funder))
        spent, reserved, cap = (found.spent, found.reserved, found.cap or 0) if found else (0, 0, 0)
        called = wallet.name or f"{wallet.scope_type} wallet"
        kind, name = (
            ("wallet", called)
            if funder is wallet
            else ("ticket grant", f"{funder.id} on wallet ‘{called}’")
        )
        out.append(Headroom(kind, funder.id, name, cap, spent + reserved, True))
    # a key's and its team's rate limits: read by whoever reads the key
    return KeyLimits(out + await rate_headroom(svc, snapshot.rate_limits, key), hidden)


async def rate_headroom(
    svc: Services, limits: Mapping[str, tuple[RateLimit, ...]], key: dict[str, Any]
) -> list[Headroom]:
    """Each limit of every rate-limit row of the key and of its team, against the
    bucket the proxy checks (a row counts only the calls of the models it governs)."""
    rows = scope_rows(
        [*limits.get(key["id"], ()), *limits.get(key["team_id"] or "", ())],
        key["id"],
        key["team_id"],
    )
    idle = idle_for(rows, key["id"], key["team_id"], svc.settings.models, key["models"])
    out: list[Headroom] = []
    for row, check, used in await svc.rate_gate.usage(rows):
        unit, per = RATE_UNITS[check.kind]
        out.append(
            Headroom(
                "rate limit",
                check.bucket,
                f"{row.scope_type} {check.kind} on {row.model}",
                check.limit,
                used,
                True,
                row.model != "*",
                unit,
                per.format(window=row.spend_window_seconds),
                idle.get(row.id, ""),
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class KeyActivity:
    spent_nanos: int
    last_used: datetime | None


def period_start(now: datetime) -> datetime:
    """ "This period" on the keys list: the calendar month so far, in UTC."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def key_activity(
    svc: Services, org_id: str | None, key_ids: list[str]
) -> dict[str, KeyActivity]:
    """Spend this month (UTC) and the last call, per key, from the ledger."""
    if not key_ids:
        return {}
    await svc.ledger.flush()
    led = schema.ledger.c
    start = period_start(svc.clock.now())
    spent = sa.func.sum(sa.case((led.started_at >= start, led.cost_nanos), else_=0))
    query = (
        sa.select(led.key_id, spent, sa.func.max(led.started_at))
        .where(led.key_id.in_(key_ids))
        .group_by(led.key_id)
    )
    if org_id is not None:
        query = query.where(led.org_id == org_id)
    async with svc.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return {r[0]: KeyActivity(int(r[1] or 0), r[2]) for r in rows}
