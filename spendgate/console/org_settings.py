"""``/org``: the org's settings — reporting time zone, week start, audit retention.

Read through the admin API's ``GET /admin/orgs/{id}`` route function. Retention is the
deployment's (``SPENDGATE_AUDIT_RETENTION_DAYS``, never below the minimum), shown here
and changed in the environment, not per org.

The zone and week start are changed through ``PATCH /admin/orgs/{id}``'s route
function (``admin.routes.update_org``: org admins only, audited, the zone checked as IANA).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import routes as api
from spendgate.admin import schemas as s
from spendgate.console.admin_forms import body_of, done
from spendgate.console.forms import INVALID, Refill, form_page, refill
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.core.access import Can
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)
DEFAULT_ZONE, DEFAULT_WEEK_START = "UTC", "monday"
#: the form's words for the API fields its messages name
LABELS = {"reporting_timezone": "Reporting time zone", "week_start": "Week starts on"}


@router.get("/org")
async def org_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _org_page(request, svc, user)


async def _org_page(
    request: Request, svc: Services, user: SignedIn, sent_back: Refill | None = None
) -> HTMLResponse:
    """The settings, and the form (sent back with the API's message beside the field and
    what was typed, when refused)."""
    who = require(user, Can.DIRECTORY_READ)
    if who.org_id is None:
        return await page(request, "error.html", {"status": 404, "message": "no org"}, status=404)
    org = await api.get_org(who.org_id, svc, scope_for(svc, who))
    audit = svc.audit_settings
    ctx = {
        "org": org,
        "zone": org.get("reporting_timezone") or DEFAULT_ZONE,
        "week_start": org.get("week_start") or DEFAULT_WEEK_START,
        "editable": user.principal.may(Can.ORGS_WRITE),
        "week_days": ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
        "retention_days": audit.retention_days,
        "min_retention_days": audit.min_retention_days,
    }
    shown = {"reporting_timezone": ctx["zone"], "week_start": ctx["week_start"]}
    return await form_page(request, "org/settings.html", ctx, sent_back, shown)


@router.post("/org")
async def update_org(
    request: Request,
    svc: Svc,
    user: User,
    reporting_timezone: Annotated[str, Form(max_length=64)] = "",
    week_start: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    who = require(user, Can.ORGS_WRITE)
    if who.org_id is None:
        return await page(request, "error.html", {"status": 404, "message": "no org"}, status=404)
    typed = {"reporting_timezone": reporting_timezone, "week_start": week_start}
    try:
        body = body_of(s.OrgPatch, typed)
        await api.update_org(who.org_id, body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        return await _org_page(request, svc, user, refill(exc, typed, labels=LABELS))
    return done(request, "/org")
