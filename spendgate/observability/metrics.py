"""Counters and histograms of a running gateway, kept by prometheus-client.

One ``GatewayMetrics`` per process, made in ``create_app`` and handed to the proxy. A call
costs a few increments: labelled children are looked up once and cached, so the hot path
never formats a label set; gauges (ledger backlog, outbox depth) are not kept here but
computed when ``/metrics`` is scraped (``scrape.py``).

    proxied(app)              wraps the proxy: times each call and counts it, when it ends,
                              by route kind, status class and outcome
    identified(request_id)    the proxy names the call (every log line then carries it)
    booked(entry)             the call's ledger row: its status is the outcome, its cost
                              the spend of (org, team, model)
    refused(err)              the answer was an error: its code is the outcome, unless a
                              ledger row already gave one (``timeout``, ``upstream_error``)
    upstream(provider, secs)  the provider's time to answer (headers, or a whole body)
    webhook_attempt(kind, outcome) / backend_error(backend)

Outcomes: the ledger statuses (``ok``, ``upstream_error``, ``timeout``,
``client_cancelled``, ``incomplete``) or the error codes of ``spendgate.errors``
(``budget_exceeded``, ``rate_limit_exceeded``, ``insufficient_funds``,
``invalid_api_key``…) — both fixed sets.

Bounded spend labels: ``org_id``, ``team_id`` and ``model`` each keep the first
``SPEND_LABEL_VALUES`` distinct values this process sees; later values are ``other``, and
past ``SPEND_SERIES`` series every new combination is (``other``, ``other``, ``other``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.errors import SpendgateError
from spendgate.observability.logs import REQUEST_ID
from spendgate.proxy.routing import ENDPOINTS
from spendgate.proxy.wire import Receive, Scope, Send
from spendgate.store.ledger import LedgerEntry

log = logging.getLogger("spendgate.access")

OTHER = "other"
SPEND_LABEL_VALUES = 100
SPEND_SERIES = 1000
#: seconds; LLM calls run from milliseconds (a refusal) to minutes (a long stream)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_KINDS = {path: endpoint.kind for path, endpoint in ENDPOINTS.items()}
_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


class CallRecord:
    """What the proxy says about the call it is serving (filled in as it goes)."""

    __slots__ = ("booked", "outcome", "request_id", "status")

    def __init__(self) -> None:
        self.status = 200
        self.outcome = "ok"
        self.booked = False
        self.request_id: str | None = None


#: the call the proxy is serving in this task (set by ``MeteredProxy``)
CURRENT_CALL: ContextVar[CallRecord | None] = ContextVar("spendgate_call", default=None)


class FirstSeen:
    """Admits the first ``limit`` distinct values; every later one becomes ``other``."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def admit(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return OTHER


