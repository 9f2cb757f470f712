"""Who did something and what something is for, as a person reads it: the console's one
resolver of the ids the stores keep (``granted_by``, ``decided_by``, an audit entry's
actor, a webhook endpoint's scope…) into names.

* an actor (``Principal.actor``: ``master``, ``token:<id>``, ``console:<user id>``, or
  an audit entry's ``(actor_type, actor_id)``) is the *master key* or the email of the
  user the token or session belongs to (a virtual key's actor: the key's name);
* a scope (``org``, ``team``, ``user``, ``agent``, ``key``) is its name, the user's email
  (``spendgate.admin.policies.scope_name``).

Roles are respected: a name is shown only when the reader may see its object in the
directory (``Principal.sees``, as ``GET /admin/users`` filters); otherwise the page shows
the id, as it did before. The id stays available either way (:attr:`Named.ident`, shown
in a title or beside the name).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from spendgate.admin.deps import Scope
from spendgate.admin.policies import scope_name
from spendgate.core.access import MASTER, Can, Principal
from spendgate.errors import NotFound
from spendgate.services import Services
from spendgate.store.tokens import TokenStore

#: how the master key is called on the pages
MASTER_KEY = "master key"
#: the kinds of object named (by ``scope_name``); others show their id
NAMED_KINDS = frozenset({"org", "team", "user", "agent", "key"})


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
    """Resolves ids for one page and one reader (memoised)."""

    def __init__(self, svc: Services, reader: Principal) -> None:
        self._svc = svc
        self._reader = reader.acting_for(Can.DIRECTORY_READ)
        self._scope = Scope(svc, self._reader)
        self._memo: dict[tuple[str, str], Named] = {}

    async def scope(self, scope_type: str | None, scope_id: str | None) -> Named | None:
        """A scope's (or an audit entry's object's) name; ``None``: no scope, a tag's
        (its own name), or a kind of object that has none (a budget, a webhook…)."""
        if scope_type not in NAMED_KINDS or scope_id is None:
            return None
        memo = (scope_type, scope_id)
        if memo not in self._memo:
            self._memo[memo] = Named(await self._name(scope_type, scope_id) or scope_id, scope_id)
        return self._memo[memo]

    async def _name(self, scope_type: str, scope_id: str) -> str | None:
        if scope_type == "org":
            mine = self._reader.is_master or self._reader.org_id == scope_id
        elif scope_type == "user" and scope_id == self._reader.user_id:
            mine = True
        else:
            mine = self._scope.visible(await self._scope.owner(scope_type, scope_id))
        return await scope_name(self._svc, scope_type, scope_id) if mine else None

    async def actor(self, actor: str | None) -> Named | None:
        """``Principal.actor`` (as ``granted_by``, ``decided_by``… keep it) by name."""
        if actor is None:
            return None
        kind, sep, ident = actor.partition(":")
        return await self.audit_actor(kind, ident) if sep else await self.audit_actor(actor, "")

    async def audit_actor(self, actor_type: str, actor_id: str) -> Named:
        """An audit entry's actor by name; an actor type without one shows as it is."""
        if actor_type == MASTER or (actor_type == "admin" and actor_id == MASTER):
            return Named(MASTER_KEY, None)
        raw = f"{actor_type}:{actor_id}"
        if actor_type == "token":
            user_id = await self._token_user(actor_id)
            found = None if user_id is None else await self.scope("user", user_id)
        elif actor_type in ("console", "user"):
            found = await self.scope("user", actor_id)
        elif actor_type == "key":
            found = await self.scope("key", actor_id)
        else:
            found = None
        if found is None or not found.resolved:
            return Named(raw, raw)
        return Named(found.text, raw)

    async def _token_user(self, token_id: str) -> str | None:
        memo = ("token", token_id)
        if memo not in self._memo:
            try:
                row = await TokenStore(self._svc.engine).get(token_id)
            except NotFound:
                return None
            self._memo[memo] = Named(str(row["user_id"]), token_id)
        return self._memo[memo].text

    async def actors(self, actors: Iterable[str | None]) -> dict[str, Named]:
        """Each actor named, by the stored string (for a template to look up)."""
        named: dict[str, Named] = {}
        for actor in actors:
            if actor is not None and actor not in named:
                found = await self.actor(actor)
                assert found is not None
                named[actor] = found
        return named
