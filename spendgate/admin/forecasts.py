"""Admin routes for spend forecasts: where each budget's period is expected to land."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, Field

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scoped, Svc, Who, guard, org_asked, principal
from spendgate.core.access import Can
from spendgate.core.budget_windows import window_at
from spendgate.core.forecast_overrun import outlook_text
from spendgate.core.money import format_usd
from spendgate.errors import NotFound, ValidationFailed
from spendgate.services import Services
from spendgate.store.forecasts import (
    crossing_dates,
    forecast_of,
    refresh_all,
    stored_forecast,
    stored_forecasts,
)
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


def forecast_out(row: dict[str, Any]) -> dict[str, Any]:
    forecast = forecast_of(row)
    return {
        "budget_id": row["budget_id"],
        "period_key": row["period_key"],
        "generated_at": row["generated_at"],
        "method": row["method"],
        "history_days": row["history_days"],
        "confidence": forecast.confidence,
        **{
            f"{k}_usd": format_usd(int(row[f"{k}_nanos"]))
            for k in ("spent", "p10", "p50", "p90", "amount", "limit")
        },
        "percent_of_budget": row["percent_of_budget"],
        "hard_cap_usd": None if forecast.cap_nanos is None else format_usd(forecast.cap_nanos),
        "hits_hard_cap_on": forecast.hits_cap_on,
        "uncapped_p50_usd": format_usd(forecast.uncapped_p50_nanos),
        "outlook": outlook_text(forecast),
        "crossings": crossing_dates(row),
        "overrun_band": row["overrun_band"],
    }


async def current_forecast(
    svc: Services, budget_id: str, *, refresh: bool = False
) -> dict[str, Any]:
    """The stored forecast if it is of this period and fresh; else computed now (with every
    call this process has answered: its ledger buffer is flushed first) and stored."""
    budget = budget_from_row(await svc.policies.get_budget(budget_id))
    now = svc.clock.now()
    row = await stored_forecast(svc.engine, budget_id)
    key = window_at(now, budget.period, budget.timezone, budget.week_start).key
    if refresh or row is None or row["period_key"] != key or row["generated_at"] < now - MAX_AGE:
        await svc.ledger.flush()
        raises = {budget.id: svc.enforcer.raises_for(budget.id)}
        await refresh_all(
            svc.engine,
            [budget],
            now,
            raises=raises,
            escalation=svc.settings.forecast_overrun_escalation,
        )
        row = await stored_forecast(svc.engine, budget_id)
        if row is None:  # deleted meanwhile
            raise NotFound(f"budget {budget_id} not found", param="budget_id")
    return forecast_out(row)


async def forecasts_for_status(
    svc: Services, period_keys: Mapping[str, str]
) -> dict[str, dict[str, Any] | None]:
    """The stored forecast of this period of each budget (budget id: its period key) for
    the budget status route, in one query (never computes; None: none of this period)."""
    rows = await stored_forecasts(svc.engine, list(period_keys))
    out: dict[str, dict[str, Any] | None] = {}
    for budget_id, period_key in period_keys.items():
        row = rows.get(budget_id)
        out[budget_id] = (
            forecast_out(row) if row is not None and row["period_key"] == period_key else None
        )
    return out


@router.get(
    "/forecasts/{budget_id}",
    response_model=s.ForecastOut,
    tags=["forecasts"],
    dependencies=guard(Can.FORECASTS_READ),
)
async def get_forecast(
    budget_id: str, svc: Svc, scope: Scoped, refresh: bool = False
) -> dict[str, Any]:
    """Where the budget's current period is expected to land (P10/P50/P90)."""
    await scope.budget(budget_id)
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
