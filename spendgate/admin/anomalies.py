"""Admin routes for spend anomalies: the episodes (open and past), acknowledging them,
lifting the pause or rate limit one applied, and which keys or teams take such an action.

An anomaly of a key belongs to the key's team (org-wide without one); of a team, to that
team; of a model, to the org. Acknowledging lifts the anomaly's action unless asked not
to; ``lift-action`` lifts it and leaves the anomaly unacknowledged.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scope, Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.admin.policies import scope_owner
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.errors import Conflict, NotFound, ValidationFailed
from spendgate.store import anomaly_actions as actions
from spendgate.store.anomalies import anomalies as anomalies_table
from spendgate.store.anomalies import contributor_out, get_anomaly, list_anomalies

router = APIRouter(
    prefix="/admin", dependencies=[Depends(principal)], tags=["anomalies"], responses=s.ERRORS
)

Note = Annotated[str, StringConstraints(max_length=1000)]


class ContributorOut(BaseModel):
    dimension: str
    id: str
    actual_usd: str
    expected_usd: str
    excess_usd: str
    share_percent: float


class AnomalyOut(BaseModel):
    id: str
    org_id: str
    scope_type: str
    scope_id: str
    team_id: str | None
    status: Literal["open", "resolved"]
    started_at: datetime
    hour_start: datetime
    resolved_at: datetime | None
    method: str
    elapsed_percent: int
    expected_usd: str
    upper_usd: str
    actual_usd: str
    excess_usd: str
    peak_excess_usd: str
    contributors: list[ContributorOut]
    event_id: str | None
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    ack_note: str | None
    action: dict[str, Any] | None
    action_state: str | None


class AcknowledgeIn(s.Strict):
    note: Note = ""
    #: also lift the pause or rate limit the anomaly applied (if any is in force)
    lift_action: s.Flag = True


class LiftIn(s.Strict):
    note: Note = ""


class ActionIn(s.Strict):
    scope_type: Literal["key", "team"]
    scope_id: s.ObjectId
    action: Literal["pause", "rate_limit"]
    rpm: Annotated[s.Whole, Field(ge=1, le=10_000_000)] | None = None
    tpm: Annotated[s.Whole, Field(ge=1, le=10_000_000_000)] | None = None
    max_spend_usd: s.Money | None = None
    spend_window_seconds: Annotated[s.Whole, Field(ge=1, le=86_400)] = 600


class ActionOut(BaseModel):
    id: str
    org_id: str
    scope_type: str
    scope_id: str
    action: str
    rpm: int | None
    tpm: int | None
    max_spend_usd: str | None
    spend_window_seconds: int
    created_by: str
    created_at: datetime


def anomaly_out(row: dict[str, Any]) -> dict[str, Any]:
    actual, expected = int(row["actual_nanos"]), int(row["expected_nanos"])
    return {
        **{k: row[k] for k in AnomalyOut.model_fields if k in row},
        "status": "open" if row["resolved_at"] is None else "resolved",
        "elapsed_percent": round(float(row["elapsed"]) * 100),
        "expected_usd": format_usd(expected),
        "upper_usd": format_usd(int(row["upper_nanos"])),
        "actual_usd": format_usd(actual),
        "excess_usd": format_usd(max(actual - expected, 0)),
        "peak_excess_usd": format_usd(int(row["peak_excess_nanos"])),
        "contributors": [contributor_out(c) for c in row["contributors"]],
    }


def action_out(row: dict[str, Any]) -> dict[str, Any]:
    spend = row["max_spend_nanos"]
    out = {k: v for k, v in row.items() if k != "max_spend_nanos"}
    out["max_spend_usd"] = None if spend is None else format_usd(int(spend))
    return out


def owner_of(row: dict[str, Any]) -> Owner:
    return Owner.of(row["org_id"], row["team_id"])


async def anomaly_in_scope(scope: Scope, anomaly_id: str) -> tuple[dict[str, Any], Owner]:
    row = await get_anomaly(scope.svc.engine, anomaly_id)
    owner = None if row is None else owner_of(row)
    owner = scope.require(owner, "anomaly", anomaly_id)
    assert row is not None
    return row, owner


# -- anomalies ------------------------------------------------------------------------------
@router.get("/anomalies", response_model=list[AnomalyOut], dependencies=guard(Can.ANOMALIES_READ))
async def list_anomalies_route(
    svc: Svc,
    who: Who,
    status: Literal["open", "resolved", "all"] = "all",
    scope_type: Literal["key", "team", "model"] | None = None,
    scope_id: Annotated[str, StringConstraints(max_length=200)] | None = None,
    acknowledged: bool | None = None,
    since: Annotated[s.Instant | None, Query()] = None,
    org_id: s.ObjectId | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Spend anomalies, newest first: ``status=open`` for those still out of band."""
    team_filter = who.team_filter()
    rows = await list_anomalies(
        svc.engine,
        org_id=await org_asked(svc, who, org_id),
        team_ids=None if team_filter is None else sorted(team_filter),
        status=status,
        scope_type=scope_type,
        scope_id=scope_id,
        acknowledged=acknowledged,
        since=since,
        limit=limit,
    )
    return [anomaly_out(r) for r in rows]


@router.get(
    "/anomalies/{anomaly_id}", response_model=AnomalyOut, dependencies=guard(Can.ANOMALIES_READ)
)
async def get_anomaly_route(anomaly_id: str, scope: Scoped) -> dict[str, Any]:
    return anomaly_out((await anomaly_in_scope(scope, anomaly_id))[0])


