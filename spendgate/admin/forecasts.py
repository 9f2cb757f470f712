"""Admin routes for spend forecasts: where each budget's period is expected to land."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, Field

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scoped, Svc, Who, guard, org_asked, principal
from spendgate.core.access import Can
from spendgate.core.budget_rules import Budget, effective_amount, hard_cap_nanos, levels
from spendgate.core.budget_windows import Window, window_at
from spendgate.core.forecast_overrun import outlook_text
from spendgate.core.forecasting import Forecast, as_of, local_today
from spendgate.core.money import format_usd
from spendgate.errors import NotFound, PermissionDenied, ValidationFailed
from spendgate.services import Services
from spendgate.store.forecasts import forecast_of, of_window, refresh_all, stored_forecasts
from spendgate.store.policies import budget_from_row

router = APIRouter(prefix="/admin", dependencies=[Depends(principal)], responses=s.ERRORS)

#: a stored forecast older than this is recomputed when read
MAX_AGE = timedelta(hours=1)


class RefreshIn(s.Strict):
    org_id: s.ObjectId | None = Field(None, description="default: every org (master key)")


class RefreshOut(BaseModel):
    refreshed: int
    overruns_announced: int
    seconds: float


def forecast_out(row: Mapping[str, Any], forecast: Forecast) -> dict[str, Any]:
    """The API's answer for a stored row as ``forecast`` (:func:`forecast_now`)."""
    return {
        "budget_id": row["budget_id"],
        "period_key": forecast.period_key,
        "generated_at": forecast.generated_at,
        "method": forecast.method,
        "history_days": forecast.history_days,
        "confidence": forecast.confidence,
        "spent_usd": format_usd(forecast.spent_nanos),
        "p10_usd": format_usd(forecast.p10_nanos),
        "p50_usd": format_usd(forecast.p50_nanos),
        "p90_usd": format_usd(forecast.p90_nanos),
        "amount_usd": format_usd(forecast.amount_nanos),
        "limit_usd": format_usd(int(row["limit_nanos"])),
        "percent_of_budget": str(forecast.percent_of_budget),
        "hard_cap_usd": None if forecast.cap_nanos is None else format_usd(forecast.cap_nanos),
        "hits_hard_cap_on": forecast.hits_cap_on,
        "uncapped_p50_usd": format_usd(forecast.uncapped_p50_nanos),
        "outlook": outlook_text(forecast),
        "crossings": dict(forecast.crossings),
        "overrun_band": row["overrun_band"],
    }


@dataclass(frozen=True, slots=True)
class Now:
    """A budget as it stands now: its period, its amount with the exceptions active now,
    what its period has spent so far, and when it was last edited."""

    budget: Budget
    window: Window
    amount_nanos: int
    spent_nanos: int
    edited_at: datetime


def _levels(budget: Budget, amount_nanos: int) -> list[tuple[str, int]]:
    return [(t.name, level) for t, level in levels(budget, amount_nanos)]


def of_budget_now(row: Mapping[str, Any], now: Now) -> bool:
    """Whether a stored forecast is of the budget's current period window, amount
    (exceptions included), hard cap and levels, computed since the budget was last edited:
    else its %, landing and crossing days are of a budget that no longer is, and it is
    recomputed (a zone moved to the same window under another date keeps the window, but
    its crossing days were of the other zone's dates)."""
    cap = row.get("hard_cap_nanos")
    return (
        of_window(row, now.window)
        and row["generated_at"] >= now.edited_at
        and int(row["amount_nanos"]) == now.amount_nanos
        and (None if cap is None else int(cap)) == hard_cap_nanos(now.budget, now.amount_nanos)
        and set(row["crossings"]) == {name for name, _ in _levels(now.budget, now.amount_nanos)}
    )


def forecast_now(row: Mapping[str, Any], now: Now, at: datetime) -> dict[str, Any]:
    """A stored forecast of the budget's current amount read at ``at``: never below what
    the period has spent since it was computed (:func:`spendgate.core.forecasting.as_of`)."""
    today, _ = local_today(at, now.budget.timezone)
    forecast = as_of(
        forecast_of(row, now.window), now.spent_nanos, _levels(now.budget, now.amount_nanos), today
    )
    return forecast_out(row, forecast)


