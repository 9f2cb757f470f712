"""A test message for one endpoint: queued in the outbox like any delivery, so it is
signed, retried and logged (status, attempts, response) the same way, and the delivery
log shows whether the receiver accepts it.

Its type is ``webhook.test`` (not in the event catalog: nothing else ever emits it, and
no filter matches it — it goes to the one endpoint asked for). For PagerDuty it is a
``trigger`` (that is the only message PagerDuty shows); resolve the test incident there.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from spendgate.security.credentials import new_id
from spendgate.webhooks.catalog import Event
from spendgate.webhooks.fanout import delivery_values
from spendgate.webhooks.store import delivery_out
from spendgate.webhooks.tables import webhook_deliveries

TEST_EVENT = "webhook.test"


async def queue_test(
    conn: AsyncConnection, endpoint: dict[str, Any], org_id: str | None, now: datetime
) -> dict[str, Any]:
    """Queue a test delivery to ``endpoint``, due now; returns it as the API shows it."""
    event = Event(
        new_id("evt"),
        TEST_EVENT,
        now,
        {"endpoint_id": endpoint["id"], "message": "a test message from spendgate"},
        org_id,
    )
    action = "trigger" if endpoint["kind"] == "pagerduty" else "send"
    values = delivery_values(endpoint["id"], event, action, now)
    await conn.execute(webhook_deliveries.insert().values(**values))
    return delivery_out(values, [])
