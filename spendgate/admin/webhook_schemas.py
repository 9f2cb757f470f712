"""Admin API shapes for webhook endpoints, deliveries, notifications and preferences."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from spendgate.admin.schemas import Flag, ObjectId, Patch, Strict, Whole

Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Kind = Literal["webhook", "slack", "pagerduty"]
ScopeType = Literal["org", "team", "user", "agent", "key", "tag"]
EventPattern = Annotated[str, StringConstraints(min_length=1, max_length=60)]
ScopeId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Description = Annotated[str, StringConstraints(max_length=500)]


class WebhookIn(Strict):
    url: Url
    kind: Kind = "webhook"
    event_types: list[EventPattern] = Field(
        default_factory=lambda: ["*"], min_length=1, description='types, "budget.*" or "*"'
    )
    scope_type: ScopeType | None = None
    scope_id: ScopeId | None = None
    enabled: Flag = True
    description: Description = ""
    config: dict[str, str] = Field(
        default_factory=dict, description='pagerduty: {"routing_key": …}'
    )


class WebhookPatch(Patch):
    nullable = frozenset({"scope_type", "scope_id"})

    url: Url | None = None
    kind: Kind | None = None
    event_types: list[EventPattern] | None = Field(default=None, min_length=1)
    scope_type: ScopeType | None = None
    scope_id: ScopeId | None = None
    enabled: Flag | None = None
    description: Description | None = None
    config: dict[str, str] | None = None


class Webhook(BaseModel):
    id: str
    url: str
    kind: str
    description: str
    event_types: list[str]
    scope_type: str | None
    scope_id: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    previous_secret_valid_until: datetime | None
    config: dict[str, str] = Field(description="credentials, masked")
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(Webhook):
    secret: str = Field(
        description="whsec_…: shown once; a `webhook` receiver verifies deliveries with it "
        "(Slack and PagerDuty deliveries carry the signature too, but those services check "
        "none: nothing to keep for them)"
    )


class RotateIn(Strict):
    overlap_seconds: Whole = Field(
        default=86400, ge=0, le=30 * 86400, description="how long the previous secret keeps signing"
    )


class Attempt(BaseModel):
    id: str
    attempt: int
    started_at: datetime
    outcome: str
    response_code: int | None
    latency_ms: int
    error: str | None
    response_excerpt: str | None


class Delivery(BaseModel):
    id: str
    endpoint_id: str
    message_id: str
    event_id: str
    event_type: str
    action: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_response_code: int | None
    last_error: str | None
    redelivery_of: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    attempt_log: list[Attempt] = Field(default_factory=list)


class Notification(BaseModel):
    id: str
    user_id: str
    event_id: str | None
    type: str
    severity: str
    title: str
    body: str
    link: str | None
    data: dict[str, Any]
    created_at: datetime
    read_at: datetime | None
    read: bool


class ReadAll(BaseModel):
    updated: int


class ScopeRef(Strict):
    scope_type: ScopeType
    scope_id: ScopeId


class Channels(Strict):
    in_app: Flag = True
    webhook_endpoint_ids: list[ObjectId] = Field(default_factory=list)


class Preferences(Strict):
    event_types: list[EventPattern] = Field(default_factory=lambda: ["*"])
    scopes: list[ScopeRef] = Field(
        default_factory=list, description="empty: everything the user may see"
    )
    channels: Channels = Field(default_factory=Channels)
    digest: Flag = Field(default=False, description="batch low-severity notifications daily")