class GatewayMetrics:
    def __init__(self, monotonic: Callable[[], float]) -> None:
        self.monotonic = monotonic
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self._requests = Counter(
            "spendgate_requests",
            "Proxied calls by route kind, HTTP status class and outcome",
            ["kind", "status_class", "outcome"],
            registry=r,
        )
        self._latency = Histogram(
            "spendgate_request_duration_seconds",
            "Proxied calls: time from the request to the last byte of the answer",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._upstream = Histogram(
            "spendgate_upstream_duration_seconds",
            "Time the provider took to answer (its headers for a stream)",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._spend = Counter(
            "spendgate_spend_usd",
            "Spend recorded in the ledger, USD (bounded labels: see the README)",
            ["org_id", "team_id", "model"],
            registry=r,
        )
        self._webhooks = Counter(
            "spendgate_webhook_attempts",
            "Webhook delivery attempts by endpoint kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self._backend_errors = Counter(
            "spendgate_backend_errors",
            "Errors talking to Redis or the database",
            ["backend"],
            registry=r,
        )
        #: labelled children by label values, per metric (``labels()`` takes a lock)
        self._children: dict[int, dict[Any, Any]] = {
            id(m): {}
            for m in (
                self._requests,
                self._latency,
                self._upstream,
                self._webhooks,
                self._backend_errors,
            )
        }
        self._spend_values = (
            FirstSeen(SPEND_LABEL_VALUES),
            FirstSeen(SPEND_LABEL_VALUES),
            FirstSeen(SPEND_LABEL_VALUES),
        )
        self._spend_series: dict[tuple[str, str, str], Any] = {}
        self._spend_by_raw: dict[tuple[str, str, str], Any] = {}

    def _child(self, metric: Any, labels: Any) -> Any:
        """``metric.labels(*labels)``, cached (``labels`` a tuple, or one label's value)."""
        cache = self._children[id(metric)]
        child = cache.get(labels)
        if child is None:
            values = labels if isinstance(labels, tuple) else (labels,)
            child = cache[labels] = metric.labels(*values)
        return child

    # -- the proxy -------------------------------------------------------------------------
    def proxied(self, app: Callable[[Scope, Receive, Send], Any]) -> MeteredProxy:
        return MeteredProxy(app, self)

    def identified(self, request_id: str) -> None:
        REQUEST_ID.set(request_id)
        record = CURRENT_CALL.get()
        if record is not None:
            record.request_id = request_id

    def booked(self, entry: LedgerEntry) -> None:
        record = CURRENT_CALL.get()
        if record is not None:
            record.booked, record.outcome, record.status = True, entry.status, entry.http_status
        if entry.cost_nanos:
            self._spend_child(entry.org_id, entry.team_id or "none", entry.model).inc(
                entry.cost_nanos / 1e9
            )

    def refused(self, err: SpendgateError) -> None:
        record = CURRENT_CALL.get()
        if record is not None:
            record.status = err.status
            if not record.booked:
                record.outcome = err.code

    def relayed(self, status: int) -> None:
        """An answer passed on unbooked (a token count): the provider's status, and
        ``upstream_error`` as its outcome when that is an error."""
        record = CURRENT_CALL.get()
        if record is not None:
            record.status = status
            record.outcome = "ok" if status < 300 else "upstream_error"

    def upstream(self, provider: str, seconds: float) -> None:
        self._child(self._upstream, provider).observe(seconds)

    def finished(self, kind: str, record: CallRecord, seconds: float) -> None:
        status_class = _STATUS_CLASSES[min(record.status // 100, 5)]
        self._child(self._requests, (kind, status_class, record.outcome)).inc()
        self._child(self._latency, kind).observe(seconds)

    def _spend_child(self, org: str, team: str, model: str) -> Any:
        raw = (org, team, model)
        child = self._spend_by_raw.get(raw)
        if child is not None:
            return child
        orgs, teams, models = self._spend_values
        labels = (orgs.admit(org), teams.admit(team), models.admit(model))
        if labels not in self._spend_series and len(self._spend_series) >= SPEND_SERIES:
            labels = (OTHER, OTHER, OTHER)
        child = self._spend_series.get(labels)
        if child is None:
            child = self._spend_series[labels] = self._spend.labels(*labels)
        if len(self._spend_by_raw) < SPEND_SERIES * 10:  # the cache is bounded too
            self._spend_by_raw[raw] = child
        return child

    # -- elsewhere -------------------------------------------------------------------------
    def webhook_attempt(self, kind: str, outcome: str) -> None:
        self._child(self._webhooks, (kind, outcome)).inc()

    def backend_error(self, backend: str) -> None:
        self._child(self._backend_errors, backend).inc()

    def watch(self, engine: AsyncEngine) -> None:
        """Count the engine's database errors (a refused connection, a lost one, a failed
        statement) wherever they happen; constraint violations are answers, not errors."""

        def failed(context: ExceptionContext) -> None:
            # connect-phase errors (no connection) are counted once, by ``connect``
            if context.connection is not None and not isinstance(
                context.sqlalchemy_exception, IntegrityError
            ):
                self.backend_error("database")

        def connect(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
            try:
                return dialect.connect(*cargs, **cparams)
            except Exception:  # counted, and raised unchanged (translated by SQLAlchemy)
                self.backend_error("database")
                raise

        event.listen(engine.sync_engine, "handle_error", failed)
        event.listen(engine.sync_engine, "do_connect", connect)


class MeteredProxy:
    """ASGI wrapper of the proxy: the call's record and request id live in context
    variables for its duration; when it ends it is counted and timed (and, at DEBUG,
    logged as one ``request finished`` line)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any], metrics: GatewayMetrics):
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        kind = _KINDS.get(path) or ("models" if path.startswith("/v1/models") else OTHER)
        record = CallRecord()
        call_token = CURRENT_CALL.set(record)
        id_token = REQUEST_ID.set(None)
        metrics = self._metrics
        started = metrics.monotonic()
        try:
            await self._app(scope, receive, send)
        except Exception:
            record.status, record.outcome = 500, "internal_error"
            raise
        finally:
            seconds = metrics.monotonic() - started
            metrics.finished(kind, record, seconds)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "request finished",
                    extra={
                        "request_id": record.request_id,
                        "path": path,
                        "kind": kind,
                        "status": record.status,
                        "outcome": record.outcome,
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )
            REQUEST_ID.reset(id_token)
            CURRENT_CALL.reset(call_token)
