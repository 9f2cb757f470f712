"""``/anomalies``: spend anomalies — the episodes (open, unacknowledged, acknowledged,
all), an episode's page with its expected band, actual spend, contributors and the pause
or rate limit it applied, and *Acknowledge* (a note; lift the action or not) and *Lift
the action* (un-pause without acknowledging).

Every read and change is the admin API's route function (``spendgate.admin.anomalies``)
with the signed-in caller narrowed to ``anomalies.read`` / ``anomalies.acknowledge``:
the same scope rule (a key's anomaly belongs to the key's team, a team's to the team, a
model's to the org; another team's is 404), the same checks (acknowledging twice is
409), audit entries and the lifted limits.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import anomalies as api
from spendgate.console.admin_forms import body_of, done, names
from spendgate.console.forms import INVALID, field_errors
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.core.access import Can
from spendgate.errors import ValidationFailed
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)
#: the list's views: (status filter, acknowledged filter) of the API's list route
VIEWS: dict[str, tuple[Literal["open", "resolved", "all"], bool | None]] = {
    "open": ("open", None),
    "unacknowledged": ("all", False),
    "acknowledged": ("all", True),
    "all": ("all", None),
}


async def key_names(svc: Services, org_id: str | None) -> dict[str, str]:
    """Keys by name on these pages (an anomaly's scope, a contributor)."""
    return {k["id"]: k["name"] for k in await svc.directory.list_keys(org_id)}


@router.get("/anomalies")
async def anomalies_page(
    request: Request, svc: Svc, user: User, view: str = "open"
) -> HTMLResponse:
    if view not in VIEWS:
        raise ValidationFailed(f"view: must be one of {', '.join(VIEWS)}", param="view")
    who = require(user, Can.ANOMALIES_READ)
    status, acknowledged = VIEWS[view]
    rows = await api.list_anomalies_route(
        svc, who, status, None, None, acknowledged, None, None, 200
    )
    ctx = {
        "anomalies": rows,
        "view": view,
        "views": list(VIEWS),
        "names": await names(svc, user.principal.org_id),
        "keys": await key_names(svc, user.principal.org_id),
    }
    return await page(request, "anomalies/list.html", ctx)


@router.get("/anomalies/{anomaly_id}")
async def anomaly_page(anomaly_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _anomaly_page(anomaly_id, request, svc, user)


async def _anomaly_page(
    anomaly_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> HTMLResponse:
    who = require(user, Can.ANOMALIES_READ)
    row, owner = await api.anomaly_in_scope(scope_for(svc, who), anomaly_id)
    ctx: dict[str, Any] = {
        "a": api.anomaly_out(row),
        "may_ack": user.principal.can(Can.ANOMALIES_ACK, owner),
        "names": await names(svc, row["org_id"]),
        "keys": await key_names(svc, row["org_id"]),
        "errors": errors or {},
        "values": values or {},
    }
    return await page(request, "anomalies/detail.html", ctx, status=422 if errors else 200)


@router.post("/anomalies/{anomaly_id}/acknowledge")
async def acknowledge(
    anomaly_id: str,
    request: Request,
    svc: Svc,
    user: User,
    note: Annotated[str, Form(max_length=2000)] = "",
    lift_action: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    who = require(user, Can.ANOMALIES_ACK)
    try:
        body = body_of(api.AcknowledgeIn, {"note": note, "lift_action": lift_action == "on"})
        await api.acknowledge(anomaly_id, body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        errors = {f"ack.{k}": v for k, v in field_errors(exc).items()}
        typed = {"ack.note": note, "ack.lift_action": lift_action}
        return await _anomaly_page(anomaly_id, request, svc, user, errors, typed)
    return done(request, f"/anomalies/{anomaly_id}")


@router.post("/anomalies/{anomaly_id}/lift-action")
async def lift(
    anomaly_id: str,
    request: Request,
    svc: Svc,
    user: User,
    note: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    who = require(user, Can.ANOMALIES_ACK)
    try:
        body = body_of(api.LiftIn, {"note": note})
        await api.lift(anomaly_id, body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        errors = {f"lift.{k}": v for k, v in field_errors(exc).items()}
        return await _anomaly_page(anomaly_id, request, svc, user, errors, {"lift.note": note})
    return done(request, f"/anomalies/{anomaly_id}")
