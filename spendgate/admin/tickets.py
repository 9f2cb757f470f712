"""Admin routes for cost tickets: the approvers' queue, approve and deny.

A ticket belongs where its wallet does (``Scope.of_policy``): a team wallet's tickets to
that team, a key wallet's to the key's team, an org wallet's to the org. So org admins
and finance see and decide every ticket of their org, a team admin those of their own
teams' wallets, and anyone else gets the 404 a missing ticket gives — the rules of
``spendgate.core.access``, nothing of their own here.

Approving states an amount (at most what was asked unless ``more_than_asked`` says so),
a reason and an expiry; the grant then funds the requester key's next calls until it is
used up or expires (``spendgate.guard.tickets``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field, StringConstraints

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scope, Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.admin.wallets import wallet_out
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.errors import Conflict, NotFound, ValidationFailed
from spendgate.guard.tickets import DEFAULT_GRANT_HOURS, TicketDesk
from spendgate.services import Services
from spendgate.store import tickets as store

router = APIRouter(
    prefix="/admin", dependencies=[Depends(principal)], tags=["tickets"], responses=s.ERRORS
)

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
#: how recent "recent spend" of the requester key is
RECENT = timedelta(hours=24)


class WalletState(BaseModel):
    id: str
    name: str
    scope_type: str
    scope_id: str
    status: str
    balance_usd: str
    reserved_usd: str
    tickets: str


class TicketOut(BaseModel):
    id: str
    org_id: str
    status: Literal["open", "approved", "denied", "expired", "superseded"]
    wallet: WalletState
    key_id: str
    key_name: str | None
    team_id: str | None
    model: str | None
    asked_usd: str = Field(description="the largest shortfall of the refused calls")
    refusals: int
    recent_spend_usd: str = Field(description="the requester key's spend in the last 24 h")
    created_at: datetime
    last_refused_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None
    granted_usd: str | None
    used_usd: str | None = Field(
        None, description="what the grant paid for (so far, while it lasts)"
    )
    expires_at: datetime | None
    closed_at: datetime | None
    url: str


class ApproveIn(s.Strict):
    amount_usd: s.Money | None = Field(None, description="default: what was asked")
    more_than_asked: s.Flag = False
    reason: Reason
    expires_at: s.Instant | None = None
    expires_in_hours: Annotated[s.Whole, Field(ge=1, le=24 * 90)] | None = None


class DenyIn(s.Strict):
    reason: Reason


def _desk(svc: Services) -> TicketDesk:
    if svc.tickets is None:  # pragma: no cover - create_app always builds one
        raise NotFound("cost tickets are not served here")
    return svc.tickets


async def ticket_in_scope(
    scope: Scope, ticket_id: str
) -> tuple[dict[str, Any], dict[str, Any], Owner]:
    """The ticket, its wallet and their owner; the 404 of a missing ticket otherwise."""
    ticket = await store.get_ticket(scope.svc.engine, ticket_id)
    wallet = await scope.svc.policies.get_wallet(ticket["wallet_id"])
    owner = scope.require(await scope.of_policy(wallet), "ticket", ticket_id)
    return ticket, wallet, owner


async def ticket_out(
    svc: Services, ticket: dict[str, Any], wallet: dict[str, Any]
) -> dict[str, Any]:
    desk = _desk(svc)
    now = svc.clock.now()
    state = await wallet_out(svc, wallet)
    try:
        key_name: str | None = (await svc.directory.get_key(ticket["key_id"]))["name"]
    except NotFound:
        key_name = None
    recent = await svc.policies.spend_matching(
        ticket["org_id"], now - RECENT, None, lambda sub: sub.key_id == ticket["key_id"]
    )
    granted = ticket["granted_nanos"]
    used = ticket["used_nanos"]
    if used is None and ticket["status"] == "approved":
        await svc.ledger.flush()  # this replica's calls the grant paid for, not yet written
        used = await desk.used(ticket)
    return {
        **{k: v for k, v in ticket.items() if not k.endswith("_nanos")},
        "wallet": {**state, "tickets": wallet.get("ticket_mode") or "off"},
        "key_name": key_name,
        "asked_usd": format_usd(int(ticket["asked_nanos"])),
        "recent_spend_usd": format_usd(recent),
        "granted_usd": None if granted is None else format_usd(int(granted)),
        "used_usd": None if used is None else format_usd(int(used)),
        "url": desk.url(ticket["id"]),
    }


@router.get("/tickets", response_model=list[TicketOut], dependencies=guard(Can.TICKETS_READ))
async def list_tickets(
    svc: Svc,
    who: Who,
    scope: Scoped,
    status: Annotated[
        Literal["open", "approved", "denied", "expired", "superseded", "all"], Query()
    ] = "open",
    wallet_id: Annotated[str | None, Query(max_length=40)] = None,
    org_id: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The approvers' queue (``status=open``, the default), newest refusal first: who
    asked (key, team), how much, the wallet's state and the key's recent spend."""
    rows = await store.list_tickets(
        svc.engine,
        org_id=await org_asked(svc, who, org_id),
        status=None if status == "all" else status,
        wallet_id=wallet_id,
        limit=limit,
    )
    wallets: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        if row["wallet_id"] not in wallets:
            wallets[row["wallet_id"]] = await svc.policies.get_wallet(row["wallet_id"])
        wallet = wallets[row["wallet_id"]]
        if scope.visible(await scope.of_policy(wallet)):
            out.append(await ticket_out(svc, row, wallet))
    return out


