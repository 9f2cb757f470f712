"""The event types spendgate emits (SPEC §13) and how loud each one is (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]

EVENT_TYPES: tuple[str, ...] = (
    "budget.threshold_crossed",
    "budget.soft_limit_reached",
    "budget.hard_limit_reached",
    #: a hard cap refused a call that would fit an empty period: once per budget, period
    #: and cap, so again after a raise is used up (ours; the status's ``refusing``)
    "budget.calls_refused",
    "budget.forecast_overrun",
    "budget.exception_granted",
    "budget.exception_expired",
    "wallet.low_balance",
    "wallet.depleted",
    #: cost tickets: a refused call asked for funding; approved, denied; a grant ended (ours)
    "wallet.ticket_opened",
    "wallet.ticket_approved",
    "wallet.ticket_denied",
    "wallet.ticket_expired",
    "ratelimit.exceeded",
    "key.created",
    "key.revoked",
    "key.expiring",
    "price.unknown",
    #: an endpoint that kept failing was switched off (not in SPEC §13's list; ours)
    "webhook.endpoint_disabled",
    #: a provider reported more tokens than a call can use; recorded clamped (ours)
    "usage.implausible",
    #: the database refused a ledger row; it was set aside in ``ledger_rejected`` (ours)
    "ledger.row_rejected",
    #: a live counter had less spend than the ledger and was raised to it (ours)
    "budget.counter_drift",
    "wallet.counter_drift",
    #: an hour's spend (or the running hour's) left its usual band; and came back (ours)
    "spend.anomaly",
    "spend.anomaly_resolved",
    #: the audit chain's head, signed: receivers keep it outside the database (ours)
    "audit.anchor",
)

#: a budget event's ``threshold`` field → severity (alerts inform, soft warns, hard pages)
THRESHOLD_SEVERITY: dict[str, Severity] = {"alert": "info", "soft": "warning", "hard": "critical"}

TYPE_SEVERITY: dict[str, Severity] = {
    "budget.threshold_crossed": "info",
    "budget.soft_limit_reached": "warning",
    "budget.hard_limit_reached": "critical",
    "budget.calls_refused": "warning",
    "budget.forecast_overrun": "warning",
    "budget.exception_granted": "info",
    "budget.exception_expired": "info",
    "wallet.low_balance": "warning",
    "wallet.depleted": "critical",
    "wallet.ticket_opened": "warning",
    "wallet.ticket_approved": "info",
    "wallet.ticket_denied": "info",
    "wallet.ticket_expired": "info",
    "ratelimit.exceeded": "warning",
    "key.created": "info",
    "key.revoked": "info",
    "key.expiring": "warning",
    "price.unknown": "warning",
    "webhook.endpoint_disabled": "warning",
    "usage.implausible": "warning",
    "ledger.row_rejected": "critical",
    "budget.counter_drift": "warning",
    "wallet.counter_drift": "warning",
    "spend.anomaly": "critical",
    "spend.anomaly_resolved": "info",
    "audit.anchor": "info",
}

TITLES: dict[str, str] = {
    "budget.threshold_crossed": "Budget alert threshold crossed",
    "budget.soft_limit_reached": "Budget soft limit reached",
    "budget.hard_limit_reached": "Budget hard limit reached",
    "budget.calls_refused": "Budget hard limit refusing calls",
    "budget.forecast_overrun": "Budget forecast to overrun",
    "budget.exception_granted": "Budget exception granted",
    "budget.exception_expired": "Budget exception expired",
    "wallet.low_balance": "Wallet balance low",
    "wallet.depleted": "Wallet depleted",
    "wallet.ticket_opened": "Cost ticket opened: a call asks for funding",
    "wallet.ticket_approved": "Cost ticket approved",
    "wallet.ticket_denied": "Cost ticket denied",
    "wallet.ticket_expired": "Cost ticket grant ended",
    "ratelimit.exceeded": "Rate limit exceeded",
    "key.created": "Virtual key created",
    "key.revoked": "Virtual key revoked",
    "key.expiring": "Virtual key expiring",
    "price.unknown": "Model price unknown",
    "webhook.endpoint_disabled": "Webhook endpoint disabled",
    "usage.implausible": "Implausible usage reported by a provider",
    "ledger.row_rejected": "Ledger row refused by the database",
    "budget.counter_drift": "Budget counter repaired from the ledger",
    "wallet.counter_drift": "Wallet counter repaired from the ledger",
    "spend.anomaly": "Spend anomaly",
    "spend.anomaly_resolved": "Spend anomaly resolved",
    "audit.anchor": "Audit chain anchor",
}


def severity(type_: str, data: dict[str, Any]) -> Severity:
    """Threshold events by their level; everything else by type; unknown types warn."""
    level = data.get("threshold")
    if type_.startswith("budget.") and isinstance(level, str) and level in THRESHOLD_SEVERITY:
        return THRESHOLD_SEVERITY[level]
    return TYPE_SEVERITY.get(type_, "warning")


def is_low_severity(type_: str, data: dict[str, Any]) -> bool:
    """Low severity events may wait for the daily digest."""
    return severity(type_, data) == "info"


def title(type_: str) -> str:
    return TITLES.get(type_, type_)


def valid_pattern(pattern: str) -> bool:
    """A known type, ``*`` (everything) or ``family.*`` (e.g. ``budget.*``)."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return any(t.startswith(pattern[:-1]) for t in EVENT_TYPES)
    return pattern in EVENT_TYPES


@dataclass(frozen=True, slots=True)
class Event:
    """One stored event as the outside world sees it: ``id``, ``type``, ``timestamp``, ``data``."""

    id: str
    type: str
    timestamp: datetime
    data: Mapping[str, Any]
    org_id: str | None = None
    dedup_key: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        """From an ``events`` row (or ``record_event``'s return value)."""
        return cls(
            id=row["id"],
            type=row["type"],
            timestamp=row["created_at"],
            data=dict(row["data"]),
            org_id=row.get("org_id"),
            dedup_key=row.get("dedup_key"),
        )

    @classmethod
    def from_envelope(cls, envelope: Mapping[str, Any]) -> Event:
        return cls(
            id=envelope["id"],
            type=envelope["type"],
            timestamp=datetime.fromisoformat(envelope["timestamp"]),
            data=dict(envelope["data"]),
            org_id=envelope.get("org_id"),
            dedup_key=envelope.get("dedup_key"),
        )

    def envelope(self) -> dict[str, Any]:
        """The JSON body of a generic webhook (plus the routing fields we keep with it)."""
        return {
            "id": self.id,
            "type": self.type,
            "timestamp": iso_z(self.timestamp),
            "data": dict(self.data),
            "org_id": self.org_id,
            "dedup_key": self.dedup_key,
        }

    @property
    def severity(self) -> Severity:
        return severity(self.type, dict(self.data))


def iso_z(at: datetime) -> str:
    """``2026-03-10T15:30:00Z``: UTC, second precision unless there is more."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


#: receivers that never check the Standard Webhooks signature (their deliveries carry it,
#: as every delivery does): an endpoint of these kinds has no secret anyone needs to keep
UNCHECKED_KINDS = {"slack": "Slack", "pagerduty": "PagerDuty"}
