"""Admin tokens: created for a user, shown once, stored as a SHA-256 hash, expiring,
revocable. A token acts with its user's org role and team roles as they are at each
call; a token whose user has no admin rights anywhere (``member`` everywhere) is refused
like an unknown one."""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.access import MEMBER, Can, Principal
from spendgate.errors import NotFound, ValidationFailed
from spendgate.security.credentials import hash_secret, new_admin_token, new_id, shown_prefix
from spendgate.store import schema
from spendgate.store.database import transaction

#: ``last_used_at`` is written at most this often per token (admin reads stay reads)
TOUCH_EVERY = timedelta(minutes=1)

_t = schema.admin_tokens.c


def token_public(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "token_hash"}
    if row["revoked_at"] is not None:
        out["status"] = "revoked"
    elif row["expires_at"] is not None and row["expires_at"] <= now:
        out["status"] = "expired"
    else:
        out["status"] = "active"
    return out


class TokenStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        user: dict[str, Any],
        name: str,
        expires_at: datetime | None,
        created_by: str,
        now: datetime,
        conn: AsyncConnection | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A new token for ``user``; returns (public row, the secret — shown once)."""
        if user["role"] == MEMBER:  # the summary role: member everywhere
            raise ValidationFailed(
                "user_id: members have no admin rights; give the user an admin role first",
                param="user_id",
            )
        if expires_at is not None and expires_at <= now:
            raise ValidationFailed("expires_at: must be in the future", param="expires_at")
        secret = new_admin_token()
        values = {
            "id": new_id("tok"),
            "org_id": user["org_id"],
            "user_id": user["id"],
            "name": name,
            "token_hash": hash_secret(secret),
            "token_prefix": shown_prefix(secret),
            "created_by": created_by,
            "created_at": now,
            "expires_at": expires_at,
            "revoked_at": None,
            "last_used_at": None,
        }
        async with transaction(self._engine, conn) as tx:
            await tx.execute(schema.admin_tokens.insert().values(**values))
        return token_public(values, now), secret

    async def get(self, token_id: str) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(sa.select(schema.admin_tokens).where(_t.id == token_id))
            ).first()
        if row is None:
            raise NotFound(f"token {token_id} not found")
        return dict(row._mapping)

    async def list(self, org_id: str | None, user_id: str | None) -> list[dict[str, Any]]:
        query = sa.select(schema.admin_tokens).order_by(_t.created_at, _t.id)
        if org_id is not None:
            query = query.where(_t.org_id == org_id)
        if user_id is not None:
            query = query.where(_t.user_id == user_id)
        async with self._engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(query)]

    async def revoke(
        self, token_id: str, now: datetime, conn: AsyncConnection
    ) -> tuple[dict[str, Any], builtins.list[str], bool]:
        """Revoke the token and every live token created with it, and with those, and so
        on (a token never outlives its creator). Returns (the token, the others' ids,
        whether this call revoked the token): of several revokes at once only one sees
        each row change, so only one reports it."""
        done = await conn.execute(
            sa.update(schema.admin_tokens)
            .where(_t.id == token_id, _t.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        row = (await conn.execute(sa.select(schema.admin_tokens).where(_t.id == token_id))).one()
        also: builtins.list[str] = []
        frontier = [token_id]
        while frontier:
            children = (
                (
                    await conn.execute(
                        sa.select(_t.id).where(
                            _t.created_by.in_([f"token:{t}" for t in frontier]),
                            _t.revoked_at.is_(None),
                        )
                    )
                )
                .scalars()
                .all()
            )
            if children:
                children = (
                    (
                        await conn.execute(
                            sa.update(schema.admin_tokens)
                            .where(_t.id.in_(children), _t.revoked_at.is_(None))
                            .values(revoked_at=now)
                            .returning(_t.id)
                        )
                    )
                    .scalars()
                    .all()
                )
            also += children
            frontier = list(children)
        return dict(row._mapping), also, done.rowcount == 1

    async def principal(self, secret: str, now: datetime) -> Principal | None:
        """The caller a presented token stands for; ``None`` if unknown, revoked or expired.

        The lookup is by hash (an index probe), so no comparison of secrets leaks timing."""
        u, ut = schema.users.c, schema.user_teams.c
        query = (  # the user's team roles in the same statement: one round trip, not two
            sa.select(
                _t.id,
                _t.expires_at,
                _t.revoked_at,
                _t.last_used_at,
                u.id.label("uid"),
                u.org_id,
                u.role,
                ut.team_id,
                ut.role.label("team_role"),
            )
            .join(schema.users, u.id == _t.user_id)
            .outerjoin(schema.user_teams, ut.user_id == u.id)
            .where(_t.token_hash == hash_secret(secret))
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        if not rows or rows[0].revoked_at is not None:
            return None
        row = rows[0]
        if row.expires_at is not None and row.expires_at <= now:
            return None
        teams = {r.team_id: r.team_role for r in rows if r.team_id is not None}
        found = Principal.of(row.role, row.org_id, teams, row.uid, row.id, row.expires_at)
        if not found.may(Can.TOKENS):  # no admin rights anywhere
            return None
        if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
            async with self._engine.begin() as conn:
                await conn.execute(
                    sa.update(schema.admin_tokens).where(_t.id == row.id).values(last_used_at=now)
                )
        return found
