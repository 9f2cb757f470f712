"""The audit chain's head sent out now and then as an event (``audit.anchor``).

An anchor catches a truncated chain only if somebody kept it outside the database
(``spendgate.core.audit_chain``). Webhook receivers — a SIEM, a log archive — keep what
they are sent, so one replica sends the signed head as an ``audit.anchor`` event every
``SPENDGATE_AUDIT_ANCHOR_HOURS`` (24 by default, 0: never), to the endpoints that
subscribe to it with no org filter (the event concerns every org, so only the master
key's unfiltered endpoints receive it). A head that has not moved since the last anchor
is not sent again. ``spendgate audit verify --since-anchor`` takes the event's ``data``
as it is.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.audit_chain import Anchor, sign_anchor
from spendgate.store.audit import head
from spendgate.store.events import record_event

ANCHOR_EVENT = "audit.anchor"


async def emit_anchor(engine: AsyncEngine, key: bytes, now: datetime) -> dict[str, Any] | None:
    """Record (and so deliver) the signed chain head; ``None`` if the chain is empty or
    its head was anchored already."""
    seq, digest = await head(engine)
    if seq == 0:
        return None
    anchor = sign_anchor(Anchor(seq, digest, now), key)
    async with engine.begin() as conn:
        return await record_event(
            conn, ANCHOR_EVENT, anchor.as_dict(), now, dedup_key=f"{ANCHOR_EVENT}:{seq}"
        )
