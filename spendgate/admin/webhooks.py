"""Admin routes: webhook endpoints (secrets, deliveries, redelivery) and notifications.

Mounted with :func:`install`, which also hands the routes the :class:`WebhookRuntime`
through app state (``app.state.webhooks``), not a global.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request

from spendgate.admin import schemas as s
from spendgate.admin import webhook_schemas as w
from spendgate.admin.routes import Svc, Who, admin, audit
from spendgate.errors import SpendgateError
from spendgate.webhooks import notifications as notes
from spendgate.webhooks.matching import Preferences
from spendgate.webhooks.runtime import WebhookRuntime
from spendgate.webhooks.store import EndpointSpec, list_deliveries, redeliver

ERRORS: dict[int | str, dict[str, Any]] = {401: {"model": s.ErrorBody},
                                           404: {"model": s.ErrorBody},
                                           422: {"model": s.ErrorBody}}
router = APIRouter(prefix="/admin", dependencies=[Depends(admin)], responses=ERRORS,
                   tags=["webhooks"])
notifications_router = APIRouter(prefix="/admin", dependencies=[Depends(admin)],
                                 responses=ERRORS, tags=["notifications"])


class WebhooksUnavailable(SpendgateError):
    status = 503
    code = "webhooks_unavailable"


def webhook_runtime(request: Request) -> WebhookRuntime:
    runtime: WebhookRuntime | None = getattr(request.app.state, "webhooks", None)
    if runtime is None:
        raise WebhooksUnavailable("webhooks are not configured on this gateway")
    return runtime


Hooks = Annotated[WebhookRuntime, Depends(webhook_runtime)]


def install(api: FastAPI, runtime: WebhookRuntime) -> None:
    """Mount the webhook and notification routes on the admin app."""
    api.state.webhooks = runtime
    api.include_router(router)
    api.include_router(notifications_router)


# -- endpoints -------------------------------------------------------------------------
@router.post("/webhooks", response_model=w.WebhookWithSecret, status_code=201)
async def create_webhook(body: w.WebhookIn, hooks: Hooks, svc: Svc, request: Request, who: Who
                         ) -> dict[str, Any]:
    """Create an endpoint; the answer carries its signing ``secret`` (``whsec_…``) once."""
    spec = EndpointSpec(url=body.url, kind=body.kind, event_types=tuple(body.event_types),
                        scope_type=body.scope_type, scope_id=body.scope_id,
                        enabled=body.enabled, description=body.description, config=body.config)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        endpoint, secret = await hooks.store.create(spec, now, conn)
        await audit(conn, request, who, "webhook.created", "webhook", endpoint["id"], now,
                    after=endpoint)
    return {**endpoint, "secret": secret}


@router.get("/webhooks", response_model=list[w.Webhook])
async def list_webhooks(hooks: Hooks, svc: Svc) -> list[dict[str, Any]]:
    return await hooks.store.list(svc.clock.now())


@router.get("/webhooks/{endpoint_id}", response_model=w.Webhook)
async def get_webhook(endpoint_id: str, hooks: Hooks, svc: Svc) -> dict[str, Any]:
    return await hooks.store.get(endpoint_id, svc.clock.now())


@router.patch("/webhooks/{endpoint_id}", response_model=w.Webhook)
async def update_webhook(endpoint_id: str, body: w.WebhookPatch, hooks: Hooks, svc: Svc,
                         request: Request, who: Who) -> dict[str, Any]:
    """Change fields; ``enabled: true`` re-arms an endpoint that was disabled for failing."""
    changes = body.model_dump(exclude_unset=True)
    now = svc.clock.now()
    before = await hooks.store.get(endpoint_id, now)
    async with svc.engine.begin() as conn:
        after = await hooks.store.update(endpoint_id, changes, now, conn)
        await audit(conn, request, who, "webhook.updated", "webhook", endpoint_id, now,
                    before=before, after=after)
    return after


@router.delete("/webhooks/{endpoint_id}", status_code=204)
async def delete_webhook(endpoint_id: str, hooks: Hooks, svc: Svc, request: Request,
                         who: Who) -> None:
    now = svc.clock.now()
    before = await hooks.store.get(endpoint_id, now)
    async with svc.engine.begin() as conn:
        await hooks.store.delete(endpoint_id, conn)
        await audit(conn, request, who, "webhook.deleted", "webhook", endpoint_id, now,
                    before=before)


@router.post("/webhooks/{endpoint_id}/rotate-secret", response_model=w.WebhookWithSecret)
async def rotate_secret(endpoint_id: str, hooks: Hooks, svc: Svc, request: Request, who: Who,
                        body: w.RotateIn | None = None) -> dict[str, Any]:
    """A new secret, shown once; the old one also signs for ``overlap_seconds``."""
    overlap = timedelta(seconds=(body or w.RotateIn()).overlap_seconds)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        endpoint, secret = await hooks.store.rotate_secret(endpoint_id, now, overlap, conn)
        await audit(conn, request, who, "webhook.secret_rotated", "webhook", endpoint_id, now,
                    after={**endpoint, "overlap_seconds": overlap.total_seconds()})
    return {**endpoint, "secret": secret}


@router.get("/webhooks/{endpoint_id}/deliveries", response_model=list[w.Delivery])
async def deliveries(endpoint_id: str, hooks: Hooks,
                     status: Annotated[str | None,
                                       Query(pattern="^(pending|succeeded|failed)$")] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Newest first, each with its attempt log (status, response code, latency, error)."""
    await hooks.store.row(endpoint_id)
    return await list_deliveries(hooks.engine, endpoint_id, status=status, limit=limit)


