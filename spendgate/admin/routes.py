"""Admin routes: directory objects, keys, usage and events."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection

from spendgate.admin import schemas as s
from spendgate.admin.audit_trail import admin_event
from spendgate.credentials import secrets_equal
from spendgate.errors import AuthenticationFailed, ValidationFailed
from spendgate.money import format_usd
from spendgate.services import Services
from spendgate.store import audit as audit_store
from spendgate.store.events import list_events, record_event
from spendgate.store.ledger import GROUP_COLUMNS, usage_report

bearer = HTTPBearer(auto_error=False, description="The master key or an admin token")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(services)]


async def admin(
    svc: Svc, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """Who is calling. For now only the master key (``SPENDGATE_MASTER_KEY``)."""
    master = svc.settings.master_key
    if credentials is None:
        raise AuthenticationFailed("missing Authorization: Bearer <master key or admin token>")
    if master is None or not secrets_equal(credentials.credentials, master):
        raise AuthenticationFailed("invalid admin credentials")
    return "master"


Who = Annotated[str, Depends(admin)]


async def audit(conn: AsyncConnection, request: Request, who: str, action: str, target_type: str,
                target_id: str | None, at: datetime, *, before: Any = None, after: Any = None
                ) -> None:
    """Append the audit entry for an admin change, in the change's own transaction."""
    await audit_store.append(conn, admin_event(request, who, action, target_type, target_id,
                                               at=at, before=before, after=after))


def without_secret(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "key"}


router = APIRouter(prefix="/admin", dependencies=[Depends(admin)],
                   responses={401: {"model": s.ErrorBody}, 404: {"model": s.ErrorBody},
                              422: {"model": s.ErrorBody}})


