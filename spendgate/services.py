"""What a running gateway holds: handed to routes through app state, never global."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.audit_chain import AuditSettings
from spendgate.core.clock import Clock
from spendgate.core.pricing import PriceTable
from spendgate.counters import Counters
from spendgate.guard.enforcement import Enforcer
from spendgate.guard.failover import FailoverGuard
from spendgate.guard.reconcile import Reconciler
from spendgate.guard.sweeper import ThresholdSweeper
from spendgate.guard.tickets import TicketDesk
from spendgate.observability.metrics import GatewayMetrics
from spendgate.proxy.auth import KeyCache
from spendgate.proxy.transport import Transport
from spendgate.ratelimit.gate import RateGate
from spendgate.security.auth_throttle import AuthThrottle
from spendgate.settings import Settings
from spendgate.store.anomalies import AnomalyWatch
from spendgate.store.directory import Directory
from spendgate.store.events import PendingEvent, capturing, record_event
from spendgate.store.ledger import LedgerWriter
from spendgate.store.policies import PolicyStore
from spendgate.webhooks.runtime import WebhookRuntime

log = logging.getLogger("spendgate")

MAX_REMEMBERED = 100_000


class EventSink:
    """Stores events off the request path, each ``dedup_key`` at most once.

    The database's unique dedup key makes "once" hold across replicas and restarts;
    the in-process set saves the round trip for repeats on this replica.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._tasks: set[asyncio.Task[Any]] = set()
        self._announced: set[str] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def emit_once(
        self, type_: str, dedup_key: str, data: dict[str, Any], now: datetime, org_id: str | None
    ) -> None:
        if dedup_key in self._announced:
            return
        captured = capturing()
        if captured is not None:
            # a call's booking: stored with its ledger row, and remembered only once that
            # row is in the spool (``spooled``). Until then each call that decides it
            # carries it too: remembered at once, a call killed in its settle (its row
            # never spooled) took the event of the calls served meanwhile with it
            captured.append(PendingEvent(type_, dedup_key, data, now, org_id))
            return
        self._remember(dedup_key)
        self.spawn(self._store(type_, dedup_key, data, now, org_id), f"event:{type_}")

    def spooled(self, events: Sequence[PendingEvent]) -> None:
        """``events`` travel with a ledger row now in the spool (or, one the spool
        refused, in the database): whatever happens to this process, they reach the
        database with it, so later calls need not carry them."""
        for event in events:
            if event.dedup_key is not None:
                self._remember(event.dedup_key)

    def _remember(self, dedup_key: str) -> None:
        if len(self._announced) >= MAX_REMEMBERED:
            self._announced.clear()  # only a shortcut: the database's unique key decides
        self._announced.add(dedup_key)

    async def _store(
        self, type_: str, dedup_key: str, data: dict[str, Any], now: datetime, org_id: str | None
    ) -> None:
        try:
            async with self._engine.begin() as conn:
                await record_event(conn, type_, data, now, org_id=org_id, dedup_key=dedup_key)
        except Exception:  # outermost layer of a background task: log, never crash serving
            self._announced.discard(dedup_key)
            log.exception("could not store %s event", type_)

    async def drain(self) -> None:
        """Wait for every event still being stored."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


@dataclass
class Services:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    directory: Directory
    ledger: LedgerWriter
    keys: KeyCache
    prices: PriceTable
    transports: Mapping[str, Transport]
    events: EventSink
    policies: PolicyStore
    counters: Counters
    enforcer: Enforcer
    rate_gate: RateGate
    webhooks: WebhookRuntime
    audit_settings: AuditSettings
    #: failed authentications per source address, shared by the proxy and the admin API
    auth_throttle: AuthThrottle = field(default_factory=AuthThrottle)
    #: thresholds reached in the ledger but never fired (on start, periodically, on change)
    sweeper: ThresholdSweeper | None = None
    #: live counters raised to the ledger's spend where they missed some (periodically)
    reconciler: Reconciler | None = None
    #: checks every key's, team's and model's hourly spend against its usual band
    anomalies: AnomalyWatch | None = None
    #: counters and histograms for /metrics (one per process)
    metrics: GatewayMetrics | None = None
    #: the proxy's holds behind the Redis circuit breaker (None without Redis)
    guard: FailoverGuard | None = None
    #: cost tickets: refused calls that ask for funding, and the grants approved
    tickets: TicketDesk | None = None

    async def drain(self) -> None:
        """Store every event decided so far: those stored on their own, and those that
        travel with a call's ledger row."""
        await self.events.drain()
        await self.ledger.flush()
