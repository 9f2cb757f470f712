"""``/usage``: spend over time, grouped and filtered, top N + Other, with a CSV of exactly
what is shown; for a selected budget, its period with levels and the forecast band.

Everything the page shows is in its URL (``preset``/``start``/``end``, ``grain``,
``group_by``, ``top``, one filter per dimension, ``budget``), so a view can be shared.
Who sees what is the admin API's rule: ``usage.read`` narrowed to the caller's teams;
a member (no admin role) sees their own calls only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import Response

from spendgate.admin.usage import audit_export
from spendgate.console.budget_view import BudgetView, budget_view
from spendgate.console.charts import budget_chart, stacked_bars
from spendgate.console.forms import field_errors
from spendgate.console.layout import Svc, User, harden, page, scope_for
from spendgate.console.naming import Namer
from spendgate.console.usage_source import (
    DIMENSIONS,
    GRAINS,
    UsageQuery,
    UsageSeries,
    usage_series,
)
from spendgate.core import budget_rules as rules
from spendgate.core.access import Can, Owner
from spendgate.core.csv_cells import table_csv
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.core.showback import local_day
from spendgate.errors import ValidationFailed
from spendgate.store.forecasts import spend_by_day
from spendgate.store.policies import budget_from_row

router = APIRouter(include_in_schema=False)
PRESETS = {"7d": 7, "30d": 30, "90d": 90}
PRESET_CHOICES = [*PRESETS, "mtd", "custom"]
OTHER = "Other"


@dataclass(frozen=True, slots=True)
class View:
    """The page's parameters, validated (bad values: 422 naming the parameter)."""

    preset: str
    start: date
    end: date  # exclusive
    grain: str
    group_by: str
    top: int
    filters: dict[str, str]
    budget: str

    def url(self, **changes: Any) -> str:
        params = {
            "preset": self.preset,
            "grain": self.grain,
            "group_by": self.group_by,
            "top": self.top,
            **self.filters,
        }
        if self.preset == "custom":
            params.update(start=self.start.isoformat(), end=self.end.isoformat())
        if self.budget:
            params["budget"] = self.budget
        params.update(changes)
        return "/usage?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})


#: the custom dates the page takes: the admin API's instants (``schemas.in_range``, 1970
#: to 9000) a day inside either end, so that a local midnight of any zone is one of them
FIRST_DAY, LAST_DAY = date(1970, 1, 2), date(8999, 12, 31)


def _day(value: str, name: str) -> date:
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise ValidationFailed(f"{name}: not a date (YYYY-MM-DD): {value!r}", param=name) from exc
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValidationFailed(f"{name}: must be between 1970 and 9000", param=name)
    return day


def parse_view(params: dict[str, str], today: date) -> View:
    preset = params.get("preset") or "30d"
    if preset in PRESETS:
        start, end = today - timedelta(days=PRESETS[preset] - 1), today + timedelta(days=1)
    elif preset == "mtd":
        start, end = today.replace(day=1), today + timedelta(days=1)
    elif preset == "custom":
        start = _day(params.get("start", ""), "start")
        end = _day(params.get("end", ""), "end")
        if end <= start:
            raise ValidationFailed("end: must be after start", param="end")
        if (end - start).days > 731:
            raise ValidationFailed("end: show at most two years at once", param="end")
    else:
        raise ValidationFailed(f"preset: unknown preset {preset!r}", param="preset")
    grain = params.get("grain") or "day"
    if grain not in GRAINS:
        raise ValidationFailed(f"grain: use one of {', '.join(GRAINS)}", param="grain")
    group_by = params.get("group_by") or "model"
    if group_by not in DIMENSIONS:
        raise ValidationFailed(
            f"group_by: use one of {', '.join(DIMENSIONS)} (one dimension; the time grain is "
            "grain, the form's Per)",
            param="group_by",
        )
    top_raw = params.get("top") or "5"
    if not top_raw.isdigit() or not 1 <= int(top_raw) <= 20:
        raise ValidationFailed("top: a whole number from 1 to 20", param="top")
    filters = {d: params[d] for d in DIMENSIONS if params.get(d)}
    return View(
        preset, start, end, grain, group_by, int(top_raw), filters, params.get("budget", "")
    )


