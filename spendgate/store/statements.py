"""Monthly chargeback statements: drawn from the rollups, frozen when a month is closed.

A month is the calendar month of the org's reporting zone (``budget_windows``, the one
home of period windows). ``draw`` computes every team's statement and the org's from
six rollup queries (team x model, provider, key, user, agent, tag) plus the spend no
team owns by tag set, shared out by the org's allocation rules (``core.chargeback``).

**Frozen.** ``close`` stores version 1 of each statement with the SHA-256 of its
canonical JSON; the tables refuse UPDATE and DELETE (triggers, migration 0013) and, on
SQLite, an ``INSERT OR REPLACE`` over a stored row (0027). The
caller writes the hashes to the audit log in the same transaction. ``reissue`` draws the
month again (in the zone it was closed in) and stores a new version, with a diff
against the one it supersedes, for each statement whose figures changed — late ledger
rows, a rebuilt rollup, an allocation rule changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import astuple
from datetime import UTC, date, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core import budget_rules as rules
from spendgate.core import chargeback as cb
from spendgate.core.budget_rules import percent_used
from spendgate.core.budget_windows import Window, window_at
from spendgate.core.money import format_usd
from spendgate.core.showback import bucket_of
from spendgate.errors import Conflict, NotFound, ValidationFailed
from spendgate.security.credentials import new_id
from spendgate.store import schema
from spendgate.store.cost_sums import cost_from_sums, split_cost_sum
from spendgate.store.forecasts import spend_by_day
from spendgate.store.policies import budget_from_row
from spendgate.store.rollups import NANOS, usage_rollup
from spendgate.store.showback import usage_report
from spendgate.store.showback_schema import allocation_rules, statement_months, statements

SECTIONS = ("model", "provider", "key", "user", "agent", "tag")
FIRED = ("budget.threshold_crossed", "budget.soft_limit_reached", "budget.hard_limit_reached")
ORG = ""  # the team_id of the org statement


def month_window(month: str, tz: str) -> Window:
    try:
        first = date.fromisoformat(f"{month}-01")
    except ValueError as exc:
        raise ValidationFailed(f"month: {month!r} is not YYYY-MM", param="month") from exc
    if len(month) != 7:
        raise ValidationFailed(f"month: {month!r} is not YYYY-MM", param="month")
    noon = datetime.combine(first, time(12), ZoneInfo(tz)).astimezone(UTC)
    return window_at(noon, "monthly", tz)


def canonical(content: Mapping[str, Any]) -> tuple[str, str]:
    """The stored text of a statement and its SHA-256 (what the audit log keeps)."""
    text = orjson.dumps(content, option=orjson.OPT_SORT_KEYS).decode()
    return text, hashlib.sha256(text.encode()).hexdigest()


async def _rules(conn: AsyncConnection, org_id: str) -> list[cb.AllocationRule]:
    t = allocation_rules
    rows = await conn.execute(
        sa.select(t).where(t.c.org_id == org_id).order_by(t.c.position, t.c.id)
    )
    return [cb.AllocationRule(r.id, r.tag, r.method, dict(r.shares)) for r in rows]


async def _unowned_by_tags(conn: AsyncConnection, org_id: str, w: Window) -> dict[str, int]:
    t = usage_rollup
    rows = await conn.execute(
        sa.select(t.c.tags, *split_cost_sum(t.c.cost_usd, t.c.cost_nanos))
        .where(t.c.org_id == org_id, t.c.team_id == "")
        .where(t.c.bucket >= bucket_of(w.start), t.c.bucket < bucket_of(w.end))
        .group_by(t.c.tags)
    )
    return {tags: cost_from_sums(whole, rest) for tags, whole, rest in rows}


async def _budgets(
    conn: AsyncConnection, org_id: str, w: Window
) -> tuple[dict[str, list[Any]], dict[str, rules.Budget]]:
    """Each team's budgets with the thresholds they fired and exceptions granted in ``w``;
    and each budget's rule by id."""
    b, x, ev = schema.budgets, schema.budget_exceptions, schema.events
    budgets = (
        await conn.execute(
            sa.select(b).where(b.c.org_id == org_id, b.c.scope_type == "team").order_by(b.c.id)
        )
    ).all()
    fired = await conn.execute(
        sa.select(ev.c.type, ev.c.data, ev.c.created_at)
        .where(ev.c.org_id == org_id, ev.c.type.in_(FIRED))
        .where(ev.c.created_at >= w.start, ev.c.created_at < w.end)
        .order_by(ev.c.created_at, ev.c.id)
    )
    by_budget: dict[str, list[dict[str, Any]]] = {}
    for type_, data, at in fired:
        by_budget.setdefault(str(data.get("budget_id")), []).append(
            {"type": type_, "percent": data.get("percent"), "at": at.isoformat()}
        )
    granted = await conn.execute(
        sa.select(x)
        .where(x.c.budget_id.in_([r.id for r in budgets]))
        .where(x.c.starts_at < w.end, x.c.expires_at > w.start)
        .order_by(x.c.starts_at, x.c.id)
    )
    exceptions: dict[str, list[dict[str, Any]]] = {}
    for e in granted:
        exceptions.setdefault(e.budget_id, []).append(
            {"amount_usd": format_usd(e.amount_nanos), "reason": e.reason,
             "granted_by": e.granted_by, "expires_at": e.expires_at.isoformat()}
        )  # fmt: skip
    out: dict[str, list[Any]] = {}
    for r in budgets:
        out.setdefault(r.scope_id, []).append(
            {"id": r.id, "name": r.name, "period": r.period, "amount_nanos": r.amount_nanos,
             "thresholds_fired": by_budget.get(r.id, []), "exceptions": exceptions.get(r.id, [])}
        )  # fmt: skip
    return out, {r.id: budget_from_row(dict(r._mapping)) for r in budgets}


