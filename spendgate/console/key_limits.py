"""What limits a key's spend: every budget and wallet its calls count against, with the
headroom left in each, and the one that runs out first (the *binding* limit).

The figures are the enforcer's own (``spendgate.guard.enforcement``): the same policy
snapshot, period windows, exceptions and live counters the proxy admits calls with, so
the page shows what the next call would meet. A budget limited to some models or
providers is listed too (it binds the key's calls to those). Rate limits are per minute
or per spend window, not per period: the rate-limit page shows them against their use.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from spendgate.core import budget_rules as rules
from spendgate.core.budget_windows import window_at
from spendgate.guard.enforcement import wallet_bucket
from spendgate.services import Services
from spendgate.store import schema


@dataclass(frozen=True, slots=True)
class Headroom:
    """One limit on a key's spend: what is left of it, now."""

    kind: str  # "budget" or "wallet"
    id: str
    name: str
    limit_nanos: int
    used_nanos: int  # spent + reserved
    hard: bool  # refuses calls when used up (a wallet always does)
    only_some_calls: bool = False  # a budget with categories (some models/providers/kinds)

    @property
    def left_nanos(self) -> int:
        return max(0, self.limit_nanos - self.used_nanos)


def binding(limits: Iterable[Headroom]) -> Headroom | None:
    """The limit that runs out first: least left; a refusing limit before an alerting one
    with as much left."""
    ranked = sorted(limits, key=lambda h: (h.left_nanos, not h.hard, h.name))
    return ranked[0] if ranked else None


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


async def key_limits(svc: Services, key: dict[str, Any]) -> list[Headroom]:
    """Every budget and open wallet the key's calls count against, as of now."""
    now = svc.clock.now()
    snapshot = await svc.enforcer.policies()
    subject = subject_of(key)
    budgets, wallets = snapshot.by_org.get(key["org_id"], ((), ()))
    out: list[Headroom] = []
    for budget in budgets:
        if not rules.applies(replace(budget, categories=rules.Categories()), subject):
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
        await svc.enforcer.seed_wallet(wallet)
        found = await svc.counters.state(wallet_bucket(wallet))
        spent, reserved, cap = (found.spent, found.reserved, found.cap or 0) if found else (0, 0, 0)
        out.append(
            Headroom(
                "wallet", wallet.id, f"{wallet.scope_type} wallet", cap, spent + reserved, True
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
