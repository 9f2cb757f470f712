"""Virtual-key authentication for proxy calls, with a small in-process cache.

Keys are looked up by the SHA-256 of the presented secret. A hit in the cache costs
one hash and one dict lookup; a miss costs one indexed query. Entries live ``ttl``
seconds, and only while the policy generation they were looked up at is current: a
revocation or rotation on any replica bumps the policy version (``Enforcer.
policy_changed``), the next admission anywhere finds it and reloads, and every entry
read before is looked up again. On this replica ``forget`` makes it immediate.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from spendgate.errors import AuthenticationFailed
from spendgate.security.credentials import KEY_PREFIX, hash_secret
from spendgate.store.directory import KeyRecord

Lookup = Callable[[str], Awaitable[KeyRecord | None]]
MAX_ENTRIES = 100_000


def presented_secret(headers: Mapping[str, str], wire: str) -> str | None:
    auth = headers.get("authorization")
    if auth is not None and auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    if wire == "anthropic" or "x-api-key" in headers:
        return headers.get("x-api-key")
    return None


def _constant() -> None:
    return None


class KeyCache:
    def __init__(
        self, lookup: Lookup, *, ttl: float, generation: Callable[[], Any] = _constant
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        #: the policy generation now in force; an entry read at another one is stale
        self._generation = generation
        self._entries: dict[str, tuple[KeyRecord | None, float, Any]] = {}

    async def authenticate(self, secret: str | None, now: datetime, mono: float) -> KeyRecord:
        if not secret or not secret.startswith(KEY_PREFIX):
            raise AuthenticationFailed(
                "missing or malformed API key: use the virtual key spendgate issued (sk-sg-…)"
            )
        digest = hash_secret(secret)
        cached = self._entries.get(digest)
        generation = self._generation()
        if cached is not None and mono - cached[1] < self._ttl and cached[2] == generation:
            record = cached[0]
        else:
            try:
                record = await self._lookup(digest)
            except (SQLAlchemyError, OSError):
                if cached is None:
                    raise
                # the database is down: nobody can revoke a key meanwhile, so the key
                # this process last saw stays good until it answers again
                record = cached[0]
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (record, mono, generation)
        if record is None:
            raise AuthenticationFailed("invalid API key")
        if record.revoked_at is not None:
            raise AuthenticationFailed("this API key has been revoked")
        if not record.usable_at(now):
            raise AuthenticationFailed("this API key has expired")
        return record

    def forget(self, key_hash: str | None = None) -> None:
        """Drop one cached key (or all), e.g. right after a revoke or rotate."""
        if key_hash is None:
            self._entries.clear()
        else:
            self._entries.pop(key_hash, None)

    def forget_key_id(self, key_id: str) -> None:
        for digest, (record, _, _) in list(self._entries.items()):
            if record is not None and record.id == key_id:
                del self._entries[digest]
