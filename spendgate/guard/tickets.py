"""Cost tickets on the call path and in housekeeping: a wallet that asks instead of only
refusing (``spendgate.store.tickets`` has the life cycle and the storage).

* ``refused``: a call got 402 ``insufficient_funds`` from a wallet with tickets on. The
  refusal opens the wallet × key's ticket or attaches to the open one, and the error
  gains the ticket (id, status, missing amount, link) in its body and headers. If the
  requester's last ticket was denied and they were not told yet, this refusal says
  "denied" and why instead. A wallet on ``auto`` approves a ticket asking less than its
  threshold at once, and the call is planned again (funded by the new grant).
* ``check_header``: a call naming ``x-spendgate-ticket`` gets a clear 402 when that
  ticket cannot fund it (open, denied, expired); an approved one funds the key's calls
  anyway, header or not.
* ``grant`` / ``deny``: the approver's decisions (the admin API audits them).
* ``expire``: grants past ``expires_at`` close; what they did not pay for returns.

Every step stores its ``wallet.ticket_*`` event in the same transaction as the change.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.audit_chain import AuditEvent
from spendgate.core.budget_rules import Subject
from spendgate.core.clock import Clock
from spendgate.core.money import format_usd
from spendgate.errors import InsufficientFunds, NotFound
from spendgate.guard.enforcement import Enforcer
from spendgate.store import audit as audit_store
from spendgate.store import tickets as store
from spendgate.store.events import record_event
from spendgate.store.ledger import LedgerWriter
from spendgate.store.policies import PolicyStore

log = logging.getLogger("spendgate.guard.tickets")

#: how the audit log names the gateway when it opens, auto-approves or expires a ticket
SYSTEM_ACTOR = "cost-tickets"
#: how long a grant lasts unless the approver says otherwise (and for auto-approvals)
DEFAULT_GRANT_HOURS = 24


def owner_teams(wallet: dict[str, Any], ticket: dict[str, Any]) -> tuple[str, ...]:
    """The teams a ticket belongs to, as its wallet does (``Scope.of_policy``): a team
    wallet's team; a key wallet's key's team; none for an org wallet."""
    if wallet["scope_type"] == "team":
        return (wallet["scope_id"],)
    if wallet["scope_type"] == "key" and ticket.get("team_id"):
        return (ticket["team_id"],)
    return ()


