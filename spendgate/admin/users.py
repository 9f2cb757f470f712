"""Admin routes for users and their memberships.

A user has an org role (``org_admin``, ``finance``, or ``member``: none) and a role in
each team they belong to (``team_admin``, ``viewer``, ``member``). Who may change what
is one rule, ``standing_change_refusal`` in ``spendgate.core.access``; the routes here
translate requests into the standing asked for and let that rule judge the change:

    POST   /admin/users                                  role + team_ids, or memberships
    PATCH  /admin/users/{id}                             role and/or team_ids (see below)
    PUT    /admin/users/{id}/memberships/{team_id}       {"role": ...}: add or re-role
    DELETE /admin/users/{id}/memberships/{team_id}       leave the team

``role`` + ``team_ids`` keep working as before memberships had roles: an org role is
given as such (the teams then hold ``member``), a team role is given in every team
named. A team admin's ``role`` reaches only the memberships in their own teams.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.core.access import (
    FINANCE,
    MEMBER,
    ORG_ADMIN,
    TEAM_ROLES,
    Can,
    Owner,
    Principal,
    Standing,
    standing_change_refusal,
)
from spendgate.errors import NotFound, PermissionDenied, ValidationFailed
from spendgate.store.directory import standing_of

router = APIRouter(
    prefix="/admin", dependencies=[Depends(principal)], responses=s.ERRORS, tags=["directory"]
)
_ORG_ROLES = (ORG_ADMIN, FINANCE)


def user_owner(user: dict[str, Any]) -> Owner:
    return Owner.of(user["org_id"], *user["team_ids"])


def _needs_teams(role: str, teams: Mapping[str, str], field: str) -> None:
    if role in TEAM_ROLES and role != MEMBER and not teams:
        raise ValidationFailed(
            f"role: {role} is a team role; name the teams ({field}) it is given in",
            param="role",
        )


def standing_for_new(body: s.UserIn) -> Standing:
    """The standing a ``POST /admin/users`` asks for."""
    if body.memberships and body.team_ids:
        raise ValidationFailed(
            "memberships: give team_ids (one role) or memberships (a role each), not both",
            param="memberships",
        )
    if body.memberships:
        roles: dict[str, str] = {m.team_id: m.role for m in body.memberships}
        if len(roles) != len(body.memberships):
            raise ValidationFailed("memberships: a team is named twice", param="memberships")
        if body.role not in (*_ORG_ROLES, MEMBER):
            raise ValidationFailed(
                "role: with memberships, role is an org role (org_admin, finance) or member",
                param="role",
            )
        return Standing(body.role, roles)
    standing = Standing.single(body.role, body.team_ids)
    _needs_teams(body.role, standing.teams, "team_ids")
    return standing


def standing_for_patch(who: Principal, current: Standing, body: s.UserPatch) -> Standing:
    """The standing a ``PATCH /admin/users/{id}`` asks for (see ``schemas.UserPatch``)."""
    role, teams = current.role, dict(current.teams)
    if body.team_ids is not None:
        held = set(current.teams.values())
        default = body.role if body.role in TEAM_ROLES else held.pop() if len(held) == 1 else MEMBER
        teams = {t: teams.get(t, default) for t in body.team_ids}
    if body.role in _ORG_ROLES:
        role = body.role
    elif body.role is not None and who.org_wide:
        role = MEMBER
        teams = dict.fromkeys(teams, body.role)
        _needs_teams(body.role, teams, "team_ids")
    elif body.role is not None:  # a team admin: their own teams only
        teams = {t: body.role if t in who.team_ids else r for t, r in teams.items()}
    return Standing(role, teams)


def _action(before: Standing, after: Standing) -> str:
    kept = before.teams.keys() & after.teams.keys()
    if before.role != after.role or any(before.teams[t] != after.teams[t] for t in kept):
        return "user.role_changed"
    return "user.updated"


def _judge(who: Principal, user_id: str, before: Standing, after: Standing) -> None:
    refused = standing_change_refusal(who, user_id, before, after)
    if refused is not None:
        raise PermissionDenied(refused.message, param=refused.param)


@router.post("/users", response_model=s.User, status_code=201, dependencies=guard(Can.USERS_WRITE))
async def create_user(
    body: s.UserIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    standing = standing_for_new(body)
    field = "memberships" if body.memberships else "team_ids"
    # an org member's new user goes to the caller's org unless teams (or the org) say so
    org_id = body.org_id or (None if standing.teams else who.org_id)
    for team_id in standing.teams:
        await scope.referenced("team", team_id, field)
    if org_id is not None or not standing.teams:
        await scope.referenced("org", org_id, "org_id")
    if not who.org_wide and not standing.teams:
        raise PermissionDenied("team_ids: a team admin adds members to their own teams")
    _judge(who, "", Standing(MEMBER, {}), standing)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        user = await svc.directory.create_user(body.email, standing, (), org_id, now, conn)
        await audit(
            conn,
            request,
            who,
            "user.created",
            "user",
            user["id"],
            now,
            owner=user_owner(user),
            after=user,
        )
    return user


async def _change(
    svc: Svc,
    request: Request,
    who: Principal,
    scope: Scoped,
    user: dict[str, Any],
    after: Standing,
    field: str = "team_ids",
) -> dict[str, Any]:
    """Judge and make a change of ``user``'s standing; audited in the same transaction.
    ``field``: where the request named the teams (a refusal names it)."""
    before = standing_of(user)
    for team_id in after.teams.keys() - before.teams.keys():
        await scope.referenced("team", team_id, field)
    _judge(who, user["id"], before, after)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        old, new = await svc.directory.set_standing(user["id"], after, conn, field)
        await audit(
            conn,
            request,
            who,
            _action(before, after),
            "user",
            user["id"],
            now,
            owner=Owner(old["org_id"], user_owner(old).team_ids | user_owner(new).team_ids),
            before=old,
            after=new,
        )
    return new


async def _visible_user(scope: Scoped, user_id: str) -> dict[str, Any]:
    user = await scope.svc.directory.get_user(user_id)
    scope.require(user_owner(user), "user", user_id)
    return user


@router.patch("/users/{user_id}", response_model=s.User, dependencies=guard(Can.USERS_WRITE))
async def update_user(
    user_id: str, body: s.UserPatch, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Change a user's role or teams; their admin tokens follow at once."""
    user = await _visible_user(scope, user_id)
    after = standing_for_patch(who, standing_of(user), body)
    return await _change(svc, request, who, scope, user, after)


