"""What every admin route depends on: the services, the caller, the caller's rights, the
owner of the objects it touches, and the audit entry for each change.

Every ``/admin`` route declares its permission with ``Depends(allow(Can.X))``; the app
refuses to start if one does not (:func:`unguarded_routes`), so a new route cannot ship
without a rule. The guard also *narrows* the caller to that permission
(``Principal.acting_for``): the caller a route gets as :data:`Who` (and :data:`Scoped`)
reaches only the teams where one of their roles holds the route's permission — a team
admin of A who is a viewer of B writes in A and only reads B. FastAPI solves a route's
guard dependencies before its parameters; :func:`acting` refuses to answer (a 500, caught
by every test) if that ever changed. Scope is then checked per object with
:meth:`Scope.require`, which answers like a missing object would, so nothing leaks
across teams or orgs — except a change binding the calls of a user in several teams, by
an admin of some of them only: they read the object, so a 403 tells them why.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

import fastapi.routing
from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection

from spendgate.admin.audit_trail import admin_event
from spendgate.core.access import MASTER_PRINCIPAL, Can, Owner, Principal
from spendgate.errors import AuthenticationFailed, NotFound, PermissionDenied, ValidationFailed
from spendgate.security.auth_throttle import client_address
from spendgate.security.credentials import secrets_equal
from spendgate.services import Services
from spendgate.store import audit as audit_store
from spendgate.store.owners import owners_of
from spendgate.store.tokens import TokenStore

bearer = HTTPBearer(auto_error=False, description="The master key or an admin token")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


Svc = Annotated[Services, Depends(services)]


async def principal(
    svc: Svc,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """Who is calling: the master key (``SPENDGATE_MASTER_KEY``) or an admin token.

    Failed attempts (a missing credential included) count against the caller's address,
    shared with the proxy; past the limit every attempt from it is refused with 429
    until the window has passed."""
    with svc.auth_throttle.attempt(client_address(request.scope), svc.clock.monotonic()):
        if credentials is None:
            raise AuthenticationFailed("missing Authorization: Bearer <master key or admin token>")
        master = svc.settings.master_key
        if master is not None and secrets_equal(credentials.credentials, master):
            return MASTER_PRINCIPAL
        found = await TokenStore(svc.engine).principal(credentials.credentials, svc.clock.now())
        if found is None:
            raise AuthenticationFailed("invalid, expired or revoked admin credentials")
        return found


def nul_in_path_or_query(request: Request) -> str | None:
    """Where a NUL character is in the request's path or query string, if it is."""
    if "\x00" in request.url.path:
        return "path"
    if b"%00" in request.scope.get("query_string", b""):
        return "query"
    return None


async def no_nul_characters(request: Request) -> None:
    """NUL can't be stored as text in PostgreSQL and means nothing in any admin field:
    refuse it up front (422) in the path, the query string and the body alike (the
    console's pages: ``console.app.no_nul_characters``)."""
    where = nul_in_path_or_query(request)
    if where is None and request.method in ("POST", "PUT", "PATCH"):
        body = await request.body()  # cached: the route reads the same bytes
        if b"\\u0000" in body or b"\x00" in body:
            where = "body"
    if where is not None:
        raise ValidationFailed(f"{where}: NUL characters are not accepted", param=where)


def permitted(who: Principal, permission: Can) -> Principal:
    """The caller narrowed to ``permission``; 403 when no role of theirs holds it. Every
    admin route (through :func:`allow`) and every console page asks this."""
    if not who.may(permission):
        raise PermissionDenied(f"the {who.roles} role may not do this ({permission.value})")
    return who.acting_for(permission)


