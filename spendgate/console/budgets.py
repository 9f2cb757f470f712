"""``/usage/budgets``: the budgets the caller may read, most at risk first; create, edit,
delete (after a confirmation page) and exceptions, for those who may change budgets.

Every change goes through the admin API's own route function (``admin.policies``) with
the caller narrowed to ``budgets.write``: the same validation, scope checks (404 for a
budget outside one's teams), audit entries and enforcement refresh as ``/admin/budgets``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from spendgate.admin import forecasts as forecasts_api
from spendgate.admin import policies
from spendgate.admin import routes as directory_routes
from spendgate.admin import schemas as s
from spendgate.admin.users import list_users
from spendgate.console.admin_forms import done
from spendgate.console.budget_view import budget_view, budget_views
from spendgate.console.forms import (
    BUDGET_FIELDS,
    EDITABLE,
    Refill,
    budget_body,
    field_errors,
    form_page,
    form_values,
    refill,
)
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.console.naming import Namer
from spendgate.core.access import Can, Principal
from spendgate.errors import ValidationFailed
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)
PERIODS = ("daily", "weekly", "monthly")
SCOPES = ("org", "team", "user", "agent", "key", "tag")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
KINDS = ("chat", "completion", "embedding", "response", "message")
DEFAULTS = {
    "period": "monthly",
    "timezone": "UTC",
    "week_start": "monday",
    "alert_percentages": "50, 75, 90",
    "soft_limit_percent": "75",
    "hard_limit_percent": "100",
}

#: the budget form's words for the API fields its messages name (``budgets/form.html``'s
#: labels): "must not be above Hard limit (%)", not "… hard_limit_percent"
LABELS = {
    "org_id": "Org",
    "scope_type": "Scope",
    "scope_id": "Target",
    "week_start": "Week starts on",
    "amount_usd": "Amount (USD)",
    "alert_percentages": "Alert at",
    "soft_limit_percent": "Soft limit (%)",
    "hard_limit": "Hard limit",
    "hard_limit_percent": "Hard limit (%)",
}
#: the exception form's (``budgets/detail.html``)
EXCEPTION_LABELS = {
    "amount_usd": "Extra amount (USD)",
    "percent": "extra percent",
    "starts_at": "Starts",
    "expires_at": "Expires",
}


async def _targets(svc: Services, who: Principal) -> list[tuple[str, str, str]]:
    """(scope type, id, label) of every object the caller may put a budget on."""
    org = who.org_id
    out: list[tuple[str, str, str]] = []
    if who.org_wide and org is not None:
        out.append(("org", org, "the whole org"))
    teams = await directory_routes.list_teams(svc, who, org)
    out += [("team", t["id"], t["name"]) for t in teams]
    out += [("user", u["id"], u["email"]) for u in await list_users(svc, who, org)]
    out += [
        ("agent", a["id"], a["name"]) for a in await directory_routes.list_agents(svc, who, org)
    ]
    keys = await directory_routes.list_keys(svc, who, org, None)
    out += [("key", k["id"], f"{k['name']} ({k['key_prefix']}…)") for k in keys]
    return out


async def _other_kind_of_target(svc: Services, who: Principal, body: dict[str, Any]) -> str:
    """Why the Target picked is not of the Scope picked ("" if it is, or none is picked):
    the form once took an org (or tag) scope with a team picked for a whole-org budget."""
    scope_type, target = body.get("scope_type"), body.get("scope_id")
    if not target:
        return ""
    found = [(kind, label) for kind, id_, label in await _targets(svc, who) if id_ == target]
    if not found or found[0][0] == scope_type:
        return ""  # an id of no list is the API's to refuse
    kind, label = found[0]
    if scope_type == "tag":
        return f"a tag budget has no Target: set it to (none), or choose Scope {kind}"
    article = "an" if str(scope_type)[:1] in "aeiou" else "a"
    return (
        f"{label} is a {kind}, not {article} {scope_type}: choose Scope {kind}, or another Target"
    )


async def _form_page(
    request: Request,
    svc: Services,
    who: Principal,
    values: dict[str, str],
    errors: dict[str, str],
    budget: dict[str, Any] | None,
    status: int = 200,
) -> Response:
    # team roles put budgets on their teams' objects only: no org or tag budgets to offer
    scopes = SCOPES if who.org_wide else SCOPES[1:-1]
    return await page(
        request,
        "budgets/form.html",
        {
            "values": {**DEFAULTS, "scope_type": scopes[0], **values},
            "scopes": scopes,
            "errors": errors,
            "budget": budget,
            "targets": [] if budget else await _targets(svc, who),
            "periods": PERIODS,
            "weekdays": WEEKDAYS,
            "kinds": KINDS,
        },
        status=status,
    )


@router.get("/usage/budgets")
async def list_page(
    request: Request,
    svc: Svc,
    user: User,
    refreshed: Annotated[int | None, Query(ge=0)] = None,
    overruns: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    who = require(user, Can.BUDGETS_READ)
    scope = scope_for(svc, who)
    rows = await svc.policies.list_budgets(who.org_id)
    visible = await scope.filter(rows, scope.of_policy)  # as GET /admin/budgets filters
    views = await budget_views(svc, visible)
    views.sort(key=lambda v: (-v.risk, v.row["name"]))
    return await page(
        request,
        "budgets/list.html",
        {
            "views": views,
            "can_write": user.principal.may(Can.BUDGETS_WRITE),
            "can_refresh": user.principal.may(Can.FORECASTS_REFRESH),
            "refreshed": refreshed,
            "overruns": overruns,
        },
    )


@router.post("/usage/budgets/refresh-forecasts")
async def refresh_forecasts(request: Request, svc: Svc, user: User) -> Response:
    """Every forecast of the caller's org computed now: ``POST /admin/forecasts/refresh``."""
    who = require(user, Can.FORECASTS_REFRESH)
    made = await forecasts_api.refresh_forecasts(svc, who, None)
    counts = f"refreshed={made['refreshed']}&overruns={made['overruns_announced']}"
    return done(request, f"/usage/budgets?{counts}")


