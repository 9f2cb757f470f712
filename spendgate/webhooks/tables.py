"""Tables for endpoints, the delivery outbox, attempts, incidents and notifications.

Defined on the shared ``spendgate.store.schema.metadata``; migration 0004 creates them
(0008 adds ``webhook_endpoints.url_encrypted``).
"""

from __future__ import annotations

import sqlalchemy as sa

from spendgate.store.schema import JSONType, UTCDateTime, metadata

webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    #: the target; for kinds whose URL is a credential (Slack) only its masked form
    sa.Column("url", sa.String(2000), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("description", sa.String(500), nullable=False),
    sa.Column("event_types", JSONType, nullable=False),
    sa.Column("scope_type", sa.String(10), nullable=True),
    sa.Column("scope_id", sa.String(64), nullable=True),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    #: Fernet tokens (secrets_box); plaintext is shown once, at creation or rotation
    sa.Column("secret_encrypted", sa.Text(), nullable=False),
    sa.Column("previous_secret_encrypted", sa.Text(), nullable=True),
    sa.Column("previous_secret_until", UTCDateTime(), nullable=True),
    #: kind-specific credentials (PagerDuty ``routing_key``), JSON then encrypted
    sa.Column("config_encrypted", sa.Text(), nullable=True),
    #: Fernet token of the real URL when the URL is a credential (Slack), else NULL
    sa.Column("url_encrypted", sa.Text(), nullable=True),
    #: first failure of the current run of failures; cleared by any success
    sa.Column("failing_since", UTCDateTime(), nullable=True),
    sa.Column("disabled_reason", sa.String(500), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "endpoint_id",
        sa.String(40),
        sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    #: ``webhook-id``: the same for every attempt and redelivery of one message
    sa.Column("message_id", sa.String(40), nullable=False),
    sa.Column("event_id", sa.String(40), nullable=False, index=True),
    sa.Column("event_type", sa.String(60), nullable=False),
    #: the event envelope (catalog.Event.envelope), rendered per endpoint kind at send time
    sa.Column("payload", JSONType, nullable=False),
    #: ``send`` (webhook, Slack), ``trigger`` or ``resolve`` (PagerDuty)
    sa.Column("action", sa.String(10), nullable=False),
    #: pending → succeeded | failed
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
    sa.Column("lease_until", UTCDateTime(), nullable=True),
    sa.Column("leased_by", sa.String(80), nullable=True),
    sa.Column("last_response_code", sa.Integer(), nullable=True),
    sa.Column("last_error", sa.String(500), nullable=True),
    sa.Column("redelivery_of", sa.String(40), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
)

webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "delivery_id",
        sa.String(40),
        sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("endpoint_id", sa.String(40), nullable=False, index=True),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    #: succeeded | failed
    sa.Column("outcome", sa.String(12), nullable=False),
    sa.Column("response_code", sa.Integer(), nullable=True),
    sa.Column("latency_ms", sa.Integer(), nullable=False),
    sa.Column("error", sa.String(500), nullable=True),
    sa.Column("response_excerpt", sa.String(500), nullable=True),
    sa.Column("worker", sa.String(80), nullable=False),
)

pagerduty_incidents = sa.Table(
    "pagerduty_incidents",
    metadata,
    sa.Column(
        "endpoint_id",
        sa.String(40),
        sa.ForeignKey("webhook_endpoints.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("dedup_key", sa.String(300), primary_key=True),
    sa.Column("budget_id", sa.String(40), nullable=False, index=True),
    sa.Column("period", sa.String(40), nullable=False),
    sa.Column("event_id", sa.String(40), nullable=False),
    sa.Column("triggered_at", UTCDateTime(), nullable=False),
    sa.Column("resolved_at", UTCDateTime(), nullable=True),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "user_id", sa.String(40), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("event_id", sa.String(40), nullable=True, index=True),
    sa.Column("type", sa.String(60), nullable=False),
    sa.Column("severity", sa.String(10), nullable=False),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("body", sa.String(4000), nullable=False),
    sa.Column("link", sa.String(1000), nullable=True),
    sa.Column("data", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("read_at", UTCDateTime(), nullable=True),
    #: NULL: shown; ``queued``: waiting for the daily digest; ``batched``: in digest_id
    sa.Column("digest_state", sa.String(10), nullable=True),
    sa.Column("digest_id", sa.String(40), nullable=True),
    sa.Index("ix_notifications_user_created", "user_id", "created_at"),
)

notification_preferences = sa.Table(
    "notification_preferences",
    metadata,
    sa.Column(
        "user_id", sa.String(40), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    ),
    #: matching.Preferences.to_json()
    sa.Column("preferences", JSONType, nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)
