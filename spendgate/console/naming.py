"""Who did something and what something is for, as a person reads it: the console's one
resolver of the ids the stores keep (``granted_by``, ``decided_by``, an audit entry's
actor, a webhook endpoint's scope…) into names.

* an actor (``Principal.actor``: ``master``, ``token:<id>``, ``console:<user id>``, or
  an audit entry's ``(actor_type, actor_id)``) is the *master key* or the email of the
  user the token or session belongs to (a virtual key's actor: the key's name);
* a scope (``org``, ``team``, ``user``, ``agent``, ``key``) is its name, the user's email
  (``spendgate.admin.policies.scope_name``).

Roles are respected, by one rule (:meth:`Namer.may_see`): a name is shown only when the
reader may read its object in the admin API (``GET /admin/users``, ``/admin/keys``…
filter by ``Principal.sees``, narrowed to ``directory.read``, and for a key to
``keys.read`` too); otherwise the page shows the id. The id stays available either way
(:attr:`Named.ident`, shown in a title or beside the name). A page naming many objects
(a table of keys, usage grouped by team) takes :meth:`Namer.names` — the org's objects of
a kind in one query, kept by the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from spendgate.admin.deps import Scope
from spendgate.admin.policies import scope_name
from spendgate.core.access import MASTER, Can, Owner, Principal
from spendgate.errors import NotFound
from spendgate.services import Services
from spendgate.store import schema
from spendgate.store.owners import names_of
from spendgate.store.tokens import TokenStore

_tokens = schema.admin_tokens

#: how the master key is called on the pages
MASTER_KEY = "master key"
#: the kinds of object named (by ``scope_name``); others show their id
NAMED_KINDS = frozenset({"org", "team", "user", "agent", "key"})
#: what the admin API's read routes of a kind of object ask of a reader
READ = {"key": (Can.DIRECTORY_READ, Can.KEYS_READ)}
DIRECTORY = (Can.DIRECTORY_READ,)


def shown_name(kind: str, row: dict[str, Any]) -> str:
    """What a page calls an object: a user's email, anything else's name."""
    return str(row["email"] if kind == "user" else row["name"])


def row_owner(kind: str, row: dict[str, Any]) -> Owner:
    """Where a directory row lives (as ``store.owners.owners_of`` finds it)."""
    if kind == "team":
        return Owner.of(row["org_id"], row["id"])
    if kind == "user":
        return Owner.of(row["org_id"], *row["team_ids"])
    return Owner.of(row["org_id"], row.get("team_id"))


@dataclass(frozen=True, slots=True)
class Names:
    """The names a reader may see of their org's teams, agents and keys and the emails
    of its users (:meth:`Namer.directory`), by id; any other id shows as it is."""

    teams: dict[str, str]
    users: dict[str, str]
    agents: dict[str, str]
    keys: dict[str, str]

    def team(self, team_id: str | None) -> str:
        return "" if team_id is None else self.teams.get(team_id, team_id)

    def user(self, user_id: str | None) -> str:
        return "" if user_id is None else self.users.get(user_id, user_id)

    def agent(self, agent_id: str | None) -> str:
        return "" if agent_id is None else self.agents.get(agent_id, agent_id)

    def key(self, key_id: str | None) -> str:
        return "" if key_id is None else self.keys.get(key_id, key_id)


@dataclass(frozen=True, slots=True)
class Named:
    """``text``: what the page shows (a name, an email, or the id when no name may be
    shown); ``ident``: the id behind it (``None`` for the master key)."""

    text: str
    ident: str | None

    @property
    def resolved(self) -> bool:
        return self.ident is None or self.text != self.ident


class Namer:
    """Resolves ids for one page and one reader (memoised). A page of many rows names
    them all first (:meth:`preload`, which :meth:`actors` does): a few queries a kind of
    object, not a few an id."""

    def __init__(self, svc: Services, reader: Principal) -> None:
        self._svc = svc
        self._reader = reader
        self._scope = Scope(svc, reader.acting_for(*DIRECTORY))
        self._memo: dict[tuple[str, str], Named] = {}
        self._listed: dict[str, list[dict[str, Any]]] = {}
        #: the user of each admin token looked up (None: no such token)
        self._token_users: dict[str, str | None] = {}

    def may_see(self, kind: str, object_id: str, owner: Owner | None) -> bool:
        """Whether the reader may be shown the name of this object (``owner``: where it
        lives, ``None`` if it does not exist): their own org and their own user always;
        anything else if the admin API's read route of its kind would answer it."""
        if kind == "org":
            return self._reader.is_master or self._reader.org_id == object_id
        if kind == "user" and object_id == self._reader.user_id:
            return True
        reading = self._reader.acting_for(*READ.get(kind, DIRECTORY))
        return owner is not None and reading.sees(owner)

    async def listed(self, kind: str) -> list[dict[str, Any]]:
        """The rows of the reader's org (every org for the master key) of a kind
        (``team``, ``user``, ``agent``, ``key``) it may see: one query, kept."""
        if kind not in self._listed:
            org_id = self._reader.org_filter(None)
            lister = {
                "team": self._svc.directory.list_teams,
                "user": self._svc.directory.list_users,
                "agent": self._svc.directory.list_agents,
                "key": self._svc.directory.list_keys,
            }.get(kind)
            rows = [] if lister is None else await lister(org_id)
            self._listed[kind] = [
                r for r in rows if self.may_see(kind, r["id"], row_owner(kind, r))
            ]
        return self._listed[kind]

    async def names(self, kind: str) -> dict[str, str]:
        """What the reader may see called of the org's objects of a kind, by id (empty
        for a kind without names: a model, a tag…)."""
        return {r["id"]: shown_name(kind, r) for r in await self.listed(kind)}

    async def directory(self) -> Names:
        """The org's teams, users, agents and keys by name, as far as the reader may see."""
        return Names(
            await self.names("team"),
            await self.names("user"),
            await self.names("agent"),
            await self.names("key"),
        )

    async def preload(
        self,
        scopes: Iterable[tuple[str | None, str | None]] = (),
        actors: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Name these objects and actors (as :meth:`audit_actor` takes them) at once, so
        :meth:`scope` and :meth:`audit_actor` answer them from memory."""
        actors = list(actors)
        tokens = {ident for kind, ident in actors if kind == "token"} - self._token_users.keys()
        if tokens:
            async with self._svc.engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(_tokens.c.id, _tokens.c.user_id).where(
                        _tokens.c.id.in_(sorted(tokens))
                    )
                )
                found = {row[0]: str(row[1]) for row in rows}
            for token_id in tokens:
                self._token_users[token_id] = found.get(token_id)
        wanted = [*scopes, *[await self._actor_scope(kind, ident) for kind, ident in actors]]
        missing: dict[str, set[str]] = {}
        for kind, ident in wanted:
            if kind in NAMED_KINDS and ident is not None and (kind, ident) not in self._memo:
                missing.setdefault(kind, set()).add(ident)
        if not missing:
            return
        await self._scope.preload((k, i) for k, ids in missing.items() if k != "org" for i in ids)
        async with self._svc.engine.connect() as conn:
            names = {kind: await names_of(conn, kind, ids) for kind, ids in missing.items()}
        for kind, ids in missing.items():
            for ident in ids:
                shown = names[kind].get(ident) if await self._sees(kind, ident) else None
                self._memo[kind, ident] = Named(shown or ident, ident)

    async def scope(self, scope_type: str | None, scope_id: str | None) -> Named | None:
        """A scope's (or an audit entry's object's) name; ``None``: no scope, a tag's
        (its own name), or a kind of object that has none (a budget, a webhook…)."""
        if scope_type not in NAMED_KINDS or scope_id is None:
            return None
        memo = (scope_type, scope_id)
        if memo not in self._memo:
            self._memo[memo] = Named(await self._name(scope_type, scope_id) or scope_id, scope_id)
        return self._memo[memo]

    async def _sees(self, scope_type: str, scope_id: str) -> bool:
        """Whether the reader may see the object in the directory (and so its name)."""
        owner = None if scope_type == "org" else await self._scope.owner(scope_type, scope_id)
        return self.may_see(scope_type, scope_id, owner)

    async def _name(self, scope_type: str, scope_id: str) -> str | None:
        if not await self._sees(scope_type, scope_id):
            return None
        return await scope_name(self._svc, scope_type, scope_id)

    async def actor(self, actor: str | None) -> Named | None:
        """``Principal.actor`` (as ``granted_by``, ``decided_by``… keep it) by name."""
        if actor is None:
            return None
        return await self.audit_actor(*_split(actor))

    async def audit_actor(self, actor_type: str, actor_id: str) -> Named:
        """An audit entry's actor by name; an actor type without one shows as it is."""
        if actor_type == MASTER or (actor_type == "admin" and actor_id == MASTER):
            return Named(MASTER_KEY, None)
        raw = f"{actor_type}:{actor_id}"
        found = await self.scope(*await self._actor_scope(actor_type, actor_id))
        if found is None or not found.resolved:
            return Named(raw, raw)
        return Named(found.text, raw)

    async def _actor_scope(self, actor_type: str, actor_id: str) -> tuple[str | None, str | None]:
        """The object an actor is named by: a token's or session's user, a virtual key."""
        if actor_type == "token":
            return "user", await self._token_user(actor_id)
        if actor_type in ("console", "user"):
            return "user", actor_id
        if actor_type == "key":
            return "key", actor_id
        return None, None

    async def _token_user(self, token_id: str) -> str | None:
        if token_id not in self._token_users:
            try:
                row = await TokenStore(self._svc.engine).get(token_id)
            except NotFound:
                self._token_users[token_id] = None
            else:
                self._token_users[token_id] = str(row["user_id"])
        return self._token_users[token_id]

    async def actors(self, actors: Iterable[str | None]) -> dict[str, Named]:
        """Each actor named, by the stored string (for a template to look up)."""
        wanted = list(dict.fromkeys(actor for actor in actors if actor is not None))
        await self.preload(actors=[_split(actor) for actor in wanted])
        named: dict[str, Named] = {}
        for actor in wanted:
            found = await self.actor(actor)
            assert found is not None
            named[actor] = found
        return named


def _split(actor: str) -> tuple[str, str]:
    """``Principal.actor`` as an audit entry's ``(actor_type, actor_id)``."""
    kind, sep, ident = actor.partition(":")
    return (kind, ident) if sep else (actor, "")
