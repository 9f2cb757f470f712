"""Admin routes for per-key / per-team, per-model rate limits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scope, Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.admin.policies import check_names, scope_owner, warned
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.core.rate_rules import why_idle
from spendgate.errors import ValidationFailed
from spendgate.services import Services
from spendgate.store.policies import rate_limit_from_row

router = APIRouter(
    prefix="/admin", dependencies=[Depends(principal)], tags=["rate limits"], responses=s.ERRORS
)

LIMIT_FIELDS = ("rpm", "tpm", "max_concurrent", "max_spend_nanos")


def limit_out(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "max_spend_nanos"}
    spend = row["max_spend_nanos"]
    out["max_spend_usd"] = None if spend is None else format_usd(int(spend))
    return out


async def limits_warned(
    svc: Services, rows: list[dict[str, Any]], stored: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Rate limits (as answered) with their ``warnings``: a model name the config no
    longer has (:func:`~spendgate.admin.policies.warned`), or else a row that governs no
    call (``rate_rules.why_idle``, the rule the key page and the proxy use): its pattern
    matches no configured model, or a more specific row of its key or team governs each
    one it matches. ``stored``: the rows of their orgs (read if not given)."""
    if stored is None:
        stored = []
        for org_id in sorted({r["org_id"] for r in rows}):
            stored += await svc.policies.list_rate_limits(org_id)
    ranked = [rate_limit_from_row(r) for r in stored]
    out = []
    for row in rows:
        answered = warned(svc, row)
        if not answered["warnings"]:
            why = why_idle(ranked, rate_limit_from_row(_stored(row)), svc.settings.models)
            if why is not None:
                answered["warnings"] = [f"model: {row['model']!r}: {why}; this row limits no call"]
        out.append(answered)
    return out


def _stored(data: dict[str, Any]) -> dict[str, Any]:
    values = dict(data)
    if "max_spend_usd" in values:
        spend = values.pop("max_spend_usd")
        values["max_spend_nanos"] = None if spend is None else usd_to_nanos(spend)
    return values


async def limit_in_scope(scope: Scope, limit_id: str) -> tuple[dict[str, Any], Owner]:
    row = await scope.svc.policies.get_rate_limit(limit_id)
    return row, scope.require(await scope.of_policy(row), "rate limit", limit_id)


@router.post(
    "/rate-limits",
    response_model=s.RateLimitOut,
    status_code=201,
    dependencies=guard(Can.LIMITS_WRITE),
)
async def create_rate_limit(
    body: s.RateLimitIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    values = _stored(body.model_dump())
    if all(values[f] is None for f in LIMIT_FIELDS):
        raise ValidationFailed(
            "rpm: set at least one of rpm, tpm, max_concurrent, max_spend_usd", param="rpm"
        )
    check_names(svc, {"model": body.model})  # a typo would leave the model unlimited
    owner = await scope_owner(scope, body.scope_type, body.scope_id, None, None)
    org_id = owner.org_id
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        row = await svc.policies.create_rate_limit(
            conn, {**values, "org_id": org_id, "created_at": now, "updated_at": now}
        )
        await audit(
            conn,
            request,
            who,
            "rate_limit.created",
            "rate_limit",
            row["id"],
            now,
            owner=owner,
            after=limit_out(row),
        )
    await svc.enforcer.policy_changed()
    return (await limits_warned(svc, [limit_out(row)]))[0]


@router.get(
    "/rate-limits", response_model=list[s.RateLimitOut], dependencies=guard(Can.LIMITS_READ)
)
async def list_rate_limits(
    svc: Svc, who: Who, scope: Scoped, org_id: str | None = None
) -> list[dict[str, Any]]:
    rows = await svc.policies.list_rate_limits(await org_asked(svc, who, org_id))
    shown = [limit_out(r) for r in await scope.filter(rows, scope.of_policy)]
    return await limits_warned(svc, shown, rows)


@router.get(
    "/rate-limits/{limit_id}", response_model=s.RateLimitOut, dependencies=guard(Can.LIMITS_READ)
)
async def get_rate_limit(limit_id: str, scope: Scoped) -> dict[str, Any]:
    row = limit_out((await limit_in_scope(scope, limit_id))[0])
    return (await limits_warned(scope.svc, [row]))[0]


@router.patch(
    "/rate-limits/{limit_id}", response_model=s.RateLimitOut, dependencies=guard(Can.LIMITS_WRITE)
)
async def update_rate_limit(
    limit_id: str, body: s.RateLimitPatch, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    changes = _stored(body.model_dump(exclude_unset=True))
    current, owner = await limit_in_scope(scope, limit_id)
    merged = {**current, **changes}
    if all(merged[f] is None for f in LIMIT_FIELDS):
        raise ValidationFailed("rpm: a rate limit needs at least one limit", param="rpm")
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        await svc.policies.update_rate_limit(conn, limit_id, {**changes, "updated_at": now})
        row = {**merged, "updated_at": now}
        await audit(
            conn,
            request,
            who,
            "rate_limit.updated",
            "rate_limit",
            limit_id,
            now,
            owner=owner,
            before=limit_out(current),
            after=limit_out(row),
        )
    await svc.enforcer.policy_changed()
    return (await limits_warned(svc, [limit_out(row)]))[0]


@router.delete("/rate-limits/{limit_id}", status_code=204, dependencies=guard(Can.LIMITS_WRITE))
async def delete_rate_limit(
    limit_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> None:
    current, owner = await limit_in_scope(scope, limit_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        await svc.policies.delete_rate_limit(conn, limit_id)
        await audit(
            conn,
            request,
            who,
            "rate_limit.deleted",
            "rate_limit",
            limit_id,
            now,
            owner=owner,
            before=limit_out(current),
        )
    await svc.enforcer.policy_changed()
