"""Admin routes: orgs, teams, agents, keys and events (users: ``admin.users``; usage:
``admin.usage``).

Each route declares its permission (``dependencies=guard(Can.X)``) and checks every
object it reads or changes against the caller's scope (``spendgate.admin.deps``).
"""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.core.access import Can, Owner, Principal
from spendgate.core.event_data import key_event_data
from spendgate.errors import ValidationFailed
from spendgate.store.events import list_events, record_event
from spendgate.webhooks.catalog import EVENT_TYPES, valid_pattern


def without_secret(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "key"}


router = APIRouter(prefix="/admin", dependencies=[Depends(principal)], responses=s.ERRORS)


def _team_owner(team: dict[str, Any]) -> Owner:
    return Owner.of(team["org_id"], team["id"])


def _owned_by_team(row: dict[str, Any]) -> Owner:
    """Agents and keys: their org and (optional) team."""
    return Owner.of(row["org_id"], row["team_id"])


def _visible(who: Principal, rows: list[dict[str, Any]], owner: Any) -> list[dict[str, Any]]:
    return rows if who.is_master else [r for r in rows if who.sees(owner(r))]


# -- orgs, teams, users, agents ------------------------------------------------------
@router.post(
    "/orgs",
    response_model=s.Org,
    status_code=201,
    tags=["directory"],
    dependencies=guard(Can.ORGS_CREATE),
)
async def create_org(body: s.OrgIn, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        org = await svc.directory.create_org(body.name, now, conn)
        await audit(
            conn,
            request,
            who,
            "org.created",
            "org",
            org["id"],
            now,
            owner=Owner.of(org["id"]),
            after=org,
        )
    return org


@router.get(
    "/orgs", response_model=list[s.Org], tags=["directory"], dependencies=guard(Can.DIRECTORY_READ)
)
async def list_orgs(svc: Svc, who: Who, name: str | None = None) -> list[dict[str, Any]]:
    """Every org the caller may see (``name``: only the org of that name, names being
    unique)."""
    if name is not None:
        found = await svc.directory.org_named(name)
        orgs = [] if found is None else [found]
    else:
        orgs = await svc.directory.list_orgs()
    return orgs if who.is_master else [o for o in orgs if o["id"] == who.org_id]


@router.get(
    "/orgs/{org_id}",
    response_model=s.Org,
    tags=["directory"],
    dependencies=guard(Can.DIRECTORY_READ),
)
async def get_org(org_id: str, svc: Svc, scope: Scoped) -> dict[str, Any]:
    # everyone in an org may read the org itself, team roles included
    if not scope.who.is_master and org_id != scope.who.org_id:
        scope.require(None, "org", org_id)
    return await svc.directory.get_org(org_id)


@router.patch(
    "/orgs/{org_id}",
    response_model=s.Org,
    tags=["directory"],
    dependencies=guard(Can.ORGS_WRITE),
)
async def update_org(
    org_id: str, body: s.OrgPatch, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """The org's reporting zone and week start (usage reports and statements)."""
    owner = Owner.of(org_id)
    if not scope.who.is_master and org_id != scope.who.org_id:
        scope.require(None, "org", org_id)
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise ValidationFailed("body: give reporting_timezone or week_start", param="body")
    before = await svc.directory.get_org(org_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        org = await svc.directory.update_org(org_id, changes, conn)
        await audit(
            conn, request, who, "org.updated", "org", org_id, now, owner=owner,
            before=before, after=org,
        )  # fmt: skip
    return org


@router.post(
    "/teams",
    response_model=s.Team,
    status_code=201,
    tags=["directory"],
    dependencies=guard(Can.TEAMS_WRITE),
)
async def create_team(
    body: s.TeamIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    await scope.referenced("org", body.org_id, "org_id")
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        team = await svc.directory.create_team(body.org_id, body.name, now, conn)
        await audit(
            conn,
            request,
            who,
            "team.created",
            "team",
            team["id"],
            now,
            owner=_team_owner(team),
            after=team,
        )
    return team


@router.get(
    "/teams",
    response_model=list[s.Team],
    tags=["directory"],
    dependencies=guard(Can.DIRECTORY_READ),
)
async def list_teams(svc: Svc, who: Who, org_id: str | None = None) -> list[dict[str, Any]]:
    return _visible(
        who, await svc.directory.list_teams(await org_asked(svc, who, org_id)), _team_owner
    )


@router.get(
    "/teams/{team_id}",
    response_model=s.Team,
    tags=["directory"],
    dependencies=guard(Can.DIRECTORY_READ),
)
async def get_team(team_id: str, scope: Scoped) -> dict[str, Any]:
    scope.require(await scope.owner("team", team_id), "team", team_id)
    return await scope.svc.directory.get_team(team_id)


@router.post(
    "/agents",
    response_model=s.Agent,
    status_code=201,
    tags=["directory"],
    dependencies=guard(Can.AGENTS_WRITE),
)
async def create_agent(
    body: s.AgentIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    org_id = body.org_id or (None if body.team_id else who.org_id)
    owner = await (
        scope.referenced("team", body.team_id, "team_id")
        if body.team_id
        else scope.referenced("org", org_id, "org_id")
    )
    scope.require_team_objects(owner, "team_id")
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        agent = await svc.directory.create_agent(body.name, body.team_id, org_id, now, conn)
        await audit(
            conn,
            request,
            who,
            "agent.created",
            "agent",
            agent["id"],
            now,
            owner=_owned_by_team(agent),
            after=agent,
        )
    return agent


@router.get(
    "/agents",
    response_model=list[s.Agent],
    tags=["directory"],
    dependencies=guard(Can.DIRECTORY_READ),
)
async def list_agents(svc: Svc, who: Who, org_id: str | None = None) -> list[dict[str, Any]]:
    return _visible(
        who, await svc.directory.list_agents(await org_asked(svc, who, org_id)), _owned_by_team
    )


@router.get(
    "/agents/{agent_id}",
    response_model=s.Agent,
    tags=["directory"],
    dependencies=guard(Can.DIRECTORY_READ),
)
async def get_agent(agent_id: str, scope: Scoped) -> dict[str, Any]:
    scope.require(await scope.owner("agent", agent_id), "agent", agent_id)
    return await scope.svc.directory.get_agent(agent_id)


# -- virtual keys ----------------------------------------------------------------------
@router.post(
    "/keys",
    response_model=s.KeyWithSecret,
    status_code=201,
    tags=["keys"],
    dependencies=guard(Can.KEYS_WRITE),
)
async def create_key(
    body: s.KeyIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    spec = body.model_dump()
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        spec["expires_at"] = body.expires_at.replace(tzinfo=UTC)
    unknown = [m for m in body.models if m not in svc.settings.models]
    if unknown:
        raise ValidationFailed(f"models: {unknown[0]!r} is not a configured model", param="models")
    await scope.referenced("org", body.org_id, "org_id")
    owner = await (
        scope.referenced("team", body.team_id, "team_id")
        if body.team_id
        else scope.referenced("org", body.org_id, "org_id")
    )
    scope.require_team_objects(owner, "team_id")
    for field, kind in (("user_id", "user"), ("agent_id", "agent")):
        if spec.get(field) is not None:
            await scope.referenced(kind, spec[field], field)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        key = await svc.directory.create_key(spec, now, conn)
        await audit(
            conn,
            request,
            who,
            "key.created",
            "key",
            key["id"],
            now,
            owner=_owned_by_team(key),
            after=without_secret(key),
        )
        await record_event(
            conn,
            "key.created",
            key_event_data(key),
            now,
            org_id=key["org_id"],
        )
    return key


@router.get("/keys", response_model=list[s.Key], tags=["keys"], dependencies=guard(Can.KEYS_READ))
async def list_keys(
    svc: Svc, who: Who, org_id: str | None = None, team_id: str | None = None
) -> list[dict[str, Any]]:
    rows = await svc.directory.list_keys(await org_asked(svc, who, org_id), team_id)
    return _visible(who, rows, _owned_by_team)


async def _key_in_scope(scope: Scoped, key_id: str) -> Owner:
    return scope.require(await scope.owner("key", key_id), "key", key_id)


@router.get(
    "/keys/{key_id}", response_model=s.Key, tags=["keys"], dependencies=guard(Can.KEYS_READ)
)
async def get_key(key_id: str, scope: Scoped) -> dict[str, Any]:
    await _key_in_scope(scope, key_id)
    return await scope.svc.directory.get_key(key_id)


@router.patch(
    "/keys/{key_id}", response_model=s.Key, tags=["keys"], dependencies=guard(Can.KEYS_WRITE)
)
async def update_key(
    key_id: str, body: s.KeyPatch, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Set or clear the key's expiry (the only field a key may change; rotate for a new
    secret). An expiry must be in the future: 422 naming ``expires_at``."""
    owner = await _key_in_scope(scope, key_id)
    if "expires_at" not in body.model_fields_set:
        return await svc.directory.get_key(key_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        before, after = await svc.directory.set_key_expiry(key_id, body.expires_at, now, conn)
        await audit(
            conn,
            request,
            who,
            "key.updated",
            "key",
            key_id,
            now,
            owner=owner,
            before=before,
            after=after,
        )
    svc.keys.forget_key_id(key_id)
    await svc.enforcer.policy_changed()
    return after


@router.post(
    "/keys/{key_id}/revoke", response_model=s.Key, tags=["keys"], dependencies=guard(Can.KEYS_WRITE)
)
async def revoke_key(
    key_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    owner = await _key_in_scope(scope, key_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        before, after = await svc.directory.revoke_key(key_id, now, conn)
        if before is not after:
            await audit(
                conn,
                request,
                who,
                "key.revoked",
                "key",
                key_id,
                now,
                owner=owner,
                before=before,
                after=after,
            )
            await record_event(
                conn,
                "key.revoked",
                key_event_data(after),
                now,
                org_id=after["org_id"],
            )
    svc.keys.forget_key_id(key_id)
    await svc.enforcer.policy_changed()
    return after


@router.post(
    "/keys/{key_id}/rotate",
    response_model=s.KeyWithSecret,
    tags=["keys"],
    dependencies=guard(Can.KEYS_WRITE),
)
async def rotate_key(
    key_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    owner = await _key_in_scope(scope, key_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        key, old_hash, before = await svc.directory.rotate_key(key_id, conn)
        await audit(
            conn,
            request,
            who,
            "key.rotated",
            "key",
            key_id,
            now,
            owner=owner,
            before=before,
            after=without_secret(key),
        )
    svc.keys.forget(old_hash)
    await svc.enforcer.policy_changed()
    return key


# -- usage and events --------------------------------------------------------------------
@router.get(
    "/events", response_model=list[s.Event], tags=["events"], dependencies=guard(Can.EVENTS_READ)
)
async def events(
    svc: Svc,
    who: Who,
    type: str | None = None,
    org_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    if type is not None and not valid_pattern(type):  # a typo is no empty list
        raise ValidationFailed(
            f"type: unknown event type {type!r}: a type ({', '.join(EVENT_TYPES)}), a family "
            "such as budget.*, or * for all",
            param="type",
        )
    await svc.ledger.flush()  # events caused by calls travel with their ledger rows
    rows = await list_events(
        svc.engine, type_=type, org_id=await org_asked(svc, who, org_id), limit=limit
    )
    return [
        {
            "id": r["id"],
            "type": r["type"],
            "timestamp": r["created_at"],
            "org_id": r["org_id"],
            "data": r["data"],
        }
        for r in rows
    ]
