"""``/tickets``: cost tickets — the approvers' queue (open first; decided ones by
status), a ticket's page, approve (amount, reason, expiry) and deny (reason).

Every read and decision is the admin API's route function (``spendgate.admin.tickets``)
with the signed-in caller narrowed to ``tickets.read`` / ``tickets.decide``: the same
scope rule (a ticket belongs where its wallet does; another team's ticket is 404), the
same checks (at most what was asked unless *more than asked* is ticked, an expiry in the
future), audit entries and events. A refused decision comes back beside its field.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import tickets as api
from spendgate.console.admin_forms import body_of, done, local_instant
from spendgate.console.forms import INVALID, ObjectForm, Refill, form_page, refill
from spendgate.console.layout import Svc, User, page, require, scope_for
from spendgate.console.naming import Namer
from spendgate.core.access import Can
from spendgate.errors import ValidationFailed
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)
STATUSES = ("open", "approved", "denied", "expired", "superseded", "all")


@router.get("/tickets")
async def tickets_page(
    request: Request, svc: Svc, user: User, status: str = "open"
) -> HTMLResponse:
    if status not in STATUSES:
        raise ValidationFailed(f"status: must be one of {', '.join(STATUSES)}", param="status")
    who = require(user, Can.TICKETS_READ)
    rows = await api.list_tickets(svc, who, scope_for(svc, who), status, None, None, 200)  # type: ignore[arg-type]
    actors = await Namer(svc, user.principal).actors(t["decided_by"] for t in rows)
    ctx = {"tickets": rows, "status": status, "statuses": STATUSES, "actors": actors}
    return await page(request, "tickets/list.html", ctx)


@router.get("/tickets/{ticket_id}")
async def ticket_page(ticket_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _ticket_page(ticket_id, request, svc, user)


async def _ticket_page(
    ticket_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.TICKETS_READ)
    scope = scope_for(svc, who)
    ticket, wallet, owner = await api.ticket_in_scope(scope, ticket_id)
    shown = await api.ticket_out(svc, ticket, wallet)
    ctx: dict[str, Any] = {
        "ticket": shown,
        "actors": await Namer(svc, user.principal).actors([shown["decided_by"]]),
        "may_decide": user.principal.can(Can.TICKETS_DECIDE, owner),
    }
    return await form_page(request, "tickets/detail.html", ctx, sent_back)


#: the approve form's words for what the API's messages ask of a JSON body: an approver
#: read "send more_than_asked: true to grant more" beside a checkbox
APPROVE_LABELS = {"send more_than_asked: true": "tick “Grant more than asked”"}


@router.post("/tickets/{ticket_id}/approve")
async def approve(
    ticket_id: str,
    request: Request,
    svc: Svc,
    user: User,
    amount_usd: Annotated[str, Form(max_length=40)] = "",
    more_than_asked: Annotated[str, Form(max_length=5)] = "",
    reason: Annotated[str, Form(max_length=500)] = "",
    expires_at: Annotated[str, Form(max_length=40)] = "",
    expires_in_hours: Annotated[str, Form(max_length=10)] = "",
) -> Response:
    who = require(user, Can.TICKETS_DECIDE)
    typed = {
        "amount_usd": amount_usd,
        "more_than_asked": more_than_asked,
        "reason": reason,
        "expires_at": expires_at,
        "expires_in_hours": expires_in_hours,
    }
    try:
        body = body_of(
            api.ApproveIn,
            {
                "amount_usd": amount_usd.strip(),
                "more_than_asked": more_than_asked == "on",
                "reason": reason,
                "expires_at": local_instant(expires_at.strip(), "expires_at"),
                "expires_in_hours": expires_in_hours.strip(),
            },
        )
        await api.approve_ticket(ticket_id, body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        sent_back = refill(exc, typed, form="approve", labels=APPROVE_LABELS)
        return await _ticket_page(ticket_id, request, svc, user, sent_back)
    return done(request, f"/tickets/{ticket_id}")


DENY = ObjectForm(
    Can.TICKETS_DECIDE, api.DenyIn, api.deny_ticket, _ticket_page, "/tickets/{}", "deny"
)


@router.post("/tickets/{ticket_id}/deny")
async def deny(
    ticket_id: str,
    request: Request,
    svc: Svc,
    user: User,
    reason: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    return await DENY.submit(ticket_id, request, svc, user, {"reason": reason})
