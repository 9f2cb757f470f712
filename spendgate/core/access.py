"""Who may do what in the admin API — pure rules, no I/O.

Roles come in two kinds. An **org role** belongs to the user and reaches the whole org;
a **team role** belongs to one membership (user, team) and reaches that team only::

    org role     sees                      changes
    org_admin    the whole org             everything in the org
    finance      the whole org             budgets, exceptions, wallets, top-ups, tickets
    member       (no org role: what the user may do comes from their team roles)

    team role    sees                      changes
    team_admin   that team                 keys, agents, budgets, rate limits, members,
                                           cost tickets of the team's wallets
    viewer       that team                 nothing
    member       —                         — (a proxy user: no admin rights there)

A user who is team_admin of A and viewer of B manages A and only reads B: nothing done
in A reaches what they may do in B, and a team admin changes memberships of their own
teams only (:func:`standing_change_refusal`).

A caller is a :class:`Principal`: the master key (bootstrap and break-glass), or an admin
token that belongs to a user and acts with that user's standing *as it is now* (changing
a role changes what their tokens may do at once). Two questions are asked of every admin
call, in this order:

1. **May this caller do this at all?** (:meth:`Principal.may`: some role of theirs holds
   the permission in :data:`GRANTS`) — no: 403 ``permission_denied``.
2. **Is the object theirs to do it to?** The route's principal is *narrowed* to the
   permission (:meth:`Principal.acting_for`): its :attr:`~Principal.team_ids` are the
   teams whose role holds it, and it is org-wide only if the org role holds it. Then
   :meth:`Principal.sees` answers — no: the same 404 (or 422 for a referenced id) a
   missing object gives, so nobody learns what exists elsewhere. One of the object's
   teams being the caller's is enough, except for changes that bind calls
   (:data:`BINDING`): a budget on a user of teams A and B binds the user's calls in both,
   so a team admin of A alone may read it but not change it — that needs the permission
   in every one of the object's teams (a 403 saying so, :meth:`Principal.binds_part_of`).

Objects that belong to the org but to no team (org budgets, tag budgets, org keys) are
org-wide: team roles do not see them. Virtual keys never reach the admin API.

**For other callers (the web console, the CLI):** authenticate to a ``Principal``, then
``who.can(Can.X, owner)`` answers "may this caller do X to this object?" in one call;
``who.may(Can.X)`` alone says whether to show the action at all, and
``who.acting_for(Can.X).team_filter()`` / ``.org_filter(asked)`` give the filters for a
list of such objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
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
#: roles held per user, reaching the whole org (``member``: none)
ORG_ROLES = (ORG_ADMIN, FINANCE, MEMBER)
#: roles held per membership, reaching one team
TEAM_ROLES = (TEAM_ADMIN, VIEWER, MEMBER)
#: roles whose admin tokens see the whole org
ORG_WIDE = frozenset({MASTER, ORG_ADMIN, FINANCE})
#: roles a team admin may give the members of their teams
TEAM_ASSIGNABLE = frozenset(TEAM_ROLES)
#: how a user's roles are summed up in one word (the ``role`` field of a user)
_RANK = {MEMBER: 0, VIEWER: 1, TEAM_ADMIN: 2, FINANCE: 3, ORG_ADMIN: 4}


class Can(StrEnum):
    """One permission per kind of admin action."""

    ORGS_CREATE = "orgs.create"
    ORGS_WRITE = "orgs.write"
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
    USAGE_REBUILD = "usage.rebuild"
    LEDGER_PURGE = "ledger.purge"
    STATEMENTS_READ = "statements.read"
    STATEMENTS_CLOSE = "statements.close"
    ALLOCATIONS_WRITE = "allocations.write"
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
    TICKETS_READ = "tickets.read"
    TICKETS_DECIDE = "tickets.decide"


_EVERYONE = frozenset({ORG_ADMIN, FINANCE, TEAM_ADMIN, VIEWER})
_ORG_READERS = frozenset({ORG_ADMIN, FINANCE})
#: which roles hold each permission; the master key holds all of them
GRANTS: dict[Can, frozenset[str]] = {
    Can.ORGS_CREATE: frozenset(),
    Can.ORGS_WRITE: frozenset({ORG_ADMIN}),
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
    # rollups rebuilt and raw rows purged installation-wide: the master key's
    Can.USAGE_REBUILD: frozenset(),
    Can.LEDGER_PURGE: frozenset(),
    # statements: read like spend (a team role its own teams'); closed by finance
    Can.STATEMENTS_READ: _EVERYONE,
    Can.STATEMENTS_CLOSE: _ORG_READERS,
    Can.ALLOCATIONS_WRITE: _ORG_READERS,
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
    # cost tickets: the approvers see the queue and decide; a team admin only for the
    # wallets of their teams (a ticket belongs where its wallet does)
    Can.TICKETS_READ: frozenset({ORG_ADMIN, FINANCE, TEAM_ADMIN}),
    Can.TICKETS_DECIDE: frozenset({ORG_ADMIN, FINANCE, TEAM_ADMIN}),
}


#: changes that bind calls (budgets and their exceptions, wallets, rate limits, anomaly
#: actions): on an object of several teams — a budget on a user who is in two teams binds
#: the user's calls in both — a team role needs the permission in every one of them
BINDING = frozenset(
    {Can.BUDGETS_WRITE, Can.WALLETS_WRITE, Can.LIMITS_WRITE, Can.ANOMALY_ACTIONS_WRITE}
)


def _grants_all(role: str, permissions: Iterable[Can]) -> bool:
    return all(role in GRANTS[p] for p in permissions)


@dataclass(frozen=True, slots=True)
class Owner:
    """Where an object lives: its org and the teams it belongs to (none: org-wide)."""

    org_id: str | None
    team_ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, org_id: str | None, *team_ids: str | None) -> Owner:
        return cls(org_id, frozenset(t for t in team_ids if t))


NOBODY = Owner(None)


def summary_role(org_role: str, team_roles: Iterable[str]) -> str:
    """One word for a user's standing: the org role if any, else their highest team role."""
    return max((org_role, *team_roles), key=_RANK.__getitem__)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated admin caller.

    ``role`` is the org role (``master`` for the master key, ``member`` for none);
    ``team_roles`` the role in each team the user belongs to, as sorted pairs;
    ``acting`` the permissions the principal is narrowed to (see the module doc)."""

    role: str
    org_id: str | None = None
    team_roles: tuple[tuple[str, str], ...] = ()
    user_id: str | None = None
    token_id: str | None = None
    #: when the token stops working (``None``: never, or the master key)
    expires_at: datetime | None = None
    acting: frozenset[Can] = field(default=frozenset())

    @classmethod
    def of(
        cls,
        role: str,
        org_id: str | None,
        team_roles: Mapping[str, str],
        user_id: str | None = None,
        token_id: str | None = None,
        expires_at: datetime | None = None,
    ) -> Principal:
        return cls(role, org_id, tuple(sorted(team_roles.items())), user_id, token_id, expires_at)

    @property
    def is_master(self) -> bool:
        return self.role == MASTER

    @property
    def org_wide(self) -> bool:
        """Whether the caller reaches the whole org for what it is acting on."""
        return self.is_master or (self.role in ORG_WIDE and _grants_all(self.role, self.acting))

    @property
    def team_ids(self) -> frozenset[str]:
        """The teams the caller reaches for what it is acting on (not narrowed: every
        team where they hold more than ``member``)."""
        if self.acting:
            return frozenset(t for t, r in self.team_roles if _grants_all(r, self.acting))
        return frozenset(t for t, r in self.team_roles if r != MEMBER)

    @property
    def actor(self) -> str:
        """How the audit log names the caller: ``master``, ``token:<id>``, or
        ``console:<user id>`` for a user signed in to the web console."""
        if self.token_id is not None:
            return f"token:{self.token_id}"
        return MASTER if self.user_id is None else f"console:{self.user_id}"

    @property
    def roles(self) -> str:
        """For messages: ``finance``, ``viewer``, ``team_admin/viewer``…"""
        held = {self.role} - {MEMBER} | {r for _, r in self.team_roles}
        return "/".join(sorted(held, key=lambda r: -_RANK.get(r, 9))) or MEMBER

    def role_in(self, team_id: str) -> str | None:
        return dict(self.team_roles).get(team_id)

    def may(self, permission: Can) -> bool:
        """Whether any role of the caller holds ``permission`` (somewhere)."""
        if self.is_master or self.role in GRANTS[permission]:
            return True
        return any(r in GRANTS[permission] for _, r in self.team_roles)

    def acting_for(self, *permissions: Can) -> Principal:
        """The caller narrowed to ``permissions``: its teams are those where it holds
        them all, and it is org-wide only if its org role holds them all."""
        return replace(self, acting=self.acting | frozenset(permissions))

    def sees(self, owner: Owner) -> bool:
        """Whether an object with this owner is within the caller's scope: one of its
        teams is the caller's, or, acting for a :data:`BINDING` change, all of them are."""
        if self.is_master:
            return True
        if owner.org_id != self.org_id:
            return False
        if self.org_wide:
            return True
        if self.acting & BINDING:
            return bool(owner.team_ids) and self.team_ids >= owner.team_ids
        return not self.team_ids.isdisjoint(owner.team_ids)

    def binds_part_of(self, owner: Owner) -> bool:
        """Whether the caller, acting for a :data:`BINDING` change it may not make to this
        object, reaches some of its teams: it reads the object (every role that changes
        these reads them) but not all the calls the change would bind — a 403 that says
        so, not the 404 of an object out of sight."""
        return (
            bool(self.acting & BINDING)
            and not self.sees(owner)
            and owner.org_id == self.org_id
            and not self.team_ids.isdisjoint(owner.team_ids)
        )

    def can(self, permission: Can, owner: Owner) -> bool:
        """Whether the caller may do ``permission`` to an object with this owner."""
        return self.may(permission) and self.acting_for(permission).sees(owner)

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


