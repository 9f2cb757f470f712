"""Admin routes giving users a way into the web console: an invite link (one use, seven
days) or a password set directly.

Whose sign-in the caller manages is the admin-token rule (``core.access.
manages_tokens_of``): one's own; an org admin's, the org's; the master key's, anyone's.
Anyone else's user answers 404, as a missing one does. The secret of an invite is
shown once; the database keeps its hash.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, StringConstraints

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scoped, Svc, Who, audit, guard, principal
from spendgate.core.access import Can, Owner, issues_sign_in_links_for
from spendgate.errors import NotFound
from spendgate.store.console_auth import ConsoleAuth

router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(principal), *guard(Can.TOKENS)],
    responses=s.ERRORS,
    tags=["console sign-in"],
)


class InviteOut(BaseModel):
    user_id: str
    email: str
    #: open it to choose a password for the console (shown once; good once)
    url: str
    expires_at: datetime


class PasswordIn(s.Strict):
    password: Annotated[str, StringConstraints(min_length=1, max_length=1024)]


async def _managed(scope: Scoped, user_id: str) -> Owner:
    owner = await scope.owner("user", user_id)
    if owner is None or not issues_sign_in_links_for(scope.who, user_id, owner.org_id):
        raise NotFound(f"user {user_id} not found")
    return owner


@router.post("/users/{user_id}/console-invite", response_model=InviteOut, status_code=201)
async def create_invite(
    user_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """A one-time link (seven days) where the user chooses their console password: an
    invite, or a password reset (their sessions end when they set it)."""
    owner = await _managed(scope, user_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        secret, expires = await ConsoleAuth(svc.engine).create_invite(user_id, who.actor, now, conn)
        await audit(
            conn,
            request,
            who,
            "console.invite_created",
            "user",
            user_id,
            now,
            owner=owner,
            after={"expires_at": expires.isoformat()},
        )
    url = f"{svc.settings.public_url.rstrip('/')}/invite/{secret}"
    user = await svc.directory.get_user(user_id)
    return {"user_id": user_id, "email": user["email"], "url": url, "expires_at": expires}


@router.put("/users/{user_id}/console-password", status_code=204)
async def set_password(
    user_id: str, body: PasswordIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> None:
    """Set the user's console password (at least 12 characters); their open console
    sessions end."""
    owner = await _managed(scope, user_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        await ConsoleAuth(svc.engine).set_password(user_id, body.password, now, conn)
        await audit(conn, request, who, "console.password_set", "user", user_id, now, owner=owner)
