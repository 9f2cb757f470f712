"""Admin routes for budgets (with status and exceptions); wallets are ``admin.wallets``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scope, Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.admin.forecasts import Now, forecasts_now
from spendgate.core import budget_rules as rules
from spendgate.core.access import Can, Owner
from spendgate.core.budget_windows import validate_timezone, window_at
from spendgate.core.event_data import budget_event_data
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.errors import NotFound, ValidationFailed
from spendgate.guard.enforcement import REFUSED_AT_CAP
from spendgate.guard.period_events import fired_in_periods
from spendgate.services import Services
from spendgate.settings import unconfigured_names
from spendgate.store.events import Fired, record_event
from spendgate.store.policies import budget_from_row, raise_from_row

router = APIRouter(prefix="/admin", dependencies=[Depends(principal)], responses=s.ERRORS)


def _pct(value: Decimal) -> str:
    return f"{value.normalize():f}"


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def scope_owner(
    scope: Scope, scope_type: str, scope_id: str | None, tag: str | None, org_id: str | None
) -> Owner:
    """The owner of a budget's, wallet's or rate limit's scope; 422 naming the field when
    it does not exist or is not the caller's; team roles name one of their teams' objects."""
    if scope_type == "tag" and scope_id:
        raise ValidationFailed(
            "scope_id: not used when scope_type is tag (the tag is the scope)", param="scope_id"
        )
    if scope_type != "tag" and tag:
        raise ValidationFailed(
            f"tag: only a tag budget has one (scope_type tag), not a {scope_type} budget",
            param="tag",
        )
    if scope_type == "tag":
        if not tag:
            raise ValidationFailed("tag: required when scope_type is tag", param="tag")
        if not org_id:
            raise ValidationFailed("org_id: required when scope_type is tag", param="org_id")
        owner = await scope.referenced("org", org_id, "org_id")
    elif not scope_id:
        raise ValidationFailed(
            f"scope_id: required when scope_type is {scope_type}", param="scope_id"
        )
    else:
        owner = await scope.referenced(scope_type, scope_id, "scope_id")
    if org_id is not None and owner.org_id != org_id:
        raise ValidationFailed("org_id: the scope belongs to another org", param="org_id")
    scope.require_team_objects(owner, "scope_id")
    return owner


async def scope_name(svc: Services, scope_type: str, scope_id: str | None) -> str | None:
    """What a person calls a budget's or wallet's scope: the org's, team's, agent's or
    key's name, the user's email; ``None`` for a tag scope or one that is gone."""
    if scope_id is None or scope_type == "tag":
        return None
    lookup = {
        "org": svc.directory.get_org,
        "team": svc.directory.get_team,
        "user": svc.directory.get_user,
        "agent": svc.directory.get_agent,
        "key": svc.directory.get_key,
    }[scope_type]
    try:
        row = await lookup(scope_id)
    except NotFound:
        return None
    return str(row["email"] if scope_type == "user" else row["name"])


#: the fields that decide which spend a budget counts (its counter's, ``bucket_name``)
COUNTING_RULE = frozenset({"categories", "timezone", "period", "week_start"})


def _check_levels(values: dict[str, Any]) -> None:
    try:
        validate_timezone(values["timezone"])
    except ValueError as exc:
        raise ValidationFailed(f"timezone: {exc}", param="timezone") from exc
    problem = rules.validate_levels(
        [Decimal(p) for p in values["alert_percentages"]],
        Decimal(values["soft_limit_percent"]),
        values["hard_limit"],
        Decimal(values["hard_limit_percent"]),
    )
    if problem is not None:
        raise ValidationFailed(f"{problem[0]}: {problem[1]}", param=problem[0])


async def _check_most_allowed(
    svc: Services,
    values: dict[str, Any],
    field: str,
    more: Sequence[rules.Raise] = (),
    conn: AsyncConnection | None = None,
) -> None:
    """422 naming ``field`` when the budget ``values`` (stored form), with its exceptions
    not run out and ``more``, would allow more than a budget may (``check_most_allowed``).
    ``conn``: the transaction that holds the budget's row (``PolicyStore.lock_budget``),
    so no other change of its amount or exceptions can land between check and write."""
    now = svc.clock.now()
    raises = [
        r
        for r in map(raise_from_row, await svc.policies.list_exceptions(values["id"], conn))
        if r.expires_at > now
    ]
    problem = rules.check_most_allowed(budget_from_row(values), [*raises, *more], field)
    if problem is not None:
        raise ValidationFailed(problem, param=field)


def check_names(svc: Services, policy: dict[str, Any]) -> None:
    """A budget's categories or a rate limit's model name only what the config has
    (422 naming the field otherwise): a name it lacks would count or govern no call."""
    problems = unconfigured_names(svc.settings, policy)
    if problems:
        field, message = problems[0]
        raise ValidationFailed(message, param=field)


def warned(svc: Services, policy: dict[str, Any]) -> dict[str, Any]:
    """A stored budget or rate limit (as answered) with its ``warnings``: the names it
    keeps that the config no longer has, so it counts or governs nothing there."""
    return {
        **policy,
        "warnings": [message for _, message in unconfigured_names(svc.settings, policy)],
    }


def budget_out(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "amount_nanos"}
    out["amount_usd"] = format_usd(int(row["amount_nanos"]))
    return out


def _stored(body: s.BudgetIn | s.BudgetPatch, *, only_set: bool = True) -> dict[str, Any]:
    """The fields given (or all, with defaults) in their stored form."""
    values: dict[str, Any] = {}
    data = body.model_dump(exclude_unset=only_set)
    for key, value in data.items():
        if key == "amount_usd":
            values["amount_nanos"] = usd_to_nanos(value)
        elif key == "alert_percentages":
            values[key] = [_pct(p) for p in value]
        elif key in ("soft_limit_percent", "hard_limit_percent"):
            values[key] = _pct(value)
        elif key == "categories":
            values[key] = {k: list(v) for k, v in value.items()}
        else:
            values[key] = value
    return values


async def _sweep_new_levels(svc: Services, budget_id: str) -> None:
    """Every threshold the period's spend is already past fires now, once, marked
    ``already_past`` (a new budget, or a changed amount or level)."""
    if svc.sweeper is not None:
        await svc.sweeper.sweep({budget_id}, already_past=True)


@router.post(
    "/budgets",
    response_model=s.BudgetOut,
    status_code=201,
    tags=["budgets"],
    dependencies=guard(Can.BUDGETS_WRITE),
)
async def create_budget(
    body: s.BudgetIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    owner = await scope_owner(scope, body.scope_type, body.scope_id, body.tag, body.org_id)
    org_id = owner.org_id
    values = _stored(body, only_set=False)
    values.update(
        org_id=org_id,
        scope_id=None if body.scope_type == "tag" else body.scope_id,
        tag=body.tag if body.scope_type == "tag" else None,
    )
    named = await scope_name(svc, body.scope_type, body.scope_id) or body.scope_id or body.tag
    values["name"] = body.name or f"{body.scope_type} {named} {body.period}"
    _check_levels(values)
    check_names(svc, values)
    await _check_most_allowed(svc, {**values, "id": ""}, "hard_limit_percent")
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        row = await svc.policies.create_budget(
            conn, {**values, "created_at": now, "updated_at": now}
        )
        await audit(
            conn,
            request,
            who,
            "budget.created",
            "budget",
            row["id"],
            now,
            owner=owner,
            after=budget_out(row),
        )
    await svc.enforcer.policy_changed()
    await _sweep_new_levels(svc, row["id"])
    return budget_out(row)


@router.get(
    "/budgets",
    response_model=list[s.BudgetOut],
    tags=["budgets"],
    dependencies=guard(Can.BUDGETS_READ),
)
async def list_budgets(
    svc: Svc, who: Who, scope: Scoped, org_id: str | None = None
) -> list[dict[str, Any]]:
    rows = await svc.policies.list_budgets(await org_asked(svc, who, org_id))
    return [warned(svc, budget_out(r)) for r in await scope.filter(rows, scope.of_policy)]


@router.get(
    "/budgets/{budget_id}",
    response_model=s.BudgetOut,
    tags=["budgets"],
    dependencies=guard(Can.BUDGETS_READ),
)
async def get_budget(budget_id: str, scope: Scoped) -> dict[str, Any]:
    return warned(scope.svc, budget_out((await scope.budget(budget_id))[0]))


@router.patch(
    "/budgets/{budget_id}",
    response_model=s.BudgetOut,
    tags=["budgets"],
    dependencies=guard(Can.BUDGETS_WRITE),
)
async def update_budget(
    budget_id: str, body: s.BudgetPatch, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    _, owner = await scope.budget(budget_id)
    if body.categories is not None:
        check_names(svc, _stored(body))
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        current = await svc.policies.lock_budget(conn, budget_id)
        merged = {**current, **_stored(body)}
        _check_levels(merged)
        changes = {k: merged[k] for k in _stored(body)}
        raising = [k for k in ("amount_nanos", "hard_limit_percent", "hard_limit") if k in changes]
        if raising:
            field = "amount_usd" if raising[0] == "amount_nanos" else raising[0]
            await _check_most_allowed(svc, merged, field, conn=conn)
        await svc.policies.update_budget(conn, budget_id, {**changes, "updated_at": now})
        await audit(
            conn,
            request,
            who,
            "budget.updated",
            "budget",
            budget_id,
            now,
            owner=owner,
            before=budget_out(current),
            after=budget_out({**merged, "updated_at": now}),
        )
    await svc.enforcer.policy_changed()
    if COUNTING_RULE & changes.keys():
        await svc.enforcer.recount(budget_id)
    await _sweep_new_levels(svc, budget_id)
    return warned(svc, budget_out(await svc.policies.get_budget(budget_id)))


@router.delete(
    "/budgets/{budget_id}", status_code=204, tags=["budgets"], dependencies=guard(Can.BUDGETS_WRITE)
)
async def delete_budget(
    budget_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> None:
    _, owner = await scope.budget(budget_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        current = await svc.policies.get_budget(budget_id, conn)
        await svc.policies.delete_budget(conn, budget_id)
        await audit(
            conn,
            request,
            who,
            "budget.deleted",
            "budget",
            budget_id,
            now,
            owner=owner,
            before=budget_out(current),
        )
    await svc.enforcer.policy_changed()


@router.get(
    "/budgets/{budget_id}/status",
    response_model=s.BudgetStatus,
    tags=["budgets"],
    dependencies=guard(Can.BUDGETS_READ),
)
async def budget_status(budget_id: str, svc: Svc, scope: Scoped) -> dict[str, Any]:
    row, _ = await scope.budget(budget_id)
    return (await budget_statuses(svc, [row]))[0]


async def budget_statuses(svc: Services, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The status of each stored budget in ``rows`` (the caller may read them: checked
    before), in order: a page of budgets costs the same few queries as one."""
    now = svc.clock.now()
    await svc.enforcer.current()  # the exceptions another replica granted (``raises_for``)
    budgets = [budget_from_row(row) for row in rows]
    windows = [window_at(now, b.period, b.timezone, b.week_start) for b in budgets]
    fired_by = await fired_in_periods(
        svc.engine, [(b.id, w) for b, w in zip(budgets, windows, strict=True)]
    )
    active = [[r for r in svc.enforcer.raises_for(b.id) if r.active_at(now)] for b in budgets]
    amounts = [rules.effective_amount(b, r, now) for b, r in zip(budgets, active, strict=True)]
    states = await svc.enforcer.bucket_states(list(zip(budgets, windows, amounts, strict=True)))
    forecasts = await forecasts_now(
        svc,
        [
            Now(b, w, amount, state.spent, row["updated_at"])
            for b, w, amount, state, row in zip(
                budgets, windows, amounts, states, rows, strict=True
            )
        ],
    )
    out = []
    for budget, window, fired_here, raises, amount, state in zip(
        budgets, windows, fired_by, active, amounts, states, strict=True
    ):
        cap = rules.hard_cap_nanos(budget, amount)
        soft = rules.percent_of(amount, budget.soft_limit_percent)
        used = state.spent + state.reserved
        fired = [f.key for f in fired_here if not f.key.startswith(REFUSED_AT_CAP)]
        refused = refusal_at(cap, state.spent, fired_here)
        forecast = forecasts[budget.id]
        out.append(
            {
                "budget_id": budget.id,
                "period_key": window.key,
                "period_start": window.start,
                "period_end": window.end,
                "period_start_local": window.local_start.isoformat(),
                "period_end_local": window.local_end.isoformat(),
                "next_reset": window.end,
                "amount_usd": format_usd(budget.amount_nanos),
                "effective_amount_usd": format_usd(amount),
                "spent_usd": format_usd(state.spent),
                "reserved_usd": format_usd(state.reserved),
                "percent_used": str(rules.percent_used(state.spent, amount)),
                "hard_limit": budget.hard_limit,
                "hard_limit_usd": None if cap is None else format_usd(cap),
                "remaining_to_soft_usd": format_usd(max(0, soft - used)),
                "remaining_to_hard_usd": None if cap is None else format_usd(max(0, cap - used)),
                "thresholds_fired": fired,
                "active_exceptions": len(raises),
                "refusing_since": None if refused is None else refused.at,
                "refused_worst_case_usd": None
                if refused is None
                else refused.data.get("worst_case_usd"),
                "state": budget_state(state.spent, used, soft, cap, forecast, refused is not None),
                "forecast": forecast,
            }
        )
    return out


