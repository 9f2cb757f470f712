"""Live money counters shared by the enforcement path: spent and reserved per bucket.

A *bucket* is one budget's current period (``b:<budget id>:<period key>``) or one
wallet (``w:<wallet id>``). Each bucket holds two integers in nano-dollars: ``spent``
(settled cost) and ``reserved`` (worst-case cost of calls in flight), plus, for a
wallet, ``cap`` (its total top-ups).

``reserve`` is the one atomic step that makes caps hold under concurrency: for every
hold it checks ``spent + reserved + amount <= cap`` and, only if all pass, adds every
amount to ``reserved``. Backends are chosen by URL: ``memory://`` (one process) or
``redis://…`` (one Lua script per call, shared by every replica).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Hold:
    """Reserve ``amount`` in ``bucket``; refuse if it would pass ``cap`` (None: no cap).

    ``use_stored_cap``: take the cap from the bucket itself (wallets: their top-ups).
    """

    bucket: str
    amount: int
    cap: int | None = None
    use_stored_cap: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """The first hold that did not fit, and the bucket's figures at that moment."""

    bucket: str
    spent: int
    reserved: int
    cap: int


@dataclass(frozen=True, slots=True)
class Settlement:
    """Turn a reservation of ``reserved`` into a cost of ``actual`` in ``bucket``."""

    bucket: str
    reserved: int
    actual: int


@dataclass(frozen=True, slots=True)
class BucketState:
    spent: int
    reserved: int
    cap: int | None


class Counters(Protocol):
    async def seed(self, bucket: str, spent: int, cap: int | None = None) -> bool:
        """Set ``spent`` (and ``cap``) if the bucket does not exist yet; True if it did not."""

    async def exists(self, bucket: str) -> bool: ...

    async def reserve(
        self, reservation_id: str, holds: Sequence[Hold], expires_at: float
    ) -> Refusal | None:
        """All holds or none, atomically; remembered under ``reservation_id`` until settled,
        released, or reaped after ``expires_at`` (epoch seconds)."""

    async def settle(
        self, reservation_id: str, settlements: Sequence[Settlement]
    ) -> list[tuple[int, int]]:
        """Apply settlements; returns (spent before, spent after) per settlement, in order.
        Forgets the reservation."""

    async def release(self, reservation_id: str) -> None:
        """Give back everything still held under ``reservation_id`` (idempotent)."""

    async def reap(self, now: float) -> int:
        """Release every reservation whose ``expires_at`` is before ``now``; returns how many."""

    async def add_cap(self, bucket: str, amount: int) -> None:
        """Raise a stored cap (a wallet top-up); creates the bucket if needed."""

    async def state(self, bucket: str) -> BucketState | None: ...

    async def aclose(self) -> None: ...