@router.post("/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver",
             response_model=w.Delivery, status_code=202)
async def redeliver_one(endpoint_id: str, delivery_id: str, hooks: Hooks, svc: Svc
                        ) -> dict[str, Any]:
    """Queue the same message (same ``webhook-id``) again, due now."""
    return await redeliver(hooks.engine, endpoint_id, delivery_id, svc.clock.now())


# -- notifications ---------------------------------------------------------------------
@notifications_router.get("/notifications", response_model=list[w.Notification])
async def list_notifications(
    user_id: Annotated[str, Query(min_length=1, max_length=40)], hooks: Hooks,
    unread: bool = False, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """A user's notifications, newest first (``unread=true`` for unread only)."""
    return await notes.list_notifications(hooks.engine, user_id, unread_only=unread,
                                          limit=limit)


@notifications_router.post("/notifications/read-all", response_model=w.ReadAll)
async def read_all(user_id: Annotated[str, Query(min_length=1, max_length=40)], hooks: Hooks,
                   svc: Svc) -> dict[str, int]:
    return {"updated": await notes.mark_all_read(hooks.engine, user_id, svc.clock.now())}


@notifications_router.post("/notifications/{notification_id}/read",
                           response_model=w.Notification)
async def read_one(notification_id: str, hooks: Hooks, svc: Svc,
                   user_id: str | None = None) -> dict[str, Any]:
    return await notes.mark_read(hooks.engine, notification_id, svc.clock.now(), user_id)


def _prefs_out(prefs: Preferences) -> dict[str, Any]:
    return prefs.to_json()


@notifications_router.get("/users/{user_id}/notification-preferences",
                          response_model=w.Preferences)
async def get_preferences(user_id: str, hooks: Hooks) -> dict[str, Any]:
    return _prefs_out(await notes.get_preferences(hooks.engine, user_id))


@notifications_router.put("/users/{user_id}/notification-preferences",
                          response_model=w.Preferences)
async def put_preferences(user_id: str, body: w.Preferences, hooks: Hooks, svc: Svc,
                          request: Request, who: Who) -> dict[str, Any]:
    prefs = Preferences.from_json(body.model_dump())
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        saved = await notes.put_preferences(hooks.engine, user_id, prefs, now, conn)
        await audit(conn, request, who, "notification_preferences.updated", "user", user_id,
                    now, after=_prefs_out(saved))
    return _prefs_out(saved)
