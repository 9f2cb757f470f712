"""``/notifications`` (the signed-in user's in-app notifications: unread first, mark read,
filters, a link to what each is about) and ``/settings/notification-preferences``.

One's own notifications and preferences are one's own: any signed-in user reads and
marks them (whose they are is decided by ``admin.webhooks.notification_reader``, the
API's rule for "own"). Routing to webhook, Slack or PagerDuty endpoints is offered to those who may
manage endpoints (``webhooks.manage``), as in the API.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from spendgate.admin import webhooks as api
from spendgate.admin.webhook_schemas import Preferences as PreferencesIn
from spendgate.console.admin_forms import done
from spendgate.console.forms import field_errors
from spendgate.console.layout import Svc, User, page, scope_for
from spendgate.core.access import Can
from spendgate.errors import ValidationFailed
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn
from spendgate.webhooks import notifications as notes
from spendgate.webhooks.catalog import EVENT_TYPES
from spendgate.webhooks.matching import SCOPE_TYPES

router = APIRouter(include_in_schema=False)
SHOWN = 500


async def _own(svc: Services, user: SignedIn) -> str:
    return await api.notification_reader(scope_for(svc, user.principal), None)


#: the pages a notification links to, and what one must be allowed to read them
LINKED_PAGES = (
    ("/usage/budgets/", Can.BUDGETS_READ),
    ("/wallets/", Can.WALLETS_READ),
    ("/keys/", Can.KEYS_READ),
)


def _link(note: dict[str, Any], user: SignedIn) -> str | None:
    """The page the note is about, if the user may open it: a member's budget alert or
    finance's "key created" linked to a 403 page."""
    link = str(note.get("link") or "")
    for prefix, permission in LINKED_PAGES:
        if link.startswith(prefix):
            return link if user.principal.may(permission) else None
    return link or None


def _scope_of(note: dict[str, Any]) -> str:
    data = note["data"]
    return str(data.get("scope_type") or ("key" if data.get("key_id") else "org"))


@router.get("/notifications")
async def list_page(
    request: Request,
    svc: Svc,
    user: User,
    type: str = "",
    scope: str = "",
    show: str = "all",
) -> Response:
    reader = await _own(svc, user)
    rows = await notes.list_notifications(svc.engine, reader, limit=SHOWN)
    types = sorted({r["type"] for r in rows})
    scopes = sorted({_scope_of(r) for r in rows})
    shown = [
        r
        for r in rows
        if (not type or r["type"] == type)
        and (not scope or _scope_of(r) == scope)
        and (show != "unread" or not r["read"])
    ]
    shown.sort(key=lambda r: (r["read"], -r["created_at"].timestamp(), r["id"]))
    back = "/notifications" + (f"?{request.url.query}" if request.url.query else "")
    return await page(
        request,
        "notifications.html",
        {
            "notes": shown,
            "types": types,
            "scopes": scopes,
            "filters": {"type": type, "scope": scope, "show": show},
            "back": back,
            "scope_of": _scope_of,
            "link_of": lambda note: _link(note, user),
        },
    )


def _back(request: Request, target: str) -> Response:
    safe = target if target.startswith("/notifications") else "/notifications"
    return done(request, safe)


@router.post("/notifications/read-all")
async def read_all(request: Request, svc: Svc, user: User) -> Response:
    await notes.mark_all_read(svc.engine, await _own(svc, user), svc.clock.now())
    form = await request.form()
    return _back(request, str(form.get("back", "/notifications")))


@router.post("/notifications/{notification_id}/read")
async def read_one(notification_id: str, request: Request, svc: Svc, user: User) -> Response:
    await notes.mark_read(svc.engine, notification_id, svc.clock.now(), await _own(svc, user))
    form = await request.form()
    return _back(request, str(form.get("back", "/notifications")))


# -- preferences ---------------------------------------------------------------------
async def _endpoints(svc: Services, user: SignedIn) -> list[dict[str, Any]]:
    who = user.principal
    if not who.may(Can.WEBHOOKS):
        return []
    narrowed = who.acting_for(Can.WEBHOOKS)
    return await api.list_webhooks(svc.webhooks, svc, scope_for(svc, narrowed))


def _prefs_form(form: dict[str, Any], lists: dict[str, list[str]]) -> dict[str, Any]:
    types = lists.get("event_types", [])
    scopes = []
    for line in str(form.get("scopes", "")).splitlines():
        if line.strip():
            kind, _, ident = line.strip().partition(":")
            scopes.append({"scope_type": kind.strip(), "scope_id": ident.strip()})
    return {
        "event_types": ["*"] if form.get("all_types") == "on" or not types else types,
        "scopes": scopes,
        "channels": {
            "in_app": form.get("in_app") == "on",
            "webhook_endpoint_ids": lists.get("webhook_endpoint_ids", []),
        },
        "digest": form.get("digest") == "on",
    }


async def _prefs_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    prefs: dict[str, Any],
    errors: dict[str, str],
    *,
    saved: bool = False,
    status: int = 200,
) -> Response:
    return await page(
        request,
        "preferences.html",
        {
            "prefs": prefs,
            "errors": errors,
            "saved": saved,
            "event_types": EVENT_TYPES,
            "scope_types": SCOPE_TYPES,
            "endpoints": await _endpoints(svc, user),
            "scopes_text": "\n".join(f"{s['scope_type']}:{s['scope_id']}" for s in prefs["scopes"]),
        },
        status=status,
    )


@router.get("/settings/notification-preferences")
async def prefs_page(request: Request, svc: Svc, user: User, saved: str = "") -> Response:
    reader = await _own(svc, user)
    prefs = (await notes.get_preferences(svc.engine, reader)).to_json()
    return await _prefs_page(request, svc, user, prefs, {}, saved=saved == "1")


@router.post("/settings/notification-preferences")
async def save_prefs(request: Request, svc: Svc, user: User) -> Response:
    reader = await _own(svc, user)
    raw = await request.form()
    form = {k: v for k, v in raw.items() if isinstance(v, str)}
    lists = {k: [str(v) for v in raw.getlist(k)] for k in ("event_types", "webhook_endpoint_ids")}
    body = _prefs_form(form, lists)
    asked = body["channels"]["webhook_endpoint_ids"]
    if asked:  # only endpoints the caller may manage (the list the page offered)
        allowed = {e["id"] for e in await _endpoints(svc, user)}
        unknown = [i for i in asked if i not in allowed]
        if unknown:
            errors = {"channels.webhook_endpoint_ids": f"{unknown[0]} does not exist"}
            return await _prefs_page(request, svc, user, body, errors, status=422)
    try:
        prefs_in = PreferencesIn.model_validate(body)
        who = user.principal
        await api.put_preferences(
            reader, prefs_in, svc.webhooks, svc, request, who, scope_for(svc, who)
        )
    except (ValidationError, ValidationFailed) as exc:
        return await _prefs_page(request, svc, user, body, field_errors(exc), status=422)
    query = urlencode({"saved": "1"})
    return done(request, f"/settings/notification-preferences?{query}")