async def _counted(
    engine: AsyncEngine, org_id: str, w: Window, tz: str, budgets: Iterable[rules.Budget]
) -> dict[str, int]:
    """What each team budget with categories counted of its team's calls in ``w``: the
    calls its rule takes (``budget_rules.applies``, as its status counts them), summed
    from the rollups by ``forecasts.spend_by_day`` (the ledger's figures, to the nano).
    A budget without categories counts its team's own spend, the statement's figure."""
    out: dict[str, int] = {}
    for budget in budgets:
        if not any(astuple(budget.categories)):
            continue
        days = await spend_by_day(
            engine, w.start, w.end, [tz], [org_id], rules.scope_field(budget),
            dimensions=rules.dimensions(budget),
        )  # fmt: skip
        out[budget.id] = sum(
            int(costs.sum())
            for subject, _, costs in days.by_org.get(org_id, [])
            if rules.applies(budget, subject)
        )
    return out


def _breakdown(rows: list[dict[str, Any]], dim: str) -> dict[str | None, list[dict[str, Any]]]:
    """Rows grouped by (team, ``dim``) -> per team: ``[{id, cost_nanos, requests,
    unpriced_requests}]`` (the calls of unknown price, $0 in ``cost_nanos``)."""
    out: dict[str | None, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["team"], []).append(
            {"id": row[dim] or "(none)", "cost_nanos": row["cost_nanos"],
             "requests": row["requests"], "unpriced_requests": row["unpriced_requests"]}
        )  # fmt: skip
    for items in out.values():
        items.sort(key=lambda i: (-i["cost_nanos"], str(i["id"])))
    return out


def _team_figures(rows: list[dict[str, Any]], teams: Iterable[str]) -> dict[str, dict[str, int]]:
    """Each team's ``chargeback.LINE_FIGURES`` (the usage report's names) summed over its
    rows (0 without calls; a sparse figure at 0 left out): what its line says of its
    own calls."""
    out = {team: dict.fromkeys(cb.LINE_FIGURES, 0) for team in teams}
    for row in rows:
        if row["team"] is not None:
            into = out.setdefault(row["team"], dict.fromkeys(cb.LINE_FIGURES, 0))
            for name in cb.LINE_FIGURES:
                into[name] += row[name]
    return {team: cb.line_of(figures) for team, figures in out.items()}


def _org_breakdown(rows: list[dict[str, Any]], dim: str) -> list[dict[str, Any]]:
    sums: dict[str, list[int]] = {}
    for row in rows:
        into = sums.setdefault(row[dim] or "(none)", [0, 0, 0])
        into[0] += row["cost_nanos"]
        into[1] += row["requests"]
        into[2] += row["unpriced_requests"]
    return sorted(
        ({"id": k, "cost_nanos": c, "requests": n, "unpriced_requests": u}
         for k, (c, n, u) in sums.items()),
        key=lambda i: (-i["cost_nanos"], i["id"]),
    )  # fmt: skip


