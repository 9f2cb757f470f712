"""``/rate-limits``: per key or team × model pattern — rpm, tpm, concurrency, spend
velocity — each against its use; create, edit, delete.

Every action is the admin API's route function (``spendgate.admin.rate_limits``) called
with the signed-in caller narrowed to ``limits.read`` / ``limits.write``. Use is the rate
gate's own count (``RateGate.usage``, the buckets the proxy admits calls against):
requests and tokens in the last minute, spend in the row's spend window, calls in flight
against the concurrency limit; a call counts against
the row that governs its model (``core.rate_rules.matching``, the proxy's rule).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import rate_limits as api
from spendgate.admin import schemas as s
from spendgate.admin.routes import list_keys
from spendgate.console.admin_forms import body_of, done
from spendgate.console.forms import (
    INVALID,
    ObjectForm,
    Refill,
    form_page,
    scope_fields,
    scope_refill,
)
from spendgate.console.layout import Svc, User, require, scope_for
from spendgate.console.naming import Namer
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.core.rate_rules import RateLimit
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)

#: the add and edit forms' labels (``rate_limits/fields.html`` shows these), so an API
#: message naming ``rpm`` names *Requests per minute*
LABELS = {
    "model": "Model or pattern",
    "rpm": "Requests per minute",
    "tpm": "Tokens per minute",
    "max_concurrent": "Concurrent calls",
    "max_spend_usd": "Spend per window (USD)",
    "spend_window_seconds": "Spend window (seconds)",
}


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


async def current_use(svc: Services, rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Each row's use now, per kind it limits (requests, tokens, spend, concurrency),
    read from the rate gate: the buckets the proxy checks the next call against."""
    rules = [_rule(r) for r in rows]
    use: dict[str, dict[str, int]] = {r.id: {} for r in rules}
    for rule, check, used in await svc.rate_gate.usage(rules):
        use[rule.id][check.kind] = used
    return use


async def scope_choices(
    svc: Services, user: Any, permission: Can = Can.LIMITS_WRITE
) -> dict[str, Any]:
    """Keys and teams the caller may set limits on (or what ``permission`` covers: the
    same keys and teams)."""
    who = require(user, permission)
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


async def scope_labels(namer: Namer) -> dict[str, str]:
    """The teams and keys a row may limit, as the reader may see them called."""
    return {
        **{k: f"team {v}" for k, v in (await namer.names("team")).items()},
        **{k["id"]: f"key {k['name']} ({k['key_prefix']}…)" for k in await namer.listed("key")},
    }


@router.get("/rate-limits")
async def limits_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _limits_page(request, svc, user)


async def _limits_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
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
        "labels": await scope_labels(Namer(svc, user.principal)),
        "usd": format_usd,
        "may_write": may_write,
        "field_labels": LABELS,
    }
    if user.principal.may(Can.LIMITS_WRITE):
        ctx["form"] = await scope_choices(svc, user)
    return await form_page(request, "rate_limits/list.html", ctx, sent_back)


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
    fields = {
        "model": model.strip() or "*",
        "rpm": rpm.strip(),
        "tpm": tpm.strip(),
        "max_concurrent": max_concurrent.strip(),
        "max_spend_usd": max_spend_usd.strip(),
        "spend_window_seconds": spend_window_seconds.strip(),
    }
    try:
        body = body_of(s.RateLimitIn, scope_fields(scope, fields))
        await api.create_rate_limit(body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        sent_back = scope_refill(exc, scope, fields, LABELS)
        return await _limits_page(request, svc, user, sent_back)
    return done(request, "/rate-limits")


@router.get("/rate-limits/{limit_id}")
async def edit_page(limit_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _edit_page(limit_id, request, svc, user)


async def _edit_page(
    limit_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.LIMITS_WRITE)
    row = await api.get_rate_limit(limit_id, scope_for(svc, who))
    labels = await scope_labels(Namer(svc, user.principal))
    shown = {
        k: "" if row[k] is None else str(row[k])
        for k in ("rpm", "tpm", "max_concurrent", "max_spend_usd", "spend_window_seconds")
    }
    ctx = {"limit": row, "labels": labels, "field_labels": LABELS}
    return await form_page(request, "rate_limits/edit.html", ctx, sent_back, shown)


EDIT = ObjectForm(
    Can.LIMITS_WRITE,
    s.RateLimitPatch,
    api.update_rate_limit,
    _edit_page,
    "/rate-limits",
    nulls=("rpm", "tpm", "max_concurrent", "max_spend_usd"),
    labels=LABELS,
)


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
    values: dict[str, Any] = {
        "rpm": rpm.strip() or None,
        "tpm": tpm.strip() or None,
        "max_concurrent": max_concurrent.strip() or None,
        "max_spend_usd": max_spend_usd.strip() or None,
    }
    if spend_window_seconds.strip():
        values["spend_window_seconds"] = spend_window_seconds.strip()
    typed_in = {k: "" if v is None else str(v) for k, v in values.items()}
    typed_in.setdefault("spend_window_seconds", spend_window_seconds)
    return await EDIT.submit(limit_id, request, svc, user, values, typed_in)


@router.post("/rate-limits/{limit_id}/delete")
async def delete_limit(limit_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.LIMITS_WRITE)
    await api.delete_rate_limit(limit_id, svc, request, who, scope_for(svc, who))
    return done(request, "/rate-limits")