def top_n(series: UsageSeries, n: int) -> list[tuple[str, dict[date, int], int]]:
    """The ``n`` costliest groups, then ``Other`` with the rest (labels, cells, total)."""
    ranked = sorted(series.totals, key=lambda g: (-series.totals[g], g))
    keep, rest = ranked[:n], ranked[n:]
    out = []
    for group in keep:
        cells = {b: v for (b, g), v in series.cells.items() if g == group}
        out.append((group, cells, series.totals[group]))
    if rest:
        other: dict[date, int] = {}
        for (b, g), v in series.cells.items():
            if g in rest:
                other[b] = other.get(b, 0) + v
        out.append((OTHER, other, sum(series.totals[g] for g in rest)))
    return out


def per_row(
    part: dict[str, int], series: UsageSeries, rows: list[tuple[str, dict[date, int], int]]
) -> dict[str, int]:
    """A figure per group (``part``) for the groups shown (``top_n``'s rows);
    ``Other``'s the sum of the groups folded into it."""
    shown = {label for label, _, _ in rows}
    out = {g: part.get(g, 0) for g in shown}
    if OTHER in shown and OTHER not in series.totals:
        out[OTHER] = sum(part.get(g, 0) for g in series.totals if g not in shown)
    return out


def estimated_of(
    series: UsageSeries, rows: list[tuple[str, dict[date, int], int]]
) -> dict[str, tuple[int, int]]:
    """Per group shown: its calls billed on an estimate and their cost."""
    calls = per_row(series.estimated_calls, series, rows)
    cost = per_row(series.estimated, series, rows)
    return {g: (calls[g], cost[g]) for g in calls}


def usage_query(user: Any, view: View, zone: str = "UTC", week: str = "monday") -> UsageQuery:
    """What the caller may see, as the admin API decides it, in local days of ``zone``."""
    who = user.principal
    start = datetime.combine(view.start, datetime.min.time(), tzinfo=ZoneInfo(zone))
    end = datetime.combine(view.end, datetime.min.time(), tzinfo=ZoneInfo(zone))
    if who.may(Can.USAGE_READ):
        narrowed = who.acting_for(Can.USAGE_READ)
        return UsageQuery(
            start,
            end,
            view.group_by,
            view.grain,
            narrowed.org_filter(None),
            narrowed.team_filter(),
            None,
            view.filters,
            zone,
            week,
        )
    # a member: their own calls, nothing else
    return UsageQuery(
        start, end, view.group_by, view.grain, who.org_id, None, who.user_id, view.filters,
        zone, week,
    )  # fmt: skip


def _csv(
    view: View,
    buckets: list[date],
    rows: list[tuple[str, dict[date, int], int]],
    names: dict[str, str],
    per_bucket: dict[date, int],
    total: int,
    estimated: dict[str, tuple[int, int]],
    estimated_total: tuple[int, int],
    unpriced: dict[str, int],
    unpriced_total: int,
) -> str:
    """The table as shown, with each group's part billed on an estimate (its cost and
    calls: :func:`estimated_of`) and its calls of unknown price (in no figure); its
    total row counts each call once (grouped by tag, a call with several tags is in
    several columns)."""

    def tail(group_total: int, part: tuple[int, int], unknown: int) -> list[str]:
        return [format_usd(group_total), format_usd(part[1]), str(part[0]), str(unknown)]

    return table_csv(
        [view.group_by, "name", *(b.isoformat() for b in buckets), "total_usd",
         "estimated_usd", "estimated_calls", "unpriced_requests"],
        (
            [label, names.get(label, ""), *(format_usd(cells.get(b, 0)) for b in buckets),
             *tail(group_total, estimated.get(label, (0, 0)), unpriced.get(label, 0))]
            for label, cells, group_total in rows
        ),
        ["", *(format_usd(per_bucket.get(b, 0)) for b in buckets),
         *tail(total, estimated_total, unpriced_total)],
        2,
    )  # fmt: skip


