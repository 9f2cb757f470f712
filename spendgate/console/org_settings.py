"""``/org``: the org's settings — reporting time zone, week start, audit retention.

Read through the admin API's ``GET /admin/orgs/{id}`` route function. Retention is the
deployment's (``SPENDGATE_AUDIT_RETENTION_DAYS``, never below the minimum), shown here
and changed in the environment, not per org.

NOTE for the merge with #showback (wip/showback): that branch adds the org columns
``reporting_timezone`` / ``week_start`` and ``PATCH /admin/orgs/{id}``
(``admin.routes.update_org``, permission ``Can.ORGS_WRITE``). Until it lands the page
shows the default (UTC, Monday); afterwards the edit form below is to post to a handler
calling ``routes.update_org(org_id, s.OrgPatch(...), svc, request, who, scope)`` — the
template already has the form, hidden while ``editable`` is false.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from spendgate.admin import routes as api
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.core.access import Can

router = APIRouter(include_in_schema=False)
DEFAULT_ZONE, DEFAULT_WEEK_START = "UTC", "monday"


@router.get("/org")
async def org_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    who = require(user, Can.DIRECTORY_READ)
    if who.org_id is None:
        return await page(request, "error.html", {"status": 404, "message": "no org"}, status=404)
    org = await api.get_org(who.org_id, svc, scope_for(svc, who))
    audit = svc.audit_settings
    ctx = {
        "org": org,
        "zone": org.get("reporting_timezone") or DEFAULT_ZONE,
        "week_start": org.get("week_start") or DEFAULT_WEEK_START,
        "editable": False,
        "retention_days": audit.retention_days,
        "min_retention_days": audit.min_retention_days,
    }
    return await page(request, "org/settings.html", ctx)
