"""Who wants an event (pure): endpoint filters, user visibility and user preferences.

An endpoint receives an event when its ``event_types`` patterns match the type and its
optional ``scope_type``/``scope_id`` filter matches the event. A user is notified when
the event is one they may see (their org; org admins and finance see the whole org,
everyone else only their own teams and themselves) and their preferences want it; their
routes to endpoints count while they may manage the endpoint (:func:`may_route`).

Teams. An event concerns a team when it is about the team itself (``scope_type: team``)
or about something in it: a key or an agent of the team (``team_id``), a user who is a
member (``team_ids``, every team the user was in when the event happened). When an event
is stored, the key, agent or user it is about (:func:`team_subject`) is looked up and the
event is given that ``team_id`` or ``team_ids``; :func:`event_team_ids` reads them, and a
team filter (an endpoint's, a preference's, a member's view) matches exactly those teams.
A key or agent without a team is org-wide: no team hears about it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spendgate.core.access import Can, Owner, Principal
from spendgate.webhooks.catalog import Event

SCOPE_TYPES: tuple[str, ...] = ("org", "team", "user", "agent", "key", "tag")
ORG_WIDE_ROLES: frozenset[str] = frozenset({"org_admin", "finance"})
#: events that name a call's key but are the operator's, not the key's team's: a ledger
#: row the database refused (``reason`` is the database's own error text)
ORG_LEVEL_TYPES: frozenset[str] = frozenset({"ledger.row_rejected"})


def type_matches(patterns: Iterable[str], type_: str) -> bool:
    """``*`` matches everything, ``budget.*`` a family, anything else exactly."""
    for pattern in patterns:
        if pattern == "*" or pattern == type_:
            return True
        if pattern.endswith(".*") and type_.startswith(pattern[:-1]):
            return True
    return False


def team_subject(type_: str, data: Mapping[str, Any]) -> tuple[str, str] | None:
    """The object whose team(s) an event must be given to reach team filters, as (kind,
    id): the user a budget is scoped to (unless the event has ``team_ids``); else the key
    or agent a budget, wallet or forecast is scoped to, or the key a call event names
    (``key_id``), unless the event already says ``team_id`` (``null``: no team). None
    for an org-level type (:data:`ORG_LEVEL_TYPES`)."""
    if type_ in ORG_LEVEL_TYPES:
        return None
    scope_type, scope_id = data.get("scope_type"), data.get("scope_id")
    if scope_type == "user" and isinstance(scope_id, str) and scope_id:
        return None if "team_ids" in data else ("user", scope_id)
    if "team_id" in data:
        return None
    if scope_type in ("key", "agent") and isinstance(scope_id, str) and scope_id:
        return str(scope_type), scope_id
    key_id = data.get("key_id")
    return ("key", key_id) if isinstance(key_id, str) and key_id else None


def event_team_ids(data: Mapping[str, Any]) -> frozenset[str]:
    """Every team an event concerns (see the module docstring): the team it is scoped to,
    the team of its key or agent (``team_id``) and the teams of its user (``team_ids``)."""
    teams = set()
    if data.get("scope_type") == "team" and data.get("scope_id"):
        teams.add(str(data["scope_id"]))
    if data.get("team_id"):
        teams.add(str(data["team_id"]))
    listed = data.get("team_ids")
    if isinstance(listed, list):
        teams.update(str(t) for t in listed if t)
    return frozenset(teams)


def scope_matches(scope_type: str | None, scope_id: str | None, event: Event) -> bool:
    """No filter matches all; otherwise the event must concern that org/team/user/… ."""
    if scope_type is None:
        return True
    data = event.data
    if scope_type == "org":
        return scope_id is not None and scope_id in (event.org_id, data.get("org_id"))
    if scope_type == "team":
        return scope_id is not None and scope_id in event_team_ids(data)
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
    """A user of the org: ``role`` their org role, ``team_roles`` their role per team."""

    user_id: str
    org_id: str
    role: str
    team_ids: frozenset[str] = field(default_factory=frozenset)
    team_roles: tuple[tuple[str, str], ...] = ()

    @property
    def principal(self) -> Principal:
        """What the user may do in the admin API (as their admin tokens would)."""
        return Principal.of(self.role, self.org_id, dict(self.team_roles), self.user_id)


def may_route(user: Recipient, endpoint_owner: Owner) -> bool:
    """Whether a user's notifications may go to an endpoint with this owner: while the user
    may manage it (the admin API's rule for saving the route), asked again at every event,
    so a route saved before a role change, a move between teams or a re-scoped endpoint
    delivers nothing the user could no longer send there."""
    return user.principal.can(Can.WEBHOOKS, endpoint_owner)


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
