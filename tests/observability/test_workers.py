"""``/metrics`` of ``spendgate serve --workers 2`` (real processes, a private Redis): any
worker answers a scrape for both, and a Redis that stops answering is counted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spendgate.testing.fake_upstream import FakeUpstream, ServerHandle
from spendgate.testing.processes import PrivateRedis, StderrLines, free_port
from tests.conftest import start_gateway

MASTER = "sg-master-workers-test-0b7e"
MSG = [{"role": "user", "content": "hi"}]


def requests_total(url: str) -> float:
    """The sum of ``spendgate_requests_total`` in one scrape (a new connection each time)."""
    with httpx.Client() as fresh:
        text = fresh.get(f"{url}/metrics").text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "spendgate_requests_total"
    )


def test_every_worker_answers_for_all_of_them(tmp_path: Path) -> None:
    """Once both workers have started, calls over new connections, eight at a time, until
    both have served some: then every scrape, whichever worker answers it, counts all of
    them. The metrics directory is emptied of an earlier run's files at start."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"an earlier run's file")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with PrivateRedis() as redis:
        env = {
            **os.environ,
            "SPENDGATE_MASTER_KEY": MASTER,
            "SPENDGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'workers.db'}",
            "SPENDGATE_REDIS_URL": redis.url,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        cmd = [sys.executable, "-m", "spendgate", "serve", "--demo", "--workers", "2"]
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        log = StderrLines(proc)
        try:
            key = log.wait_for(r"sk-sg-[A-Za-z0-9_-]+", times=1)[0]
            # Both workers accept only once each has started: until then the first takes
            # every call, however many are sent (a loaded machine can start the second late).
            log.wait_for(r"Application startup complete", times=2)
            calls = 0
            deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
            while len(_pids(metrics_dir)) < 2:  # until both workers have served a call
                assert time.monotonic() < deadline, f"one worker took every call: {calls}"
                with ThreadPoolExecutor(8) as pool:
                    statuses = list(pool.map(lambda _: _call(url, key), range(8)))
                assert statuses == [200] * 8
                calls += 8
            assert [requests_total(url) for _ in range(8)] == [float(calls)] * 8
            assert "1" not in _pids(metrics_dir)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            log.thread.join(timeout=10)
    assert metrics_dir.exists()  # a directory the operator gave is left in place


def _call(url: str, key: str) -> int:
    """One chat call on a connection of its own."""
    with httpx.Client() as fresh:
        return fresh.post(
            f"{url}/v1/chat/completions",
            json={"model": "demo-small", "messages": MSG},
            headers={"authorization": f"Bearer {key}"},
        ).status_code


def _pids(directory: Path) -> set[str]:
    """The processes that have written metric files (``counter_<pid>.db``…)."""
    return {m.group(1) for p in directory.iterdir() if (m := re.search(r"_(\d+)\.db$", p.name))}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_redis_that_does_not_answer_is_counted(
    database_url: str, upstream: tuple[FakeUpstream, ServerHandle], tmp_path: Path
) -> None:
    """Redis stops: a call with a budget to check is refused (503 ``state_unavailable``),
    and the scrape counts the Redis error and the refusal."""
    with PrivateRedis() as redis:
        gw = start_gateway(
            database_url,
            upstream[1].url,
            tmp_path,
            demo=True,
            env_extra={"SPENDGATE_REDIS_URL": redis.url},
        )
        try:
            key = gw.create_key()
            gw.post(
                "/admin/budgets",
                {
                    "scope_type": "key",
                    "scope_id": key["id"],
                    "amount_usd": "100",
                    "hard_limit": True,
                    "period": "monthly",
                    "timezone": "UTC",
                },
            )
            redis.kill()
            answer = httpx.post(
                f"{gw.url}/v1/chat/completions",
                json={"model": "demo-small", "messages": MSG},
                headers={"authorization": f"Bearer {key['key']}"},
            )
            assert answer.status_code == 503, answer.text
            text = httpx.get(f"{gw.url}/metrics").text
        finally:
            gw.admin.close()
            gw.handle.stop()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("spendgate_backend_errors_total", (("backend", "redis"),))] == 1
    refused = (("kind", "chat"), ("outcome", "state_unavailable"), ("status_class", "5xx"))
    assert samples[("spendgate_requests_total", refused)] == 1