@router.get("/usage/budgets/new")
async def new_form(request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.BUDGETS_WRITE)
    return await _form_page(request, svc, who, dict(request.query_params), {}, None)


@router.post("/usage/budgets/new")
async def create(request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.BUDGETS_WRITE)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    body = budget_body(form, BUDGET_FIELDS)
    mismatch = await _other_kind_of_target(svc, who, body)
    if mismatch:
        return await _form_page(request, svc, who, form, {"scope_id": mismatch}, None, 422)
    if body.get("scope_type") == "org":
        body["scope_id"] = who.org_id
    if body.get("scope_type") == "tag":
        body["org_id"] = who.org_id
    try:
        made = await policies.create_budget(
            s.BudgetIn.model_validate(body), svc, request, who, scope_for(svc, who)
        )
    except (ValidationError, ValidationFailed) as exc:
        return await _form_page(request, svc, who, form, field_errors(exc, LABELS), None, 422)
    return done(request, f"/usage/budgets/{made['id']}")


@router.get("/usage/budgets/{budget_id}")
async def detail(budget_id: str, request: Request, svc: Svc, user: User) -> Response:
    return await _detail_page(budget_id, request, svc, user)


async def _detail_page(
    budget_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> Response:
    """The budget, its exceptions and the form granting one (sent back beside its fields)."""
    who = require(user, Can.BUDGETS_READ)
    scope = scope_for(svc, who)
    view = await budget_view(scope, budget_id)
    exceptions = await policies.list_exceptions(budget_id, svc, scope)
    owner = scope.require(await scope.of_policy(view.row), "budget", budget_id)
    now = svc.clock.now()
    ctx = {
        "view": view,
        "exceptions": exceptions,
        "granted": await Namer(svc, user.principal).actors(e["granted_by"] for e in exceptions),
        "active": [e for e in exceptions if e["starts_at"] <= now < e["expires_at"]],
        # an exception raises by an amount or by a percent (``grant_exception``: exactly
        # one; the other is stored as zero, which the table leaves blank)
        "by_percent": {e["id"] for e in exceptions if Decimal(e["percent"])},
        "can_write": user.principal.can(Can.BUDGETS_WRITE, owner),
        "scope_name": await policies.scope_name(svc, view.row["scope_type"], view.row["scope_id"]),
    }
    return await form_page(request, "budgets/detail.html", ctx, sent_back)


async def _writable(user: Any, svc: Services, budget_id: str) -> tuple[Principal, dict[str, Any]]:
    """The caller narrowed to budgets.write and the budget (its 404 if not theirs)."""
    who = require(user, Can.BUDGETS_WRITE)
    row, _ = await scope_for(svc, who).budget(budget_id)
    return who, row


@router.get("/usage/budgets/{budget_id}/edit")
async def edit_form(budget_id: str, request: Request, svc: Svc, user: User) -> Response:
    who, row = await _writable(user, svc, budget_id)
    return await _form_page(request, svc, who, form_values(policies.budget_out(row)), {}, row)


@router.post("/usage/budgets/{budget_id}/edit")
async def edit(budget_id: str, request: Request, svc: Svc, user: User) -> Response:
    who, row = await _writable(user, svc, budget_id)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        patch = s.BudgetPatch.model_validate(budget_body(form, EDITABLE))
        await policies.update_budget(budget_id, patch, svc, request, who, scope_for(svc, who))
    except (ValidationError, ValidationFailed) as exc:
        return await _form_page(request, svc, who, form, field_errors(exc, LABELS), row, 422)
    return done(request, f"/usage/budgets/{budget_id}")


@router.get("/usage/budgets/{budget_id}/delete")
async def delete_confirm(budget_id: str, request: Request, svc: Svc, user: User) -> Response:
    _, row = await _writable(user, svc, budget_id)
    return await page(request, "budgets/delete.html", {"budget": row})


@router.post("/usage/budgets/{budget_id}/delete")
async def delete(budget_id: str, request: Request, svc: Svc, user: User) -> Response:
    who, _ = await _writable(user, svc, budget_id)
    await policies.delete_budget(budget_id, svc, request, who, scope_for(svc, who))
    return done(request, "/usage/budgets")


@router.post("/usage/budgets/{budget_id}/exceptions")
async def grant(budget_id: str, request: Request, svc: Svc, user: User) -> Response:
    who, _ = await _writable(user, svc, budget_id)
    form = {k: v.strip() for k, v in (await request.form()).items() if isinstance(v, str)}
    body: dict[str, Any] = {"reason": form.get("reason", "")}
    for name in ("amount_usd", "percent", "starts_at", "expires_at"):
        if form.get(name):
            body[name] = form[name] if "T" not in form[name] else form[name] + ":00+00:00"
    if "expires_at" not in body:
        body["expires_at"] = None
    try:
        exc_in = s.ExceptionIn.model_validate(body)
        await policies.grant_exception(budget_id, exc_in, svc, request, who, scope_for(svc, who))
    except (ValidationError, ValidationFailed) as exc:
        return await _detail_page(
            budget_id, request, svc, user, refill(exc, form, labels=EXCEPTION_LABELS)
        )
    return done(request, f"/usage/budgets/{budget_id}#exceptions")