def refusal_at(cap: int | None, spent: int, fired: Sequence[Fired]) -> Fired | None:
    """This period's ``budget.calls_refused`` (in ``fired``, the period's events, each
    named after the period's prefix: ``period_events``) that still holds at the hard cap
    in force now, given what the budget has ``spent`` now, if any: the first such
    refusal. One at the same cap holds (raised, then put back: a call that big is refused
    again), and so does one at a higher cap (an exception that ran out, an amount
    lowered) for a call that fits the lower cap: there is less room still. One at a lower
    cap does not: raising the amount, an exception or a new percentage made room, and a
    new refusal at the new cap fires its own. And none holds once what is spent leaves
    room for the refused call: a categories edit changes what the budget counts, and
    spend that no longer counts no longer fills the cap (a refusal under the new rule
    fires its own, ``refusal_name``)."""
    if cap is None:
        return None
    for f in fired:
        if not f.key.startswith(REFUSED_AT_CAP):
            continue
        refused_cap = f.key[len(REFUSED_AT_CAP) :].split(":", 1)[0]
        worst = f.data.get("worst_case_usd")
        if not refused_cap.isdigit() or worst is None:
            continue
        if spent + usd_to_nanos(worst) <= cap:  # that call would pass now
            continue
        if int(refused_cap) == cap:
            return f
        if int(refused_cap) > cap and usd_to_nanos(worst) <= cap:
            return f
    return None