async def draw(
    engine: AsyncEngine, org: Mapping[str, Any], month: str, tz: str
) -> dict[str, dict[str, Any]]:
    """Every statement of ``org`` for ``month`` in zone ``tz``: team id -> content, and
    the org's under ``""``."""
    w = month_window(month, tz)
    org_id = org["id"]
    by = {
        dim: await usage_report(engine, ["team", dim], w.start, w.end, org_id) for dim in SECTIONS
    }
    async with engine.connect() as conn:
        teams = {
            r.id: r.name
            for r in await conn.execute(
                sa.select(schema.teams.c.id, schema.teams.c.name)
                .where(schema.teams.c.org_id == org_id)
                .order_by(schema.teams.c.id)
            )
        }
        unowned = await _unowned_by_tags(conn, org_id, w)
        rules = await _rules(conn, org_id)
        budgets, plans = await _budgets(conn, org_id, w)
    counted = await _counted(engine, org_id, w, tz, plans.values())
    own = {t: 0 for t in teams}
    unpriced: dict[str | None, int] = {}  # calls of unknown price ($0) per team
    for row in by["model"]:
        unpriced[row["team"]] = unpriced.get(row["team"], 0) + row["unpriced_requests"]
        if row["team"] is not None:
            own[row["team"]] = own.get(row["team"], 0) + row["cost_nanos"]
    allocation = cb.allocate(unowned, own, rules, sorted(teams))
    figures = _team_figures(by["model"], own)
    head = {"org_id": org_id, "org_name": org["name"], "month": month, "timezone": tz,
            "period_start": w.start.isoformat(), "period_end": w.end.isoformat()}  # fmt: skip
    sections = {dim: _breakdown(by[dim], dim) for dim in SECTIONS}
    out: dict[str, dict[str, Any]] = {}
    org_lines = []
    for team_id in sorted(own):
        allocated = allocation.lines.get(team_id, [])
        lines: list[dict[str, Any]] = [
            {"id": "own", "label": "Own spend", "cost_nanos": own[team_id], **figures[team_id]}
        ]
        lines += [
            {"id": f"allocated:{rule_id}", "label": f"Allocated ({method}): "
             + (f"tag {tag}" if tag else "spend without a team"), "cost_nanos": nanos}
            for rule_id, tag, method, nanos in allocated
        ]  # fmt: skip
        total = sum(int(line["cost_nanos"]) for line in lines)
        out[team_id] = {
            **head, "kind": "team", "team_id": team_id, "team_name": teams.get(team_id, team_id),
            "lines": lines, "total_nanos": total,
            "unpriced_requests": unpriced.get(team_id, 0),
            "breakdown": {dim: sections[dim].get(team_id, []) for dim in SECTIONS},
            "budgets": [
                _outcome(b, counted.get(b["id"], own[team_id]), plans[b["id"]].timezone == tz)
                for b in budgets.get(team_id, [])
            ],
        }  # fmt: skip
        org_lines.append({"id": team_id, "label": teams.get(team_id, team_id),
                          "own_nanos": own[team_id], "cost_nanos": total,
                          **figures[team_id]})  # fmt: skip
    org_lines.append(
        {"id": "unallocated", "label": "Unallocated", "cost_nanos": allocation.unallocated_nanos}
    )
    out[ORG] = {
        **head, "kind": "org", "team_id": None, "lines": org_lines,
        "total_nanos": sum(line["cost_nanos"] for line in org_lines),
        "unpriced_requests": sum(unpriced.values()),
        "breakdown": {dim: _org_breakdown(by[dim], dim) for dim in SECTIONS},
    }  # fmt: skip
    return out


def _outcome(budget: dict[str, Any], spent: int, same_zone: bool) -> dict[str, Any]:
    # a monthly budget's month is the statement's only when both use one zone;
    # other periods have several windows in a month, so no single percentage
    whole = budget["period"] == "monthly" and same_zone
    return {
        **budget,
        "spent_nanos": spent,
        "percent_used": f"{percent_used(spent, budget['amount_nanos'])}" if whole else None,
    }


# -- stored statements ---------------------------------------------------------------------
async def closed_month(conn: AsyncConnection | AsyncEngine, org_id: str, month: str) -> Any:
    t = statement_months
    query = sa.select(t).where(t.c.org_id == org_id, t.c.month == month)
    if isinstance(conn, AsyncEngine):
        async with conn.connect() as c:
            return (await c.execute(query)).first()
    return (await conn.execute(query)).first()


async def latest(conn: AsyncConnection, org_id: str, month: str) -> dict[str, Any]:
    """The newest stored version of each statement of the month: team id -> row."""
    t = statements
    rows = await conn.execute(
        sa.select(t).where(t.c.org_id == org_id, t.c.month == month).order_by(t.c.version)
    )
    return {r.team_id: _read(r._mapping) for r in rows}


def stored_total(total_nanos: int) -> dict[str, int]:
    """A statement's total as stored: whole dollars and the nanos below them."""
    whole, rest = divmod(total_nanos, NANOS)
    return {"total_whole_usd": whole, "total_rest_nanos": rest}


