"""Budget and wallet rules: the one place that compares spend with a limit (pure).

    which budgets apply to a call      applies(budget, subject)
    what a call may cost at worst      (priced by the caller) → Hold per bucket
    where the hard cap is              hard_cap_nanos(budget, raises)
    a replica's cap while Redis is out fail_open_cap(cap, spent at start, replicas)
    which thresholds a settle crossed  crossed(budget, cap_base, before, after)

Percentages are of the budget amount (plus any active exception). The hard cap is
``hard_limit_percent`` of that; with ``hard_limit`` off a budget never refuses, it
only warns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_FLOOR, Decimal
from fnmatch import fnmatchcase
from functools import lru_cache

from spendgate.core.budget_windows import Period
from spendgate.core.value import Value

SCOPE_TYPES = ("org", "team", "user", "agent", "key", "tag")


@dataclass(frozen=True, slots=True)
class Categories:
    """Only spend matching every non-empty list counts (empty = everything)."""

    providers: tuple[str, ...] = ()
    #: model names or shell patterns (``gpt-4o*``, ``claude-*-opus*``)
    models: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Budget:
    id: str
    org_id: str
    scope_type: str
    scope_id: str | None
    tag: str | None
    period: Period
    timezone: str
    week_start: str
    amount_nanos: int
    alert_percentages: tuple[Decimal, ...] = (Decimal(50), Decimal(75), Decimal(90))
    soft_limit_percent: Decimal = Decimal(75)
    hard_limit: bool = False
    hard_limit_percent: Decimal = Decimal(100)
    categories: Categories = field(default_factory=Categories)
    #: what people call it (in alerts and messages)
    name: str = ""


class Subject(Value, frozen=True):
    """Who is calling and what: what budgets are matched against."""

    org_id: str
    team_id: str | None
    user_id: str | None
    agent_id: str | None
    key_id: str
    tags: tuple[str, ...]
    provider: str
    model: str
    kind: str


@dataclass(frozen=True, slots=True)
class Raise:
    """A temporary exception: extra amount, or extra percent of the amount, until expiry."""

    amount_nanos: int
    percent: Decimal
    starts_at: datetime
    expires_at: datetime

    def active_at(self, at: datetime) -> bool:
        return self.starts_at <= at < self.expires_at


@dataclass(frozen=True, slots=True)
class Threshold:
    """A level a budget can cross: ``alert`` (each alert %), ``soft`` or ``hard``."""

    kind: str
    percent: Decimal

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.percent.normalize():f}"


#: the ``Subject`` field a budget of each scope compares with its ``scope_id`` (org and tag
#: scopes: none a reader can select on by equality alone)
SCOPE_FIELDS = {"team": "team_id", "user": "user_id", "agent": "agent_id", "key": "key_id"}


def applies(budget: Budget, subject: Subject) -> bool:
    """Whether ``subject``'s call counts against ``budget`` (every budget of the org is
    asked on every call, so only the budget's own scope is compared)."""
    scope = budget.scope_type
    field_name = SCOPE_FIELDS.get(scope)
    if field_name is not None:  # team, user, agent, key
        value = getattr(subject, field_name)
        scope_ok = value is not None and value == budget.scope_id
    elif scope == "org":
        scope_ok = subject.org_id == budget.scope_id
    elif scope == "tag":
        scope_ok = budget.tag in subject.tags and subject.org_id == budget.org_id
    else:
        raise KeyError(scope)
    return scope_ok and counts(budget.categories, subject)


def scope_field(budget: Budget) -> tuple[str, str] | None:
    """``(Subject field, value)`` that every call :func:`applies` counts for ``budget``
    has, or None: a reader of stored spend may select only those calls first (an index),
    and still asks :func:`applies` of each (the scope is never the whole rule)."""
    field_name = SCOPE_FIELDS.get(budget.scope_type)
    if field_name is None or budget.scope_id is None:
        return None
    return field_name, budget.scope_id


#: the report dimension (``core.showback.DIMENSIONS``) each kind of category compares
CATEGORY_DIMENSIONS = {"providers": "provider", "models": "model", "kinds": "kind", "tags": "tag"}


def dimensions(budget: Budget) -> frozenset[str]:
    """The report dimensions (``core.showback.DIMENSIONS``: org, team, user, agent, key,
    tag, provider, model, kind) whose fields :func:`applies` compares for ``budget``: its
    scope's, and that of each kind of category it lists. A reader of stored spend may
    read a table summed by those alone (a budget naming no user, agent, key or tag: the
    narrow rollups) and still ask ``applies`` of each row: a field the table lacks is
    never compared."""
    named = {budget.scope_type, "org"} if budget.scope_type == "tag" else {budget.scope_type}
    for name, dimension in CATEGORY_DIMENSIONS.items():
        if getattr(budget.categories, name):
            named.add(dimension)
    return frozenset(named)


def counts(categories: Categories, subject: Subject) -> bool:
    if categories.providers and subject.provider not in categories.providers:
        return False
    if categories.kinds and subject.kind not in categories.kinds:
        return False
    if categories.tags and not set(categories.tags) & set(subject.tags):
        return False
    return not categories.models or any(fnmatchcase(subject.model, p) for p in categories.models)


