"""``/admin/usage``: showback from the rollups, in the org's reporting zone; rebuilding
the rollups from the ledger; purging raw ledger rows past their retention.

Times given without an offset (``2026-03-01``, ``2026-03-01T06:00``) are wall times in
the report's ``timezone``. A report's bounds must fall on quarter hours (rollups are kept
per 15 minutes, and every zone's days begin on one).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from spendgate.admin import schemas as s
from spendgate.admin.deps import Svc, Who, audit, guard, org_asked, principal
from spendgate.core import showback as sb
from spendgate.core.access import Can, Owner, Principal
from spendgate.core.budget_windows import validate_timezone, validate_week_start
from spendgate.core.csv_cells import table_csv
from spendgate.core.money import format_usd
from spendgate.errors import ValidationFailed
from spendgate.services import Services
from spendgate.store.rebuild import purge_ledger, rebuild
from spendgate.store.showback import MEASURES, usage_report

router = APIRouter(prefix="/admin", dependencies=[Depends(principal)], responses=s.ERRORS)

#: the longest report range, and the longest one grouped by hour
MAX_RANGE = timedelta(days=3 * 366)
MAX_HOURLY_RANGE = timedelta(days=93)


def parse_instant(value: str | None, field: str, zone: ZoneInfo) -> datetime | None:
    """An ISO 8601 date or time; without an offset it is a wall time in ``zone``."""
    if value is None or value == "":
        return None
    try:
        parsed = (
            datetime.fromisoformat(value)
            if "T" in value or " " in value
            else datetime.combine(date.fromisoformat(value), datetime.min.time())
        )
    except ValueError as exc:
        raise ValidationFailed(
            f"{field}: not an ISO 8601 date or time: {value!r}", param=field
        ) from exc
    try:
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        utc = s.in_range(parsed)
    except (ValueError, OverflowError) as exc:
        raise ValidationFailed(f"{field}: {exc}", param=field) from exc
    if not sb.on_boundary(utc):
        raise ValidationFailed(
            f"{field}: must fall on a quarter hour (usage is kept per 15 minutes)", param=field
        )
    return utc


def parse_group_by(value: str) -> list[str]:
    fields = list(dict.fromkeys(g.strip() for g in value.split(",") if g.strip()))
    bad = [g for g in fields if g not in sb.GROUP_NAMES]
    if bad:
        raise ValidationFailed(
            f"group_by: unknown dimension {bad[0]!r}; use {', '.join(sb.GROUP_NAMES)}",
            param="group_by",
        )
    if sum(g in sb.GRAINS for g in fields) > 1:
        raise ValidationFailed(f"group_by: at most one of {', '.join(sb.GRAINS)}", param="group_by")
    return fields


def parse_zone(value: str | None, field: str, default: str) -> str:
    try:
        return validate_timezone(value) if value else default
    except ValueError as exc:
        raise ValidationFailed(f"{field}: {exc}", param=field) from exc


async def org_reporting(svc: Services, org_id: str | None) -> tuple[str, str]:
    """The org's reporting zone and week start (``UTC``/``monday`` with no org)."""
    if org_id is None:
        return "UTC", "monday"
    org = await svc.directory.get_org(org_id)
    return str(org["reporting_timezone"]), str(org["week_start"])


def check_range(start: datetime | None, end: datetime | None, hourly: bool) -> None:
    if start is not None and end is not None and end <= start:
        raise ValidationFailed("end: must be after start", param="end")
    limit = MAX_HOURLY_RANGE if hourly else MAX_RANGE
    if start is not None and end is not None and end - start > limit:
        raise ValidationFailed(
            f"end: the range is longer than {limit.days} days"
            + (" (the limit grouped by hour)" if hourly else ""),
            param="end",
        )


def _filters(values: dict[str, str | None]) -> dict[str, Collection[str | None]]:
    out: dict[str, Collection[str | None]] = {}
    for dim, raw in values.items():
        if raw:
            out[dim] = [None if v == "none" else v for v in (x.strip() for x in raw.split(","))]
    return out


#: report figures that came after the CSV's first columns: they go last, after every
#: other column (``cumulative_cost_usd`` too), so a script reading columns by position
#: keeps reading the ones it knows
CSV_LAST = ("web_searches",)


