"""``/rate-limits``: per key or team × model pattern — rpm, tpm, concurrency, spend
velocity — each against its use; create, edit, delete.

Every action is the admin API's route function (``spendgate.admin.rate_limits``) called
with the signed-in caller narrowed to ``limits.read`` / ``limits.write``. Use is counted
from the ledger (finished calls) over each limit's own window, a call counting against
the row that governs its model (``core.rate_rules.matching``, the proxy's rule): requests
and tokens in the last minute, spend in the row's spend window. Calls in flight are the
limiter's and not shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import rate_limits as api
from spendgate.admin import schemas as s
from spendgate.admin.routes import list_keys
from spendgate.console.admin_forms import body_of, done, names
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.core.rate_rules import RateLimit, matching
from spendgate.services import Services
from spendgate.store import schema

router = APIRouter(include_in_schema=False)
MINUTE = 60


@dataclass(frozen=True, slots=True)
class Use:
    requests: int = 0  # in the last minute
    tokens: int = 0  # in the last minute
    spend_nanos: int = 0  # in the row's spend window


def _rule(row: dict[str, Any]) -> RateLimit:
    spend = row.get("max_spend_usd")
    return RateLimit(
        row["id"],
        row["scope_type"],
        row["scope_id"],
        row["model"],
        row["rpm"],
        row["tpm"],
        row["max_concurrent"],
        None if spend is None else usd_to_nanos(spend),
        row["spend_window_seconds"],
    )


async def current_use(svc: Services, rows: list[dict[str, Any]]) -> dict[str, Use]:
    """Each row's use now, from the ledger's finished calls."""
    if not rows:
        return {}
    await svc.ledger.flush()
    rules = [_rule(r) for r in rows]
    now = svc.clock.now()
    since = now - timedelta(seconds=max(MINUTE, *(r.spend_window_seconds for r in rules)))
    led = schema.ledger.c
    keys = [r.scope_id for r in rules if r.scope_type == "key"]
    teams = [r.scope_id for r in rules if r.scope_type == "team"]
    query = sa.select(
        led.key_id,
        led.team_id,
        led.model,
        led.started_at,
        led.input_tokens + led.output_tokens,
        led.cost_nanos,
    ).where(led.started_at > since, sa.or_(led.key_id.in_(keys), led.team_id.in_(teams)))
    async with svc.engine.connect() as conn:
        calls = (await conn.execute(query)).all()
    use: dict[str, list[int]] = {r.id: [0, 0, 0] for r in rules}
    by_id = {r.id: r for r in rules}
    for key_id, team_id, model, started, tokens, cost in calls:
        for rule in matching(rules, key_id, team_id, model):
            counts = use[rule.id]
            if started > now - timedelta(seconds=MINUTE):
                counts[0] += 1
                counts[1] += int(tokens)
            if started > now - timedelta(seconds=by_id[rule.id].spend_window_seconds):
                counts[2] += int(cost or 0)
    return {k: Use(*v) for k, v in use.items()}


async def _scopes(svc: Services, user: Any) -> dict[str, Any]:
    """Keys and teams the caller may set limits on."""
    who = require(user, Can.LIMITS_WRITE)
    teams = [
        t
        for t in await svc.directory.list_teams(who.org_id)
        if who.sees(Owner.of(t["org_id"], t["id"]))
    ]
    keys = []
    if who.may(Can.KEYS_READ):
        keys = await list_keys(svc, who.acting_for(Can.KEYS_READ), who.org_id)
        keys = [k for k in keys if who.sees(Owner.of(k["org_id"], k["team_id"]))]
    return {"teams": teams, "key_choices": [k for k in keys if k["status"] == "active"]}


async def _labels(svc: Services, org_id: str | None) -> dict[str, str]:
    shown = await names(svc, org_id)
    keys = await svc.directory.list_keys(org_id)
    return {
        **{k: f"team {v}" for k, v in shown.teams.items()},
        **{k["id"]: f"key {k['name']} ({k['key_prefix']}…)" for k in keys},
    }


@router.get("/rate-limits")
async def limits_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    who = require(user, Can.LIMITS_READ)
    scope = scope_for(svc, who)
    rows = await api.list_rate_limits(svc, who, scope, who.org_filter(None))
    may_write = {}
    for row in rows:
        owner = await scope.of_policy(row)
        may_write[row["id"]] = owner is not None and user.principal.can(Can.LIMITS_WRITE, owner)
    ctx: dict[str, Any] = {
        "limits": rows,
        "use": await current_use(svc, rows),
        "labels": await _labels(svc, who.org_id),
        "usd": format_usd,
        "may_write": may_write,
    }
    if user.principal.may(Can.LIMITS_WRITE):
        ctx["form"] = await _scopes(svc, user)
    return await page(request, "rate_limits/list.html", ctx)


@router.post("/rate-limits")
async def create_limit(
    request: Request,
    svc: Svc,
    user: User,
    scope: Annotated[str, Form(max_length=100)] = "",
    model: Annotated[str, Form(max_length=200)] = "*",
    rpm: Annotated[str, Form(max_length=20)] = "",
    tpm: Annotated[str, Form(max_length=20)] = "",
    max_concurrent: Annotated[str, Form(max_length=20)] = "",
    max_spend_usd: Annotated[str, Form(max_length=40)] = "",
    spend_window_seconds: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    who = require(user, Can.LIMITS_WRITE)
    scope_type, _, scope_id = scope.partition(":")
    body = body_of(
        s.RateLimitIn,
        {
            "scope_type": scope_type,
            "scope_id": scope_id,
            "model": model.strip() or "*",
            "rpm": rpm.strip(),
            "tpm": tpm.strip(),
            "max_concurrent": max_concurrent.strip(),
            "max_spend_usd": max_spend_usd.strip(),
            "spend_window_seconds": spend_window_seconds.strip(),
        },
    )
    await api.create_rate_limit(body, svc, request, who, scope_for(svc, who))
    return done(request, "/rate-limits")


@router.get("/rate-limits/{limit_id}")
async def edit_page(limit_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    who = require(user, Can.LIMITS_WRITE)
    row = await api.get_rate_limit(limit_id, scope_for(svc, who))
    labels = await _labels(svc, who.org_id)
    return await page(request, "rate_limits/edit.html", {"limit": row, "labels": labels})


@router.post("/rate-limits/{limit_id}")
async def update_limit(
    limit_id: str,
    request: Request,
    svc: Svc,
    user: User,
    rpm: Annotated[str, Form(max_length=20)] = "",
    tpm: Annotated[str, Form(max_length=20)] = "",
    max_concurrent: Annotated[str, Form(max_length=20)] = "",
    max_spend_usd: Annotated[str, Form(max_length=40)] = "",
    spend_window_seconds: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Every field is sent: a blank one removes that limit (``null`` in the API)."""
    who = require(user, Can.LIMITS_WRITE)
    values: dict[str, Any] = {
        "rpm": rpm.strip() or None,
        "tpm": tpm.strip() or None,
        "max_concurrent": max_concurrent.strip() or None,
        "max_spend_usd": max_spend_usd.strip() or None,
    }
    if spend_window_seconds.strip():
        values["spend_window_seconds"] = spend_window_seconds.strip()
    body = body_of(
        s.RateLimitPatch, values, nulls=("rpm", "tpm", "max_concurrent", "max_spend_usd")
    )
    await api.update_rate_limit(limit_id, body, svc, request, who, scope_for(svc, who))
    return done(request, "/rate-limits")


@router.post("/rate-limits/{limit_id}/delete")
async def delete_limit(limit_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.LIMITS_WRITE)
    await api.delete_rate_limit(limit_id, svc, request, who, scope_for(svc, who))
    return done(request, "/rate-limits")
