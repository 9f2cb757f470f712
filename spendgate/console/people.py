"""``/people``: users with their org role and team memberships, teams and agents; create
users, teams and agents; change roles and memberships; invite links (also password
resets) for console sign-in; admin tokens (created and shown once, revoked).

Every action is the admin API's route function (``spendgate.admin.users``, ``.routes``,
``.tokens``) called with the signed-in caller narrowed to its permission, so who may
change whose standing is ``core.access.standing_change_refusal`` and who may make a
credential for whom is ``manages_tokens_of`` — as in the API. An invite link or token
is on the page answering the POST that made it, and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import console_access
from spendgate.admin import routes as directory
from spendgate.admin import schemas as s
from spendgate.admin import tokens as token_api
from spendgate.admin import users as api
from spendgate.console.admin_forms import body_of, done, local_instant
from spendgate.console.forms import INVALID, Refill, form_page, refill
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.core.access import (
    ORG_ROLES,
    TEAM_ROLES,
    Can,
    Owner,
    issues_sign_in_links_for,
    manages_tokens_of,
)
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)


@router.get("/people")
async def people_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _people_page(request, svc, user)


async def _people_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.DIRECTORY_READ)
    p = user.principal
    teams = await directory.list_teams(svc, who, who.org_filter(None))
    ctx: dict[str, Any] = {
        "users": await api.list_users(svc, who, who.org_filter(None)),
        "teams": teams,
        "team_names": {t["id"]: t["name"] for t in teams},
        "agents": await directory.list_agents(svc, who, who.org_filter(None)),
        "may_users": p.may(Can.USERS_WRITE),
        "may_teams": p.may(Can.TEAMS_WRITE),
        "may_agents": p.may(Can.AGENTS_WRITE),
        "org_roles": ORG_ROLES,
        "team_roles": TEAM_ROLES,
    }
    if p.may(Can.USERS_WRITE):
        writer = require(user, Can.USERS_WRITE)
        ctx["writable_teams"] = [t for t in teams if writer.sees(Owner.of(t["org_id"], t["id"]))]
    if p.may(Can.AGENTS_WRITE):
        writer = require(user, Can.AGENTS_WRITE)
        ctx["agent_teams"] = [t for t in teams if writer.sees(Owner.of(t["org_id"], t["id"]))]
    return await form_page(request, "people/list.html", ctx, sent_back)


@router.post("/people")
async def create_user(
    request: Request,
    svc: Svc,
    user: User,
    email: Annotated[str, Form(max_length=320)] = "",
    role: Annotated[str, Form(max_length=20)] = "member",
    team_id: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    who = require(user, Can.USERS_WRITE)
    fields: dict[str, Any] = {"email": email, "role": role}
    if team_id:
        fields["team_ids"] = [team_id]
    try:
        made = await api.create_user(
            body_of(s.UserIn, fields), svc, request, who, scope_for(svc, who)
        )
    except INVALID as exc:
        typed_in = {"email": email, "role": role, "team_id": team_id}
        sent_back = refill(exc, typed_in, form="user", moved={"team_ids": "team_id"})
        return await _people_page(request, svc, user, sent_back)
    return done(request, f"/people/{made['id']}")


@router.post("/people/teams")
async def create_team(
    request: Request, svc: Svc, user: User, name: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    who = require(user, Can.TEAMS_WRITE)
    try:
        body = body_of(s.TeamIn, {"name": name, "org_id": who.org_id})
        await directory.create_team(body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        sent_back = refill(exc, {"name": name}, form="team")
        return await _people_page(request, svc, user, sent_back)
    return done(request, "/people#teams-h")


@router.post("/people/agents")
async def create_agent(
    request: Request,
    svc: Svc,
    user: User,
    name: Annotated[str, Form(max_length=200)] = "",
    team_id: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    who = require(user, Can.AGENTS_WRITE)
    try:
        body = body_of(s.AgentIn, {"name": name, "team_id": team_id})
        await directory.create_agent(body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        sent_back = refill(exc, {"name": name, "team_id": team_id}, form="agent")
        return await _people_page(request, svc, user, sent_back)
    return done(request, "/people#agents-h")


@router.get("/people/{user_id}")
async def person_page(user_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _person_page(user_id, request, svc, user)


async def _person_page(
    user_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.DIRECTORY_READ)
    person = await api.get_user(user_id, scope_for(svc, who))
    p = user.principal
    teams = await directory.list_teams(svc, who, who.org_filter(None))
    ctx: dict[str, Any] = {
        "person": person,
        "team_names": {t["id"]: t["name"] for t in teams},
        "org_roles": ORG_ROLES,
        "team_roles": TEAM_ROLES,
        "may_users": p.may(Can.USERS_WRITE),
        "may_link": p.may(Can.TOKENS) and issues_sign_in_links_for(p, user_id, person["org_id"]),
        "tokens": None,
    }
    if p.may(Can.USERS_WRITE):
        writer = require(user, Can.USERS_WRITE)
        ctx["writable_teams"] = [t for t in teams if writer.sees(Owner.of(t["org_id"], t["id"]))]
        ctx["org_wide_writer"] = writer.org_wide
    if p.may(Can.TOKENS) and manages_tokens_of(p, user_id, person["org_id"]):
        tokens = await token_api.list_tokens(svc, require(user, Can.TOKENS), user_id, None)
        ctx["tokens"] = [t for t in tokens if t["user_id"] == user_id]
    return await form_page(request, "people/detail.html", ctx, sent_back)


@router.post("/people/{user_id}/memberships")
async def set_membership(
    user_id: str,
    request: Request,
    svc: Svc,
    user: User,
    team_id: Annotated[str, Form(max_length=40)] = "",
    role: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    who = require(user, Can.USERS_WRITE)
    body = body_of(s.MembershipRole, {"role": role})
    await api.set_membership(user_id, team_id, body, svc, request, who, scope_for(svc, who))
    return done(request, f"/people/{user_id}")


@router.post("/people/{user_id}/memberships/{team_id}/remove")
async def remove_membership(
    user_id: str, team_id: str, request: Request, svc: Svc, user: User
) -> Response:
    who = require(user, Can.USERS_WRITE)
    await api.remove_membership(user_id, team_id, svc, request, who, scope_for(svc, who))
    return done(request, f"/people/{user_id}")


@router.post("/people/{user_id}/role")
async def set_org_role(
    user_id: str,
    request: Request,
    svc: Svc,
    user: User,
    role: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    who = require(user, Can.USERS_WRITE)
    body = body_of(s.UserPatch, {"role": role})
    await api.update_user(user_id, body, svc, request, who, scope_for(svc, who))
    return done(request, f"/people/{user_id}")


@router.post("/people/{user_id}/invite")
async def invite(user_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.TOKENS)
    made = await console_access.create_invite(user_id, svc, request, who, scope_for(svc, who))
    ctx = {"invite": made, "secret": made["url"]}
    return await page(request, "people/invite_link.html", ctx, status=201)


@router.post("/people/{user_id}/tokens")
async def create_token(
    user_id: str,
    request: Request,
    svc: Svc,
    user: User,
    name: Annotated[str, Form(max_length=200)] = "",
    expires_at: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    who = require(user, Can.TOKENS)
    try:
        body = body_of(
            s.TokenIn,
            {
                "user_id": user_id,
                "name": name,
                "expires_at": local_instant(expires_at, "expires_at"),
            },
        )
        made = await token_api.create_token(body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        sent_back = refill(exc, {"name": name, "expires_at": expires_at}, form="token")
        return await _person_page(user_id, request, svc, user, sent_back)
    return await page(
        request, "people/token.html", {"token": made, "secret": made["token"]}, status=201
    )


@router.post("/people/tokens/{token_id}/revoke")
async def revoke_token(token_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.TOKENS)
    revoked = await token_api.revoke_token(token_id, svc, request, who, scope_for(svc, who))
    return done(request, f"/people/{revoked['user_id']}")
