"""``/admin/statements``: monthly chargeback statements (list, get, close, reissue) and
``/admin/allocation-rules`` (how spend no team owns is shared out).

A team role reads its own teams' statements; the org statement (``team_id`` absent)
is for org-wide roles. An open month's statement is drawn live and marked provisional.
"""

from __future__ import annotations

from decimal import InvalidOperation
from typing import Annotated, Any, Literal

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from spendgate.admin import schemas as s
from spendgate.admin.deps import Svc, Who, audit, guard, org_asked, principal
from spendgate.admin.statement_views import render
from spendgate.core import chargeback as cb
from spendgate.core.access import Can, Owner, Principal
from spendgate.core.money import format_usd
from spendgate.errors import NotFound, ValidationFailed
from spendgate.security.credentials import new_id
from spendgate.services import Services
from spendgate.store import statements as store
from spendgate.store.database import delete_one
from spendgate.store.showback_schema import allocation_rules

router = APIRouter(prefix="/admin", dependencies=[Depends(principal)], responses=s.ERRORS)


async def _org(svc: Services, who: Principal, asked: str | None) -> dict[str, Any]:
    org_id = await org_asked(svc, who, asked)
    if org_id is None:
        raise ValidationFailed("org_id: required with the master key", param="org_id")
    return await svc.directory.get_org(org_id)


def _may_read(who: Principal, org_id: str, team_id: str | None) -> None:
    if not who.sees(Owner.of(org_id, team_id)) or (team_id is None and not who.org_wide):
        raise NotFound(f"statement of {team_id or 'org ' + org_id} not found")


class StatementRef(BaseModel):
    id: str
    org_id: str
    team_id: str | None
    month: str
    version: int
    total_usd: str
    content_hash: str
    supersedes: str | None
    created_by: str
    created_at: Any


def _ref(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "team_id": row["team_id"] or None, "total_usd": format_usd(row["total_nanos"])}


@router.get(
    "/statements",
    response_model=list[StatementRef],
    tags=["statements"],
    dependencies=guard(Can.STATEMENTS_READ),
)
async def list_statements(
    svc: Svc, who: Who, org_id: str | None = None, month: str | None = None
) -> list[dict[str, Any]]:
    """Stored (closed and reissued) statements, newest month first."""
    rows = await store.list_statements(
        svc.engine, await org_asked(svc, who, org_id), month, who.team_filter()
    )
    return [_ref(r) for r in rows]


@router.get(
    "/statements/{month}",
    tags=["statements"],
    responses={200: {"content": {"text/csv": {}, "text/html": {}, "application/x-ndjson": {}}}},
    dependencies=guard(Can.STATEMENTS_READ),
)
async def get_statement(
    month: str,
    svc: Svc,
    who: Who,
    org_id: str | None = None,
    team_id: Annotated[str | None, Query(description="absent: the org statement")] = None,
    version: Annotated[int | None, Query(ge=1)] = None,
    format: Annotated[str, Query(pattern="^(json|csv|jsonl|html)$")] = "json",
) -> Any:
    """A month's statement: the stored one of a closed month (latest version unless
    asked), else drawn live and provisional."""
    org = await _org(svc, who, org_id)
    _may_read(who, org["id"], team_id)
    store.month_window(month, str(org["reporting_timezone"]))  # 422 on a bad month
    if await store.closed_month(svc.engine, org["id"], month) is not None:
        row = await store.stored(svc.engine, org["id"], month, team_id or store.ORG, version)
        meta = {"provisional": False, "id": row["id"], "version": row["version"],
                "content_hash": row["content_hash"],
                "diff": orjson.loads(row["diff"]) if row["diff"] else None}  # fmt: skip
        return render(format, meta, orjson.loads(row["content"]))
    if version is not None:
        raise NotFound(f"month {month} is open: no stored version {version}")
    await svc.ledger.flush()
    drawn = await store.draw(svc.engine, org, month, str(org["reporting_timezone"]))
    content = drawn.get(team_id or store.ORG)
    if content is None:
        raise NotFound(f"team {team_id} not found in org {org['id']}")
    meta = {"provisional": True, "id": None, "version": None, "content_hash": None, "diff": None}
    return render(format, meta, content)


class MonthIn(s.Strict):
    org_id: str | None = None


class Issued(BaseModel):
    month: str
    org_id: str
    statements: list[dict[str, Any]]


def _issued(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"id": r["id"], "team_id": r["team_id"] or None, "version": r["version"],
         "total_usd": format_usd(r["total_nanos"]), "content_hash": r["content_hash"],
         "diff": orjson.loads(r["diff"]) if r["diff"] else None}
        for r in rows
    ]  # fmt: skip