# -- orgs, teams, users, agents ------------------------------------------------------
@router.post("/orgs", response_model=s.Org, status_code=201, tags=["directory"])
async def create_org(body: s.OrgIn, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        org = await svc.directory.create_org(body.name, now, conn)
        await audit(conn, request, who, "org.created", "org", org["id"], now, after=org)
    return org


@router.get("/orgs", response_model=list[s.Org], tags=["directory"])
async def list_orgs(svc: Svc) -> list[dict[str, Any]]:
    return await svc.directory.list_orgs()


@router.get("/orgs/{org_id}", response_model=s.Org, tags=["directory"])
async def get_org(org_id: str, svc: Svc) -> dict[str, Any]:
    return await svc.directory.get_org(org_id)


@router.post("/teams", response_model=s.Team, status_code=201, tags=["directory"])
async def create_team(body: s.TeamIn, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        team = await svc.directory.create_team(body.org_id, body.name, now, conn)
        await audit(conn, request, who, "team.created", "team", team["id"], now, after=team)
    return team


@router.get("/teams", response_model=list[s.Team], tags=["directory"])
async def list_teams(svc: Svc, org_id: str | None = None) -> list[dict[str, Any]]:
    return await svc.directory.list_teams(org_id)


@router.get("/teams/{team_id}", response_model=s.Team, tags=["directory"])
async def get_team(team_id: str, svc: Svc) -> dict[str, Any]:
    return await svc.directory.get_team(team_id)


@router.post("/users", response_model=s.User, status_code=201, tags=["directory"])
async def create_user(body: s.UserIn, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        user = await svc.directory.create_user(body.email, body.role, body.team_ids, body.org_id,
                                               now, conn)
        await audit(conn, request, who, "user.created", "user", user["id"], now, after=user)
    return user


@router.get("/users", response_model=list[s.User], tags=["directory"])
async def list_users(svc: Svc, org_id: str | None = None) -> list[dict[str, Any]]:
    return await svc.directory.list_users(org_id)


@router.get("/users/{user_id}", response_model=s.User, tags=["directory"])
async def get_user(user_id: str, svc: Svc) -> dict[str, Any]:
    return await svc.directory.get_user(user_id)


@router.post("/agents", response_model=s.Agent, status_code=201, tags=["directory"])
async def create_agent(body: s.AgentIn, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        agent = await svc.directory.create_agent(body.name, body.team_id, body.org_id, now, conn)
        await audit(conn, request, who, "agent.created", "agent", agent["id"], now, after=agent)
    return agent


@router.get("/agents", response_model=list[s.Agent], tags=["directory"])
async def list_agents(svc: Svc, org_id: str | None = None) -> list[dict[str, Any]]:
    return await svc.directory.list_agents(org_id)


@router.get("/agents/{agent_id}", response_model=s.Agent, tags=["directory"])
async def get_agent(agent_id: str, svc: Svc) -> dict[str, Any]:
    return await svc.directory.get_agent(agent_id)


# -- virtual keys ----------------------------------------------------------------------
@router.post("/keys", response_model=s.KeyWithSecret, status_code=201, tags=["keys"])
async def create_key(body: s.KeyIn, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    spec = body.model_dump()
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        spec["expires_at"] = body.expires_at.replace(tzinfo=UTC)
    unknown = [m for m in body.models if m not in svc.settings.models]
    if unknown:
        raise ValidationFailed(f"models: {unknown[0]!r} is not a configured model", param="models")
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        key = await svc.directory.create_key(spec, now, conn)
        await audit(conn, request, who, "key.created", "key", key["id"], now,
                    after=without_secret(key))
        await record_event(conn, "key.created", {"key_id": key["id"], "name": key["name"],
                                                 "team_id": key["team_id"],
                                                 "key_prefix": key["key_prefix"]},
                           now, org_id=key["org_id"])
    return key


@router.get("/keys", response_model=list[s.Key], tags=["keys"])
async def list_keys(svc: Svc, org_id: str | None = None, team_id: str | None = None
                    ) -> list[dict[str, Any]]:
    return await svc.directory.list_keys(org_id, team_id)


@router.get("/keys/{key_id}", response_model=s.Key, tags=["keys"])
async def get_key(key_id: str, svc: Svc) -> dict[str, Any]:
    return await svc.directory.get_key(key_id)


@router.post("/keys/{key_id}/revoke", response_model=s.Key, tags=["keys"])
async def revoke_key(key_id: str, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        before, after = await svc.directory.revoke_key(key_id, now, conn)
        if before is not after:
            await audit(conn, request, who, "key.revoked", "key", key_id, now, before=before,
                        after=after)
            await record_event(conn, "key.revoked", {"key_id": key_id, "name": after["name"],
                                                     "team_id": after["team_id"]},
                               now, org_id=after["org_id"])
    svc.keys.forget_key_id(key_id)
    return after


@router.post("/keys/{key_id}/rotate", response_model=s.KeyWithSecret, tags=["keys"])
async def rotate_key(key_id: str, svc: Svc, request: Request, who: Who) -> dict[str, Any]:
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        key, old_hash = await svc.directory.rotate_key(key_id, conn)
        await audit(conn, request, who, "key.rotated", "key", key_id, now,
                    after=without_secret(key))
    svc.keys.forget(old_hash)
    return key


# -- usage and events --------------------------------------------------------------------
def _instant(value: str | None, field: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = (datetime.fromisoformat(value) if "T" in value or " " in value
                  else datetime.combine(date.fromisoformat(value), datetime.min.time()))
    except ValueError as exc:
        raise ValidationFailed(f"{field}: not an ISO 8601 date or time: {value!r}",
                               param=field) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _group_by(value: str) -> list[str]:
    fields = [g.strip() for g in value.split(",") if g.strip()]
    bad = [g for g in fields if g not in GROUP_COLUMNS]
    if bad:
        raise ValidationFailed(
            f"group_by: unknown dimension {bad[0]!r}; use {', '.join(GROUP_COLUMNS)}",
            param="group_by")
    return list(dict.fromkeys(fields))


def _usage_csv(group_by: list[str], rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    columns = [*group_by, "requests", "errors", "input_tokens", "output_tokens",
               "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd",
               "unpriced_requests"]
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@router.get("/usage", response_model=s.UsageReport, tags=["usage"],
            responses={200: {"content": {"text/csv": {}}}})
async def usage(
    svc: Svc,
    request: Request,
    who: Who,
    group_by: Annotated[str, Query(description=f"comma separated: {', '.join(GROUP_COLUMNS)}")] = "",
    start: Annotated[str | None, Query(description="ISO 8601, inclusive")] = None,
    end: Annotated[str | None, Query(description="ISO 8601, exclusive")] = None,
    org_id: str | None = None,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",
) -> Any:
    dims = _group_by(group_by)
    start_at, end_at = _instant(start, "start"), _instant(end, "end")
    if start_at and end_at and end_at <= start_at:
        raise ValidationFailed("end: must be after start", param="end")
    await svc.ledger.flush()
    rows = await usage_report(svc.engine, dims, start_at, end_at, org_id)
    total_nanos = sum(row["cost_nanos"] for row in rows)
    for row in rows:
        row["cost_usd"] = format_usd(row.pop("cost_nanos"))
    if format == "csv":
        async with svc.engine.begin() as conn:
            await audit(conn, request, who, "usage.exported", "usage", None, svc.clock.now(),
                        after={"group_by": dims, "start": start, "end": end, "org_id": org_id,
                               "rows": len(rows)})
        return Response(_usage_csv(dims, rows), media_type="text/csv")
    return {"group_by": dims, "start": start_at, "end": end_at, "rows": rows,
            "total_cost_usd": format_usd(total_nanos),
            "unpriced_requests": sum(r["unpriced_requests"] for r in rows)}


@router.get("/events", response_model=list[s.Event], tags=["events"])
async def events(svc: Svc, type: str | None = None, org_id: str | None = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    rows = await list_events(svc.engine, type_=type, org_id=org_id, limit=limit)
    return [{"id": r["id"], "type": r["type"], "timestamp": r["created_at"], "org_id": r["org_id"],
             "data": r["data"]} for r in rows]
