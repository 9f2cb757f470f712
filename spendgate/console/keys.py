"""``/keys``: virtual keys — list, create (the secret shown once), rotate, revoke.

Every action is the admin API's route function (``spendgate.admin.routes``) called with
the signed-in caller narrowed to ``keys.read`` / ``keys.write``: the same checks, audit
entries and events. A key's secret is in the answer to the POST that made it (create or
rotate), on a ``no-store`` page, and nowhere else: never in a list, never again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import routes as api
from spendgate.admin import schemas as s
from spendgate.console.admin_forms import body_of, done, local_instant, words
from spendgate.console.forms import INVALID, Refill, form_page, refill
from spendgate.console.key_limits import (
    NO_LIMITS,
    binding,
    key_activity,
    key_limits,
    ranked,
    read_owners,
)
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.console.naming import Namer
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd
from spendgate.errors import ValidationFailed
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)


async def _form_choices(svc: Svc, user: User) -> dict[str, Any]:
    """Teams, users and agents the caller may name on a new key."""
    who = require(user, Can.KEYS_WRITE)
    teams = [
        t
        for t in await svc.directory.list_teams(who.org_id)
        if who.sees(Owner.of(t["org_id"], t["id"]))
    ]
    users = [
        u
        for u in await svc.directory.list_users(who.org_id)
        if who.sees(Owner.of(u["org_id"], *u["team_ids"]))
    ]
    agents = [
        a
        for a in await svc.directory.list_agents(who.org_id)
        if who.sees(Owner.of(a["org_id"], a["team_id"]))
    ]
    return {
        "teams": teams,
        "users": users,
        "agents": agents,
        "org_wide": who.org_wide,
        "models": sorted(svc.settings.models),
    }


@router.get("/keys")
async def keys_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _keys_page(request, svc, user)


async def _keys_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    """The list, and the create form (with the API's errors beside its fields)."""
    who = require(user, Can.KEYS_READ)
    rows = await api.list_keys(svc, who, who.org_filter(None))
    shown = await Namer(svc, user.principal).directory()
    activity = await key_activity(svc, who.org_filter(None), [k["id"] for k in rows])
    reader = scope_for(svc, user.principal)  # the limits each key's reader may see
    await read_owners(svc, reader, {k["org_id"] for k in rows})
    keys = []
    for key in rows:
        limits = await key_limits(svc, key, reader) if key["status"] == "active" else NO_LIMITS
        keys.append(
            {
                "row": key,
                "activity": activity.get(key["id"]),
                "binding": binding(limits.shown),
                "hidden": limits.hidden,
            }
        )
    ctx: dict[str, Any] = {"keys": keys, "names": shown, "usd": format_usd}
    if user.principal.may(Can.KEYS_WRITE):
        ctx["form"] = await _form_choices(svc, user)
    return await form_page(request, "keys/list.html", ctx, sent_back)


@router.post("/keys")
async def create_key(
    request: Request,
    svc: Svc,
    user: User,
    name: Annotated[str, Form(max_length=200)] = "",
    team_id: Annotated[str, Form(max_length=40)] = "",
    user_id: Annotated[str, Form(max_length=40)] = "",
    agent_id: Annotated[str, Form(max_length=40)] = "",
    tags: Annotated[str, Form(max_length=2000)] = "",
    models: Annotated[list[str] | None, Form()] = None,
    allow_request_tags: Annotated[str, Form(max_length=5)] = "",
    expires_at: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    who = require(user, Can.KEYS_WRITE)
    try:
        body = body_of(
            s.KeyIn,
            {
                "name": name,
                "org_id": who.org_id,
                "team_id": team_id,
                "user_id": user_id,
                "agent_id": agent_id,
                "tags": words(tags),
                "models": models or [],
                "allow_request_tags": allow_request_tags == "on",
                "expires_at": local_instant(expires_at, "expires_at"),
            },
        )
        key = await api.create_key(body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        typed_in = {
            "name": name,
            "team_id": team_id,
            "user_id": user_id,
            "agent_id": agent_id,
            "tags": tags,
            "expires_at": expires_at,
        }
        return await _keys_page(request, svc, user, refill(exc, typed_in))
    return await page(request, "keys/secret.html", {"key": key, "secret": key["key"]}, status=201)


async def _key(svc: Svc, user: User, key_id: str, permission: Can) -> dict[str, Any]:
    who = require(user, permission)
    return await api.get_key(key_id, scope_for(svc, who))


@router.get("/keys/{key_id}")
async def key_page(key_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _key_page(key_id, request, svc, user)


async def _key_page(
    key_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    key = await _key(svc, user, key_id, Can.KEYS_READ)
    reader = scope_for(svc, user.principal)
    limits = await key_limits(svc, key, reader) if key["status"] == "active" else NO_LIMITS
    activity = (await key_activity(svc, key["org_id"], [key_id])).get(key_id)
    ctx = {
        "key": key,
        "limits": ranked(limits.shown),
        "hidden_limits": limits.hidden,
        "binding": binding(limits.shown),
        "activity": activity,
        "names": await Namer(svc, user.principal).directory(),
        "usd": format_usd,
        "may_write": user.principal.can(Can.KEYS_WRITE, Owner.of(key["org_id"], key["team_id"])),
    }
    shown = {"expires_at": _local(key["expires_at"])}
    return await form_page(request, "keys/detail.html", ctx, sent_back, shown)


def _local(when: datetime | None) -> str:
    """An instant as an ``<input type="datetime-local">`` value (UTC, to the minute)."""
    return "" if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


@router.post("/keys/{key_id}/expiry")
async def set_expiry(
    key_id: str,
    request: Request,
    svc: Svc,
    user: User,
    expires_at: Annotated[str, Form(max_length=40)] = "",
    clear: Annotated[str, Form(max_length=5)] = "",
) -> Response:
    """Set the expiry (``PATCH /admin/keys/{id}``'s checks), or clear it (never expires).
    A blank date without *Clear* is an error beside the field, not a silent "never"."""
    who = require(user, Can.KEYS_WRITE)
    try:
        if clear:
            patch = s.KeyPatch(expires_at=None)
        elif not expires_at.strip():
            raise ValidationFailed("expires_at: pick a date and time, or Clear", param="expires_at")
        else:
            when = local_instant(expires_at.strip(), "expires_at")
            patch = body_of(s.KeyPatch, {"expires_at": when})
        await api.update_key(key_id, patch, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        sent_back = refill(exc, {"expires_at": expires_at})
        return await _key_page(key_id, request, svc, user, sent_back)
    return done(request, f"/keys/{key_id}")


@router.post("/keys/{key_id}/rotate")
async def rotate_key(key_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.KEYS_WRITE)
    key = await api.rotate_key(key_id, svc, request, who, scope_for(svc, who))
    return await page(
        request, "keys/secret.html", {"key": key, "secret": key["key"], "rotated": True}
    )


@router.get("/keys/{key_id}/revoke")
async def confirm_revoke(key_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    key = await _key(svc, user, key_id, Can.KEYS_WRITE)
    return await page(request, "keys/revoke.html", {"key": key})


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.KEYS_WRITE)
    await api.revoke_key(key_id, svc, request, who, scope_for(svc, who))
    return done(request, f"/keys/{key_id}")