class TicketDesk:
    def __init__(
        self,
        engine: AsyncEngine,
        policies: PolicyStore,
        enforcer: Enforcer,
        ledger: LedgerWriter,
        clock: Clock,
        *,
        public_url: str,
    ) -> None:
        self._engine = engine
        self._policies = policies
        self._enforcer = enforcer
        self._ledger = ledger
        self._clock = clock
        self._public_url = public_url.rstrip("/")

    def url(self, ticket_id: str) -> str:
        """The link a refused caller passes on to an approver: the console's ticket page
        (``/admin/tickets/<id>`` would answer their browser 401)."""
        return f"{self._public_url}/tickets/{ticket_id}"

    def _describe(self, ticket: dict[str, Any], missing: int | None = None) -> dict[str, str]:
        """The ticket as a refused call sees it (body ``error.ticket`` and headers)."""
        out = {
            "id": ticket["id"],
            "status": ticket["status"],
            "url": self.url(ticket["id"]),
            "missing_usd": format_usd(ticket["asked_nanos"] if missing is None else missing),
            "wallet_id": ticket["wallet_id"],
        }
        if ticket.get("reason"):
            out["reason"] = ticket["reason"]
        return out

    def event_data(
        self, ticket: dict[str, Any], wallet: dict[str, Any], **more: Any
    ) -> dict[str, Any]:
        return {
            "ticket_id": ticket["id"],
            "status": ticket["status"],
            "wallet_id": wallet["id"],
            "wallet_name": wallet["name"],
            "scope_type": wallet["scope_type"],
            "scope_id": wallet["scope_id"],
            "key_id": ticket["key_id"],
            "team_id": ticket["team_id"],
            "asked_usd": format_usd(int(ticket["asked_nanos"])),
            "refusals": ticket["refusals"],
            "url": self.url(ticket["id"]),
            **more,
        }

    async def step(
        self,
        conn: AsyncConnection,
        type_: str,
        ticket: dict[str, Any],
        wallet: dict[str, Any],
        now: datetime,
        *,
        system_audit: bool,
        **more: Any,
    ) -> None:
        """Store one step's event (once per ticket and step) and, for the gateway's own
        steps, its audit entry; both in ``conn``'s transaction."""
        await record_event(
            conn,
            type_,
            self.event_data(ticket, wallet, **more),
            now,
            org_id=ticket["org_id"],
            dedup_key=f"ticket:{ticket['id']}:{type_}",
        )
        if system_audit:
            await audit_store.append(
                conn,
                AuditEvent(
                    now,
                    "system",
                    SYSTEM_ACTOR,
                    type_,
                    "ticket",
                    ticket["id"],
                    None,
                    {**ticket, **more},
                ),
                org_id=ticket["org_id"],
                team_ids=owner_teams(wallet, ticket),
            )

    # -- the call path -------------------------------------------------------------------
    async def refused(
        self, err: InsufficientFunds, subject: Subject, request_id: str, *, auto: bool = True
    ) -> bool:
        """Fill in ``err``'s ticket (opening or attaching one); True when the ticket was
        approved on the spot (``auto``) and the call should be planned again."""
        if err.wallet_id is None:
            return False
        try:
            return await self._refused(err, subject, request_id, auto)
        except (SQLAlchemyError, OSError) as exc:
            # the database is down: the call is refused as without tickets (the wallet's
            # 402 stands), not turned into a 503
            log.warning("cost ticket not opened, database unavailable: %s", exc)
            return False

    async def _refused(
        self, err: InsufficientFunds, subject: Subject, request_id: str, auto: bool
    ) -> bool:
        assert err.wallet_id is not None
        wallet = await self._policies.get_wallet(err.wallet_id)
        mode = wallet.get("ticket_mode") or "off"
        if mode == "off":
            return False
        now = self._clock.now()
        async with self._engine.begin() as conn:
            denied = await store.untold_denial(conn, wallet["id"], subject.key_id, now)
            if denied is not None:
                err.message = (
                    f"cost ticket {denied['id']} for wallet {wallet['id']} was denied by "
                    f"{denied['decided_by']}: {denied['reason']}. A further refused call "
                    "opens a new ticket"
                )
                err.ticket = self._describe(denied)
                return False
            ticket, opened = await store.open_or_attach(
                conn,
                wallet,
                subject.key_id,
                subject.team_id,
                err.shortfall_nanos,
                subject.model,
                request_id,
                now,
            )
            if opened:
                await self.step(
                    conn, "wallet.ticket_opened", ticket, wallet, now, system_audit=True
                )
            auto_below = wallet.get("ticket_auto_below_nanos")
            if (
                auto
                and mode == "auto"
                and auto_below is not None
                and ticket["asked_nanos"] < auto_below
            ):
                await self.grant(
                    conn,
                    ticket,
                    wallet,
                    int(ticket["asked_nanos"]),
                    now + timedelta(hours=DEFAULT_GRANT_HOURS),
                    f"auto-approved: asked less than ${format_usd(int(auto_below))}",
                    SYSTEM_ACTOR,
                    now,
                    system_audit=True,
                )
                approved = True
            else:
                approved = False
        if approved:
            await self._enforcer.policy_changed()
            return True
        err.message = (
            f"{err.message}. Cost ticket {ticket['id']} asks an approver for "
            f"${format_usd(int(ticket['asked_nanos']))} ({ticket['refusals']} refused "
            f"call(s) so far): {self.url(ticket['id'])}"
        )
        err.ticket = self._describe(ticket, err.shortfall_nanos)
        return False

    async def check_header(self, ticket_id: str, key_id: str) -> None:
        """402 when the ticket a call names cannot fund it; 404 when it is not the key's."""
        try:
            ticket = await store.get_ticket(self._engine, ticket_id)
        except NotFound:
            ticket = None
        if ticket is None or ticket["key_id"] != key_id:
            raise NotFound(f"ticket {ticket_id} not found", param="x-spendgate-ticket")
        now = self._clock.now()
        status = ticket["status"]
        if status == "approved" and ticket["expires_at"] > now:
            return
        if status == "open":
            message = f"cost ticket {ticket_id} is waiting for an approver"
        elif status == "denied":
            message = f"cost ticket {ticket_id} was denied by {ticket['decided_by']}: " + str(
                ticket["reason"]
            )
        else:
            message = (
                f"cost ticket {ticket_id} is {status} (its grant ended "
                f"{(ticket['closed_at'] or ticket['expires_at']).isoformat()}); "
                "its unused funding went back"
            )
        err = InsufficientFunds(message, wallet_id=ticket["wallet_id"], ticket_id=ticket_id)
        err.ticket = self._describe(ticket)
        raise err

    # -- decisions -----------------------------------------------------------------------
    async def used(self, ticket: dict[str, Any], until: datetime | None = None) -> int:
        """What a grant has paid for (by calls started before ``until``; None: so far):
        its key's spend since the approval, at most the grant."""
        start = ticket["decided_at"]
        if until is not None and until <= start:
            return 0
        spent = await self._policies.spend_matching(
            ticket["org_id"], start, until, lambda s: s.key_id == ticket["key_id"]
        )
        return min(spent, int(ticket["granted_nanos"] or 0))

    async def grant(
        self,
        conn: AsyncConnection,
        ticket: dict[str, Any],
        wallet: dict[str, Any],
        amount: int,
        expires_at: datetime,
        reason: str,
        by: str,
        now: datetime,
        *,
        system_audit: bool = False,
    ) -> dict[str, Any]:
        """Approve: a one-time grant of ``amount`` for the requester until ``expires_at``.
        A grant the key still has on this wallet ends first (``superseded``), so one
        grant at a time funds a key's calls there. The caller calls ``policy_changed``
        after committing."""
        previous = await store.active_grant(conn, ticket["wallet_id"], ticket["key_id"], now)
        if previous is not None:
            used = await self.used(previous)  # for the event: the ledger decides later
            if await store.close_grant(conn, previous["id"], "superseded", now, used):
                closed = {**previous, "status": "superseded"}
                await self._closed(conn, closed, wallet, used, now)
        approved = await store.decide(
            conn,
            ticket["id"],
            {
                "status": "approved",
                "decided_by": by,
                "decided_at": now,
                "reason": reason,
                "granted_nanos": amount,
                "expires_at": expires_at,
            },
        )
        await self.step(
            conn,
            "wallet.ticket_approved",
            approved,
            wallet,
            now,
            system_audit=system_audit,
            granted_usd=format_usd(amount),
            expires_at=expires_at.isoformat(),
            reason=reason,
            decided_by=by,
        )
        return approved

    async def deny(
        self,
        conn: AsyncConnection,
        ticket: dict[str, Any],
        wallet: dict[str, Any],
        reason: str,
        by: str,
        now: datetime,
    ) -> dict[str, Any]:
        denied = await store.decide(
            conn,
            ticket["id"],
            {"status": "denied", "decided_by": by, "decided_at": now, "reason": reason},
        )
        await self.step(
            conn,
            "wallet.ticket_denied",
            denied,
            wallet,
            now,
            system_audit=False,
            reason=reason,
            decided_by=by,
        )
        return denied

    async def _closed(
        self,
        conn: AsyncConnection,
        ticket: dict[str, Any],
        wallet: dict[str, Any],
        used: int,
        now: datetime,
    ) -> None:
        granted = int(ticket["granted_nanos"] or 0)
        await self.step(
            conn,
            "wallet.ticket_expired",
            ticket,
            wallet,
            now,
            system_audit=True,
            granted_usd=format_usd(granted),
            used_usd=format_usd(used),
            returned_usd=format_usd(max(0, granted - used)),
            ended=ticket["status"],
        )

    # -- housekeeping --------------------------------------------------------------------
    async def expire(self) -> int:
        """Close every grant past its expiry (its unused funding returns: calls of the key
        go back to the wallet); returns how many this run closed."""
        now = self._clock.now()
        due = await store.due_to_expire(self._engine, now)
        if not due:
            return 0
        await self._ledger.flush()
        closed = 0
        for ticket in due:
            used = await self.used(ticket, ticket["expires_at"])
            wallet = await self._policies.get_wallet(ticket["wallet_id"])
            async with self._engine.begin() as conn:
                end = ticket["expires_at"]
                if await store.close_grant(conn, ticket["id"], "expired", end, used):
                    await self._closed(conn, {**ticket, "status": "expired"}, wallet, used, now)
                    closed += 1
        if closed:
            log.info("%d cost ticket grant(s) expired", closed)
            await self._enforcer.policy_changed()
        return closed
