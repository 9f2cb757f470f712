"""Admin tokens: how people other than the holder of the master key use the admin API.

Everyone with an admin role anywhere (a viewer too) may create and revoke tokens for
themselves — to rotate their own credentials; org admins may do so for any user of
their org; the master key for anyone (that is how the first org admin gets one). A
token acts with its user's standing at each call, so it can never do more than they
can; it never outlives the token that created it (its expiry is capped by the
creator's, and revoking a token revokes the tokens created with it). The rules are
``manages_tokens_of`` and ``new_token_expiry`` in ``spendgate.core.access``.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from fastapi import APIRouter, Depends, Request

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.core.access import (
    ORG_ADMIN,
    Can,
    Owner,
    Principal,
    manages_tokens_of,
    new_token_expiry,
)
from spendgate.errors import NotFound, ValidationFailed
from spendgate.store.tokens import TokenStore, token_public

router = APIRouter(
    prefix="/admin",
    dependencies=[Depends(principal), *guard(Can.TOKENS)],
    responses=s.ERRORS,
    tags=["admin tokens"],
)


async def _token(svc: Svc, who: Principal, token_id: str) -> dict[str, Any]:
    row = await TokenStore(svc.engine).get(token_id)
    if not manages_tokens_of(who, row["user_id"], row["org_id"]):
        raise NotFound(f"token {token_id} not found")
    return row


@router.post("/tokens", response_model=s.TokenWithSecret, status_code=201)
async def create_token(
    body: s.TokenIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """A token for ``user_id``, acting with that user's roles; ``token`` is shown once.
    It expires no later than the caller's own token (by default: with it)."""
    owner = await scope.owner("user", body.user_id)
    if owner is None or not manages_tokens_of(who, body.user_id, owner.org_id):
        raise ValidationFailed(f"user_id: user {body.user_id} does not exist", param="user_id")
    user = await svc.directory.get_user(body.user_id)
    asked = body.expires_at
    if asked is not None and asked.tzinfo is None:
        asked = asked.replace(tzinfo=UTC)
    expires, refused = new_token_expiry(who, asked)
    if refused is not None:
        raise ValidationFailed(refused.message, param=refused.param)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        row, secret = await TokenStore(svc.engine).create(
            user, body.name, expires, who.actor, now, conn
        )
        await audit(
            conn,
            request,
            who,
            "admin_token.created",
            "admin_token",
            row["id"],
            now,
            owner=owner,
            after=row,
        )
    return {**row, "token": secret}


@router.get("/tokens", response_model=list[s.Token])
async def list_tokens(
    svc: Svc, who: Who, user_id: str | None = None, org_id: str | None = None
) -> list[dict[str, Any]]:
    """The caller's own tokens; an org admin sees the org's, the master key everyone's."""
    if who.role != ORG_ADMIN and not who.is_master:
        user_id = who.user_id
    rows = await TokenStore(svc.engine).list(await org_asked(svc, who, org_id), user_id)
    now = svc.clock.now()
    return [token_public(r, now) for r in rows if manages_tokens_of(who, r["user_id"], r["org_id"])]


@router.get("/tokens/{token_id}", response_model=s.Token)
async def get_token(token_id: str, svc: Svc, who: Who) -> dict[str, Any]:
    return token_public(await _token(svc, who, token_id), svc.clock.now())


@router.post("/tokens/{token_id}/revoke", response_model=s.Token)
async def revoke_token(
    token_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Revoke at once (idempotent), with every token created with it; their next call
    gets 401."""
    before = await _token(svc, who, token_id)
    owner = await scope.owner("user", before["user_id"]) or Owner.of(before["org_id"])
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        after, also, revoked = await TokenStore(svc.engine).revoke(token_id, now, conn)
        if revoked or also:
            await audit(
                conn,
                request,
                who,
                "admin_token.revoked",
                "admin_token",
                token_id,
                now,
                owner=owner,
                before=token_public(before, now),
                after={**token_public(after, now), "also_revoked": also},
            )
    return token_public(after, now)