def allow(permission: Can) -> Callable[..., Coroutine[Any, Any, Principal]]:
    """A dependency that lets the call through only for callers holding ``permission``
    in some role, and narrows the caller the route sees to it."""

    async def check(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
        permitted(who, permission)
        narrowed = getattr(request.state, _ACTING, who).acting_for(permission)
        setattr(request.state, _ACTING, narrowed)
        return narrowed

    check.permission = permission  # type: ignore[attr-defined]  # read by unguarded_routes
    return check


_ACTING = "spendgate_acting"


async def acting(request: Request, who: Annotated[Principal, Depends(principal)]) -> Principal:
    """The caller as narrowed by the route's guard(s)."""
    narrowed = getattr(request.state, _ACTING, None)
    if not isinstance(narrowed, Principal) or narrowed.user_id != who.user_id:
        raise RuntimeError(f"{request.url.path}: the caller was asked for before any guard ran")
    return narrowed


def admin_routes(app: FastAPI) -> list[APIRoute]:
    """Every API route of the app as it is served (with the dependencies of the routers
    that include it)."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)  # FastAPI >= 0.13x
    if contexts is None:
        return [r for r in app.routes if isinstance(r, APIRoute)]
    return [c.route for c in contexts(app.routes) if isinstance(c.route, APIRoute)]


def unguarded_routes(app: FastAPI) -> list[str]:
    """``/admin`` routes that declare no permission (the app refuses to start with any)."""

    def guarded(dependant: Any) -> bool:
        return any(hasattr(d.call, "permission") or guarded(d) for d in dependant.dependencies)

    return [
        f"{','.join(sorted(r.methods or ()))} {r.path}"
        for r in admin_routes(app)
        if r.path.startswith("/admin") and not guarded(r.dependant)
    ]


def guard(permission: Can) -> list[Any]:
    """``@router.post(..., dependencies=guard(Can.KEYS_WRITE))``."""
    return [Depends(allow(permission))]


#: the caller (authenticated once per request), narrowed to the route's permission
Who = Annotated[Principal, Depends(acting)]


async def org_asked(svc: Services, who: Principal, asked: str | None) -> str | None:
    """The org a list, a statement or an org-wide action is for: as asked with the master
    key (``None``: every org); for anyone else their own org. A missing org, and for
    anyone but the master key another org, is 422 naming ``org_id`` — never an empty
    answer (a typo would read as "nothing there") nor the caller's own org (an answer
    about the wrong org would pass for the one asked about)."""
    if asked is not None:
        known = await _org_exists(svc, asked) if who.is_master else asked == who.org_id
        if not known:
            raise ValidationFailed(f"org_id: org {asked} not found", param="org_id")
    return who.org_filter(asked)


async def _org_exists(svc: Services, org_id: str) -> bool:
    try:
        await svc.directory.get_org(org_id)
    except NotFound:
        return False
    return True


async def audit(
    conn: AsyncConnection,
    request: Request,
    who: Principal,
    action: str,
    target_type: str,
    target_id: str | None,
    at: datetime,
    *,
    owner: Owner,
    before: Any = None,
    after: Any = None,
) -> None:
    """Append the audit entry for an admin change, in the change's own transaction,
    readable by those who may see ``owner``."""
    await audit_store.append(
        conn,
        admin_event(
            request, who.actor, action, target_type, target_id, at=at, before=before, after=after
        ),
        org_id=owner.org_id,
        team_ids=owner.team_ids,
    )


# -- owners ----------------------------------------------------------------------------------
class Scope:
    """Finds the owner of objects for one request (memoised) and checks them against the
    caller."""

    def __init__(self, svc: Services, who: Principal) -> None:
        self.svc, self.who = svc, who
        self._seen: dict[tuple[str, str], Owner | None] = {}

    async def owner(
        self, scope_type: str, scope_id: str | None, org_id: str | None = None
    ) -> Owner | None:
        """The owner of a scope (``org``, ``tag``, ``team``, ``user``, ``agent``, ``key``);
        ``None`` if the object does not exist."""
        if scope_type == "tag" or scope_id is None:
            return Owner.of(org_id)
        memo = (scope_type, scope_id)
        if memo not in self._seen:
            self._seen[memo] = await self._lookup(scope_type, scope_id)
        return self._seen[memo]

    async def _lookup(self, scope_type: str, scope_id: str) -> Owner | None:
        return (await self._lookup_many(scope_type, [scope_id])).get(scope_id)

    async def _lookup_many(self, scope_type: str, ids: Sequence[str]) -> dict[str, Owner]:
        """The owners of objects of one type, by id (``store.owners``); a missing object
        is absent."""
        async with self.svc.engine.connect() as conn:
            return await owners_of(conn, scope_type, ids)

    async def preload_policies(self, rows: Iterable[dict[str, Any]]) -> None:
        """Look up the owners of these budgets', wallets' or rate limits' scopes at once (a
        query per scope type), so :meth:`of_policy` answers them from memory."""
        await self.preload(
            (row["scope_type"], row["scope_id"])
            for row in rows
            if row["scope_type"] not in ("org", "tag")  # of_policy needs no look-up for these
        )

    async def preload(self, scopes: Iterable[tuple[str, str | None]]) -> None:
        """Look up the owners of these objects at once (a query per type), so
        :meth:`owner` answers them from memory."""
        missing: dict[str, set[str]] = {}
        for scope_type, scope_id in scopes:
            if scope_type == "tag" or scope_id is None or (scope_type, scope_id) in self._seen:
                continue
            missing.setdefault(scope_type, set()).add(scope_id)
        for scope_type, ids in missing.items():
            found = await self._lookup_many(scope_type, sorted(ids))
            for scope_id in ids:
                self._seen[scope_type, scope_id] = found.get(scope_id)

    async def of_policy(self, row: dict[str, Any]) -> Owner | None:
        """The owner of a stored budget, wallet or rate limit (by its scope)."""
        if row["scope_type"] in ("org", "tag"):
            return Owner.of(row["org_id"])
        return await self.owner(row["scope_type"], row["scope_id"], row["org_id"])

    async def budget(self, budget_id: str) -> tuple[dict[str, Any], Owner]:
        """The budget and its owner; the 404 of a missing budget if it isn't the caller's."""
        row = await self.svc.policies.get_budget(budget_id)
        return row, self.require(await self.of_policy(row), "budget", budget_id)

    def visible(self, owner: Owner | None) -> bool:
        return owner is not None and self.who.sees(owner)

    def require(self, owner: Owner | None, what: str, object_id: str) -> Owner:
        """``owner`` if the caller may see it; else the 404 a missing object gives (the
        403 of :meth:`_require_every_team` for one it reads but may not bind)."""
        if owner is None or not self.who.sees(owner):
            self._require_every_team(owner, f"{what} {object_id}")
            raise NotFound(f"{what} {object_id} not found")
        return owner

    def _require_every_team(self, owner: Owner | None, what: str, field: str | None = None) -> None:
        """403 for a change binding the calls of a user in several teams when the caller
        is an admin of some of them only (``Principal.binds_part_of``): they read it, so
        they are told why, not that it is missing."""
        if owner is not None and self.who.binds_part_of(owner):
            raise PermissionDenied(
                f"{what}: the user is also in a team you are not an admin of; only an admin "
                "of each of the user's teams, or an org role, may change what binds their calls",
                param=field,
            )

    async def referenced(
        self, scope_type: str, scope_id: str | None, field: str, org_id: str | None = None
    ) -> Owner:
        """The owner of an object named in a request body; 422 naming ``field`` — the
        same answer as a missing one — when it is not the caller's to use."""
        owner = await self.owner(scope_type, scope_id, org_id)
        if scope_type in ("org", "tag") or scope_id is None:
            # an org is named to say where something goes: any member may name their own
            usable = (
                owner is not None
                and owner.org_id is not None
                and (self.who.is_master or owner.org_id == self.who.org_id)
            )
        else:
            usable = owner is not None and owner.org_id is not None and self.who.sees(owner)
        if owner is None or not usable:
            self._require_every_team(owner, f"{field}: {scope_type} {scope_id}", field)
            if scope_id is None and org_id is None:
                # nothing named (only the master key, which has no org of its own, gets here
                # for an org): say what is missing, not that an org "None" does not exist
                raise ValidationFailed(
                    "org_id: required with the master key"
                    if field == "org_id"
                    else f"{field}: required when scope_type is {scope_type}",
                    param=field,
                )
            if scope_type == "tag" or scope_id is None:
                raise ValidationFailed(f"{field}: org {org_id} does not exist", param=field)
            raise ValidationFailed(f"{field}: {scope_type} {scope_id} does not exist", param=field)
        return owner

    def require_team_objects(self, owner: Owner, field: str) -> None:
        """Team roles create only objects of their own teams (not org-wide ones)."""
        if not self.who.org_wide and not owner.team_ids:
            raise PermissionDenied(
                f"{field}: a {self.who.roles} creates objects for their own "
                "teams only; name one of them"
            )

    async def filter(
        self,
        rows: Iterable[dict[str, Any]],
        owner_of: Callable[[dict[str, Any]], Coroutine[Any, Any, Owner | None]],
    ) -> list[dict[str, Any]]:
        """The rows whose owner the caller sees (the owners of policies are looked up
        together, a query per scope type, not one per row)."""
        if self.who.is_master:
            return list(rows)
        rows = list(rows)
        if owner_of == self.of_policy:
            await self.preload_policies(rows)
        return [r for r in rows if self.visible(await owner_of(r))]


def scope(svc: Svc, who: Who) -> Scope:
    return Scope(svc, who)


Scoped = Annotated[Scope, Depends(scope)]
