"""What a running gateway holds: handed to routes through app state, never global."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.clock import Clock
from spendgate.pricing import PriceTable
from spendgate.proxy.auth import KeyCache
from spendgate.proxy.transport import Transport
from spendgate.settings import Settings
from spendgate.store.directory import Directory
from spendgate.store.events import record_event
from spendgate.store.ledger import LedgerWriter

log = logging.getLogger("spendgate")


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
    _background: set[asyncio.Task[Any]] = field(default_factory=set)
    _announced: set[str] = field(default_factory=set)

    def spawn(self, coro: Any, name: str) -> None:
        """Run ``coro`` off the request path, keeping a reference until it ends."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def emit_once(self, type_: str, dedup_key: str, data: dict[str, Any], now: datetime,
                  org_id: str | None) -> None:
        """Store an event at most once per ``dedup_key`` (across replicas, via the DB)."""
        if dedup_key in self._announced:
            return
        self._announced.add(dedup_key)
        self.spawn(self._store_event(type_, dedup_key, data, now, org_id), f"event:{type_}")

    async def _store_event(self, type_: str, dedup_key: str, data: dict[str, Any], now: datetime,
                           org_id: str | None) -> None:
        try:
            async with self.engine.begin() as conn:
                await record_event(conn, type_, data, now, org_id=org_id, dedup_key=dedup_key)
        except Exception:  # outermost layer of a background task: log, never crash serving
            self._announced.discard(dedup_key)
            log.exception("could not store %s event", type_)

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
