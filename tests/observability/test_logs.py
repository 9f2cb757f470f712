"""Structured logs: the formatters on their own, the settings that choose them, and a real
``spendgate serve`` process whose every stderr line must parse as JSON."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from spendgate.errors import ConfigError
from spendgate.observability.logs import REQUEST_ID, JsonFormatter, TextFormatter, logging_config
from spendgate.settings import load_settings
from spendgate.testing.processes import free_port

MASTER = "sg-master-logs-test-5d1c"
MSG = [{"role": "user", "content": "hi"}]


def _record(message: str, *args: Any, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("spendgate.proxy", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_carry_the_request_id_and_extra_fields() -> None:
    """One JSON object: fixed fields, the request id of the context, ``extra`` fields (which
    never replace a fixed one); outside a request there is no request id."""
    token = REQUEST_ID.set("req_abc")
    try:
        line = JsonFormatter().format(_record("db %s down", "x", model="gpt-4o", level="no"))
    finally:
        REQUEST_ID.reset(token)
    parsed = json.loads(line)
    assert parsed["message"] == "db x down" and parsed["level"] == "WARNING"
    assert parsed["logger"] == "spendgate.proxy" and parsed["request_id"] == "req_abc"
    assert parsed["model"] == "gpt-4o" and parsed["timestamp"].endswith("Z")
    assert "request_id" not in json.loads(JsonFormatter().format(_record("idle")))
    assert "\n" not in line


def test_json_lines_keep_a_traceback_on_one_line() -> None:
    """An exception is a field of the same object, not lines of its own."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "", 1, "failed", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exception"]


def test_text_lines_name_the_request() -> None:
    """The text format: timestamp, level, logger, [request id], message."""
    text = TextFormatter().format(_record("hello", request_id="req_9"))
    assert text.endswith("WARNING spendgate.proxy [req_9] hello")


def test_level_and_format_from_config_then_environment(tmp_path: Path) -> None:
    """``[gateway] log_level/log_format``, overridden by ``SPENDGATE_LOG_LEVEL`` and
    ``SPENDGATE_LOG_FORMAT``; anything else is a configuration error naming the field."""
    config = tmp_path / "c.toml"
    config.write_text('[gateway]\nlog_level = "WARNING"\nlog_format = "json"\n')
    settings = load_settings(config_path=str(config), env={})
    assert (settings.log_level, settings.log_format) == ("warning", "json")
    env = {"SPENDGATE_LOG_LEVEL": "debug", "SPENDGATE_LOG_FORMAT": "text"}
    settings = load_settings(config_path=str(config), env=env)
    assert (settings.log_level, settings.log_format) == ("debug", "text")
    with pytest.raises(ConfigError, match="log_level"):
        load_settings(env={"SPENDGATE_LOG_LEVEL": "loud"})
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(env={"SPENDGATE_LOG_FORMAT": "xml"})
    config = logging_config("debug", "json")
    assert config["loggers"]["spendgate"]["level"] == logging.DEBUG
    assert config["root"]["level"] == logging.WARNING  # other libraries stay quiet


@pytest.fixture
def served_json(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``spendgate serve --demo`` logging JSON at DEBUG, stderr and stdout kept apart."""
    port = free_port()
    env = {
        **os.environ,
        "SPENDGATE_MASTER_KEY": MASTER,
        "SPENDGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'logs.db'}",
        "SPENDGATE_LOG_FORMAT": "json",
        "SPENDGATE_LOG_LEVEL": "debug",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendgate", "serve", "--demo", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "spendgate serve exited before it was ready"
        assert time.monotonic() < deadline, "spendgate serve did not become ready"
        time.sleep(0.1)
    yield url, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_served_gateway_writes_only_json_lines_with_request_ids(
    served_json: tuple[str, subprocess.Popen[bytes]],
) -> None:
    """Every stderr line of a real ``spendgate serve`` parses as a JSON object with the fixed
    fields; a served call, a refused call and an admin call each have a line carrying their
    request id (an admin call's ``request finished`` with kind, outcome and duration_ms);
    neither the master key nor the key made over the admin API is in any line."""
    url, proc = served_json
    admin = httpx.Client(base_url=url, headers={"authorization": f"Bearer {MASTER}"})
    org = admin.post("/admin/orgs", json={"name": "logs"}, headers={"x-request-id": "req-admin-1"})
    assert org.status_code == 201
    bad = admin.post("/admin/orgs", json={}, headers={"x-request-id": "req-admin-2"})
    assert bad.status_code == 422
    made = admin.post("/admin/keys", json={"name": "k", "org_id": org.json()["id"]}).json()
    client = openai.OpenAI(base_url=url + "/v1", api_key=made["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="demo-small", messages=MSG)
    served_id = raw.headers["x-request-id"]
    refused = httpx.post(
        url + "/v1/chat/completions",
        json={"model": "demo-small", "messages": MSG},
        headers={"authorization": "Bearer sk-sg-nope"},
    )
    assert refused.status_code == 401
    refused_id = refused.headers["x-request-id"]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)

    assert out == b""
    lines = [json.loads(line) for line in err.decode().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    assert all({"timestamp", "level", "logger", "message"} <= line.keys() for line in lines)
    by_request = {line.get("request_id"): line for line in lines if "request_id" in line}
    assert by_request[served_id]["status"] == 200 and by_request[served_id]["outcome"] == "ok"
    assert by_request[refused_id]["outcome"] == "invalid_api_key"
    assert by_request["req-admin-1"]["path"] == "/admin/orgs"
    # the admin API's line has the fields the README lists, as the proxy's has
    finished = {k: by_request["req-admin-1"][k] for k in ("kind", "status", "outcome")}
    assert finished == {"kind": "admin", "status": 201, "outcome": "ok"}
    assert by_request["req-admin-2"]["outcome"] == "validation_error"
    assert all(by_request[r]["duration_ms"] >= 0 for r in ("req-admin-1", "req-admin-2"))
    assert any(line["message"] == "Application shutdown complete." for line in lines)
    text = err.decode()
    assert MASTER not in text and made["key"] not in text
    demo_key_lines = [line for line in lines if "sk-sg-" in line["message"]]
    assert len(demo_key_lines) == 1 and "shown once" in demo_key_lines[0]["message"]
