"""Virtual-key authentication for proxy calls, with a small in-process cache.

Keys are looked up by the SHA-256 of the presented secret. A hit in the cache costs
one hash and one dict lookup; a miss costs one indexed query. Entries live ``ttl``
seconds, and only while the policy generation they were looked up at is current: a
revocation or rotation on any replica bumps the policy version (``Enforcer.
policy_changed``), the next admission anywhere finds it and reloads, and every entry
read before is looked up again. On this replica ``forget`` makes it immediate.

Calls that miss on the same key at the same time (every call in flight when its entry
expires) share one lookup: N concurrent misses would otherwise be N queries at once,
and on SQLite N pooled connections, the ones past the pool's size opened and closed
each time, each with its own thread and page cache (issue #19: the memory that left
behind grew the process's RSS over a long run).
"""

from __future__ import annotations

import asyncio
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
        #: lookups under way, by (digest, generation): later misses wait for the same one
        self._lookups: dict[tuple[str, Any], asyncio.Future[KeyRecord | None]] = {}

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
                record = await self._shared_lookup(digest, generation)
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

    async def _shared_lookup(self, digest: str, generation: Any) -> KeyRecord | None:
        """``lookup(digest)``, run once for all the callers that ask while it runs. Keyed
        by generation too: a caller that already sees a newer policy generation (a
        revocation) never takes the answer of a lookup that started before it."""
        key = (digest, generation)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self._lookup(digest))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(key, done))
        # shielded: one caller cancelled (its client went away) leaves the others' lookup be
        return await asyncio.shield(lookup)

    def _lookup_done(self, key: tuple[str, Any], done: asyncio.Future[KeyRecord | None]) -> None:
        if self._lookups.get(key) is done:
            del self._lookups[key]
        if not done.cancelled():
            done.exception()  # retrieved here too, in case every caller was cancelled

    def forget(self, key_hash: str | None = None) -> None:
        """Drop one cached key (or all), e.g. right after a revoke or rotate. A lookup
        under way for it may have read the key before that: later callers do not wait
        for it, they look the key up again."""
        if key_hash is None:
            self._entries.clear()
            self._lookups.clear()
        else:
            self._entries.pop(key_hash, None)
            for key in [k for k in self._lookups if k[0] == key_hash]:
                del self._lookups[key]

    def forget_key_id(self, key_id: str) -> None:
        self._lookups.clear()  # which digest a lookup under way will find is not known yet
        for digest, (record, _, _) in list(self._entries.items()):
            if record is not None and record.id == key_id:
                del self._entries[digest]