# -- changing who may do what ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Standing:
    """What a user may do: their org role and their role in each of their teams."""

    role: str
    teams: Mapping[str, str]

    @classmethod
    def single(cls, role: str, team_ids: Iterable[str]) -> Standing:
        """One role, as before memberships had roles: an org role is held as such (the
        teams then hold ``member``); a team role is held in every team given."""
        if role in (ORG_ADMIN, FINANCE):
            return cls(role, dict.fromkeys(team_ids, MEMBER))
        return cls(MEMBER, dict.fromkeys(team_ids, role))

    def changed_teams(self, other: Standing) -> set[str]:
        """Teams whose membership or role differs between the two standings."""
        return {
            t
            for t in self.teams.keys() | other.teams.keys()
            if self.teams.get(t) != other.teams.get(t)
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a change is refused: the request field it is about, and a message."""

    param: str
    message: str


def standing_change_refusal(
    who: Principal, user_id: str, before: Standing, after: Standing
) -> Refusal | None:
    """Whether ``who`` (acting for ``USERS_WRITE``) may change a user's standing from
    ``before`` to ``after``; ``None`` if so.

    - nobody changes their own roles (the master key has none);
    - only org-wide callers change an org role, or touch a user who holds one;
    - a team admin adds, removes and re-roles memberships of their own teams only, and
      gives team roles only: what the user may do in any other team stays as it was.
    """
    changed = before.changed_teams(after)
    own_roles = before.role != after.role or any(
        t in before.teams and t in after.teams for t in changed
    )
    if who.user_id is not None and who.user_id == user_id and own_roles:
        return Refusal("role", "nobody changes their own role")
    if after.role not in ORG_ROLES:
        return Refusal("role", f"role: {after.role} is not an org role")
    bad = sorted(r for r in after.teams.values() if r not in TEAM_ROLES)
    if bad:
        return Refusal("memberships", f"memberships: {bad[0]} is not a team role")
    if who.org_wide:
        return None
    if before.role != after.role or before.role != MEMBER:
        role = after.role if before.role == MEMBER else before.role
        return Refusal("role", f"role: a team admin may not give or change the {role} role")
    outside = sorted(changed - who.team_ids)
    if outside:
        return Refusal(
            "team_ids", f"team_ids: a team admin manages their own teams only ({outside[0]})"
        )
    return None


# -- admin tokens ----------------------------------------------------------------------------
def manages_tokens_of(who: Principal, user_id: str, org_id: str | None) -> bool:
    """Whose tokens the caller creates, lists and revokes — and whose console password
    and invite links they set: their own; an org admin's, the whole org's; the master
    key's, everyone's. Nobody below org admin touches another user's credentials."""
    if who.is_master or (who.user_id is not None and user_id == who.user_id):
        return True
    return who.role == ORG_ADMIN and org_id == who.org_id


def issues_sign_in_links_for(who: Principal, user_id: str, org_id: str | None) -> bool:
    """Who may make a console invite (or password-reset) link for a user: the link lets
    its holder choose the user's password, so it is a credential like an admin token and
    follows the same rule (:func:`manages_tokens_of`)."""
    return manages_tokens_of(who, user_id, org_id)


def new_token_expiry(
    who: Principal, asked: datetime | None
) -> tuple[datetime | None, Refusal | None]:
    """When a token the caller creates stops working: as asked, but never after the
    caller's own token (unasked: with it). A token acts with its user's standing at
    each call, so it never out-ranks them; with this it never outlives its creator
    either (revoking a token revokes the tokens it created, see the token store)."""
    limit = who.expires_at
    if limit is None:
        return asked, None
    if asked is None:
        return limit, None
    if asked > limit:
        return None, Refusal(
            "expires_at",
            f"expires_at: a token may not outlive the token creating it ({limit.isoformat()})",
        )
    return asked, None
