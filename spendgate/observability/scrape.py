"""``GET /metrics``: the Prometheus text format, as raw ASGI.

What one scrape shows:

- the counters and histograms of ``metrics.py``: this process's, or, in multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR`` set: ``spendgate serve --workers N`` sets it for its
  workers), every worker's summed by prometheus-client;
- gauges read at scrape time by ``gauges()`` (ledger backlog of the answering process,
  webhook outbox depth from the database, the Redis circuit breaker and failure mode),
  never kept up to date per call.

With a token configured (``metrics_token``), a scrape needs ``Authorization: Bearer
<token>``; otherwise 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from spendgate.observability.metrics import GatewayMetrics
from spendgate.proxy.wire import Receive, Scope, Send, send_bytes

#: the classic text format every Prometheus server reads (what ``generate_latest`` writes)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: (name, help, value) of each gauge, read when scraped
Gauges = list[tuple[str, str, float]]


#: ``ledger_backlog`` field → (gauge, help)
BACKLOG = {
    "ledger_pending": ("spendgate_ledger_pending_rows", "Ledger rows not yet in the database"),
    "spool_bytes": ("spendgate_spool_bytes", "Spool bytes this process holds"),
    "spool_unwritten_bytes": (
        "spendgate_spool_unwritten_bytes",
        "Spool bytes not yet written to the database",
    ),
    "spool_orphan_bytes": ("spendgate_spool_orphan_bytes", "Spool bytes dead processes left"),
    "spool_foreign_bytes": (
        "spendgate_spool_foreign_bytes",
        "Spool bytes naming another database: never replayed here until adopted "
        "(spendgate db adopt-spool)",
    ),
    "spool_max_bytes": ("spendgate_spool_max_bytes", "Unwritten spool past which calls get 503"),
}


def backlog_gauges(backlog: Mapping[str, Any], full: bool, outbox_pending: int | None) -> Gauges:
    """The ledger backlog of this process (``app.ledger_backlog``), whether it is full,
    and the webhook deliveries pending in the database (None: it did not answer)."""
    gauges: Gauges = [(name, text, float(backlog[key])) for key, (name, text) in BACKLOG.items()]
    gauges.append(
        ("spendgate_ledger_backlog_full", "1 while new calls get 503 (spool full)", float(full))
    )
    if outbox_pending is not None:
        gauges.append(
            (
                "spendgate_webhook_outbox_pending",
                "Webhook deliveries pending in the database (the same on every replica)",
                float(outbox_pending),
            )
        )
    return gauges


def redis_gauges(status: Mapping[str, Any]) -> Gauges:
    """The Redis circuit breaker of this process (``FailoverGuard.status``)."""
    return [
        ("spendgate_redis_up", "1 while Redis is in use, 0 while it is unreachable",
         float(status["redis"] == "ok")),
        ("spendgate_redis_fail_open", "1 in fail-open mode, 0 in fail-closed mode",
         float(status["redis_failure_mode"] == "open")),
        ("spendgate_redis_down_seconds", "How long Redis has been unreachable (0: it is not)",
         float(status["redis_down_seconds"])),
        ("spendgate_redis_local_admissions", "Calls admitted on local counters in this outage",
         float(status["redis_local_admissions"])),
        ("spendgate_redis_buckets_behind",
         "Live counters not yet caught up with the ledger after Redis was unreachable",
         float(status["redis_buckets_behind"])),
    ]  # fmt: skip


class _Snapshot(Collector):
    def __init__(self, gauges: Gauges) -> None:
        self._gauges = gauges

    def collect(self) -> Iterable[Metric]:
        for name, help_text, value in self._gauges:
            yield GaugeMetricFamily(name, help_text, value=value)


def render(metrics: GatewayMetrics, gauges: Gauges, multiprocess_dir: str | None) -> bytes:
    """The exposition text: counters and histograms, then the scrape-time gauges."""
    if multiprocess_dir:
        counted = CollectorRegistry(auto_describe=False)
        MultiProcessCollector(counted, path=multiprocess_dir)  # type: ignore[no-untyped-call]
    else:
        counted = metrics.registry
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Snapshot(gauges))
    return generate_latest(counted) + generate_latest(snapshot)


async def _refuse(
    send: Send, status: int, code: str, message: str, headers: dict[str, str]
) -> None:
    """An error in the admin API's format."""
    body = orjson.dumps({"error": {"message": message, "code": code, "param": None}})
    await send_bytes(send, status, body, {"content-type": "application/json", **headers})


class MetricsEndpoint:
    def __init__(
        self,
        metrics: GatewayMetrics,
        gauges: Callable[[], Awaitable[Gauges]],
        *,
        token: str | None,
        multiprocess_dir: str | None,
    ) -> None:
        self._metrics = metrics
        self._gauges = gauges
        self._token = token.encode() if token else None
        self._multiprocess_dir = multiprocess_dir

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None:
            return True
        presented = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, credential = presented.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), self._token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "GET":
            await _refuse(send, 405, "method_not_allowed", "GET only", {"allow": "GET"})
            return
        if not self._authorized(scope):
            message = "/metrics needs Authorization: Bearer <metrics token>"
            await _refuse(send, 401, "invalid_token", message, {"www-authenticate": "Bearer"})
            return
        body = render(self._metrics, await self._gauges(), self._multiprocess_dir)
        await send_bytes(send, 200, body, {"content-type": CONTENT_TYPE})