async def _audit_export(svc: Any, request: Request, user: Any, q: UsageQuery, rows: int) -> None:
    """A CSV download is an audit entry, as ``GET /admin/usage?format=csv`` makes one."""
    after = {
        "group_by": ["day", q.group_by],
        "start": q.start.isoformat(),
        "end": q.end.isoformat(),
        "timezone": q.timezone,
        "org_id": q.org_id,
        "filters": dict(q.filters),
        "rows": rows,
        "via": "console",
    }
    owner = Owner(q.org_id, frozenset(q.team_ids or ()))
    await audit_export(svc, request, user.principal, owner, after)


async def group_names(svc: Any, user: Any, dim: str) -> dict[str, str]:
    """Readable names of the groups (team and agent names, emails, key names) the caller
    may see (``console.naming``: one query for the dimension), by id; ids stay as they
    are otherwise."""
    return await Namer(svc, user.principal).names(dim)


async def _visible_budgets(svc: Any, user: Any) -> list[dict[str, Any]]:
    who = user.principal
    if not who.may(Can.BUDGETS_READ):
        return []
    scope = scope_for(svc, who.acting_for(Can.BUDGETS_READ))
    rows = await svc.policies.list_budgets(who.org_id)
    return await scope.filter(rows, scope.of_policy)


async def _series(svc: Any, request: Request, q: UsageQuery) -> UsageSeries:
    """``usage_series`` with the console's kept figures of closed days."""
    closed = request.app.state.closed_days
    return await usage_series(svc.engine, q, closed, svc.clock.now(), svc.clock.monotonic())


@router.get("/usage")
async def usage_page(request: Request, svc: Svc, user: User) -> Response:
    params = dict(request.query_params)
    org = await svc.directory.get_org(str(user.principal.org_id))
    zone, week = org.get("reporting_timezone") or "UTC", org.get("week_start") or "monday"
    today = svc.clock.now().astimezone(ZoneInfo(zone)).date()
    try:
        view = parse_view(params, today)
    except ValidationFailed as exc:  # the filters again, as typed, the message beside one
        return await page(
            request,
            "usage.html",
            {
                "view": parse_view({}, today),
                "typed": params,
                "errors": field_errors(exc),
                "budgets": await _visible_budgets(svc, user),
                "dimensions": DIMENSIONS,
                "grains": GRAINS,
                "presets": PRESET_CHOICES,
                "member_view": not user.principal.may(Can.USAGE_READ),
            },
            status=422,
        )
    await svc.ledger.flush()  # the calls this process answered are in the rollups
    query = usage_query(user, view, zone, week)
    series = await _series(svc, request, query)
    rows = top_n(series, view.top)
    # grouped by tag, a call is under each of its tags: the totals count it once
    once = (
        await _series(svc, request, replace(query, group_by=""))
        if view.group_by == "tag"
        else series
    )
    per_bucket = {b: sum(v for (c, _), v in once.cells.items() if c == b) for b in once.buckets}
    names = await group_names(svc, user, view.group_by)
    estimated = estimated_of(series, rows)
    estimated_total = (sum(once.estimated_calls.values()), sum(once.estimated.values()))
    unpriced = per_row(series.unpriced_calls, series, rows)
    if params.get("format") == "csv":
        body = _csv(
            view, series.buckets, rows, names, per_bucket, once.total,
            estimated, estimated_total, unpriced, once.unpriced,
        )  # fmt: skip
        await _audit_export(svc, request, user, query, len(rows))
        headers = {"content-disposition": 'attachment; filename="spendgate-usage.csv"'}
        return harden(request, Response(body, media_type="text/csv", headers=headers))
    chart = stacked_bars(
        series.buckets,
        [(names.get(label, label), cells) for label, cells, _ in rows],
        title=f"Spend per {view.grain} by {view.group_by}",
        zone=series.zone,
        totals=per_bucket if once is not series else None,
    )
    budgets = await _visible_budgets(svc, user)
    selected: BudgetView | None = None
    budget_svg = None
    if view.budget:
        who = user.principal.acting_for(Can.BUDGETS_READ)
        selected = await budget_view(scope_for(svc, who), view.budget)
        budget_svg = await _budget_chart(svc, request, selected)
    return await page(
        request,
        "usage.html",
        {
            "view": view,
            "series": series,
            "rows": rows,
            "total": once.total,
            "unpriced": once.unpriced,
            "unpriced_of": unpriced,
            "estimated": estimated,
            "estimated_total": estimated_total,
            "per_bucket": per_bucket,
            "overlap": once is not series,
            "names": names,
            "chart": chart,
            "budgets": budgets,
            "selected": selected,
            "budget_chart": budget_svg,
            "spent_nanos": usd_to_nanos(selected.status["spent_usd"]) if selected else 0,
            "dimensions": DIMENSIONS,
            "grains": GRAINS,
            "presets": PRESET_CHOICES,
            "usd": format_usd,
            "member_view": not user.principal.may(Can.USAGE_READ),
        },
    )


