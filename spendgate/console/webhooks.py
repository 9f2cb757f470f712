"""``/webhooks``: endpoints — create (the ``whsec_…`` secret shown once), event-type
filters, enable/disable, rotate the secret with an overlap, send a test, the delivery log
(status, attempts, responses) and redelivery; delete.

Every action is the admin API's route function (``spendgate.admin.webhooks``), which
only org admins (``webhooks.manage``) reach. An endpoint's secret is on the page
answering the POST that made it (create or rotate) and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import webhook_schemas as w
from spendgate.admin import webhooks as api
from spendgate.console.admin_forms import body_of, done
from spendgate.console.forms import INVALID, Refill, form_page, refill
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.console.naming import Namer
from spendgate.core.access import Can
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn
from spendgate.webhooks.catalog import EVENT_TYPES, UNCHECKED_KINDS

router = APIRouter(include_in_schema=False)
KINDS = ("webhook", "slack", "pagerduty")
FAMILIES = ("*", *sorted({t.split(".")[0] + ".*" for t in EVENT_TYPES}))


def _event_types(chosen: list[str] | None) -> list[str]:
    return list(dict.fromkeys(chosen or ["*"]))


@router.get("/webhooks")
async def webhooks_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _webhooks_page(request, svc, user)


async def _webhooks_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.WEBHOOKS)
    endpoints = await api.list_webhooks(svc.webhooks, svc, scope_for(svc, who))
    ctx = {"endpoints": endpoints, "kinds": KINDS, "families": FAMILIES, "types": EVENT_TYPES}
    return await form_page(request, "webhooks/list.html", ctx, sent_back)


@router.post("/webhooks")
async def create_webhook(
    request: Request,
    svc: Svc,
    user: User,
    url: Annotated[str, Form(max_length=2000)] = "",
    kind: Annotated[str, Form(max_length=20)] = "webhook",
    event_types: Annotated[list[str] | None, Form()] = None,
    description: Annotated[str, Form(max_length=500)] = "",
    routing_key: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    who = require(user, Can.WEBHOOKS)
    try:
        body = body_of(
            w.WebhookIn,
            {
                "url": url,
                "kind": kind,
                "event_types": _event_types(event_types),
                "description": description,
                "config": {"routing_key": routing_key} if routing_key else {},
            },
        )
        made = await api.create_webhook(body, svc.webhooks, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        # the routing key is a secret: never written back into the page
        typed_in = {
            "url": url,
            "kind": kind,
            "description": description,
            "event_types": _event_types(event_types),
        }
        sent_back = refill(exc, typed_in, moved={"config": "routing_key"})
        return await _webhooks_page(request, svc, user, sent_back)
    return await _secret_page(request, made, status=201)


@router.get("/webhooks/{endpoint_id}")
async def webhook_page(endpoint_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _webhook_page(endpoint_id, request, svc, user)


async def _webhook_page(
    endpoint_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.WEBHOOKS)
    scope = scope_for(svc, who)
    endpoint = await api.get_webhook(endpoint_id, svc.webhooks, scope)
    deliveries = await api.deliveries(endpoint_id, svc.webhooks, scope, None, 50)
    ctx = {
        "endpoint": endpoint,
        "unchecked": UNCHECKED_KINDS.get(endpoint["kind"]),
        "deliveries": deliveries,
        "scope_named": await Namer(svc, user.principal).scope(
            endpoint["scope_type"], endpoint["scope_id"]
        ),
        "families": FAMILIES,
        "types": EVENT_TYPES,
    }
    shown = {"description": endpoint["description"] or "", "overlap_hours": "24"}
    return await form_page(request, "webhooks/detail.html", ctx, sent_back, shown)


@router.post("/webhooks/{endpoint_id}")
async def update_webhook(
    endpoint_id: str,
    request: Request,
    svc: Svc,
    user: User,
    event_types: Annotated[list[str] | None, Form()] = None,
    description: Annotated[str, Form(max_length=500)] = "",
    enabled: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    who = require(user, Can.WEBHOOKS)
    try:
        body = w.WebhookPatch.model_validate(
            {
                "event_types": _event_types(event_types),
                "description": description,
                "enabled": enabled == "on",
            }
        )
        await api.update_webhook(
            endpoint_id, body, svc.webhooks, svc, request, who, scope_for(svc, who)
        )
    except INVALID as exc:
        typed_in = {"description": description, "overlap_hours": "24"}
        return await _webhook_page(endpoint_id, request, svc, user, refill(exc, typed_in))
    return done(request, f"/webhooks/{endpoint_id}")


@router.post("/webhooks/{endpoint_id}/rotate")
async def rotate_secret(
    endpoint_id: str,
    request: Request,
    svc: Svc,
    user: User,
    overlap_hours: Annotated[str, Form(max_length=10)] = "24",
) -> Response:
    who = require(user, Can.WEBHOOKS)
    hours = overlap_hours.strip() or "0"
    seconds = int(float(hours) * 3600) if hours.replace(".", "", 1).isdigit() else -1
    try:
        body = body_of(w.RotateIn, {"overlap_seconds": seconds})
        made = await api.rotate_secret(
            endpoint_id, svc.webhooks, svc, request, who, scope_for(svc, who), body
        )
    except INVALID as exc:
        typed_in = {"overlap_hours": overlap_hours}
        sent_back = refill(exc, typed_in, moved={"overlap_seconds": "overlap_hours"})
        return await _webhook_page(endpoint_id, request, svc, user, sent_back)
    return await _secret_page(request, made, rotated=True)


async def _secret_page(
    request: Request, made: dict[str, Any], status: int = 200, rotated: bool = False
) -> HTMLResponse:
    """An endpoint with its new signing secret, shown once; Slack and PagerDuty check no
    signature, so for them the page says there is nothing to keep instead."""
    unchecked = UNCHECKED_KINDS.get(made["kind"])
    ctx = {
        "endpoint": made,
        "secret": None if unchecked else made["secret"],
        "unchecked": unchecked,
        "rotated": rotated,
    }
    return await page(request, "webhooks/secret.html", ctx, status=status)


@router.post("/webhooks/{endpoint_id}/test")
async def send_test(endpoint_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.WEBHOOKS)
    await api.send_test(endpoint_id, svc.webhooks, svc, request, who, scope_for(svc, who))
    return done(request, f"/webhooks/{endpoint_id}#deliveries-h")


@router.post("/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver")
async def redeliver(
    endpoint_id: str, delivery_id: str, request: Request, svc: Svc, user: User
) -> Response:
    who = require(user, Can.WEBHOOKS)
    await api.redeliver_one(
        endpoint_id, delivery_id, svc.webhooks, svc, request, who, scope_for(svc, who)
    )
    return done(request, f"/webhooks/{endpoint_id}#deliveries-h")


@router.post("/webhooks/{endpoint_id}/delete")
async def delete_webhook(endpoint_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.WEBHOOKS)
    await api.delete_webhook(endpoint_id, svc.webhooks, svc, request, who, scope_for(svc, who))
    return done(request, "/webhooks")
