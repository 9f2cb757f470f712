"""Standard Webhooks signatures (the one place spendgate signs anything it sends).

Headers on every signed request::

    webhook-id: msg_…                 same across retries of one delivery
    webhook-timestamp: 1767225600     seconds, when this attempt was signed
    webhook-signature: v1,<base64>    HMAC-SHA256 of "{id}.{timestamp}.{body}"

During a secret rotation's overlap window both the new and the previous secret sign,
and the header carries both signatures separated by a space; a receiver holding either
secret verifies (``standardwebhooks.Webhook(secret).verify`` tries each one).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """``whsec_`` and 256 random bits in base64, the format receivers' libraries expect."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def signing_secrets(
    current: str, previous: str | None, previous_until: datetime | None, now: datetime
) -> list[str]:
    """The current secret, plus the previous one while its overlap window lasts."""
    if previous is not None and previous_until is not None and now < previous_until:
        return [current, previous]
    return [current]


def signature_header(
    message_id: str, timestamp: datetime, body: str, secrets: Sequence[str]
) -> str:
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    at = timestamp.astimezone(UTC)
    return " ".join(Webhook(s).sign(message_id, at, body) for s in secrets)


def signed_headers(
    message_id: str, timestamp: datetime, body: str, secrets: Sequence[str]
) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature_header(message_id, timestamp, body, secrets),
    }
