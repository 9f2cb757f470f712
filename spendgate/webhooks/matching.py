"""Who wants an event (pure): endpoint filters, user visibility and user preferences.

An endpoint receives an event when its ``event_types`` patterns match the type and its
optional ``scope_type``/``scope_id`` filter matches the event. A user is notified when
the event is one they may see (their org; org admins and finance see the whole org,
everyone else only their own teams and themselves) and their preferences want it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spendgate.webhooks.catalog import Event

SCOPE_TYPES: tuple[str, ...] = ("org", "team", "user", "agent", "key", "tag")
ORG_WIDE_ROLES: frozenset[str] = frozenset({"org_admin", "finance"})


def type_matches(patterns: Iterable[str], type_: str) -> bool:
    """``*`` matches everything, ``budget.*`` a family, anything else exactly."""
    for pattern in patterns:
        if pattern == "*" or pattern == type_:
            return True
        if pattern.endswith(".*") and type_.startswith(pattern[:-1]):
            return True
    return False


def scope_matches(scope_type: str | None, scope_id: str | None, event: Event) -> bool:
    """No filter matches all; otherwise the event must concern that org/team/user/… ."""
    if scope_type is None:
        return True
    data = event.data
    if scope_type == "org":
        return scope_id is not None and scope_id in (event.org_id, data.get("org_id"))
    if data.get("scope_type") == scope_type and data.get("scope_id") == scope_id:
        return True
    if scope_type == "tag":
        tags = data.get("tags")
        return data.get("tag") == scope_id or (isinstance(tags, list) and scope_id in tags)
    return scope_id is not None and data.get(f"{scope_type}_id") == scope_id


def endpoint_wants(endpoint: Mapping[str, Any], event: Event) -> bool:
    return (
        bool(endpoint["enabled"])
        and type_matches(endpoint["event_types"], event.type)
        and scope_matches(endpoint["scope_type"], endpoint["scope_id"], event)
    )


@dataclass(frozen=True, slots=True)
class Preferences:
    """What one user wants to hear about, and where.

    ``scopes`` empty means everything the user may see; ``digest`` batches low-severity
    in-app notifications into one per day; ``webhook_endpoint_ids`` also routes the
    wanted events to those endpoints (one delivery per endpoint and event at most).
    """

    event_types: tuple[str, ...] = ("*",)
    scopes: tuple[tuple[str, str], ...] = ()
    in_app: bool = True
    webhook_endpoint_ids: tuple[str, ...] = ()
    digest: bool = False

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Preferences:
        if raw is None:
            return cls()
        channels = raw.get("channels", {})
        return cls(
            event_types=tuple(raw.get("event_types", ("*",))),
            scopes=tuple((s["scope_type"], s["scope_id"]) for s in raw.get("scopes", ())),
            in_app=bool(channels.get("in_app", True)),
            webhook_endpoint_ids=tuple(channels.get("webhook_endpoint_ids", ())),
            digest=bool(raw.get("digest", False)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "event_types": list(self.event_types),
            "scopes": [{"scope_type": t, "scope_id": i} for t, i in self.scopes],
            "channels": {
                "in_app": self.in_app,
                "webhook_endpoint_ids": list(self.webhook_endpoint_ids),
            },
            "digest": self.digest,
        }


@dataclass(frozen=True, slots=True)
class Recipient:
    user_id: str
    org_id: str
    role: str
    team_ids: frozenset[str] = field(default_factory=frozenset)


def may_see(user: Recipient, event: Event) -> bool:
    """Same org; org-wide roles see everything there, others their teams and themselves."""
    if event.org_id != user.org_id:
        return False
    if user.role in ORG_WIDE_ROLES:
        return True
    return scope_matches("user", user.user_id, event) or any(
        scope_matches("team", team, event) for team in user.team_ids
    )


def wants(prefs: Preferences, event: Event) -> bool:
    if not type_matches(prefs.event_types, event.type):
        return False
    return not prefs.scopes or any(scope_matches(t, i, event) for t, i in prefs.scopes)


def recipients_for(
    users: Sequence[tuple[Recipient, Preferences]], event: Event
) -> list[tuple[Recipient, Preferences]]:
    """The users who may see the event and want it (in any channel)."""
    return [(u, p) for u, p in users if may_see(u, event) and wants(p, event)]
