"""``/anomalies``: spend anomalies — the episodes (open, unacknowledged, acknowledged,
all) and which keys and teams an anomaly pauses or rate limits (add, delete); an
episode's page with its expected band, actual spend, contributors and the pause or rate
limit it applied, and *Acknowledge* (a note; lift the action or not) and *Lift the
action* (un-pause without acknowledging).

Every read and change is the admin API's route function (``spendgate.admin.anomalies``)
with the signed-in caller narrowed to ``anomalies.read`` / ``anomalies.acknowledge`` /
``anomalies.actions.write``: the same scope rule (a key's anomaly belongs to the key's
team, a team's to the team, a model's to the org; another team's is 404), the same
checks (acknowledging twice is 409; a rate limit needs a limit), audit entries and the
lifted limits.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import anomalies as api
from spendgate.console.admin_forms import body_of, done
from spendgate.console.forms import (
    INVALID,
    ObjectForm,
    Refill,
    form_page,
    scope_fields,
    scope_refill,
)
from spendgate.console.layout import Svc, User, require, scope_for
from spendgate.console.naming import Namer
from spendgate.console.rate_limits import scope_choices, scope_labels
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


def actors_of(anomaly: dict[str, Any]) -> list[str | None]:
    """Who acknowledged an anomaly and who lifted its action (to be named)."""
    return [anomaly.get("acknowledged_by"), (anomaly.get("action") or {}).get("lifted_by")]


@router.get("/anomalies")
async def anomalies_page(
    request: Request, svc: Svc, user: User, view: str = "open"
) -> HTMLResponse:
    return await _anomalies_page(request, svc, user, view)


async def _anomalies_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    view: str = "open",
    sent_back: Refill | None = None,
) -> HTMLResponse:
    if view not in VIEWS:
        raise ValidationFailed(f"view: must be one of {', '.join(VIEWS)}", param="view")
    who = require(user, Can.ANOMALIES_READ)
    scope = scope_for(svc, who)
    status, acknowledged = VIEWS[view]
    rows = await api.list_anomalies_route(
        svc, who, status, None, None, acknowledged, None, None, 200
    )
    configs = await api.list_actions(svc, who, scope, None)
    namer = Namer(svc, user.principal)
    may_delete = {}
    for config in configs:
        owner = await api.action_owner(scope, config)
        may_delete[config["id"]] = owner is not None and user.principal.can(
            Can.ANOMALY_ACTIONS_WRITE, owner
        )
    ctx: dict[str, Any] = {
        "anomalies": rows,
        "view": view,
        "views": list(VIEWS),
        "names": await namer.directory(),
        "configs": configs,
        "actors": await namer.actors(
            [*(a for r in rows for a in actors_of(r)), *(c["created_by"] for c in configs)]
        ),
        "labels": await scope_labels(namer),
        "may_delete": may_delete,
    }
    if user.principal.may(Can.ANOMALY_ACTIONS_WRITE):
        ctx["form"] = await scope_choices(svc, user, Can.ANOMALY_ACTIONS_WRITE)
    return await form_page(request, "anomalies/list.html", ctx, sent_back)


@router.post("/anomalies/actions")
async def create_action(
    request: Request,
    svc: Svc,
    user: User,
    scope: Annotated[str, Form(max_length=100)] = "",
    action: Annotated[str, Form(max_length=20)] = "",
    rpm: Annotated[str, Form(max_length=20)] = "",
    tpm: Annotated[str, Form(max_length=20)] = "",
    max_spend_usd: Annotated[str, Form(max_length=40)] = "",
    spend_window_seconds: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Pause or rate limit a key or team on its next anomalies: ``POST /admin/anomaly-actions``."""
    who = require(user, Can.ANOMALY_ACTIONS_WRITE)
    fields = {
        "action": action,
        "rpm": rpm.strip(),
        "tpm": tpm.strip(),
        "max_spend_usd": max_spend_usd.strip(),
        "spend_window_seconds": spend_window_seconds.strip(),
    }
    try:
        body = body_of(api.ActionIn, scope_fields(scope, fields))
        await api.create_action(body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        sent_back = scope_refill(exc, scope, fields)
        return await _anomalies_page(request, svc, user, "open", sent_back)
    return done(request, "/anomalies")


@router.post("/anomalies/actions/{action_id}/delete")
async def delete_action(action_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.ANOMALY_ACTIONS_WRITE)
    await api.delete_action(action_id, svc, request, who, scope_for(svc, who))
    return done(request, "/anomalies")


@router.get("/anomalies/{anomaly_id}")
async def anomaly_page(anomaly_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _anomaly_page(anomaly_id, request, svc, user)


async def _anomaly_page(
    anomaly_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.ANOMALIES_READ)
    row, owner = await api.anomaly_in_scope(scope_for(svc, who), anomaly_id)
    namer = Namer(svc, user.principal)
    ctx: dict[str, Any] = {
        "a": api.anomaly_out(row),
        "may_ack": user.principal.can(Can.ANOMALIES_ACK, owner),
        "names": await namer.directory(),
        "actors": await namer.actors(actors_of(row)),
    }
    return await form_page(request, "anomalies/detail.html", ctx, sent_back)


ACK = ObjectForm(
    Can.ANOMALIES_ACK, api.AcknowledgeIn, api.acknowledge, _anomaly_page, "/anomalies/{}", "ack"
)
LIFT = ObjectForm(Can.ANOMALIES_ACK, api.LiftIn, api.lift, _anomaly_page, "/anomalies/{}", "lift")


@router.post("/anomalies/{anomaly_id}/acknowledge")
async def acknowledge(
    anomaly_id: str,
    request: Request,
    svc: Svc,
    user: User,
    note: Annotated[str, Form(max_length=2000)] = "",
    lift_action: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    fields = {"note": note, "lift_action": lift_action == "on"}
    typed_in = {"note": note, "lift_action": lift_action}
    return await ACK.submit(anomaly_id, request, svc, user, fields, typed_in)


@router.post("/anomalies/{anomaly_id}/lift-action")
async def lift(
    anomaly_id: str,
    request: Request,
    svc: Svc,
    user: User,
    note: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    return await LIFT.submit(anomaly_id, request, svc, user, {"note": note})