@router.get("/tickets/{ticket_id}", response_model=TicketOut, dependencies=guard(Can.TICKETS_READ))
async def get_ticket(ticket_id: str, svc: Svc, scope: Scoped) -> dict[str, Any]:
    ticket, wallet, _ = await ticket_in_scope(scope, ticket_id)
    return await ticket_out(svc, ticket, wallet)


def _expiry(body: ApproveIn, now: datetime) -> datetime:
    if body.expires_at is not None and body.expires_in_hours is not None:
        raise ValidationFailed(
            "expires_at: give expires_at or expires_in_hours, not both", param="expires_at"
        )
    if body.expires_at is not None:
        if body.expires_at <= now:
            raise ValidationFailed("expires_at: must be in the future", param="expires_at")
        return body.expires_at
    return now + timedelta(hours=body.expires_in_hours or DEFAULT_GRANT_HOURS)


@router.post(
    "/tickets/{ticket_id}/approve",
    response_model=TicketOut,
    dependencies=guard(Can.TICKETS_DECIDE),
)
async def approve_ticket(
    ticket_id: str, body: ApproveIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Fund the requester once: ``amount_usd`` (default what was asked; more only with
    ``more_than_asked``) until the expiry (default 24 h). 409 unless the ticket is open."""
    ticket, wallet, owner = await ticket_in_scope(scope, ticket_id)
    if ticket["status"] != "open":
        raise Conflict(f"ticket {ticket_id} is {ticket['status']}, not open; it was decided")
    asked = int(ticket["asked_nanos"])
    amount = asked if body.amount_usd is None else usd_to_nanos(body.amount_usd)
    if amount > asked and not body.more_than_asked:
        raise ValidationFailed(
            f"amount_usd: ${format_usd(amount)} is more than the ${format_usd(asked)} asked; "
            "send more_than_asked: true to grant more",
            param="amount_usd",
        )
    if amount <= 0:
        raise ValidationFailed(
            "amount_usd: the ticket asked for nothing; name an amount", param="amount_usd"
        )
    now = svc.clock.now()
    expires_at = _expiry(body, now)
    async with svc.engine.begin() as conn:
        approved = await _desk(svc).grant(
            conn, ticket, wallet, amount, expires_at, body.reason, who.actor, now
        )
        await audit(
            conn,
            request,
            who,
            "wallet.ticket_approved",
            "ticket",
            ticket_id,
            now,
            owner=owner,
            before={"status": ticket["status"], "asked_usd": format_usd(asked)},
            after={
                "status": "approved",
                "granted_usd": format_usd(amount),
                "expires_at": expires_at.isoformat(),
                "reason": body.reason,
            },
        )
    await svc.enforcer.policy_changed()
    return await ticket_out(svc, approved, wallet)


@router.post(
    "/tickets/{ticket_id}/deny", response_model=TicketOut, dependencies=guard(Can.TICKETS_DECIDE)
)
async def deny_ticket(
    ticket_id: str, body: DenyIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Refuse: the requester's next refused call gets a 402 saying denied, by whom and
    why. 409 unless the ticket is open."""
    ticket, wallet, owner = await ticket_in_scope(scope, ticket_id)
    if ticket["status"] != "open":
        raise Conflict(f"ticket {ticket_id} is {ticket['status']}, not open; it was decided")
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        denied = await _desk(svc).deny(conn, ticket, wallet, body.reason, who.actor, now)
        await audit(
            conn,
            request,
            who,
            "wallet.ticket_denied",
            "ticket",
            ticket_id,
            now,
            owner=owner,
            before={"status": ticket["status"]},
            after={"status": "denied", "reason": body.reason},
        )
    return await ticket_out(svc, denied, wallet)
