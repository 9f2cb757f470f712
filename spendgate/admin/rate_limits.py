"""Admin routes for per-key / per-team, per-model rate limits."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scope, Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.admin.policies import check_names, scope_owner, warned
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.errors import ValidationFailed

router = APIRouter(
    prefix="/admin", dependencies=[Depends(principal)], tags=["rate limits"], responses=s.ERRORS
)

LIMIT_FIELDS = ("rpm", "tpm", "max_concurrent", "max_spend_nanos")


def limit_out(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "max_spend_nanos"}
    spend = row["max_spend_nanos"]
    out["max_spend_usd"] = None if spend is None else format_usd(int(spend))
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
    return limit_out(row)


@router.get(
    "/rate-limits", response_model=list[s.RateLimitOut], dependencies=guard(Can.LIMITS_READ)
)
async def list_rate_limits(
    svc: Svc, who: Who, scope: Scoped, org_id: str | None = None
) -> list[dict[str, Any]]:
    rows = await svc.policies.list_rate_limits(await org_asked(svc, who, org_id))
    return [warned(svc, limit_out(r)) for r in await scope.filter(rows, scope.of_policy)]


@router.get(
    "/rate-limits/{limit_id}", response_model=s.RateLimitOut, dependencies=guard(Can.LIMITS_READ)
)
async def get_rate_limit(limit_id: str, scope: Scoped) -> dict[str, Any]:
    return warned(scope.svc, limit_out((await limit_in_scope(scope, limit_id))[0]))


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
    return warned(svc, limit_out(row))


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