async def forecasts_now(
    svc: Services, budgets: Sequence[Now], *, compute: bool = False, refresh: bool = False
) -> dict[str, dict[str, Any] | None]:
    """Every place that shows a forecast reads it here: each budget's stored forecast as of
    now (:func:`forecast_now`), by budget id. A stored one of another amount, cap or levels
    (the budget was edited, an exception granted or expired), or computed before the
    budget's last edit (:func:`of_budget_now`), is recomputed first; so is
    every one when ``refresh``, and with ``compute`` one that is missing, of an earlier
    period or older than :data:`MAX_AGE` (else None: no forecast of this period yet).
    Recomputing flushes this process's ledger buffer first (every call it has answered)."""
    at = svc.clock.now()
    rows = await stored_forecasts(svc.engine, [b.budget.id for b in budgets])

    def stale(b: Now) -> bool:
        row = rows.get(b.budget.id)
        if refresh:
            return True
        if row is None or not of_window(row, b.window):
            return compute
        return not of_budget_now(row, b) or (compute and row["generated_at"] < at - MAX_AGE)

    again = [b.budget for b in budgets if stale(b)]
    if again:
        await svc.ledger.flush()
        await refresh_all(
            svc.engine,
            again,
            at,
            raises={b.id: svc.enforcer.raises_for(b.id) for b in again},
            escalation=svc.settings.forecast_overrun_escalation,
        )
        rows.update(await stored_forecasts(svc.engine, [b.id for b in again]))
    out: dict[str, dict[str, Any] | None] = {}
    for b in budgets:
        row = rows.get(b.budget.id)
        current = row is not None and of_window(row, b.window)
        out[b.budget.id] = forecast_now(row, b, at) if row is not None and current else None
    return out


async def current_forecast(
    svc: Services, budget_id: str, *, refresh: bool = False
) -> dict[str, Any]:
    """The budget's forecast as of now (:func:`forecasts_now`), computed if there is none
    fresh of this period."""
    stored = await svc.policies.get_budget(budget_id)
    budget = budget_from_row(stored)
    await svc.enforcer.current()  # the exceptions another replica granted (``raises_for``)
    at = svc.clock.now()
    window = window_at(at, budget.period, budget.timezone, budget.week_start)
    amount = effective_amount(budget, svc.enforcer.raises_for(budget.id), at)
    (state,) = await svc.enforcer.bucket_states([(budget, window, amount)])
    now = Now(budget, window, amount, state.spent, stored["updated_at"])
    found = (await forecasts_now(svc, [now], compute=True, refresh=refresh))[budget_id]
    if found is None:  # deleted meanwhile
        raise NotFound(f"budget {budget_id} not found", param="budget_id")
    return found


@router.get(
    "/forecasts/{budget_id}",
    response_model=s.ForecastOut,
    tags=["forecasts"],
    dependencies=guard(Can.FORECASTS_READ),
)
async def get_forecast(
    budget_id: str,
    svc: Svc,
    who: Who,
    scope: Scoped,
    refresh: Annotated[
        bool,
        Query(
            description="recompute now (CPU-heavy): needs the permission to change the "
            "budget (budgets.write, in each of its teams); without it, the stored forecast, "
            "recomputed when stale"
        ),
    ] = False,
) -> dict[str, Any]:
    """Where the budget's current period is expected to land (P10/P50/P90)."""
    _, owner = await scope.budget(budget_id)
    if refresh and not who.can(Can.BUDGETS_WRITE, owner):
        # a statistical fit per call: anyone who only reads the budget could keep the
        # gateway's CPU busy with it, so forcing one takes what changing the budget takes
        raise PermissionDenied(
            f"refresh: recomputing the forecast of budget {budget_id} needs the permission "
            f"to change the budget (budgets.write, in each of its teams), which the "
            f"{who.roles} role does not have here; without refresh the stored forecast is "
            "returned (recomputed when stale)",
            param="refresh",
        )
    return await current_forecast(svc, budget_id, refresh=refresh)


@router.post(
    "/forecasts/refresh",
    response_model=RefreshOut,
    tags=["forecasts"],
    dependencies=guard(Can.FORECASTS_REFRESH),
)
async def refresh_forecasts(
    svc: Svc,
    who: Who,
    body: Annotated[RefreshIn | None, Body()] = None,
    query_org_id: Annotated[str | None, Query(alias="org_id", include_in_schema=False)] = None,
) -> dict[str, Any]:
    """Recompute every budget's forecast now (otherwise done on a schedule): of the org
    in the body (``{"org_id": …}``; the master key without it: every org's); an org
    member's call refreshes their own org's budgets."""
    if query_org_id is not None:  # read by no route: refused, not ignored (every org's)
        raise ValidationFailed("org_id: give it in the JSON body", param="org_id")
    org_id = await org_asked(svc, who, None if body is None else body.org_id)
    started, now = svc.clock.monotonic(), svc.clock.now()
    policy = await svc.policies.snapshot(now)
    budgets = [b for b in policy.budgets if org_id is None or b.org_id == org_id]
    await svc.ledger.flush()
    done = await refresh_all(
        svc.engine,
        budgets,
        now,
        raises=policy.raises,
        escalation=svc.settings.forecast_overrun_escalation,
    )
    return {
        "refreshed": len(done.forecasts),
        "overruns_announced": len(done.announced),
        "seconds": round(svc.clock.monotonic() - started, 3),
    }