@router.post(
    "/anomalies/{anomaly_id}/acknowledge",
    response_model=AnomalyOut,
    dependencies=guard(Can.ANOMALIES_ACK),
)
async def acknowledge(
    anomaly_id: str, body: AcknowledgeIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Record who looked at it and why; lifts its pause or rate limit unless
    ``lift_action`` is false. Acknowledging twice is refused (409)."""
    row, owner = await anomaly_in_scope(scope, anomaly_id)
    if row["acknowledged_at"] is not None:
        raise Conflict(f"anomaly {anomaly_id} was acknowledged by {row['acknowledged_by']}")
    now = svc.clock.now()
    t = anomalies_table
    async with svc.engine.begin() as conn:
        done = await conn.execute(
            t.update()
            .where(t.c.id == anomaly_id, t.c.acknowledged_at.is_(None))
            .values(acknowledged_by=who.actor, acknowledged_at=now, ack_note=body.note)
        )
        if done.rowcount != 1:
            raise Conflict(f"anomaly {anomaly_id} was acknowledged meanwhile")
        lifted = await actions.lift_action(conn, row, now, who.actor) if body.lift_action else None
        after = {"note": body.note, "action_lifted": lifted is not None}
        await audit(
            conn,
            request,
            who,
            "anomaly.acknowledged",
            "anomaly",
            anomaly_id,
            now,
            owner=owner,
            after=after,
        )
    if lifted is not None:
        await svc.enforcer.policy_changed()
    return anomaly_out(await _reread(svc, anomaly_id))


@router.post(
    "/anomalies/{anomaly_id}/lift-action",
    response_model=AnomalyOut,
    dependencies=guard(Can.ANOMALIES_ACK),
)
async def lift(
    anomaly_id: str, body: LiftIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Un-pause: undo the pause or rate limit the anomaly applied, without acknowledging
    it. 409 when none is in force."""
    row, owner = await anomaly_in_scope(scope, anomaly_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        lifted = await actions.lift_action(conn, row, now, who.actor)
        if lifted is None:
            raise Conflict(f"anomaly {anomaly_id} has no pause or rate limit in force")
        await audit(
            conn,
            request,
            who,
            "anomaly.action_lifted",
            "anomaly",
            anomaly_id,
            now,
            owner=owner,
            after={"note": body.note, "action": lifted},
        )
    await svc.enforcer.policy_changed()
    return anomaly_out(await _reread(svc, anomaly_id))


async def _reread(svc: Any, anomaly_id: str) -> dict[str, Any]:
    row = await get_anomaly(svc.engine, anomaly_id)
    if row is None:
        raise NotFound(f"anomaly {anomaly_id} not found")
    return row


# -- what a key or team does on an anomaly ----------------------------------------------------
@router.post(
    "/anomaly-actions",
    response_model=ActionOut,
    status_code=201,
    dependencies=guard(Can.ANOMALY_ACTIONS_WRITE),
)
async def create_action(
    body: ActionIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """On an anomaly of this key or team: ``pause`` it, or apply ``rate_limit`` (``rpm``,
    ``tpm``, ``max_spend_usd`` per ``spend_window_seconds``), until acknowledged."""
    limits = (body.rpm, body.tpm, body.max_spend_usd)
    if body.action == "rate_limit" and all(v is None for v in limits):
        raise ValidationFailed(
            "rpm: a rate_limit action needs rpm, tpm or max_spend_usd", param="rpm"
        )
    if body.action == "pause" and any(v is not None for v in limits):
        raise ValidationFailed("rpm: a pause takes no limits", param="rpm")
    owner = await scope_owner(scope, body.scope_type, body.scope_id, None, None)
    now = svc.clock.now()
    spend: Decimal | None = body.max_spend_usd
    values = {
        **body.model_dump(exclude={"max_spend_usd"}),
        "max_spend_nanos": None if spend is None else usd_to_nanos(spend),
        "org_id": owner.org_id,
        "created_by": who.actor,
        "created_at": now,
    }
    async with svc.engine.begin() as conn:
        row = await actions.create_config(conn, values)
        await audit(
            conn,
            request,
            who,
            "anomaly_action.created",
            "anomaly_action",
            row["id"],
            now,
            owner=owner,
            after=action_out(row),
        )
    return action_out(row)


async def action_owner(scope: Scope, row: dict[str, Any]) -> Owner | None:
    return await scope.owner(row["scope_type"], row["scope_id"], row["org_id"])


@router.get(
    "/anomaly-actions", response_model=list[ActionOut], dependencies=guard(Can.ANOMALIES_READ)
)
async def list_actions(
    svc: Svc, who: Who, scope: Scoped, org_id: s.ObjectId | None = None
) -> list[dict[str, Any]]:
    rows = await actions.list_configs(svc.engine, await org_asked(svc, who, org_id))
    return [action_out(r) for r in await scope.filter(rows, lambda r: action_owner(scope, r))]


@router.delete(
    "/anomaly-actions/{action_id}",
    status_code=204,
    dependencies=guard(Can.ANOMALY_ACTIONS_WRITE),
)
async def delete_action(
    action_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> None:
    """Stop acting on this scope's future anomalies (one in force stays until lifted)."""
    row = await actions.get_config(svc.engine, action_id)
    owner = scope.require(await action_owner(scope, row), "anomaly action", action_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        await actions.delete_config(conn, action_id)
        await audit(
            conn,
            request,
            who,
            "anomaly_action.deleted",
            "anomaly_action",
            action_id,
            now,
            owner=owner,
            before=action_out(row),
        )
