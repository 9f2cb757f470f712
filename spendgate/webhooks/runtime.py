"""What a running gateway needs for webhooks and notifications, built once at startup.

    runtime = WebhookRuntime.from_env(engine, clock, master_key=settings.master_key)
    await runtime.start()   # delivery worker + maintenance loop (lifespan startup)
    await runtime.stop()    # lifespan shutdown

Environment (read once, in :meth:`WebhookSettings.from_env`):
``SPENDGATE_WEBHOOK_ALLOW_PRIVATE=1`` allows private/loopback targets, the console base URL
used in links is ``Settings.public_url`` (``SPENDGATE_PUBLIC_URL`` or ``[gateway]
public_url``), ``SPENDGATE_SECRET_KEY`` encrypts secrets (see secrets_box).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.clock import Clock
from spendgate.stopping import Stop, end_tasks
from spendgate.webhooks.notifications import build_daily_digests
from spendgate.webhooks.outbox import resolve_reset_periods
from spendgate.webhooks.secrets_box import SecretBox
from spendgate.webhooks.store import WebhookStore
from spendgate.webhooks.targets import Resolver, system_resolver
from spendgate.webhooks.worker import DeliveryWorker

log = logging.getLogger("spendgate.webhooks")

TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    allow_private: bool = False
    public_url: str = "http://127.0.0.1:4100"
    poll_seconds: float = 1.0
    maintenance_seconds: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], public_url: str | None = None) -> WebhookSettings:
        """``public_url``: the gateway's setting (``Settings.public_url``), else
        ``SPENDGATE_PUBLIC_URL``."""
        return cls(
            allow_private=env.get("SPENDGATE_WEBHOOK_ALLOW_PRIVATE", "").lower() in TRUE,
            public_url=(
                public_url or env.get("SPENDGATE_PUBLIC_URL") or "http://127.0.0.1:4100"
            ).rstrip("/"),
        )


class WebhookRuntime:
    """The endpoint store, the delivery worker and the maintenance loop."""

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        box: SecretBox,
        settings: WebhookSettings,
        *,
        resolve: Resolver = system_resolver,
        worker_id: str | None = None,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.settings = settings
        self.store = WebhookStore(
            engine, box, allow_private=settings.allow_private, resolve=resolve
        )
        self.worker = DeliveryWorker(
            engine,
            clock,
            box,
            console_url=settings.public_url,
            allow_private=settings.allow_private,
            resolve=resolve,
            worker_id=worker_id,
            poll_seconds=settings.poll_seconds,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = Stop()

    @classmethod
    def from_env(
        cls,
        engine: AsyncEngine,
        clock: Clock,
        *,
        master_key: str | None,
        env: Mapping[str, str] | None = None,
        public_url: str | None = None,
    ) -> WebhookRuntime:
        env = os.environ if env is None else env
        return cls(
            engine,
            clock,
            SecretBox.from_env(env, master_key),
            WebhookSettings.from_env(env, public_url),
        )

    async def maintain(self) -> None:
        """Resolve PagerDuty incidents of budgets that reset; build finished days' digests;
        encrypt Slack URLs still stored in plaintext (from before revision 0008)."""
        await self.store.seal_urls()
        now = self.clock.now()
        await resolve_reset_periods(self.engine, now)
        await build_daily_digests(self.engine, now)

    async def _maintenance_loop(self, stop: Stop) -> None:
        while not stop.is_set():
            try:
                await self.maintain()
            except Exception:  # outermost layer of a background loop: log and keep going
                log.exception("webhook maintenance failed")
            await stop.pause(self.settings.maintenance_seconds)

    async def start(self) -> None:
        self._stop = Stop()
        self._tasks = [
            asyncio.create_task(self.worker.run_forever(self._stop), name="webhook-worker"),
            asyncio.create_task(self._maintenance_loop(self._stop), name="webhook-maintenance"),
        ]

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Let each loop finish its round (a cancel inside a database call can leave an
        SQLite connection never closed: ``spendgate.stopping``); cancel one still running
        after ``grace_seconds``."""
        self._stop.set()
        await end_tasks(self._tasks, grace_seconds)
        self._tasks = []
        await self.worker.aclose()