def usage_csv(dims: list[str], rows: list[dict[str, Any]], cumulative: bool) -> str:
    """The report's ``rows`` as CSV: the dimension columns made inert for spreadsheets,
    the figures as they are (``CSV_LAST`` last). No total row: every line is one group,
    so a script can sum a column (the JSON's ``total_cost_usd`` is the total; the
    console's CSV, for people, ends with one)."""
    figures = [MONEY_SHOWN.get(m, m) for m in MEASURES if m not in CSV_LAST]
    extra = ["cumulative_cost_usd"] if cumulative else []
    columns = [*dims, *figures, *extra, *CSV_LAST]
    _money(rows)
    body = ([row.get(c) for c in columns] for row in rows)
    return table_csv(columns, body, None, len(dims))


#: each cost of a report row (nanos) -> the decimal dollars shown in its place
MONEY_SHOWN = {"cost_nanos": "cost_usd", "estimated_nanos": "estimated_usd"}


def _money(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        for nanos, usd in MONEY_SHOWN.items():
            row[usd] = format_usd(row.pop(nanos))
        if "cumulative_cost_nanos" in row:
            row["cumulative_cost_usd"] = format_usd(row.pop("cumulative_cost_nanos"))


FilterQ = Annotated[
    str | None, Query(description="comma separated values; `none`: the dimension is absent")
]


@router.get(
    "/usage",
    response_model=s.UsageReport,
    tags=["usage"],
    responses={200: {"content": {"text/csv": {}}}},
    dependencies=guard(Can.USAGE_READ),
)
async def usage(
    svc: Svc,
    request: Request,
    who: Who,
    group_by: Annotated[
        str, Query(description=f"comma separated: {', '.join(sb.GROUP_NAMES)}")
    ] = "",
    start: Annotated[str | None, Query(description="ISO 8601, inclusive")] = None,
    end: Annotated[str | None, Query(description="ISO 8601, exclusive")] = None,
    timezone: Annotated[
        str | None, Query(description="IANA zone of the time grains; default: the org's")
    ] = None,
    week_start: Annotated[str | None, Query(description="default: the org's")] = None,
    org_id: str | None = None,
    team_id: FilterQ = None,
    user_id: FilterQ = None,
    agent_id: FilterQ = None,
    key_id: FilterQ = None,
    tag: FilterQ = None,
    provider: FilterQ = None,
    model: FilterQ = None,
    kind: FilterQ = None,
    status: FilterQ = None,
    top: Annotated[int, Query(ge=0, le=1000, description="keep N groups, fold the rest")] = 0,
    cumulative: bool = False,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Any:
    """Spend grouped by any dimensions and one time grain, from the rollups."""
    dims = parse_group_by(group_by)
    org_id = await org_asked(svc, who, org_id)
    zone_default, week_default = await org_reporting(svc, org_id)
    tz = parse_zone(timezone, "timezone", zone_default)
    try:
        week = validate_week_start(week_start) if week_start else week_default
    except ValueError as exc:
        raise ValidationFailed(f"week_start: {exc}", param="week_start") from exc
    start_at = parse_instant(start, "start", ZoneInfo(tz))
    end_at = parse_instant(end, "end", ZoneInfo(tz))
    check_range(start_at, end_at, "hour" in dims)
    await svc.ledger.flush()
    teams = who.team_filter()
    filters = _filters(
        {
            "team": team_id,
            "user": user_id,
            "agent": agent_id,
            "key": key_id,
            "tag": tag,
            "provider": provider,
            "model": model,
            "kind": kind,
            "status": status,
        }
    )
    rows = await usage_report(
        svc.engine, dims, start_at, end_at, org_id, team_ids=teams, timezone=tz,
        week_start=week, filters=filters, top=top, cumulative=cumulative,
    )  # fmt: skip
    totals = rows
    if "tag" in dims:  # a call is in the row of each of its tags: totals count it once
        totals = await usage_report(
            svc.engine, [], start_at, end_at, org_id, team_ids=teams, timezone=tz,
            filters=filters,
        )  # fmt: skip
    if format == "csv":
        after = {"group_by": dims, "start": start, "end": end, "org_id": org_id}
        owner = Owner(org_id, teams or frozenset())
        await audit_export(svc, request, who, owner, {**after, "rows": len(rows)})
        return Response(usage_csv(dims, rows, cumulative), media_type="text/csv")
    document = usage_json(dims, start_at, end_at, tz, rows, totals)
    return Response(document, media_type="application/json")


def usage_json(
    dims: list[str],
    start: datetime | None,
    end: datetime | None,
    tz: str,
    rows: list[dict[str, Any]],
    totals: list[dict[str, Any]],
) -> bytes:
    """The ``UsageReport`` document of a report's ``rows`` (their money turned into
    decimal strings in place), its totals summed over ``totals`` (``rows`` itself but
    grouped by tag). Written by orjson: pushing tens of thousands of rows through
    pydantic's validation and encoder cost several times the query."""
    total_nanos = sum(row["cost_nanos"] for row in totals)
    unpriced = sum(row["unpriced_requests"] for row in totals)
    estimated_calls = sum(row["estimated_calls"] for row in totals)
    estimated_nanos = sum(row["estimated_nanos"] for row in totals)
    searches = sum(row["web_searches"] for row in totals)
    _money(rows)
    body = {
        "group_by": dims,
        "start": start,
        "end": end,
        "timezone": tz,
        "rows": rows,
        "total_cost_usd": format_usd(total_nanos),
        "unpriced_requests": unpriced,
        "estimated_calls": estimated_calls,
        "total_estimated_usd": format_usd(estimated_nanos),
        "web_searches": searches,
    }
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


async def audit_export(
    svc: Services, request: Request, who: Principal, owner: Owner, after: dict[str, Any]
) -> None:
    """A usage download is an audit entry (``usage.exported``): this route's CSV and the
    console's. ``after`` says what was exported."""
    async with svc.engine.begin() as conn:
        await audit(
            conn, request, who, "usage.exported", "usage", None, svc.clock.now(),
            owner=owner, after=after,
        )  # fmt: skip


class RebuildIn(s.Strict):
    start: s.Instant = Field(description="inclusive; a quarter hour (UTC if no offset)")
    end: s.Instant = Field(description="exclusive; a quarter hour")
    dry_run: s.Flag = Field(False, description="report the differences, change nothing")


class RebuildOut(BaseModel):
    start: datetime
    end: datetime
    ledger_rows: int
    rollup_rows: int
    difference_count: int
    differences: list[dict[str, Any]]
    fixed: bool


def _bound(value: datetime, field: str) -> datetime:
    try:
        utc = s.in_range(value)
    except ValueError as exc:
        raise ValidationFailed(f"{field}: {exc}", param=field) from exc
    if not sb.on_boundary(utc):
        raise ValidationFailed(f"{field}: must fall on a quarter hour", param=field)
    return utc


@router.post(
    "/usage/rebuild",
    response_model=RebuildOut,
    tags=["usage"],
    dependencies=guard(Can.USAGE_REBUILD),
)
async def rebuild_usage(body: RebuildIn, svc: Svc, request: Request, who: Who) -> Any:
    """Recompute the rollups of a range from the ledger; report (and fix) differences."""
    start, end = _bound(body.start, "start"), _bound(body.end, "end")
    if end <= start:
        raise ValidationFailed("end: must be after start", param="end")
    await svc.ledger.flush()
    report = await rebuild(svc.engine, start, end, dry_run=body.dry_run)
    async with svc.engine.begin() as conn:
        await audit(
            conn, request, who, "usage.rebuilt", "usage", None, svc.clock.now(),
            owner=Owner(None, frozenset()),
            after={
                "start": start.isoformat(), "end": end.isoformat(), "dry_run": body.dry_run,
                "differences": report.difference_count, "fixed": report.fixed,
            },
        )  # fmt: skip
    return asdict(report)


class PurgeIn(s.Strict):
    before: s.Instant | None = Field(
        None, description="default: now minus the configured retention; never later"
    )


class PurgeOut(BaseModel):
    purged: int
    before: datetime


@router.post(
    "/ledger/purge", response_model=PurgeOut, tags=["usage"], dependencies=guard(Can.LEDGER_PURGE)
)
async def purge_raw_ledger(body: PurgeIn, svc: Svc, request: Request, who: Who) -> Any:
    """Delete raw ledger rows past the retention (rollups and statements are kept)."""
    months = svc.settings.ledger_retention_months
    if months == 0:
        raise ValidationFailed("before: ledger retention is 0 (keep for ever)", param="before")
    limit = sb.months_before(svc.clock.now(), months)
    before = limit if body.before is None else _bound(body.before, "before")
    if before > limit:
        raise ValidationFailed(
            f"before: rows newer than {limit.isoformat()} are inside the retention "
            f"({months} months)",
            param="before",
        )
    purged = await purge_ledger(svc.engine, before)
    async with svc.engine.begin() as conn:
        await audit(
            conn, request, who, "ledger.purged", "ledger", None, svc.clock.now(),
            owner=Owner(None, frozenset()), after={"before": before.isoformat(), "rows": purged},
        )  # fmt: skip
    return {"purged": purged, "before": before}