async def _issue(
    svc: Services, request: Request, who: Principal, month: str, body: MonthIn, reissue: bool
) -> dict[str, Any]:
    org = await _org(svc, who, body.org_id)
    await svc.ledger.flush()
    now = svc.clock.now()
    step = store.reissue if reissue else store.close
    async with svc.engine.begin() as conn:
        rows = await step(svc.engine, conn, org, month, who.actor, now)
        issued = _issued(rows)
        await audit(
            conn, request, who, "statement.reissued" if reissue else "statement.closed",
            "statement", f"{org['id']}:{month}", now, owner=Owner.of(org["id"]),
            after={"month": month, "statements": [
                {k: i[k] for k in ("id", "team_id", "version", "total_usd", "content_hash")}
                for i in issued]},
        )  # fmt: skip
    return {"month": month, "org_id": org["id"], "statements": issued}


@router.post(
    "/statements/{month}/close",
    response_model=Issued,
    tags=["statements"],
    dependencies=guard(Can.STATEMENTS_CLOSE),
)
async def close_month(
    month: str, body: MonthIn, svc: Svc, request: Request, who: Who
) -> dict[str, Any]:
    """Freeze the month's statements (every team's and the org's); hashes to the audit log."""
    return await _issue(svc, request, who, month, body, reissue=False)


@router.post(
    "/statements/{month}/reissue",
    response_model=Issued,
    tags=["statements"],
    dependencies=guard(Can.STATEMENTS_CLOSE),
)
async def reissue_month(
    month: str, body: MonthIn, svc: Svc, request: Request, who: Who
) -> dict[str, Any]:
    """A new version, with its diff, of each statement of a closed month that changed."""
    return await _issue(svc, request, who, month, body, reissue=True)


# -- allocation rules ------------------------------------------------------------------------
class RuleIn(s.Strict):
    org_id: str | None = None
    tag: s.Tag | None = Field(None, description="spend of calls without a team with this tag")
    method: Literal["proportional", "fixed", "even"]
    shares: dict[str, str] = Field(
        default_factory=dict,
        description='fixed: {team_id: "percent"}; even/proportional: {team_id: ""}, or {} '
        "for every team",
    )
    position: s.Whole = Field(0, ge=0, le=10_000, description="rules are tried in this order")


class RuleOut(BaseModel):
    id: str
    org_id: str
    tag: str | None
    method: str
    shares: dict[str, str]
    position: int


async def _check_shares(svc: Services, org_id: str, body: RuleIn) -> None:
    teams = {t["id"] for t in await svc.directory.list_teams(org_id)}
    unknown = sorted(set(body.shares) - teams)
    if unknown:
        raise ValidationFailed(f"shares: team {unknown[0]} is not in org {org_id}", param="shares")
    if body.method == "fixed":
        if not body.shares:
            raise ValidationFailed("shares: fixed needs a percentage per team", param="shares")
        try:
            cb.validate_fixed(body.shares)
        except (ValueError, InvalidOperation) as exc:
            raise ValidationFailed(str(exc), param="shares") from exc
    elif any(v for v in body.shares.values()):
        raise ValidationFailed(f"shares: {body.method} takes no percentages", param="shares")


@router.get(
    "/allocation-rules",
    response_model=list[RuleOut],
    tags=["statements"],
    dependencies=guard(Can.STATEMENTS_READ),
)
async def list_rules(svc: Svc, who: Who, org_id: str | None = None) -> list[dict[str, Any]]:
    t = allocation_rules
    query = sa.select(t).order_by(t.c.org_id, t.c.position, t.c.id)
    if (org := await org_asked(svc, who, org_id)) is not None:
        query = query.where(t.c.org_id == org)
    async with svc.engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


@router.post(
    "/allocation-rules",
    response_model=RuleOut,
    status_code=201,
    tags=["statements"],
    dependencies=guard(Can.ALLOCATIONS_WRITE),
)
async def create_rule(body: RuleIn, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    org = await _org(svc, who, body.org_id)
    await _check_shares(svc, org["id"], body)
    now = svc.clock.now()
    rule = {"id": new_id("alr"), "org_id": org["id"], "tag": body.tag, "method": body.method,
            "shares": body.shares, "position": body.position}  # fmt: skip
    async with svc.engine.begin() as conn:
        await conn.execute(allocation_rules.insert().values(**rule, created_at=now))
        await audit(conn, request, who, "allocation_rule.created", "allocation_rule", rule["id"],
                    now, owner=Owner.of(org["id"]), after=rule)  # fmt: skip
    return rule


@router.delete(
    "/allocation-rules/{rule_id}",
    status_code=204,
    tags=["statements"],
    dependencies=guard(Can.ALLOCATIONS_WRITE),
)
async def delete_rule(rule_id: str, svc: Svc, request: Request, who: Who) -> None:
    t = allocation_rules
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        row = (await conn.execute(sa.select(t).where(t.c.id == rule_id))).first()
        if row is None or not who.sees(Owner.of(row.org_id)):
            raise NotFound(f"allocation rule {rule_id} not found")
        await delete_one(conn, t, rule_id, "allocation rule")
        await audit(conn, request, who, "allocation_rule.deleted", "allocation_rule", rule_id,
                    now, owner=Owner.of(row.org_id), before=dict(row._mapping))  # fmt: skip
