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
from spendgate.admin.deps import Scope, Scoped, Svc, Who, audit, guard, principal
from spendgate.core.access import Can, Owner, Principal
from spendgate.errors import NotFound, PermissionDenied, SpendgateError, ValidationFailed
from spendgate.webhooks import notifications as notes
from spendgate.webhooks.matching import Preferences, may_route
from spendgate.webhooks.runtime import WebhookRuntime
from spendgate.webhooks.store import EndpointSpec, list_deliveries, redeliver
from spendgate.webhooks.test_send import queue_test

router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(principal), *guard(Can.WEBHOOKS)],
    responses=s.ERRORS,
    tags=["webhooks"],
)
notifications_router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(principal), *guard(Can.NOTIFICATIONS)],
    responses=s.ERRORS,
    tags=["notifications"],
)


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
async def _scope_for(
    scope: Scope, scope_type: str | None, scope_id: str | None
) -> tuple[str | None, str | None, Owner]:
    """An endpoint's filter as the caller may set it: an org admin's endpoints always stay
    within their org (no filter means their whole org); unfiltered endpoints, which see
    every org's events, and tag filters, which cross orgs, need the master key."""
    who = scope.who
    if who.is_master:
        owner = (
            Owner(None)
            if scope_type in (None, "tag")
            else await scope.referenced(scope_type, scope_id, "scope_id")
        )
        return scope_type, scope_id, owner
    if scope_type is None:
        return "org", who.org_id, Owner.of(who.org_id)
    if scope_type == "tag":
        raise PermissionDenied("scope_type: tag filters span orgs; they need the master key")
    return scope_type, scope_id, await scope.referenced(scope_type, scope_id, "scope_id")


async def _endpoint_owner(scope: Scope, endpoint: dict[str, Any]) -> Owner | None:
    if endpoint["scope_type"] in (None, "tag"):
        return Owner(None)
    return await scope.owner(endpoint["scope_type"], endpoint["scope_id"])


async def _endpoint(
    scope: Scope, hooks: WebhookRuntime, endpoint_id: str
) -> tuple[dict[str, Any], Owner]:
    endpoint = await hooks.store.get(endpoint_id, scope.svc.clock.now())
    return endpoint, scope.require(await _endpoint_owner(scope, endpoint), "webhook", endpoint_id)


