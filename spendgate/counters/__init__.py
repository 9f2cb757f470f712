"""Live money counters shared by the enforcement path: spent and reserved per bucket.

A *bucket* is one budget's current period (``b:<budget id>:<period key>:<rule>``) or one
wallet (``w:<wallet id>``). Each bucket holds two integers in nano-dollars: ``spent``
(settled cost) and ``reserved`` (worst-case cost of calls in flight), plus, for a
wallet, ``cap`` (its total top-ups).

``reserve`` is the one atomic step that makes caps hold under concurrency: for every
hold it checks ``spent + reserved + amount <= cap`` and, only if all pass, adds every
amount to ``reserved``; else it names every hold that did not fit (``Refusal``).
Backends are chosen by URL: ``memory://`` (one process) or ``redis://…`` (one Lua
script per call, shared by every replica).

Shared counters also keep a *generation*, ``(epoch, version)``: ``version`` goes up each
time a policy changes (``bump``), and ``epoch`` is a random token written the first time
anyone asks for it, so its loss means Redis lost every counter (restarted empty, or
flushed). Admission compares the generation a process built its policy snapshot and its
counters from with the stored one in the same round trip as the holds (``reserve``, or
the joint script of ``spendgate.guard``): holds are never taken in buckets Redis lost,
which would re-create them holding only those holds (the seed then skips them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from spendgate.core.value import Value


class Hold(Value, frozen=True):
    """Reserve ``amount`` in ``bucket``; refuse if it would pass ``cap`` (None: no cap).

    ``use_stored_cap``: take the cap from the bucket itself (wallets: their top-ups).
    """

    bucket: str
    amount: int
    cap: int | None = None
    use_stored_cap: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """The first hold that did not fit, and the bucket's figures at that moment; ``also``:
    the later holds that did not fit either, each with its figures, in hold order (a
    refused call is checked to the end, so every cap it would pass is known: only a
    refusal pays for that)."""

    bucket: str
    spent: int
    reserved: int
    cap: int
    also: tuple[Refusal, ...] = ()

    @classmethod
    def of(cls, refused: Sequence[Refusal]) -> Refusal:
        """The first of ``refused`` (one or more, in hold order), carrying the others."""
        first, *rest = refused
        return cls(first.bucket, first.spent, first.reserved, first.cap, tuple(rest))

    def every(self) -> tuple[Refusal, ...]:
        """This refusal and the ones it carries, in hold order."""
        return (self, *self.also)


class Settlement(Value, frozen=True):
    """Turn a reservation of ``reserved`` into a cost of ``actual`` in ``bucket``."""

    bucket: str
    reserved: int
    actual: int


@dataclass(frozen=True, slots=True)
class Generation:
    """What a process's policies and seeded buckets were built from: the counters'
    ``epoch`` (changes only when the counters were lost) and the policy ``version``."""

    epoch: str
    version: int


class PolicyStale(Exception):
    """The shared counters' generation is not the one this process planned with."""

    def __init__(self, seen: Generation) -> None:
        super().__init__(f"policies or counters changed: now {seen}")
        self.seen = seen


@dataclass(frozen=True, slots=True)
class BucketState:
    spent: int
    reserved: int
    cap: int | None


class Counters(Protocol):
    """What the enforcer needs from live counters. Backends subclass it explicitly, so
    the rules written here once (``reserve`` over ``reserve_seen``) are theirs too."""

    #: True when other processes share these counters (Redis): admission then checks
    #: the generation; a process's own memory needs no check
    shared: bool

    async def generation(self) -> Generation:
        """The current generation; writes a fresh epoch first if there is none."""

    async def bump(self) -> None:
        """A policy changed: every process must reload before its next admission."""

    async def seed(
        self, bucket: str, spent: int, cap: int | None = None, uncounted: int = 0
    ) -> bool:
        """Set ``spent`` (and ``cap``) if the bucket does not exist yet; True if it did not.
        ``uncounted``: how much of ``spent`` is the ledger's uncounted spend (``catch_up``)."""

    async def exists(self, bucket: str) -> bool: ...

    async def reserve(
        self,
        reservation_id: str,
        holds: Sequence[Hold],
        expires_at: float,
        generation: Generation | None = None,
    ) -> Refusal | None:
        """All holds or none, atomically; remembered under ``reservation_id`` until settled,
        released, or reaped after ``expires_at`` (epoch seconds). ``generation``: the one
        the caller planned with and seeded the buckets at; if the stored one differs,
        nothing is written and ``PolicyStale`` is raised (None: not checked; a process's
        memory is never lost or changed by another, so it checks nothing).

        Every backend inherits this one: ``reserve_seen`` without the figures."""
        reply = await self.reserve_seen(reservation_id, holds, expires_at, generation)
        return reply if isinstance(reply, Refusal) else None

    async def reserve_seen(
        self,
        reservation_id: str,
        holds: Sequence[Hold],
        expires_at: float,
        generation: Generation | None = None,
    ) -> Refusal | tuple[int, ...]:
        """``reserve``, answering (when every hold fits) each hold's bucket's ``spent`` as
        the reserve read it, before this reservation: what the proxy can say is left
        before a call whose cost is not known yet (a stream), at no extra round trip."""

    async def settle(
        self, reservation_id: str, settlements: Sequence[Settlement]
    ) -> list[tuple[int, int]]:
        """Apply settlements; returns (spent before, spent after) per settlement, in order.
        Forgets the reservation. A bucket that does not exist (lost with Redis, not yet
        seeded again) is not re-created: its figures read (0, 0), and the spend reaches
        it from the ledger when it is seeded or reconciled."""

    async def release(self, reservation_id: str) -> None:
        """Give back everything still held under ``reservation_id`` (idempotent)."""

    async def reap(self, now: float) -> int:
        """Release every reservation whose ``expires_at`` is before ``now``; returns how many."""

    async def renew(self, reservation_ids: Sequence[str], expires_at: float) -> None:
        """Move the expiry of these live reservations to ``expires_at`` (a heartbeat);
        ones already settled, released or reaped stay gone."""

    async def add_cap(self, bucket: str, amount: int) -> None:
        """Raise a stored cap (a wallet top-up); a bucket not seeded yet is left alone
        (seeding reads every top-up from the database)."""

    async def raise_to(
        self, bucket: str, field: str, floor: int, uncounted: int | None = None
    ) -> int | None:
        """Set ``field`` (``spent`` or ``cap``) to ``floor`` if it is lower, atomically;
        returns the figure before (None: no such bucket, nothing written). A raised
        ``spent`` now holds the ledger's ``uncounted`` spend too: recorded as caught up."""

    async def catch_up(self, bucket: str, uncounted: int) -> int | None:
        """Add to ``spent`` what ``uncounted`` (the ledger's spend in this bucket of calls
        whose settle never reached these counters) holds beyond what was added before,
        atomically; returns what it added (None: no such bucket, nothing written).
        Idempotent: the same or an older figure adds nothing."""

    async def state(self, bucket: str) -> BucketState | None: ...

    async def aclose(self) -> None: ...
