"""The fields events about one budget or one key share (pure), so every ``budget.*``
event names its scope and period the same way, and every ``key.*`` event its key.

Webhook scope filters (``webhooks.matching``) read ``scope_type``/``scope_id`` and the
``team_id``/``user_id``/``agent_id``/``tags`` fields: an event that carries them reaches
the endpoints and people filtering on that scope.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from spendgate.core.budget_rules import Budget
from spendgate.core.budget_windows import Window


def budget_event_data(budget: Budget, window: Window) -> dict[str, Any]:
    """Which budget, its scope, and the period (``window``) the event happened in."""
    return {
        "budget_id": budget.id,
        "budget_name": budget.name,
        "scope_type": budget.scope_type,
        "scope_id": budget.scope_id,
        "tag": budget.tag,
        "period": window.key,
        "period_start": window.start.isoformat(),
        "period_end": window.end.isoformat(),
        # the window by its UTC bounds (``Window.span``), as its once-per-period events'
        # dedup keys name it: ``period`` (the local date) may name other hours after a
        # zone move, or these hours another date
        "period_span": window.span,
    }


def key_event_data(key: Mapping[str, Any]) -> dict[str, Any]:
    """Which key (never its secret or hash), as the scope ``key`` it is, and who holds it."""
    expires_at = key.get("expires_at")
    return {
        "key_id": key["id"],
        "name": key["name"],
        "key_prefix": key["key_prefix"],
        "scope_type": "key",
        "scope_id": key["id"],
        "team_id": key.get("team_id"),
        "user_id": key.get("user_id"),
        "agent_id": key.get("agent_id"),
        "tags": list(key.get("tags") or ()),
        "expires_at": expires_at.isoformat() if isinstance(expires_at, datetime) else None,
    }