@router.put(
    "/users/{user_id}/memberships/{team_id}",
    response_model=s.User,
    dependencies=guard(Can.USERS_WRITE),
)
async def set_membership(
    user_id: str,
    team_id: str,
    body: s.MembershipRole,
    svc: Svc,
    request: Request,
    who: Who,
    scope: Scoped,
) -> dict[str, Any]:
    """Add the user to the team with this role, or change their role there."""
    user = await _visible_user(scope, user_id)
    current = standing_of(user)
    after = Standing(current.role, {**current.teams, team_id: body.role})
    return await _change(svc, request, who, scope, user, after, "team_id")


@router.delete(
    "/users/{user_id}/memberships/{team_id}",
    response_model=s.User,
    dependencies=guard(Can.USERS_WRITE),
)
async def remove_membership(
    user_id: str, team_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Take the user out of the team."""
    user = await _visible_user(scope, user_id)
    current = standing_of(user)
    if team_id not in current.teams:
        raise NotFound(f"user {user_id} is not a member of team {team_id}")
    teams = {t: r for t, r in current.teams.items() if t != team_id}
    return await _change(svc, request, who, scope, user, Standing(current.role, teams))


@router.get("/users", response_model=list[s.User], dependencies=guard(Can.DIRECTORY_READ))
async def list_users(svc: Svc, who: Who, org_id: str | None = None) -> list[dict[str, Any]]:
    users = await svc.directory.list_users(await org_asked(svc, who, org_id))
    return users if who.is_master else [u for u in users if who.sees(user_owner(u))]


@router.get("/users/{user_id}", response_model=s.User, dependencies=guard(Can.DIRECTORY_READ))
async def get_user(user_id: str, scope: Scoped) -> dict[str, Any]:
    return await _visible_user(scope, user_id)
