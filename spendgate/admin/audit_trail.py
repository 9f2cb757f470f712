"""Audit events for admin calls: who (the admin principal), from where, which request.

Kept apart from ``spendgate.admin.audit`` (the audit routes) so that every admin route
module, ``spendgate.admin.routes`` included, can import it without an import cycle::

    async with svc.engine.begin() as conn:
        before = …; after = …                      # the change itself
        await audit_store.append(conn, admin_event(request, principal, "budget.updated",
                                                   "budget", budget_id, at=svc.clock.now(),
                                                   before=before, after=after))
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from starlette.requests import Request

from spendgate.core.audit_chain import AuditEvent
from spendgate.observability.logs import REQUEST_ID
from spendgate.security.credentials import new_id


def actor_of(principal: str) -> tuple[str, str]:
    """``"master"`` → ``("admin", "master")``; ``"token:tok_1"`` → ``("token", "tok_1")``."""
    kind, sep, ident = principal.partition(":")
    return (kind, ident) if sep else ("admin", principal)


def admin_event(
    request: Request,
    principal: str,
    action: str,
    target_type: str,
    target_id: str | None,
    *,
    at: datetime,
    before: Any = None,
    after: Any = None,
) -> AuditEvent:
    """An audit event for an admin call; the request id is the one its log lines carry
    (the caller's ``X-Request-Id`` if well formed, else a new one), the source address the
    peer's (proxy headers are not trusted)."""
    actor_type, actor_id = actor_of(principal)
    request_id = REQUEST_ID.get() or request.headers.get("x-request-id") or new_id("req")
    source_ip = request.client.host if request.client else None
    return AuditEvent(
        at,
        actor_type,
        actor_id,
        action,
        target_type,
        target_id,
        before,
        after,
        request_id[:100],
        source_ip,
    )
