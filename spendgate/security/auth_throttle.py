"""Failed authentication attempts, limited per source address.

An address may fail ``limit`` times within ``window_seconds`` (the window opens at its
first failure). The failure that reaches the limit locks the address out for a whole
window: every authentication attempt from it, even with a valid credential, is refused
with 429 ``too_many_auth_failures`` and ``Retry-After`` until the lockout ends.

Used by the proxy (virtual keys) and the admin API (master key, admin tokens)::

    with svc.auth_throttle.attempt(client_address(request.scope), svc.clock.monotonic()):
        ...  # anything that raises AuthenticationFailed counts as a failure

Cost: ``check`` on an address with no recent failures is one dict lookup. Memory is
bounded: at most ``max_tracked`` addresses are remembered, the oldest dropped first.
Time is passed in (``clock.monotonic()``), so tests freeze it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from spendgate.errors import AuthenticationFailed, TooManyAuthFailures

__all__ = ["MAX_TRACKED", "AuthThrottle", "TooManyAuthFailures", "client_address"]

MAX_TRACKED = 10_000


def client_address(scope: Mapping[str, Any]) -> str:
    """The source address of an ASGI request ("" when the server gives none)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


class _Entry:
    __slots__ = ("blocked", "count", "expires")

    def __init__(self, expires: float, count: int, blocked: bool) -> None:
        self.expires = expires
        self.count = count
        self.blocked = blocked


class AuthThrottle:
    """Per-address failure counter; ``limit = 0`` disables it."""

    def __init__(
        self, limit: int = 20, window_seconds: float = 60.0, *, max_tracked: int = MAX_TRACKED
    ) -> None:
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if max_tracked < 1:
            raise ValueError("max_tracked must be at least 1")
        self.limit = max(0, limit)
        self.window = window_seconds
        self.max_tracked = max_tracked
        # Insertion order is expiry order: an entry is (re)inserted when its window opens
        # or its lockout starts, and expires one window later. So the oldest is first.
        self._entries: dict[str, _Entry] = {}

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    @property
    def tracked(self) -> int:
        """How many addresses are remembered right now."""
        return len(self._entries)

    def check(self, ip: str, mono: float) -> None:
        """Refuse (429) an address that is locked out; call before every attempt."""
        entry = self._entries.get(ip)
        if entry is None:
            return
        if mono >= entry.expires:
            del self._entries[ip]
            return
        if entry.blocked:
            raise TooManyAuthFailures(
                f"too many failed authentication attempts from this address; retry in "
                f"{math.ceil(entry.expires - mono)} s",
                retry_after=math.ceil(entry.expires - mono),
            )

    def failed(self, ip: str, mono: float) -> None:
        """Record one failed attempt from ``ip``."""
        if self.limit <= 0:
            return
        entries = self._entries
        entry = entries.get(ip)
        if entry is not None and mono < entry.expires:
            entry.count += 1
            if entry.count >= self.limit and not entry.blocked:
                entry.blocked = True
                entry.expires = mono + self.window
                del entries[ip]  # re-insert at the end: the order stays the expiry order
                entries[ip] = entry
            return
        if entry is not None:
            del entries[ip]
        self._forget_expired(mono)
        while len(entries) >= self.max_tracked:
            del entries[next(iter(entries))]
        entries[ip] = _Entry(mono + self.window, 1, self.limit <= 1)

    @contextmanager
    def attempt(self, ip: str, mono: float) -> Iterator[None]:
        """``check`` first; an ``AuthenticationFailed`` raised inside counts as a failure."""
        self.check(ip, mono)
        try:
            yield
        except AuthenticationFailed:
            self.failed(ip, mono)
            raise

    def _forget_expired(self, mono: float) -> None:
        entries = self._entries
        while entries:
            ip = next(iter(entries))
            if entries[ip].expires > mono:
                return
            del entries[ip]
