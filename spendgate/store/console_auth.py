"""Who may sign in to the web console: password hashes, sessions and invite links.

Passwords are hashed with argon2id (``argon2-cffi``'s defaults, re-hashed on sign-in when
those defaults change). A session or an invite is a random secret handed to the browser
(cookie) or the user (link); the database keeps only its SHA-256 hash, like admin tokens.
A session ends at ``expires_at`` or on sign-out; an invite is good once, until it expires.

The principal a session stands for is built like an admin token's, from the user's roles
as they are *now* (``Principal.of``), so a changed role applies at the next page.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.access import Principal
from spendgate.errors import NotFound, ValidationFailed
from spendgate.security.credentials import hash_secret
from spendgate.store import schema
from spendgate.store.database import transaction, upsert

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
INVITE_DAYS = 7
#: a console session lasts this long after signing in
SESSION_LIFETIME = timedelta(hours=12)

_hasher = PasswordHasher()
#: verified against when no user matches, so a wrong email costs as long as a wrong
#: password; made by the first sign-in (``_dummy_hash``), not at import
_DUMMY_HASH: str | None = None
_p = schema.console_passwords.c
_s = schema.console_sessions.c
_i = schema.console_invites.c
_u = schema.users.c


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A live console session: who, and the user's email (shown in the header)."""

    principal: Principal
    email: str
    expires_at: datetime


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or ``None``."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"use at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"use at most {MAX_PASSWORD_LENGTH} characters"
    return None


class ConsoleAuth:
    def __init__(self, engine: AsyncEngine, session_lifetime: timedelta = SESSION_LIFETIME) -> None:
        self._engine = engine
        self.session_lifetime = session_lifetime

    async def set_password(
        self, user_id: str, password: str, now: datetime, conn: AsyncConnection | None = None
    ) -> None:
        """Set (or replace) the password; in ``conn``'s transaction when given."""
        problem = password_problem(password)
        if problem is not None:
            raise ValidationFailed(f"password: {problem}", param="password")
        hashed = _hasher.hash(password)
        async with transaction(self._engine, conn) as conn:
            found = await conn.execute(sa.select(_u.id).where(_u.id == user_id))
            if found.first() is None:
                raise NotFound(f"user {user_id} not found")
            await upsert(
                conn,
                schema.console_passwords,
                [{"user_id": user_id, "password_hash": hashed, "updated_at": now}],
            )
            # a new password ends every session opened with the old one
            await conn.execute(
                schema.console_sessions.update()
                .where(_s.user_id == user_id, _s.ended_at.is_(None))
                .values(ended_at=now)
            )

    async def check_password(self, email: str, password: str) -> str | None:
        """The user id whose email and password these are, or ``None``.

        Emails are unique per org, not across orgs: the password picks the user."""
        dummy = _dummy_hash()  # before the lookup: a first sign-in costs the same either way
        query = (
            sa.select(_u.id, _p.password_hash)
            .join(schema.console_passwords, _p.user_id == _u.id)
            .where(sa.func.lower(_u.email) == email.strip().lower())
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        for user_id, hashed in rows:
            if _verify(hashed, password):
                if _hasher.check_needs_rehash(hashed):
                    async with self._engine.begin() as conn:
                        await conn.execute(
                            schema.console_passwords.update()
                            .where(_p.user_id == user_id)
                            .values(password_hash=_hasher.hash(password))
                        )
                return str(user_id)
        if not rows:
            _verify(dummy, password)
        return None

    async def open_session(self, user_id: str, now: datetime) -> tuple[str, datetime]:
        """A new session for the user; returns (the cookie secret, when it expires)."""
        secret = secrets.token_urlsafe(32)
        expires = now + self.session_lifetime
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.console_sessions.insert().values(
                    session_hash=hash_secret(secret),
                    user_id=user_id,
                    created_at=now,
                    expires_at=expires,
                    ended_at=None,
                )
            )
        return secret, expires

    async def end_session(self, secret: str, now: datetime) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                schema.console_sessions.update()
                .where(_s.session_hash == hash_secret(secret), _s.ended_at.is_(None))
                .values(ended_at=now)
            )

    async def session(self, secret: str, now: datetime) -> SignedIn | None:
        """The signed-in user of a session cookie; ``None`` if unknown, ended or expired."""
        query = (
            sa.select(_s.expires_at, _s.ended_at, _u.id, _u.org_id, _u.role, _u.email)
            .join(schema.users, _u.id == _s.user_id)
            .where(_s.session_hash == hash_secret(secret))
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
            if row is None or row.ended_at is not None or row.expires_at <= now:
                return None
            ut = schema.user_teams.c
            teams = await conn.execute(sa.select(ut.team_id, ut.role).where(ut.user_id == row.id))
            principal = Principal.of(row.role, row.org_id, {t: r for t, r in teams}, row.id)
        return SignedIn(principal, row.email, row.expires_at)

    async def create_invite(
        self, user_id: str, created_by: str, now: datetime, conn: AsyncConnection | None = None
    ) -> tuple[str, datetime]:
        """A one-time link secret letting the user choose a password; (secret, expiry)."""
        secret = secrets.token_urlsafe(32)
        expires = now + timedelta(days=INVITE_DAYS)
        async with transaction(self._engine, conn) as conn:
            await conn.execute(
                schema.console_invites.insert().values(
                    invite_hash=hash_secret(secret),
                    user_id=user_id,
                    created_by=created_by,
                    created_at=now,
                    expires_at=expires,
                    used_at=None,
                )
            )
        return secret, expires

    async def invite_user(self, secret: str, now: datetime) -> tuple[str, str] | None:
        """(user id, email) of a usable invite, or ``None``."""
        query = (
            sa.select(_i.user_id, _i.expires_at, _i.used_at, _u.email)
            .join(schema.users, _u.id == _i.user_id)
            .where(_i.invite_hash == hash_secret(secret))
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None or row.used_at is not None or row.expires_at <= now:
            return None
        return str(row.user_id), str(row.email)

    async def accept_invite(self, secret: str, password: str, now: datetime) -> str | None:
        """Set the password through an invite (used up); the user id, or ``None``."""
        found = await self.invite_user(secret, now)
        if found is None:
            return None
        problem = password_problem(password)
        if problem is not None:
            raise ValidationFailed(f"password: {problem}", param="password")
        async with self._engine.begin() as conn:
            claimed = await conn.execute(
                schema.console_invites.update()
                .where(_i.invite_hash == hash_secret(secret), _i.used_at.is_(None))
                .values(used_at=now)
            )
        if claimed.rowcount != 1:  # another tab used it first
            return None
        await self.set_password(found[0], password, now)
        return found[0]


def _dummy_hash() -> str:
    """The hash a sign-in naming no user is checked against, made once per process when
    first needed: an argon2id hash at the defaults is 0.2 s of CPU (more on a busy
    machine) that every process importing the app paid at import before — each ``serve``
    worker and replica, whether or not anyone ever signs in to its console."""
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
    return _DUMMY_HASH


def _verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password)
    except (VerificationError, InvalidHashError):
        return False