async def _budget_days(
    svc: Any, row: dict[str, Any], start: datetime, end: datetime
) -> dict[date, int]:
    """Spend per local day of a budget that counts only some of its scope's calls (its
    categories: providers, model patterns, kinds, tags): each subject (the attributes the
    budget compares, ``budget_rules.dimensions``; a tag set whole) that the budget counts
    (``budget_rules.applies``, as its status and forecast count them), summed per local
    day by the database from the narrowest rollup that has them (the daily or narrow one
    unless the budget names a tag) and the ledger's part buckets at the ends
    (``forecasts.spend_by_day``: the ledger's figures, to the nano)."""
    budget = budget_from_row(row)
    stored = await spend_by_day(
        svc.engine,
        start,
        end + timedelta(seconds=1),
        [budget.timezone],
        [budget.org_id],
        rules.scope_field(budget),
        dimensions=rules.dimensions(budget),
    )
    out: dict[date, int] = defaultdict(int)
    for subject, days, costs in stored.by_org.get(budget.org_id, []):
        if rules.applies(budget, subject):
            for day, cost in zip(days[0].tolist(), costs.tolist(), strict=True):
                out[local_day(day)] += cost
    return out


async def _budget_chart(svc: Any, request: Request, selected: BudgetView) -> Any:
    """Cumulative spend of the budget's scope over its period so far, with its levels."""
    days = selected.period_days
    row = selected.row
    now = svc.clock.now()
    filters = {}
    if row["scope_type"] in DIMENSIONS:  # a tag budget's tag is its ``tag``, not scope_id
        filters[row["scope_type"]] = row["tag"] if row["scope_type"] == "tag" else row["scope_id"]
    status = selected.status
    zone = row["timezone"]
    per_day = {b: 0 for b in days}
    if selected.counts_some_calls:
        spent = await _budget_days(svc, row, status["period_start"], min(now, status["period_end"]))
    else:
        q = UsageQuery(
            status["period_start"], status["period_end"], "model", "day", row["org_id"], None,
            None, filters, zone, row["week_start"],
        )  # fmt: skip
        spent = defaultdict(int)
        for (b, _), v in (await _series(svc, request, q)).cells.items():
            spent[b] += v
    for b, v in spent.items():
        if b in per_day:
            per_day[b] += v
    cumulative, running = [], 0
    today = now.astimezone(ZoneInfo(zone)).date()
    for day in days:
        if day > today:
            break
        running += per_day[day]
        cumulative.append(running)
    return budget_chart(
        days,
        cumulative,
        selected.levels,
        selected.band,
        title=f"Budget {row['name']}: spend this period",
        zone=zone,
    )