def _read(row: Any) -> dict[str, Any]:
    """A stored statement row with its exact ``total_nanos`` put back together."""
    out = dict(row)
    out["total_nanos"] = cost_from_sums(out.pop("total_whole_usd"), out.pop("total_rest_nanos"))
    return out


async def _insert(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store statement rows (``_row``); returns them as read back (``total_nanos``)."""
    await conn.execute(
        statements.insert(),
        [{**{k: v for k, v in r.items() if k != "total_nanos"}, **stored_total(r["total_nanos"])}
         for r in rows],
    )  # fmt: skip
    return rows


def _row(
    org_id: str, team_id: str, month: str, version: int, content: dict[str, Any], actor: str,
    now: datetime, supersedes: str | None = None, diff: list[Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    text, digest = canonical(content)
    return {
        "id": new_id("stm"), "org_id": org_id, "team_id": team_id, "month": month,
        "version": version, "total_nanos": int(content["total_nanos"]), "content": text,
        "content_hash": digest, "supersedes": supersedes,
        "diff": None if diff is None else orjson.dumps(diff).decode(),
        "created_by": actor, "created_at": now,
    }  # fmt: skip


async def close(
    engine: AsyncEngine, conn: AsyncConnection, org: Mapping[str, Any], month: str,
    actor: str, now: datetime,
) -> list[dict[str, Any]]:  # fmt: skip
    """Freeze the month's statements (version 1) in ``conn``'s transaction."""
    tz = str(org["reporting_timezone"])
    if month_window(month, tz).end > now:
        raise ValidationFailed(f"month: {month} has not ended in {tz}", param="month")
    already = Conflict(f"month {month} is already closed; reissue to take late spend")
    if await closed_month(conn, org["id"], month) is not None:
        raise already
    drawn = await draw(engine, org, month, tz)
    rows = [_row(org["id"], team, month, 1, c, actor, now) for team, c in sorted(drawn.items())]
    try:
        await _insert(conn, rows)
        await conn.execute(
            statement_months.insert().values(
                org_id=org["id"], month=month, timezone=tz, closed_by=actor, closed_at=now
            )
        )
    except IntegrityError as exc:  # a close of the same month committed since the check
        raise already from exc
    return rows


async def reissue(
    engine: AsyncEngine, conn: AsyncConnection, org: Mapping[str, Any], month: str,
    actor: str, now: datetime,
) -> list[dict[str, Any]]:  # fmt: skip
    """A new version of each statement of a closed month whose figures changed."""
    closed = await closed_month(conn, org["id"], month)
    if closed is None:
        raise Conflict(f"month {month} is not closed; its statements are provisional")
    drawn = await draw(engine, org, month, closed.timezone)
    stored = await latest(conn, org["id"], month)
    rows = []
    for team, content in sorted(drawn.items()):
        before = stored.get(team)
        if before is not None and canonical(content)[1] == before["content_hash"]:
            continue
        old = orjson.loads(before["content"]) if before else {"total_nanos": 0}
        rows.append(
            _row(org["id"], team, month, (before["version"] + 1) if before else 1, content, actor,
                 now, before["id"] if before else None, cb.diff(old, content))
        )  # fmt: skip
    if rows:
        try:
            await _insert(conn, rows)
        except IntegrityError as exc:  # a reissue of the same month committed meanwhile
            raise Conflict(
                f"month {month} was reissued by another request at the same time; "
                "reissue again to take what is left"
            ) from exc
    return rows


async def list_statements(
    engine: AsyncEngine, org_id: str | None, month: str | None, team_ids: frozenset[str] | None
) -> list[dict[str, Any]]:
    t = statements
    query = sa.select(*(c for c in t.columns if c.name not in ("content", "diff")))
    if org_id is not None:
        query = query.where(t.c.org_id == org_id)
    if month is not None:
        query = query.where(t.c.month == month)
    if team_ids is not None:
        query = query.where(t.c.team_id.in_(sorted(team_ids)))
    query = query.order_by(t.c.month.desc(), t.c.org_id, t.c.team_id, t.c.version)
    async with engine.connect() as conn:
        return [_read(r._mapping) for r in await conn.execute(query)]


async def stored(
    engine: AsyncEngine, org_id: str, month: str, team_id: str, version: int | None
) -> dict[str, Any]:
    t = statements
    query = sa.select(t).where(t.c.org_id == org_id, t.c.month == month, t.c.team_id == team_id)
    query = query.order_by(t.c.version.desc())
    if version is not None:
        query = query.where(t.c.version == version)
    async with engine.connect() as conn:
        row = (await conn.execute(query.limit(1))).first()
    if row is None:
        raise NotFound(f"statement {month} {team_id or 'org'} v{version or 'latest'} not found")
    return _read(row._mapping)