def effective_amount(budget: Budget, raises: Iterable[Raise], at: datetime) -> int:
    """The budget amount plus every exception active at ``at``."""
    extra = 0
    for r in raises:
        if r.active_at(at):
            extra += r.amount_nanos + percent_of(budget.amount_nanos, r.percent)
    return budget.amount_nanos + extra


@lru_cache(maxsize=4096)
def percent_of(nanos: int, percent: Decimal) -> int:
    """``percent`` % of ``nanos``, rounded down (cached: a hard cap is asked on every call)."""
    return int((Decimal(nanos) * percent / 100).to_integral_value(rounding=ROUND_FLOOR))


def hard_cap_nanos(budget: Budget, amount_nanos: int) -> int | None:
    """The most this budget lets be spent in a period, or None when it never blocks."""
    return percent_of(amount_nanos, budget.hard_limit_percent) if budget.hard_limit else None


def fail_open_cap(cap: int, spent_at_start: int, replicas: int) -> int:
    """The cap one replica enforces on its own while Redis is unreachable (fail-open):
    the spend the ledger showed when it began counting alone, plus ``1/replicas`` of the
    headroom left then (nothing when none was left). With every one of ``replicas``
    replicas taking only its share, what they admit between them during the outage is
    at most the headroom the ledger showed: the cap holds, up to the spend the ledger
    had not seen yet (see the README, "Failure behaviour")."""
    if replicas < 1:
        raise ValueError("replicas must be 1 or more")
    if spent_at_start >= cap:
        return spent_at_start
    return spent_at_start + (cap - spent_at_start) // replicas


def thresholds(budget: Budget) -> list[Threshold]:
    levels = [Threshold("alert", p) for p in budget.alert_percentages]
    levels.append(Threshold("soft", budget.soft_limit_percent))
    if budget.hard_limit:
        levels.append(Threshold("hard", budget.hard_limit_percent))
    return levels


@lru_cache(maxsize=4096)
def levels(budget: Budget, amount_nanos: int) -> tuple[tuple[Threshold, int], ...]:
    """Each threshold with its level in nanos (cached: this runs on every settle)."""
    return tuple((t, percent_of(amount_nanos, t.percent)) for t in thresholds(budget))


def crossed(budget: Budget, amount_nanos: int, before: int, after: int) -> list[Threshold]:
    """Thresholds whose level lies in ``(before, after]`` — each fires once per crossing."""
    if after <= before:
        return []
    return crossed_levels(levels(budget, amount_nanos), before, after)


def crossed_levels(
    levels: Sequence[tuple[Threshold, int]], before: int, after: int
) -> list[Threshold]:
    """``crossed`` for a budget's ``levels`` worked out already (once per period)."""
    return [t for t, level in levels if before < level <= after]


def reached(budget: Budget, amount_nanos: int, spent: int) -> list[Threshold]:
    """Every threshold already at or below ``spent``."""
    return [t for t in thresholds(budget) if spent >= percent_of(amount_nanos, t.percent) > 0]


#: the most a budget may let be spent in a period, its hard-limit buffer and every
#: exception included: $1,000,000,000, the largest amount the API takes. Its figures
#: (the amount with exceptions, the hard cap) are stored as 64-bit integers of nanos.
MAX_LIMIT_NANOS = 10**18


def most_allowed(budget: Budget, raises: Iterable[Raise]) -> int:
    """The largest of ``budget``'s amount and hard cap with every exception of ``raises``
    at once (exceptions may overlap: the caller gives those not run out)."""
    amount = budget.amount_nanos + sum(
        r.amount_nanos + percent_of(budget.amount_nanos, r.percent) for r in raises
    )
    return max(amount, hard_cap_nanos(budget, amount) or 0)


def check_most_allowed(budget: Budget, raises: Iterable[Raise], field: str) -> str | None:
    """The message (naming ``field``, what was changed) when ``budget`` with ``raises``
    would allow more than :data:`MAX_LIMIT_NANOS` a period; None when it fits."""
    most = most_allowed(budget, raises)
    if most <= MAX_LIMIT_NANOS:
        return None
    return (
        f"{field}: the budget would allow ${most / Decimal(10**9):,.2f} a period (its hard "
        "limit and exceptions not run out included), more than the most a budget may allow, "
        f"${MAX_LIMIT_NANOS // 10**9:,}"
    )


def percent_used(spent: int, amount_nanos: int) -> Decimal:
    if amount_nanos <= 0:
        return Decimal(0)
    return (Decimal(spent) * 100 / amount_nanos).quantize(Decimal("0.01"))


def validate_levels(
    alerts: Sequence[Decimal], soft: Decimal, hard_on: bool, hard: Decimal
) -> tuple[str, str] | None:
    """(field, message) for the first inconsistent percentage, or None when all is well."""
    if list(alerts) != sorted(set(alerts)):
        return "alert_percentages", "must be strictly increasing"
    if any(p <= 0 for p in alerts):
        return "alert_percentages", "must be above 0"
    if soft <= 0:
        return "soft_limit_percent", "must be above 0"
    if hard <= 0 or hard > 1000:
        return "hard_limit_percent", "must be above 0 and at most 1000"
    if hard_on:
        if alerts and alerts[-1] > hard:
            return "alert_percentages", "must not be above hard_limit_percent"
        if soft > hard:
            return "soft_limit_percent", "must not be above hard_limit_percent"
    return None