@router.post("/webhooks", response_model=w.WebhookWithSecret, status_code=201)
async def create_webhook(
    body: w.WebhookIn, hooks: Hooks, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Create an endpoint; the answer carries its signing ``secret`` (``whsec_…``) once."""
    scope_type, scope_id, owner = await _scope_for(scope, body.scope_type, body.scope_id)
    spec = EndpointSpec(
        url=body.url,
        kind=body.kind,
        event_types=tuple(body.event_types),
        scope_type=scope_type,
        scope_id=scope_id,
        enabled=body.enabled,
        description=body.description,
        config=body.config,
    )
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        endpoint, secret = await hooks.store.create(spec, now, conn)
        await audit(
            conn,
            request,
            who,
            "webhook.created",
            "webhook",
            endpoint["id"],
            now,
            owner=owner,
            after=endpoint,
        )
    return {**endpoint, "secret": secret}


@router.get("/webhooks", response_model=list[w.Webhook])
async def list_webhooks(hooks: Hooks, svc: Svc, scope: Scoped) -> list[dict[str, Any]]:
    endpoints = await hooks.store.list(svc.clock.now())
    return await scope.filter(endpoints, lambda e: _endpoint_owner(scope, e))


@router.get("/webhooks/{endpoint_id}", response_model=w.Webhook)
async def get_webhook(endpoint_id: str, hooks: Hooks, scope: Scoped) -> dict[str, Any]:
    return (await _endpoint(scope, hooks, endpoint_id))[0]


@router.patch("/webhooks/{endpoint_id}", response_model=w.Webhook)
async def update_webhook(
    endpoint_id: str,
    body: w.WebhookPatch,
    hooks: Hooks,
    svc: Svc,
    request: Request,
    who: Who,
    scope: Scoped,
) -> dict[str, Any]:
    """Change fields; ``enabled: true`` re-arms an endpoint that was disabled for failing."""
    changes = body.model_dump(exclude_unset=True)
    now = svc.clock.now()
    before, owner = await _endpoint(scope, hooks, endpoint_id)
    if "scope_type" in changes or "scope_id" in changes:
        changes["scope_type"], changes["scope_id"], owner = await _scope_for(
            scope,
            changes.get("scope_type", before["scope_type"]),
            changes.get("scope_id", before["scope_id"]),
        )
    async with svc.engine.begin() as conn:
        after = await hooks.store.update(endpoint_id, changes, now, conn)
        await audit(
            conn,
            request,
            who,
            "webhook.updated",
            "webhook",
            endpoint_id,
            now,
            owner=owner,
            before=before,
            after=after,
        )
    return after


@router.delete("/webhooks/{endpoint_id}", status_code=204)
async def delete_webhook(
    endpoint_id: str, hooks: Hooks, svc: Svc, request: Request, who: Who, scope: Scoped
) -> None:
    now = svc.clock.now()
    before, owner = await _endpoint(scope, hooks, endpoint_id)
    async with svc.engine.begin() as conn:
        await hooks.store.delete(endpoint_id, conn)
        await audit(
            conn,
            request,
            who,
            "webhook.deleted",
            "webhook",
            endpoint_id,
            now,
            owner=owner,
            before=before,
        )


@router.post("/webhooks/{endpoint_id}/rotate-secret", response_model=w.WebhookWithSecret)
async def rotate_secret(
    endpoint_id: str,
    hooks: Hooks,
    svc: Svc,
    request: Request,
    who: Who,
    scope: Scoped,
    body: w.RotateIn | None = None,
) -> dict[str, Any]:
    """A new secret, shown once; the old one also signs for ``overlap_seconds``."""
    _, owner = await _endpoint(scope, hooks, endpoint_id)
    overlap = timedelta(seconds=(body or w.RotateIn()).overlap_seconds)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        endpoint, secret = await hooks.store.rotate_secret(endpoint_id, now, overlap, conn)
        await audit(
            conn,
            request,
            who,
            "webhook.secret_rotated",
            "webhook",
            endpoint_id,
            now,
            owner=owner,
            after={**endpoint, "overlap_seconds": overlap.total_seconds()},
        )
    return {**endpoint, "secret": secret}


@router.get("/webhooks/{endpoint_id}/deliveries", response_model=list[w.Delivery])
async def deliveries(
    endpoint_id: str,
    hooks: Hooks,
    scope: Scoped,
    status: Annotated[str | None, Query(pattern="^(pending|succeeded|failed)$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Newest first, each with its attempt log (status, response code, latency, error)."""
    await _endpoint(scope, hooks, endpoint_id)
    return await list_deliveries(hooks.engine, endpoint_id, status=status, limit=limit)


@router.post(
    "/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver",
    response_model=w.Delivery,
    status_code=202,
)
async def redeliver_one(
    endpoint_id: str,
    delivery_id: str,
    hooks: Hooks,
    svc: Svc,
    request: Request,
    who: Who,
    scope: Scoped,
) -> dict[str, Any]:
    """Queue the same message (same ``webhook-id``) again, due now (audited
    ``webhook.redelivered``, as a test send is)."""
    _, owner = await _endpoint(scope, hooks, endpoint_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        delivery = await redeliver(conn, endpoint_id, delivery_id, now)
        await audit(
            conn, request, who, "webhook.redelivered", "webhook", endpoint_id, now, owner=owner,
            after={"delivery_id": delivery["id"], "redelivery_of": delivery_id},
        )  # fmt: skip
    return delivery


@router.post("/webhooks/{endpoint_id}/test", response_model=w.Delivery, status_code=202)
async def send_test(
    endpoint_id: str, hooks: Hooks, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Queue a ``webhook.test`` message to this endpoint, due now; follow it in the
    delivery log (status, attempts, response)."""
    endpoint, owner = await _endpoint(scope, hooks, endpoint_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        delivery = await queue_test(conn, endpoint, owner.org_id or who.org_id, now)
        await audit(
            conn,
            request,
            who,
            "webhook.test_sent",
            "webhook",
            endpoint_id,
            now,
            owner=owner,
            after={"delivery_id": delivery["id"]},
        )
    return delivery


# -- notifications ---------------------------------------------------------------------
async def notification_reader(scope: Scope, user_id: str | None) -> str:
    """Whose notifications the call is about: one's own; an org admin (or the master key)
    may name another user of the org. Anyone else's answer like a missing user."""
    who: Principal = scope.who
    if user_id is None or user_id == who.user_id:
        if who.user_id is None:  # the master key is nobody's: it must say whose
            raise ValidationFailed(
                "user_id: required with the master key (which user's notifications)",
                param="user_id",
            )
        return who.user_id
    if who.is_master or who.role == "org_admin":
        owner = await scope.owner("user", user_id)
        if owner is not None and who.sees(Owner.of(owner.org_id)):
            return user_id
    raise NotFound(f"user {user_id} not found")


UserParam = Annotated[
    str | None, Query(min_length=1, max_length=40, description="default: the caller's own user")
]


@notifications_router.get("/notifications", response_model=list[w.Notification])
async def list_notifications(
    hooks: Hooks,
    scope: Scoped,
    user_id: UserParam = None,
    unread: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """A user's notifications, newest first (``unread=true`` for unread only)."""
    return await notes.list_notifications(
        hooks.engine, await notification_reader(scope, user_id), unread_only=unread, limit=limit
    )


@notifications_router.post("/notifications/read-all", response_model=w.ReadAll)
async def read_all(
    hooks: Hooks, svc: Svc, scope: Scoped, user_id: UserParam = None
) -> dict[str, int]:
    reader = await notification_reader(scope, user_id)
    return {"updated": await notes.mark_all_read(hooks.engine, reader, svc.clock.now())}


@notifications_router.post("/notifications/{notification_id}/read", response_model=w.Notification)
async def read_one(
    notification_id: str, hooks: Hooks, svc: Svc, scope: Scoped, user_id: UserParam = None
) -> dict[str, Any]:
    reader = (
        None
        if scope.who.is_master and user_id is None
        else await notification_reader(scope, user_id)
    )
    return await notes.mark_read(hooks.engine, notification_id, svc.clock.now(), reader)


def _prefs_out(prefs: Preferences) -> dict[str, Any]:
    return prefs.to_json()


async def _check_routes(
    scope: Scope, hooks: WebhookRuntime, who: Principal, user_id: str, wanted: tuple[str, ...]
) -> None:
    """Routing notifications to an endpoint is for a caller who may manage it (README:
    "for those who may manage webhooks"): else a viewer could send the org's events to
    another org's endpoint or the operator's unscoped one. The user whose preferences
    they are must manage it too: a route delivers only while they do (checked again at
    every event, ``matching.may_route``). Routes already saved stay."""
    saved = (await notes.get_preferences(hooks.engine, user_id)).webhook_endpoint_ids
    new = [i for i in wanted if i not in saved]
    if not new:
        return
    home = await scope.owner("user", user_id)
    found = []
    if home is not None and home.org_id is not None:
        async with hooks.engine.connect() as conn:
            found = await notes.recipients(conn, home.org_id, user_ids=[user_id])
    for endpoint_id in new:
        try:
            endpoint = await hooks.store.get(endpoint_id, scope.svc.clock.now())
            owner = await _endpoint_owner(scope, endpoint)
        except NotFound:
            owner = None
        if owner is None or not who.can(Can.WEBHOOKS, owner):
            raise ValidationFailed(
                f"channels.webhook_endpoint_ids: {endpoint_id} is not an endpoint you may manage",
                param="channels.webhook_endpoint_ids",
            )
        if not any(may_route(user, owner) for user, _ in found):
            raise ValidationFailed(
                f"channels.webhook_endpoint_ids: {endpoint_id} is not an endpoint user "
                f"{user_id} may manage, and routes deliver only while they may",
                param="channels.webhook_endpoint_ids",
            )


@notifications_router.get("/users/{user_id}/notification-preferences", response_model=w.Preferences)
async def get_preferences(user_id: str, hooks: Hooks, scope: Scoped) -> dict[str, Any]:
    return _prefs_out(
        await notes.get_preferences(hooks.engine, await notification_reader(scope, user_id))
    )


@notifications_router.put("/users/{user_id}/notification-preferences", response_model=w.Preferences)
async def put_preferences(
    user_id: str,
    body: w.Preferences,
    hooks: Hooks,
    svc: Svc,
    request: Request,
    who: Who,
    scope: Scoped,
) -> dict[str, Any]:
    reader = await notification_reader(scope, user_id)
    owner = await scope.owner("user", reader)
    prefs = Preferences.from_json(body.model_dump())
    await _check_routes(scope, hooks, who, reader, prefs.webhook_endpoint_ids)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        before = await notes.get_preferences(hooks.engine, reader, conn)
        saved = await notes.put_preferences(hooks.engine, reader, prefs, now, conn)
        await audit(
            conn,
            request,
            who,
            "notification_preferences.updated",
            "user",
            reader,
            now,
            owner=owner or Owner(None),
            before=_prefs_out(before),
            after=_prefs_out(saved),
        )
    return _prefs_out(saved)