def budget_state(
    spent: int,
    used: int,
    soft: int,
    cap: int | None,
    forecast: dict[str, Any] | None,
    refusing: bool = False,
) -> str:
    """The budget's state now, worst first: ``blocked`` (its hard cap is reached by what is
    spent and reserved: every call is refused), ``refusing`` (its hard cap refused a call
    this period that the cap in force now refuses too, :func:`refusal_at`: calls whose
    worst case is over what is left are refused, smaller ones pass), ``over_soft_limit``
    (spent), ``at_risk`` (the forecast lands at or above the amount), else ``ok``."""
    if cap is not None and used >= cap:
        return "blocked"
    if cap is not None and refusing:
        return "refusing"
    if spent >= soft:
        return "over_soft_limit"
    if forecast is not None and Decimal(forecast["percent_of_budget"]) >= 100:
        return "at_risk"
    return "ok"


def exception_out(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "amount_nanos"}
    out["amount_usd"] = format_usd(int(row["amount_nanos"]))
    return out


@router.post(
    "/budgets/{budget_id}/exceptions",
    response_model=s.ExceptionOut,
    status_code=201,
    tags=["budgets"],
    dependencies=guard(Can.BUDGETS_WRITE),
)
async def grant_exception(
    budget_id: str, body: s.ExceptionIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    _, owner = await scope.budget(budget_id)
    if (body.amount_usd is None) == (body.percent is None):
        raise ValidationFailed(
            "amount_usd: give exactly one of amount_usd or percent", param="amount_usd"
        )
    now = svc.clock.now()
    starts, expires = _aware(body.starts_at or now), _aware(body.expires_at)
    if expires <= max(starts, now):
        raise ValidationFailed(
            "expires_at: must be in the future and after starts_at", param="expires_at"
        )
    values: dict[str, Any] = {
        "budget_id": budget_id,
        "amount_nanos": usd_to_nanos(body.amount_usd) if body.amount_usd else 0,
        "percent": _pct(body.percent) if body.percent else "0",
        "reason": body.reason,
        "granted_by": who.actor,
        "starts_at": starts,
        "expires_at": expires,
        "created_at": now,
    }
    async with svc.engine.begin() as conn:
        # checked and granted with the budget's row held: two grants at once (or a grant
        # and a raised amount) each check with the other's figures, not without them
        budget = await svc.policies.lock_budget(conn, budget_id)
        await _check_most_allowed(
            svc,
            budget,
            "amount_usd" if body.amount_usd is not None else "percent",
            [raise_from_row(values)],
            conn,
        )
        rules_budget = budget_from_row(budget)
        first_window = window_at(
            max(starts, now), rules_budget.period, rules_budget.timezone, rules_budget.week_start
        )
        row = await svc.policies.add_exception(conn, values)
        await record_event(
            conn,
            "budget.exception_granted",
            {
                # the period it first raises (the one it starts in, or this one)
                **budget_event_data(rules_budget, first_window),
                "exception_id": row["id"],
                "reason": body.reason,
                "amount_usd": format_usd(values["amount_nanos"]),
                "percent": values["percent"],
                "granted_by": who.actor,
                "starts_at": starts.isoformat(),
                "expires_at": expires.isoformat(),
            },
            now,
            org_id=budget["org_id"],
            dedup_key=f"exception:{row['id']}:granted",
        )
        await audit(
            conn,
            request,
            who,
            "budget.exception_granted",
            "budget",
            budget_id,
            now,
            owner=owner,
            after=exception_out(row),
        )
    await svc.enforcer.policy_changed()
    return exception_out(row)


@router.get(
    "/budgets/{budget_id}/exceptions",
    response_model=list[s.ExceptionOut],
    tags=["budgets"],
    dependencies=guard(Can.BUDGETS_READ),
)
async def list_exceptions(budget_id: str, svc: Svc, scope: Scoped) -> list[dict[str, Any]]:
    await scope.budget(budget_id)
    return [exception_out(r) for r in await svc.policies.list_exceptions(budget_id)]
