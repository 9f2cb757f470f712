"""Composition: ``create_app(settings, clock=…, engine=…, transports=…)`` builds the gateway.

Gateway (ASGI, owns the lifespan)
├── /v1/…      ProxyApp   raw ASGI, the hot path
├── /admin/…, /docs, /openapi.json, /healthz, /readyz   FastAPI: the admin API
└── everything else       FastAPI: the web console (``spendgate.console``)
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from multiprocessing import get_context
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException

from spendgate import __version__
from spendgate.admin.anomalies import router as anomalies_router
from spendgate.admin.audit import router as audit_router
from spendgate.admin.console_access import router as console_access_router
from spendgate.admin.deps import no_nul_characters, unguarded_routes
from spendgate.admin.docs import install_docs
from spendgate.admin.forecasts import router as forecasts_router
from spendgate.admin.policies import router as policies_router
from spendgate.admin.rate_limits import router as rate_limits_router
from spendgate.admin.routes import router as admin_router
from spendgate.admin.schemas import error_message
from spendgate.admin.statements import router as statements_router
from spendgate.admin.tickets import router as tickets_router
from spendgate.admin.tokens import router as tokens_router
from spendgate.admin.usage import router as usage_router
from spendgate.admin.users import router as users_router
from spendgate.admin.wallets import router as wallets_router
from spendgate.admin.webhooks import install as install_webhooks
from spendgate.console.app import build_console
from spendgate.core.clock import Clock, SystemClock
from spendgate.core.event_data import key_event_data
from spendgate.core.pricing import PriceTable, unpriced_key
from spendgate.core.showback import months_before
from spendgate.core.usage import MAX_TOKENS_PER_CALL, TokenUsage
from spendgate.counters import Counters
from spendgate.counters.factory import counters_from_url
from spendgate.counters.redis import RedisCounters
from spendgate.counters.redis_pool import counters_failed
from spendgate.errors import DatabaseUnavailable, NotFound, PayloadTooLarge, SpendgateError
from spendgate.guard import CallGuard
from spendgate.guard.enforcement import Enforcer
from spendgate.guard.failover import FailoverGuard
from spendgate.guard.reconcile import Reconciler
from spendgate.guard.sweeper import ThresholdSweeper
from spendgate.guard.tickets import TicketDesk
from spendgate.observability.logs import AdminRequestIds, console_line
from spendgate.observability.metrics import GatewayMetrics
from spendgate.observability.scrape import Gauges, MetricsEndpoint, backlog_gauges, redis_gauges
from spendgate.proxy.app import Call, ProxyApp
from spendgate.proxy.auth import KeyCache
from spendgate.proxy.routing import misrouted
from spendgate.proxy.transport import AiohttpTransport, SimulatedTransport, Transport
from spendgate.proxy.wire import (
    Receive,
    Scope,
    Send,
    buffered,
    error_body,
    send_bytes,
    send_error,
)
from spendgate.ratelimit.factory import rate_limiter_from_url
from spendgate.ratelimit.gate import RateGate
from spendgate.ratelimit.memory import MemoryRateLimiter
from spendgate.security.auth_throttle import AuthThrottle
from spendgate.security.credentials import new_id
from spendgate.security.web import CsrfGuard, SecurityHeaders
from spendgate.services import EventSink, Services
from spendgate.settings import (
    Settings,
    load_audit_settings,
    load_settings,
    spool_directory,
    unconfigured_names,
)
from spendgate.stopping import Stop, end_pool, end_tasks, ignore_interrupts
from spendgate.store.anomalies import AnomalyWatch
from spendgate.store.audit import bind_audit_key
from spendgate.store.audit_anchor import emit_anchor
from spendgate.store.database import (
    CannotConnect,
    check_connection,
    create_engine,
    database_failure,
    database_fingerprint,
    database_unreachable,
    migrate,
)
from spendgate.store.directory import Directory
from spendgate.store.forecasts import refresh_loop
from spendgate.store.leases import take_lease
from spendgate.store.ledger import LedgerEntry, LedgerWriter
from spendgate.store.policies import PolicyStore
from spendgate.store.rebuild import purge_ledger
from spendgate.store.spool import Spool
from spendgate.webhooks.outbox import pending_deliveries
from spendgate.webhooks.runtime import WebhookRuntime

log = logging.getLogger("spendgate")

ADMIN_BODY_LIMIT = 1024 * 1024
#: the demo org's first admin (``serve --demo`` prints a password for it, once)
DEMO_ADMIN_EMAIL = "admin@demo.local"
#: paths the admin API serves; every other path outside /v1 and /metrics is the console's
ADMIN_PREFIXES = ("/admin", "/docs", "/openapi.json", "/healthz", "/readyz")


def web_kind(path: str) -> str:
    """Which app serves a path outside ``/v1``: ``admin`` (the API, its docs, health) or
    ``console``; the ``kind`` of its ``request finished`` log line."""
    return (
        "admin" if any(path == p or path.startswith(p + "/") for p in ADMIN_PREFIXES) else "console"
    )


HOUSEKEEPING_SECONDS = 5.0
#: how long shutdown waits for a background task to stop (then to end once cancelled)
TASK_END_SECONDS = 5.0
#: how often one replica compares every budget's ledger spend with the thresholds fired
SWEEP_SECONDS = 60.0
#: the first audit.anchor event goes out after this much uptime (then once per interval)
ANCHOR_FIRST_SECONDS = 600.0


class StartupRefused(Exception):
    """A state the gateway must not serve in; the message says how to fix it."""


def _error_response(err: SpendgateError) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": err.message, "code": err.code, "param": err.param}},
        status_code=err.status,
        headers=err.headers(),
    )


#: pydantic's error types for a body that is no JSON object (a form, a list, a string)
NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type", "model_type"})


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in NOT_AN_OBJECT:
        return "the request body must be a JSON object (Content-Type: application/json)", None
    message = error_message(first)
    return (f"{field}: {message}" if field else message), field


def build_admin(services: Services) -> FastAPI:
    api = FastAPI(
        title="spendgate",
        version=__version__,
        docs_url=None,  # served from the package: spendgate.admin.docs
        redoc_url=None,
        dependencies=[Depends(no_nul_characters)],
    )
    api.state.services = services

    @api.exception_handler(SpendgateError)
    async def spendgate_error(_: Request, exc: SpendgateError) -> JSONResponse:
        return _error_response(exc)

    @api.exception_handler(RedisError)
    async def counters_down(_: Request, exc: RedisError) -> JSONResponse:
        if services.metrics is not None:
            services.metrics.backend_error("redis")
        return _error_response(counters_failed(exc, "or change live budget state"))

    @api.exception_handler(SQLAlchemyError)
    @api.exception_handler(OSError)
    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        """503 for an outage only; a statement the database refused is no outage."""
        return _error_response(database_failure(exc, f"admin {request.url.path}"))

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = _validation_message(exc)
        return JSONResponse(
            {"error": {"message": message, "code": "validation_error", "param": field}},
            status_code=422,
        )

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error": {"message": str(exc.detail), "code": code, "param": None}},
            status_code=exc.status_code,
        )

    @api.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @api.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        """200 ``ok``; 200 ``degraded`` while the database is down and calls that need
        nothing from it are served and spooled, or while Redis is unreachable (fail-closed:
        calls that hold anything get 503; fail-open: served on local counters); 503 once
        the spool is full."""
        ledger = services.ledger
        body: dict[str, Any] = {"status": "ok", "database": "ok", **ledger_backlog(ledger)}
        if services.guard is not None:
            body.update(services.guard.status())
            if not services.guard.breaker.up:
                body["status"] = "degraded"
        try:
            async with services.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - readiness reports any failure
            body.update(status="degraded", database=f"unavailable: {exc}"[:300])
        if ledger.full:
            body["status"] = "unavailable"
        return JSONResponse(body, status_code=503 if ledger.full else 200)

    install_docs(api)
    api.include_router(admin_router)
    api.include_router(usage_router)
    api.include_router(statements_router)
    api.include_router(users_router)
    api.include_router(policies_router)
    api.include_router(wallets_router)
    api.include_router(rate_limits_router)
    install_webhooks(api, services.webhooks)
    api.include_router(audit_router)
    api.include_router(forecasts_router)
    api.include_router(tokens_router)
    api.include_router(anomalies_router)
    api.include_router(tickets_router)
    api.include_router(console_access_router)
    api.state.audit_settings = services.audit_settings
    unguarded = unguarded_routes(api)
    if unguarded:  # a route without a permission rule is a bug, not a default
        raise RuntimeError(f"admin routes without a permission: {', '.join(unguarded)}")
    return api


def ledger_backlog(ledger: LedgerWriter) -> dict[str, Any]:
    """What waits for the database: rows, and bytes of spool (this process's and files
    other processes left in the directory)."""
    spool = ledger.spool
    orphan, foreign = spool.waiting_bytes() if spool is not None else (0, 0)
    return {
        "ledger_pending": ledger.pending,
        "spool_bytes": spool.backlog_bytes if spool is not None else 0,
        "spool_unwritten_bytes": spool.unwritten_bytes if spool is not None else 0,
        "spool_max_bytes": spool.max_bytes if spool is not None else 0,
        "spool_orphan_bytes": orphan,
        "spool_foreign_bytes": foreign,
        "spool_error": str(spool.error) if spool is not None and spool.error else None,
    }


class Gateway:
    """The ASGI application: routes by path prefix and runs startup/shutdown."""

    def __init__(self, services: Services, *, auto_migrate: bool = True) -> None:
        self.services = services
        self.auto_migrate = auto_migrate
        self.metrics = services.metrics or GatewayMetrics(services.clock.monotonic)
        self.proxy = ProxyApp(
            services.settings,
            services.clock,
            services.keys,
            services.prices,
            services.ledger,
            services.transports,
            self._unpriced,
            services.enforcer,
            services.rate_gate,
            services.auth_throttle,
            self._implausible,
            metrics=self.metrics,
            guard=services.guard,
            tickets=services.tickets,
        )
        self._metered_proxy = self.metrics.proxied(self.proxy)
        self.metrics_endpoint = MetricsEndpoint(
            self.metrics,
            self._gauges,
            token=services.settings.metrics_token,
            multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
        )
        self.admin = build_admin(services)
        self.console = build_console(services)
        #: what serves HTTP outside /v1: the admin API and the console behind CSRF checks and
        #: security headers
        self.web = AdminRequestIds(
            SecurityHeaders(CsrfGuard(self._admin_http, max_body_bytes=ADMIN_BODY_LIMIT)),
            new_id,
            web_kind,
            services.clock.monotonic,
        )
        #: the event loop serving this app, set at startup (tests run coroutines on it)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = Stop()
        self._housekeeping: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._forecasts: asyncio.Task[None] | None = None
        workers = services.settings.forecast_workers
        # spawned, not forked: a fork of a process with driver threads can deadlock
        self._forecast_pool = (
            ProcessPoolExecutor(
                max_workers=workers, mp_context=get_context("spawn"), initializer=ignore_interrupts
            )
            if workers > 0
            else None
        )

    def _unpriced(self, call: Call, usage: TokenUsage) -> None:
        self.services.events.emit_once(
            "price.unknown",
            unpriced_key(call.key.org_id, call.route.name, call.started_at),
            {
                "model": call.route.name,
                "provider": call.route.provider.name,
                "price_model": call.route.price.model,
                "request_id": call.request_id,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
            },
            call.started_at,
            call.key.org_id,
        )

    def _implausible(self, call: Call, usage: TokenUsage) -> None:
        day = call.started_at.date().isoformat()
        self.services.events.emit_once(
            "usage.implausible",
            f"usage.implausible:{call.route.name}:{day}",
            {
                "model": call.route.name,
                "provider": call.route.provider.name,
                "request_id": call.request_id,
                "key_id": call.key.id,
                "max_tokens_per_call": MAX_TOKENS_PER_CALL,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "reasoning_tokens": usage.reasoning_tokens,
            },
            call.started_at,
            call.key.org_id,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"].startswith("/v1/"):
                await self._metered_proxy(scope, receive, send)
            elif scope["path"] == "/metrics":
                await self.metrics_endpoint(scope, receive, send)
            elif (hint := misrouted(scope["path"])) is not None:
                await self._misrouted(scope, send, hint)
            else:
                await self.web(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.admin(scope, receive, send)

    async def _misrouted(self, scope: Scope, send: Send, hint: str) -> None:
        """A proxy call without its /v1 (an SDK ``base_url`` missing it): a 404 in the
        proxy's error format saying what to change, not the console's HTML page."""
        path = scope["path"]
        wire = "anthropic" if path == "/messages" or path.startswith("/messages/") else "openai"
        refused = NotFound(f"unknown endpoint {scope['method']} {path}: {hint}")
        await send_bytes(
            send, refused.status, error_body(refused, wire), {"content-type": "application/json"}
        )

    async def _gauges(self) -> Gauges:
        """Read when ``/metrics`` is scraped: this process's ledger backlog and the
        database's webhook outbox (left out while the database does not answer)."""
        try:
            async with asyncio.timeout(2.0):  # not wait_for: it can lose a cancel (3.11)
                pending = await pending_deliveries(self.services.engine)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.debug("outbox depth not scraped: %s", exc)
            pending = None
        ledger = self.services.ledger
        gauges = backlog_gauges(ledger_backlog(ledger), ledger.full, pending)
        if self.services.guard is not None:
            gauges += redis_gauges(self.services.guard.status())
        return gauges

    async def _admin_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        try:
            if declared is None:  # chunked: read here, up to the limit, before anything else
                replay = await buffered(receive, ADMIN_BODY_LIMIT)
                if replay is None:
                    return  # the client left
                receive = replay
            elif declared.isdigit() and int(declared) > ADMIN_BODY_LIMIT:
                raise PayloadTooLarge(f"request body exceeds the {ADMIN_BODY_LIMIT}-byte limit")
        except PayloadTooLarge as err:
            await send_error(send, err, "openai", "")
            return
        if web_kind(scope["path"]) == "admin":
            await self.admin(scope, receive, send)
        else:
            await self.console(scope, receive, send)

    async def startup(self) -> None:
        self.loop = asyncio.get_running_loop()
        engine = self.services.engine
        try:  # one line saying why, not the driver's traceback (a pod starting before its db)
            await check_connection(engine)
        except CannotConnect as exc:
            shown = engine.url.render_as_string(hide_password=True)
            raise StartupRefused(f"cannot connect to the database {shown}: {exc}") from exc
        if self.auto_migrate:
            await migrate(engine)
        await self._check_secrets()
        await self._warn_unconfigured_names()
        try:  # what a previous run (or a dead replica) left: before counters seed from it
            await self.services.ledger.replay_orphans()
        except DatabaseUnavailable:
            log.warning("spool replay postponed: the database is unavailable")
        self.services.ledger.start()
        await self.services.webhooks.start()
        await self.services.enforcer.refresh()
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        self._heartbeat = asyncio.create_task(self._beat(), name="heartbeat")
        services = self.services
        self._forecasts = asyncio.create_task(
            refresh_loop(
                services.engine,
                services.policies.snapshot,
                services.clock,
                services.settings.forecast_refresh_seconds,
                executor=self._forecast_pool,
                holder=f"{secrets.token_hex(4)}:{os.getpid()}:{socket.gethostname()}"[:80],
                stop=self._stop,
                escalation=services.settings.forecast_overrun_escalation,
            ),
            name="forecasts",
        )
        if self.services.settings.demo:
            await self._demo_bootstrap()
        # Everything built so far lives as long as the process: keep the cyclic GC from
        # re-scanning it on every full collection (a measurable cost per request).
        gc.freeze()

    async def _check_secrets(self) -> None:
        """Refuse to start when stored webhook secrets do not decrypt with the configured
        keys (every delivery to those endpoints would fail), unless told to go on; logged
        loudly either way."""
        unreadable = list(await self.services.webhooks.store.unreadable())
        if not unreadable:
            return
        shown = ", ".join(unreadable[:5]) + (" …" if len(unreadable) > 5 else "")
        message = (
            f"{len(unreadable)} webhook endpoint(s) ({shown}) have stored secrets that the "
            "configured keys cannot decrypt: SPENDGATE_SECRET_KEY, or the master key it is "
            "derived from when unset, differs from the one they were stored with. Start "
            "with that key (the SPENDGATE_MASTER_KEY of then, or the spendgate-master.key "
            "file serve kept it in; or SPENDGATE_SECRET_KEY=<new>,<old> to rotate), or "
            "start with --allow-unreadable-secrets (SPENDGATE_ALLOW_UNREADABLE_SECRETS=1) "
            "and rotate or re-create those endpoints"
        )
        if not self.services.settings.allow_unreadable_secrets:
            raise StartupRefused(message)
        log.critical("%s; starting anyway: their deliveries fail until then", message)

    async def _warn_unconfigured_names(self) -> None:
        """A line per stored budget or rate limit naming a provider or model the config
        no longer has (checked when written; the config may change since): it counts or
        governs no call there, a hard cap on it never binds."""
        policies, settings = self.services.policies, self.services.settings
        for what, rows, counts in (
            ("budget", await policies.list_budgets(), "counts no spend"),
            ("rate limit", await policies.list_rate_limits(), "governs no call"),
        ):
            for row in rows:
                problems = unconfigured_names(settings, row)
                if problems:
                    log.warning(
                        "%s %s %s of a name the config no longer has (restore it in the "
                        "config, or change the %s): %s",
                        what,
                        row["id"],
                        counts,
                        what,
                        "; ".join(message for _, message in problems),
                    )

    async def _demo_bootstrap(self) -> None:
        """First demo start: an org and a key to try right away (printed once)."""
        directory, now = self.services.directory, self.services.clock.now()
        if await directory.list_orgs():
            return
        org = await directory.create_org("demo", now)
        key = await directory.create_key(
            {"name": "demo", "org_id": org["id"], "allow_request_tags": True}, now
        )
        admin = await directory.create_user(DEMO_ADMIN_EMAIL, "org_admin", [], org["id"], now)
        password = secrets.token_urlsafe(12)
        await self.console.state.console_auth.set_password(admin["id"], password, now)
        # to the terminal, not the log: logs are shipped and kept, and a key must not be
        console_line(
            f"demo org {org['id']} created; its virtual key (shown once): {key['key']}",
            self.services.settings.log_format,
        )
        console_line(
            f"console: {self.services.settings.public_url}/login — sign in as "
            f"{DEMO_ADMIN_EMAIL} with password (shown once): {password}",
            self.services.settings.log_format,
        )

    async def _housekeep(self) -> None:
        """Every few seconds: reap stale reservations, note expired exceptions, reload
        policy; every ``SWEEP_SECONDS`` (and first thing) one replica sweeps thresholds
        and wallet levels and announces keys about to expire, every ``reconcile_seconds``
        one replica raises live counters to the ledger, and (after
        ``ANCHOR_FIRST_SECONDS`` of uptime) one sends the audit anchor when due."""
        holder = f"{secrets.token_hex(4)}:{os.getpid()}:{socket.gethostname()}"[:80]
        loop = asyncio.get_running_loop()
        next_sweep = next_reconcile = next_anomaly_check = loop.time()
        first_anchor = loop.time() + ANCHOR_FIRST_SECONDS
        settings = self.services.settings
        while True:
            try:
                await self._reap()
                await self.services.enforcer.refresh()
                await self.services.enforcer.announce_expired_exceptions()
                if self.services.tickets is not None:
                    await self.services.tickets.expire()  # unused grants return
                if loop.time() >= next_sweep:
                    next_sweep = loop.time() + SWEEP_SECONDS
                    await self._sweep(holder)
                    if loop.time() >= first_anchor:
                        await self._anchor(holder)
                        await self._purge_ledger(holder)
                if loop.time() >= next_reconcile:
                    next_reconcile = loop.time() + settings.reconcile_seconds
                    await self._reconcile(holder)
                every = self.services.settings.anomaly_check_seconds
                if every > 0 and loop.time() >= next_anomaly_check:
                    next_anomaly_check = loop.time() + every
                    await self.check_anomalies(holder)
            except (SQLAlchemyError, OSError, DatabaseUnavailable) as exc:
                if isinstance(exc, DatabaseUnavailable) or database_unreachable(exc):
                    log.warning("housekeeping postponed, database unavailable: %s", exc)
                else:  # a statement the database refused: a bug, not an outage
                    log.exception("housekeeping failed on a database error")
            except Exception:  # outermost layer of a background loop: log and keep going
                log.exception("housekeeping failed")
            if not await self._stop.pause(HOUSEKEEPING_SECONDS):
                return

    async def _reap(self) -> None:
        """Probe Redis when it was lost and hand back owed spend (``guard.failover``),
        then reap stale holds; skipped while Redis is unreachable."""
        guard = self.services.guard
        if guard is not None:
            await guard.tick()
            if not guard.breaker.up:
                return
        try:
            await self.services.enforcer.reap()
            await self.services.rate_gate.reap()
        except RedisError as exc:
            log.warning("stale holds not reaped, Redis unreachable: %s", exc)

    async def _beat(self) -> None:
        """Renew the holds of every call running here, every ``hold_heartbeat_seconds``."""
        guard = self.services.guard
        while await self._stop.pause(self.services.settings.hold_heartbeat_seconds):
            if guard is not None and not guard.breaker.up:
                continue  # Redis unreachable: nothing to renew there
            try:
                await self.services.enforcer.renew_holds()
            except RedisError as exc:
                log.warning("holds not renewed, Redis unreachable: %s", exc)
            except Exception:  # outermost layer of a background loop: log and keep going
                log.exception("renewing holds failed")

    async def _reconcile(self, holder: str) -> None:
        """One replica per ``reconcile_seconds`` raises live counters to the ledger;
        skipped while Redis is unreachable (the catch-up after the outage repairs them),
        and one warning line, not a traceback, if Redis goes away during it."""
        settings, reconciler = self.services.settings, self.services.reconciler
        guard = self.services.guard
        if reconciler is None or (guard is not None and not guard.breaker.up):
            return
        ttl = timedelta(seconds=settings.reconcile_seconds * 0.8)
        if await take_lease(self.services.engine, "counter-reconcile", holder, self._now(), ttl):
            try:
                await reconciler.reconcile(timedelta(seconds=settings.reconcile_grace_seconds))
            except RedisError as exc:
                log.warning("counters not reconciled, Redis unreachable: %s", exc)

    async def _sweep(self, holder: str) -> None:
        """One replica per ``SWEEP_SECONDS``: thresholds and wallet levels the ledger
        reached but nobody fired, and ``key.expiring`` for keys whose expiry comes within
        the lead time."""
        sweeper, ttl = self.services.sweeper, timedelta(seconds=SWEEP_SECONDS * 0.8)
        if not await take_lease(self.services.engine, "threshold-sweep", holder, self._now(), ttl):
            return
        if sweeper is not None:
            await sweeper.sweep()
        await self.announce_expiring_keys()

    async def announce_expiring_keys(self) -> int:
        """``key.expiring`` for every live key that expires within ``key_expiring_days``:
        once per key and expiry (the event's dedup key holds across restarts and
        replicas; a new expiry announces again). Returns how many keys were due."""
        days, now = self.services.settings.key_expiring_days, self._now()
        if not days:
            return 0
        due = await self.services.directory.keys_expiring(now, now + timedelta(days=days))
        for key in due:
            self.services.events.emit_once(
                "key.expiring",
                f"key:{key['id']}:expiring:{key['expires_at'].isoformat()}",
                {
                    **key_event_data(key),
                    "expires_in_seconds": int((key["expires_at"] - now).total_seconds()),
                },
                now,
                key["org_id"],
            )
        return len(due)

    async def check_anomalies(self, holder: str) -> bool:
        """One replica per ``anomaly_check_seconds`` checks every scope's spend (a lease
        taken for 0.8 of the interval); False if another replica has the lease."""
        watch, every = self.services.anomalies, self.services.settings.anomaly_check_seconds
        now = self._now()
        if watch is None or not await take_lease(
            self.services.engine, "anomaly-check", holder, now, timedelta(seconds=every * 0.8)
        ):
            return False
        await watch.check(now)
        return True

    async def _anchor(self, holder: str) -> None:
        """One replica per interval sends the signed audit chain head out as an event."""
        audit = self.services.audit_settings
        ttl = timedelta(hours=audit.anchor_hours) * 0.95
        if audit.anchor_hours and await take_lease(
            self.services.engine, "audit-anchor", holder, self._now(), ttl
        ):
            await emit_anchor(self.services.engine, audit.key, self._now())

    async def _purge_ledger(self, holder: str) -> None:
        """One replica an hour deletes raw ledger rows past ``ledger_retention_months``
        (rollups and statements stay)."""
        months = self.services.settings.ledger_retention_months
        if months and await take_lease(
            self.services.engine, "ledger-purge", holder, self._now(), timedelta(hours=1)
        ):
            purged = await purge_ledger(self.services.engine, months_before(self._now(), months))
            if purged:
                log.info("purged %d ledger rows older than %d months", purged, months)

    def _now(self) -> datetime:
        return self.services.clock.now()

    async def shutdown(self) -> None:
        """Flush every buffered ledger entry before the process goes (SIGTERM path).

        First the calls still running end (``ProxyApp.end_calls``): those the server cut
        after its drain book what they produced while the counters, the spool and the
        ledger are still open; only then does anything close."""
        await self.proxy.end_calls(TASK_END_SECONDS)
        # asked to stop, not cancelled: each ends after its round (a cancel inside a
        # database call can leave an SQLite connection never closed: spendgate.stopping)
        self._stop.set()
        tasks = [t for t in (self._housekeeping, self._heartbeat, self._forecasts) if t]
        await end_tasks(tasks, TASK_END_SECONDS)
        if self._forecast_pool is not None:
            await end_pool(self._forecast_pool, TASK_END_SECONDS)
        await self.services.events.drain()
        await self.services.ledger.close()
        for transport in self.services.transports.values():
            await transport.aclose()
        await self.services.counters.aclose()
        await self.services.rate_gate.aclose()
        await self.services.webhooks.stop()
        await self.services.engine.dispose()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except StartupRefused as exc:
                    log.critical("refusing to start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": ""})
                    return
                except Exception as exc:  # outermost: report startup failure to the server
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    transports: Mapping[str, Transport] | None = None,
    auto_migrate: bool = True,
    env: Mapping[str, str] | None = None,
) -> Gateway:
    """``env`` is read once, for what is not in ``settings`` yet (webhook options)."""
    clock = clock or SystemClock()
    engine = engine or create_engine(
        settings.database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_max_overflow,
    )
    audit_settings = load_audit_settings(os.environ if env is None else env, settings.master_key)
    bind_audit_key(engine, audit_settings.key)  # every audit entry is MAC'd with it
    directory = Directory(engine)
    spool = Spool(
        spool_directory(settings),
        header={
            "db": database_fingerprint(engine),
            "fields": list(LedgerEntry._fields),
            "pid": os.getpid(),
            "host": socket.gethostname(),
        },
        max_bytes=settings.spool_max_bytes,
        sync=settings.spool_sync,
        sync_seconds=settings.spool_sync_seconds,
    )
    ledger = LedgerWriter(
        engine,
        flush_seconds=settings.ledger_flush_seconds,
        batch_size=settings.ledger_batch_size,
        spool=spool,
        now=clock.now,
    )
    policies = PolicyStore(engine)
    counters = counters_from_url(settings.redis_url, prefix=settings.redis_prefix)
    events = EventSink(engine)
    ledger.on_spooled = events.spooled  # a call's events are remembered once it is on disk
    enforcer = Enforcer(
        policies,
        counters,
        ledger,
        clock,
        events.emit_once,
        reservation_seconds=settings.hold_seconds,
    )
    metrics = GatewayMetrics(clock.monotonic)
    metrics.watch(engine)
    rate_gate = RateGate(
        rate_limiter_from_url(settings.redis_url, prefix=settings.redis_prefix),
        clock,
        events.emit_once,
        unlisted=settings.unlisted_models,
        reservation_seconds=settings.upstream_timeout_seconds + 60,
    )
    reconciler = Reconciler(policies, enforcer, ledger, clock, events.emit_once)
    guard = None
    if isinstance(counters, RedisCounters):

        def local_guards(local: Counters) -> tuple[Enforcer, RateGate]:
            """The enforcer and rate gate a fail-open outage admits calls with."""
            return (
                Enforcer(
                    policies,
                    local,
                    ledger,
                    clock,
                    events.emit_once,
                    reservation_seconds=settings.hold_seconds,
                ),
                RateGate(
                    MemoryRateLimiter(),
                    clock,
                    events.emit_once,
                    unlisted=settings.unlisted_models,
                    reservation_seconds=settings.upstream_timeout_seconds + 60,
                ),
            )

        guard = FailoverGuard(
            CallGuard(rate_gate, enforcer),
            enforcer,
            rate_gate,
            counters,
            clock,
            local_guards,
            lambda buckets: reconciler.reconcile(timedelta(0), only=buckets, after_outage=True),
            mode=settings.redis_failure_mode,
            replicas=settings.fail_open_replicas,
        )
        ledger.on_replayed = guard.check_all  # a dead process may have spent without Redis
    services = Services(
        settings=settings,
        clock=clock,
        engine=engine,
        directory=directory,
        ledger=ledger,
        keys=KeyCache(
            directory.key_by_hash,
            ttl=settings.key_cache_seconds,
            generation=lambda: enforcer.generation,
        ),
        prices=PriceTable(),
        transports=transports or {"http": AiohttpTransport(), "simulated": SimulatedTransport()},
        events=events,
        policies=policies,
        counters=counters,
        enforcer=enforcer,
        rate_gate=rate_gate,
        webhooks=WebhookRuntime.from_env(
            engine, clock, master_key=settings.master_key, env=env, public_url=settings.public_url
        ),
        audit_settings=audit_settings,
        auth_throttle=AuthThrottle(limit=settings.auth_failures_per_minute, window_seconds=60.0),
        sweeper=ThresholdSweeper(engine, policies, enforcer, ledger, clock),
        reconciler=reconciler,
        anomalies=AnomalyWatch(
            engine,
            settings.anomaly_params,
            policy_changed=enforcer.policy_changed,
            flush=ledger.flush,
        ),
        metrics=metrics,
        guard=guard,
        tickets=TicketDesk(
            engine, policies, enforcer, ledger, clock, public_url=settings.public_url
        ),
    )
    services.webhooks.worker.on_attempt = metrics.webhook_attempt
    return Gateway(services, auto_migrate=auto_migrate)


def app_from_env() -> Gateway:
    """Factory for ``uvicorn --factory`` and ``spendgate serve --workers N`` (which says
    where it listens in ``SPENDGATE_SERVE_ADDRESS``)."""
    host, _, port = os.environ.get("SPENDGATE_SERVE_ADDRESS", "").rpartition(":")
    return create_app(
        load_settings(
            demo=os.environ.get("SPENDGATE_DEMO") == "1",
            host=host or None,
            port=int(port) if port.isdigit() else None,
        )
    )
