"""``GET /metrics`` scraped over HTTP after real SDK calls, refusals of every kind and a
failing webhook receiver; values read back with prometheus-client's own text parser.

The gateway's clock is frozen, so every latency is 0 and lands in the first bucket."""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from spendgate.core.clock import FrozenClock
from spendgate.observability.metrics import OTHER, SPEND_LABEL_VALUES, SPEND_SERIES, GatewayMetrics
from spendgate.store.database import create_engine
from spendgate.store.ledger import LedgerEntry
from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle, serve_in_thread
from spendgate.testing.webhook_receiver import Receiver
from tests.conftest import RunningGateway, start_gateway

MSG = [{"role": "user", "content": "hi"}]
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def named(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def wait_for(condition: Any, what: str, timeout: float = 120.0) -> None:  # a hang guard
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@sqlite_only
def test_scrape_counts_calls_refusals_spend_and_a_failed_webhook(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """Five served calls, six refused for six reasons, one upstream error, a model list and
    a webhook receiver answering 503: every counter has exactly the value those imply."""
    failing = Receiver(status=503)
    receiver = serve_in_thread(failing)
    try:
        gateway.post(
            "/admin/webhooks",
            {"url": f"{receiver.url}/hook", "event_types": ["wallet.depleted"]},
        )
        team = gateway.post("/admin/teams", {"name": "search", "org_id": _org(gateway)})
        ok = gateway.create_key(org_id=team["org_id"], team_id=team["id"])
        client = sdk(gateway, ok["key"])
        for _ in range(3):
            client.chat.completions.create(model="demo-small", messages=MSG)
        for _ in client.chat.completions.create(model="demo-large", messages=MSG, stream=True):
            pass
        anthropic.Anthropic(base_url=gateway.url, api_key=ok["key"], max_retries=0).messages.create(
            model="demo-small", max_tokens=20, messages=MSG
        )
        client.models.list()
        _refusals(gateway, fake, client, team["org_id"])
        wait_for(
            lambda: (
                value(
                    scrape(gateway.url),
                    "spendgate_webhook_attempts_total",
                    kind="webhook",
                    outcome="retrying",
                )
                == 1
            ),
            "the failed delivery attempt",
        )
    finally:
        receiver.stop()

    samples = scrape(gateway.url)
    requests = "spendgate_requests_total"
    assert named(samples, requests) == {
        frozenset({("kind", "chat"), ("status_class", "2xx"), ("outcome", "ok")}): 5,
        frozenset({("kind", "message"), ("status_class", "2xx"), ("outcome", "ok")}): 1,
        frozenset({("kind", "models"), ("status_class", "2xx"), ("outcome", "ok")}): 1,
        frozenset({("kind", "chat"), ("status_class", "4xx"), ("outcome", "invalid_api_key")}): 1,
        frozenset({("kind", "chat"), ("status_class", "4xx"), ("outcome", "budget_exceeded")}): 1,
        frozenset(
            {("kind", "chat"), ("status_class", "4xx"), ("outcome", "insufficient_funds")}
        ): 1,
        frozenset(
            {("kind", "chat"), ("status_class", "4xx"), ("outcome", "rate_limit_exceeded")}
        ): 1,
        frozenset({("kind", "chat"), ("status_class", "4xx"), ("outcome", "model_not_found")}): 1,
        frozenset({("kind", "chat"), ("status_class", "5xx"), ("outcome", "upstream_error")}): 1,
    }
    latency = "spendgate_request_duration_seconds"
    assert value(samples, f"{latency}_count", kind="chat") == 11
    assert value(samples, f"{latency}_bucket", kind="chat", le="0.005") == 11  # frozen clock
    assert value(samples, f"{latency}_count", kind="message") == 1
    upstream = "spendgate_upstream_duration_seconds_count"
    assert value(samples, upstream, provider="simulated") == 6  # 5 served + 1 rate limited ok
    assert value(samples, upstream, provider="openai") == 1  # the upstream error

    spend: dict[frozenset[tuple[str, str]], int] = defaultdict(int)
    for row in gateway.ledger():
        if row["cost_nanos"]:
            labels = {"org_id": row["org_id"], "team_id": row["team_id"] or "none"}
            spend[frozenset({**labels, "model": row["model"]}.items())] += row["cost_nanos"]
    scraped = named(samples, "spendgate_spend_usd_total")
    assert scraped.keys() == spend.keys() and len(spend) == 3  # 2 models on team, 1 without
    for labels, nanos in spend.items():
        assert scraped[labels] == pytest.approx(nanos / 1e9, rel=1e-12)

    assert (
        value(samples, "spendgate_webhook_attempts_total", kind="webhook", outcome="retrying") == 1
    )
    assert value(samples, "spendgate_webhook_outbox_pending") == 1
    assert value(samples, "spendgate_ledger_backlog_full") == 0
    assert value(samples, "spendgate_spool_max_bytes") == 1024**3
    assert ("spendgate_ledger_pending_rows", frozenset()) in samples
    assert value(samples, "spendgate_backend_errors_total", backend="redis") == 0


def _org(gw: RunningGateway) -> str:
    return str(gw.post("/admin/orgs", {"name": "acme"})["id"])


def _refusals(gw: RunningGateway, fake: FakeUpstream, served: openai.OpenAI, org: str) -> None:
    """One refusal for each reason, and one call the provider fails."""
    with pytest.raises(openai.AuthenticationError):
        sdk(gw, "sk-sg-not-a-key").chat.completions.create(model="demo-small", messages=MSG)
    with pytest.raises(openai.NotFoundError):
        served.chat.completions.create(model="no-such-model", messages=MSG)

    capped = gw.create_key(org_id=org)
    gw.post(
        "/admin/budgets",
        {
            "scope_type": "key",
            "scope_id": capped["id"],
            "amount_usd": "0.000001",
            "hard_limit": True,
            "period": "monthly",
            "timezone": "UTC",
        },
    )
    with pytest.raises(openai.RateLimitError) as over_budget:
        sdk(gw, capped["key"]).chat.completions.create(model="demo-small", messages=MSG)
    assert isinstance(over_budget.value.body, dict)
    assert over_budget.value.body["code"] == "budget_exceeded"

    broke = gw.create_key(org_id=org)
    gw.post(
        "/admin/wallets",
        {"scope_type": "key", "scope_id": broke["id"], "initial_topup_usd": "0.000001"},
    )
    with pytest.raises(openai.APIStatusError) as no_funds:
        sdk(gw, broke["key"]).chat.completions.create(model="demo-small", messages=MSG)
    assert no_funds.value.status_code == 402

    limited = gw.create_key(org_id=org)
    gw.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": limited["id"], "model": "*", "rpm": 1},
    )
    sdk(gw, limited["key"]).chat.completions.create(model="demo-small", messages=MSG)
    with pytest.raises(openai.RateLimitError):
        sdk(gw, limited["key"]).chat.completions.create(model="demo-small", messages=MSG)

    fake.fail_status, fake.fail_count = 500, 1
    with pytest.raises(openai.InternalServerError):
        served.chat.completions.create(model="gpt-4o-mini", messages=MSG)


@sqlite_only
def test_metrics_token_is_required_when_set(
    database_url: str, upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> None:
    """With ``SPENDGATE_METRICS_TOKEN`` a scrape without it, or with another, gets 401; with
    it, the metrics. Anything but GET is 405."""
    gw = start_gateway(
        database_url,
        upstream[1].url,
        tmp_path,
        demo=True,
        env_extra={"SPENDGATE_METRICS_TOKEN": "scrape-me-7f3a"},
    )
    try:
        assert httpx.get(f"{gw.url}/metrics").status_code == 401
        wrong = httpx.get(f"{gw.url}/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert wrong.json()["error"]["code"] == "invalid_token"
        assert ("spendgate_spool_bytes", frozenset()) in scrape(gw.url, token="scrape-me-7f3a")
        assert httpx.post(f"{gw.url}/metrics").status_code == 405
    finally:
        gw.admin.close()
        gw.handle.stop()


def _entry(org: str, team: str | None, model: str, nanos: int) -> LedgerEntry:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    return LedgerEntry(
        "req_1", org, team, None, None, "key_1", [], "openai", model, model, "chat", False,
        "ok", 200, 1, 1, 0, 0, 0, nanos, False, False, 1, at, at,
    )  # fmt: skip


def test_spend_labels_are_bounded_first_seen_then_other() -> None:
    """Each spend label keeps its first SPEND_LABEL_VALUES values; the rest are ``other``;
    past SPEND_SERIES series, new combinations all share (other, other, other). No spend
    is lost on the way: the total is what was booked."""
    metrics = GatewayMetrics(FrozenClock(datetime(2026, 3, 1, tzinfo=UTC)).monotonic)
    for n in range(SPEND_LABEL_VALUES + 5):
        metrics.booked(_entry(f"org_{n}", None, "gpt-4o", 1_000_000_000))
    series = _spend_series(metrics)
    assert len(series) == SPEND_LABEL_VALUES + 1
    assert series[(OTHER, "none", "gpt-4o")] == 5.0
    assert series[("org_0", "none", "gpt-4o")] == 1.0

    for n in range(SPEND_SERIES + 50):  # team × model combinations of the first org
        metrics.booked(_entry("org_0", f"team_{n % 90}", f"model_{n // 90}", 1_000_000_000))
    series = _spend_series(metrics)
    assert len(series) == SPEND_SERIES + 1
    assert series[(OTHER, OTHER, OTHER)] > 0
    assert sum(series.values()) == SPEND_LABEL_VALUES + 5 + SPEND_SERIES + 50


def _spend_series(metrics: GatewayMetrics) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "spendgate_spend_usd_total":
                labels = sample.labels
                out[(labels["org_id"], labels["team_id"], labels["model"])] = sample.value
    return out


async def test_database_errors_are_counted_where_they_happen(tmp_path: Path) -> None:
    """A database that refuses connections counts one error per failed attempt; a unique
    constraint violation is an answer, not an error."""
    metrics = GatewayMetrics(time.monotonic)
    engine = create_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    metrics.watch(engine)
    for _ in range(2):
        with pytest.raises(OSError):
            async with engine.connect():
                pass
    await engine.dispose()
    assert _errors(metrics) == {"database": 2.0}

    local = create_engine(f"sqlite:///{tmp_path / 'errors.db'}")
    metrics.watch(local)
    async with local.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    with pytest.raises(sa.exc.IntegrityError):
        async with local.begin() as conn:
            await conn.execute(sa.text("INSERT INTO t VALUES (1)"))
    with pytest.raises(sa.exc.OperationalError):
        async with local.connect() as conn:
            await conn.execute(sa.text("SELECT * FROM no_such_table"))
    await local.dispose()
    assert _errors(metrics) == {"database": 3.0}


def _errors(metrics: GatewayMetrics) -> dict[str, float]:
    return {
        s.labels["backend"]: s.value
        for family in metrics.registry.collect()
        for s in family.samples
        if s.name == "spendgate_backend_errors_total"
    }


@sqlite_only
def test_token_counts_are_counted_by_their_own_kind_and_the_providers_status(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A token count passed through is a request of its own kind (``count_tokens``,
    ``input_tokens``) at the provider's status: a provider error it relays is not "ok"."""
    key = gateway.create_key()["key"]
    count = {"model": "claude-sonnet-4-5", "messages": MSG}
    headers = {"x-api-key": key}
    assert httpx.post(f"{gateway.url}/v1/messages/count_tokens", json=count, headers=headers)
    fake.fail_status, fake.fail_count = 529, 1
    overloaded = httpx.post(f"{gateway.url}/v1/messages/count_tokens", json=count, headers=headers)
    assert overloaded.status_code == 529
    sdk(gateway, key).responses.input_tokens.count(model="gpt-4o", input="hi")
    assert named(scrape(gateway.url), "spendgate_requests_total") == {
        frozenset({("kind", "count_tokens"), ("status_class", "2xx"), ("outcome", "ok")}): 1,
        frozenset(
            {("kind", "count_tokens"), ("status_class", "5xx"), ("outcome", "upstream_error")}
        ): 1,
        frozenset({("kind", "input_tokens"), ("status_class", "2xx"), ("outcome", "ok")}): 1,
    }
