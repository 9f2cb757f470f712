"""Who may do what in the admin API — pure rules, no I/O.

A caller is a :class:`Principal`: the master key (bootstrap and break-glass), or an admin
token that belongs to a user and acts with that user's role, org and teams *as they are
now* (changing a user's role changes what their tokens may do at once).

Two questions are asked of every admin call, in this order:

1. **May this role do this at all?** (:data:`GRANTS`) — no: 403 ``permission_denied``.
2. **Is the object theirs?** (:meth:`Principal.sees`) — no: the same 404 (or 422 for a
   referenced id) a missing object gives, so nobody learns what exists elsewhere.

    role         sees                      changes
    org_admin    the whole org             everything in the org
    finance      the whole org             budgets, exceptions, wallets, top-ups
    team_admin   their teams               keys, agents, budgets, rate limits, members
    viewer       their teams               nothing
    member       —                         — (a proxy user: no admin rights at all)

Objects that belong to the org but to no team (org budgets, tag budgets, org keys) are
org-wide: team roles do not see them. Virtual keys never reach the admin API.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

MASTER = "master"
ORG_ADMIN, FINANCE, TEAM_ADMIN, VIEWER, MEMBER = (
    "org_admin",
    "finance",
    "team_admin",
    "viewer",
    "member",
)
ROLES = (ORG_ADMIN, FINANCE, TEAM_ADMIN, VIEWER, MEMBER)
#: roles whose admin tokens see the whole org
ORG_WIDE = frozenset({MASTER, ORG_ADMIN, FINANCE})
#: roles a team admin may give the members of their teams
TEAM_ASSIGNABLE = frozenset({TEAM_ADMIN, VIEWER, MEMBER})


class Can(StrEnum):
    """One permission per kind of admin action."""

    ORGS_CREATE = "orgs.create"
    DIRECTORY_READ = "directory.read"
    TEAMS_WRITE = "teams.write"
    USERS_WRITE = "users.write"
    AGENTS_WRITE = "agents.write"
    KEYS_READ = "keys.read"
    KEYS_WRITE = "keys.write"
    BUDGETS_READ = "budgets.read"
    BUDGETS_WRITE = "budgets.write"
    WALLETS_READ = "wallets.read"
    WALLETS_WRITE = "wallets.write"
    LIMITS_READ = "limits.read"
    LIMITS_WRITE = "limits.write"
    USAGE_READ = "usage.read"
    EVENTS_READ = "events.read"
    FORECASTS_READ = "forecasts.read"
    FORECASTS_REFRESH = "forecasts.refresh"
    WEBHOOKS = "webhooks.manage"
    NOTIFICATIONS = "notifications"
    AUDIT_READ = "audit.read"
    AUDIT_VERIFY = "audit.verify"
    AUDIT_PURGE = "audit.purge"
    TOKENS = "tokens"
    ANOMALIES_READ = "anomalies.read"
    ANOMALIES_ACK = "anomalies.acknowledge"
    ANOMALY_ACTIONS_WRITE = "anomalies.actions.write"


_EVERYONE = frozenset({ORG_ADMIN, FINANCE, TEAM_ADMIN, VIEWER})
_ORG_READERS = frozenset({ORG_ADMIN, FINANCE})
#: which roles hold each permission; the master key holds all of them
GRANTS: dict[Can, frozenset[str]] = {
    Can.ORGS_CREATE: frozenset(),
    Can.DIRECTORY_READ: _EVERYONE,
    Can.TEAMS_WRITE: frozenset({ORG_ADMIN}),
    Can.USERS_WRITE: frozenset({ORG_ADMIN, TEAM_ADMIN}),
    Can.AGENTS_WRITE: frozenset({ORG_ADMIN, TEAM_ADMIN}),
    Can.KEYS_READ: frozenset({ORG_ADMIN, TEAM_ADMIN, VIEWER}),
    Can.KEYS_WRITE: frozenset({ORG_ADMIN, TEAM_ADMIN}),
    Can.BUDGETS_READ: _EVERYONE,
    Can.BUDGETS_WRITE: frozenset({ORG_ADMIN, FINANCE, TEAM_ADMIN}),
    Can.WALLETS_READ: _EVERYONE,
    Can.WALLETS_WRITE: _ORG_READERS,
    Can.LIMITS_READ: _EVERYONE,
    Can.LIMITS_WRITE: frozenset({ORG_ADMIN, TEAM_ADMIN}),
    Can.USAGE_READ: _EVERYONE,
    Can.EVENTS_READ: _ORG_READERS,
    Can.FORECASTS_READ: _EVERYONE,
    Can.FORECASTS_REFRESH: _ORG_READERS,
    Can.WEBHOOKS: frozenset({ORG_ADMIN}),
    Can.NOTIFICATIONS: _EVERYONE,
    Can.AUDIT_READ: _EVERYONE,
    Can.AUDIT_VERIFY: _ORG_READERS,
    Can.AUDIT_PURGE: frozenset(),
    Can.TOKENS: _EVERYONE,
    # anomalies: seen like spend; acknowledged (which lifts a pause or limit it applied)
    # by those who may change budgets; the pause/limit itself set by those who set limits
    Can.ANOMALIES_READ: _EVERYONE,
    Can.ANOMALIES_ACK: frozenset({ORG_ADMIN, FINANCE, TEAM_ADMIN}),
    Can.ANOMALY_ACTIONS_WRITE: frozenset({ORG_ADMIN, TEAM_ADMIN}),
}


@dataclass(frozen=True, slots=True)
class Owner:
    """Where an object lives: its org and the teams it belongs to (none: org-wide)."""

    org_id: str | None
    team_ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, org_id: str | None, *team_ids: str | None) -> Owner:
        return cls(org_id, frozenset(t for t in team_ids if t))


NOBODY = Owner(None)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated admin caller."""

    role: str
    org_id: str | None = None
    team_ids: frozenset[str] = frozenset()
    user_id: str | None = None
    token_id: str | None = None

    @property
    def is_master(self) -> bool:
        return self.role == MASTER

    @property
    def org_wide(self) -> bool:
        return self.role in ORG_WIDE

    @property
    def actor(self) -> str:
        """How the audit log names the caller: ``master`` or ``token:<id>``."""
        return MASTER if self.token_id is None else f"token:{self.token_id}"

    def may(self, permission: Can) -> bool:
        return self.is_master or self.role in GRANTS[permission]

    def sees(self, owner: Owner) -> bool:
        """Whether an object with this owner is within the caller's scope."""
        if self.is_master:
            return True
        if owner.org_id != self.org_id:
            return False
        return self.org_wide or not self.team_ids.isdisjoint(owner.team_ids)

    def sees_all_of(self, team_ids: Iterable[str]) -> bool:
        """For team admins assigning members: every team given must be theirs."""
        return self.org_wide or self.team_ids.issuperset(team_ids)

    def org_filter(self, asked: str | None) -> str | None:
        """The org a list is filtered to: the caller's own unless master (then as asked)."""
        return asked if self.is_master else self.org_id

    def team_filter(self) -> frozenset[str] | None:
        """The teams a list is filtered to; ``None`` for org-wide callers."""
        return None if self.org_wide else self.team_ids


MASTER_PRINCIPAL = Principal(MASTER)
