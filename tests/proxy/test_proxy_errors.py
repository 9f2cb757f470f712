"""Bad input and failing upstreams: clear 4xx/5xx in the route's format, nothing billed
(but a timeout after the provider had the request: ``test_timeout_billing``)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from spendgate.core.money import format_usd
from spendgate.testing.fake_upstream import FakeUpstream, serve_in_thread
from spendgate.testing.processes import free_port
from tests.conftest import UPSTREAM_SECRETS, RunningGateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def post(gw: RunningGateway, path: str, key: str | None, **kwargs: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))  # type: ignore[arg-type]
    return httpx.post(gw.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_unknown_revoked_and_expired_keys_get_401(gateway: RunningGateway) -> None:
    """401 invalid_api_key in the OpenAI format; the Anthropic route answers in its own."""
    expires = gateway.clock.now().replace(hour=16).isoformat()
    key = gateway.create_key(expires_at=expires)
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(
            base_url=gateway.url + "/v1", api_key="sk-sg-nope", max_retries=0
        ).chat.completions.create(**CHAT)
    assert info.value.code == "invalid_api_key"
    assert post(gateway, "/v1/chat/completions", key["key"], json=CHAT).status_code == 200
    gateway.clock.advance(3600)
    expired = post(gateway, "/v1/chat/completions", key["key"], json=CHAT)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]
    second = gateway.create_key()
    gateway.post(f"/admin/keys/{second['id']}/revoke", {}, status=200)
    with pytest.raises(anthropic.AuthenticationError) as ainfo:
        anthropic.Anthropic(
            base_url=gateway.url, api_key=second["key"], max_retries=0
        ).messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    body = ainfo.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert len(gateway.ledger()) == 1


def test_rotation_kills_old_secret(gateway: RunningGateway) -> None:
    """After rotate, the new secret works and the old one is refused at once."""
    key = gateway.create_key()
    assert post(gateway, "/v1/chat/completions", key["key"], json=CHAT).status_code == 200
    rotated = gateway.post(f"/admin/keys/{key['id']}/rotate", {}, status=200)
    assert rotated["key"] != key["key"] and rotated["id"] == key["id"]
    assert post(gateway, "/v1/chat/completions", key["key"], json=CHAT).status_code == 401
    assert post(gateway, "/v1/chat/completions", rotated["key"], json=CHAT).status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": []}', 400, "model"),
        (b'{"model": "gpt-9-imaginary", "messages": []}', 404, "model"),
        (b'{"model": "gpt-4o-mini", "stream": "yes"}', 400, "stream"),
        (b"", 400, None),
    ],
)
def test_bad_request_bodies(
    gateway: RunningGateway, body: bytes, status: int, param: str | None
) -> None:
    """Malformed JSON, missing or unknown model: a clear 4xx, never a 500, nothing billed."""
    key = gateway.create_key()
    response = post(
        gateway,
        "/v1/chat/completions",
        key["key"],
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["param"] == param
    assert gateway.ledger() == []


def test_oversized_body_is_413(gateway: RunningGateway) -> None:
    """A body over the limit is refused before it is read whole."""
    key = gateway.create_key()
    huge = b'{"model": "gpt-4o-mini", "pad": "' + b"x" * (11 * 1024 * 1024) + b'"}'
    response = post(gateway, "/v1/chat/completions", key["key"], content=huge)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert gateway.ledger() == []


def test_anthropic_route_refuses_openai_model(gateway: RunningGateway) -> None:
    """Asking /v1/messages for an OpenAI-served model is a 400 that says where to go."""
    key = gateway.create_key()
    response = post(
        gateway,
        "/v1/messages",
        key["key"],
        json={"model": "gpt-4o", "max_tokens": 5, "messages": []},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "/v1/chat/completions" in response.json()["error"]["message"]


def test_request_tags_need_permission(gateway: RunningGateway) -> None:
    """x-spendgate-tags adds tags only for keys that allow it; others get 403."""
    plain = gateway.create_key(tags=["team-a"])
    denied = post(
        gateway,
        "/v1/chat/completions",
        plain["key"],
        json=CHAT,
        headers={"x-spendgate-tags": "feature:search"},
    )
    assert denied.status_code == 403
    allowed = gateway.create_key(tags=["team-a"], allow_request_tags=True)
    ok = post(
        gateway,
        "/v1/chat/completions",
        allowed["key"],
        json=CHAT,
        headers={"x-spendgate-tags": "feature:search, team-a"},
    )
    assert ok.status_code == 200
    bad = post(
        gateway,
        "/v1/chat/completions",
        allowed["key"],
        json=CHAT,
        headers={"x-spendgate-tags": "has space"},
    )
    assert bad.status_code == 400
    [row] = gateway.ledger()
    assert row["tags"] == ["team-a", "feature:search"]


def test_upstream_error_passes_through_unbilled(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A provider 500 reaches the client as is; the ledger records it at zero cost."""
    key = gateway.create_key()
    fake.fail_status, fake.fail_count = 500, 1
    response = post(gateway, "/v1/chat/completions", key["key"], json=CHAT)
    assert response.status_code == 500
    assert response.headers["x-spendgate-cost-usd"] == "0.00"
    [row] = gateway.ledger()
    assert row["status"] == "upstream_error" and row["cost_nanos"] == 0
    assert row["http_status"] == 500 and row["input_tokens"] == 0


def test_a_provider_refusing_the_gateways_key_is_a_502_that_shows_none_of_it(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A provider 401 is about spendgate's provider key, not the client's virtual key:
    passed through, it told the client its own key was wrong (the SDKs raise
    AuthenticationError) and showed it the start and end of the provider key (OpenAI's
    message does). It is a 502 ``upstream_auth_failed`` instead, not billed, on both
    wires."""
    key = gateway.create_key()
    fake.required_api_key = "a-key-spendgate-does-not-have"
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(**CHAT)
    assert info.value.status_code == 502 and info.value.code == "upstream_auth_failed"
    assert not isinstance(info.value, openai.AuthenticationError)
    shown = info.value.response.text  # the fake, like OpenAI, masks all but both ends
    assert "*" not in shown and UPSTREAM_SECRETS["OPENAI_KEY"][-4:] not in shown
    assert info.value.response.headers["x-should-retry"] == "false"
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as ainfo:
        claude.messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    body = ainfo.value.body
    assert ainfo.value.status_code == 502 and isinstance(body, dict)
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    rows = gateway.ledger()
    assert [(r["status"], r["http_status"], r["cost_nanos"]) for r in rows] == [
        ("upstream_error", 502, 0)
    ] * 2


def test_a_provider_429_keeps_its_retry_advice(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """A provider's 429 or 529 is passed through with the headers the SDKs pace their
    retries by (``retry-after``, ``retry-after-ms``, ``x-should-retry``), not without them."""
    key = gateway.create_key()
    advice = {"retry-after": "7", "retry-after-ms": "6500", "x-should-retry": "true"}
    fake.fail_status, fake.fail_count, fake.fail_headers = 429, 1, advice
    response = post(gateway, "/v1/chat/completions", key["key"], json=CHAT)
    assert response.status_code == 429
    assert {k: response.headers.get(k) for k in advice} == advice
    fake.fail_status, fake.fail_count = 529, 1
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 529
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Simulated upstream failure (529)."},
    }


def test_a_provider_redirect_is_not_followed_with_the_provider_key(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A provider answering 307 elsewhere would have the call sent again, with its
    ``x-api-key`` / ``api-key`` (which HTTP clients only drop for ``Authorization``), to a
    host that is not the provider. spendgate does not follow: 502, not billed, and the
    other host sees nothing."""
    elsewhere = FakeUpstream()
    handle = serve_in_thread(elsewhere)
    try:
        fake.redirect_to = handle.url
        key = gateway.create_key()
        claude = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as info:
            claude.messages.create(
                model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.status_code == 502
        oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
        with pytest.raises(openai.APIStatusError) as oinfo:
            oai.chat.completions.create(**{**CHAT, "model": "azure-gpt-4o"})
        assert oinfo.value.status_code == 502 and oinfo.value.code == "upstream_unavailable"
        assert "redirect" in oinfo.value.message
        assert elsewhere.requests == []
        assert not any(s in oinfo.value.response.text for s in UPSTREAM_SECRETS.values())
        rows = gateway.ledger()
        assert [(r["status"], r["cost_nanos"]) for r in rows] == [("upstream_error", 0)] * 2
    finally:
        handle.stop()


def test_upstream_timeout_is_504(gateway: RunningGateway, fake: FakeUpstream) -> None:
    """An upstream slower than the provider timeout (5 s here) is a 504; the provider had
    the request (and bills it), so it is billed at its worst case, estimated
    (``test_timeout_billing`` has the figures)."""
    key = gateway.create_key()
    fake.delay_seconds = 6.0
    response = post(gateway, "/v1/chat/completions", key["key"], json=CHAT)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    [row] = gateway.ledger()
    assert row["status"] == "timeout" and row["usage_estimated"] is True
    assert row["cost_nanos"] > 0
    assert response.headers["x-spendgate-cost-usd"] == format_usd(row["cost_nanos"])


def test_upstream_down_is_502(gateway: RunningGateway, tmp_path: object) -> None:
    """A provider that refuses connections gives 502 with a clear message."""
    from tests.conftest import start_gateway

    dead_port = free_port()  # nobody listens there, nor will: no worker picks it again
    other = start_gateway(
        gateway.settings.database_url.replace("spendgate.db", "down.db"),
        f"http://127.0.0.1:{dead_port}",
        tmp_path,
        demo=False,
    )  # type: ignore[arg-type]
    try:
        key = other.create_key()
        response = post(other, "/v1/chat/completions", key["key"], json=CHAT)
        assert response.status_code == 502
        message = response.json()["error"]["message"]
        assert message.startswith("the upstream provider could not be reached (")
        # the provider's address stays in the gateway's log, not in the client's answer
        assert str(dead_port) not in response.text and "127.0.0.1" not in response.text
        [row] = other.ledger()
        assert row["cost_nanos"] == 0 and row["status"] == "upstream_error"
    finally:
        other.admin.close()
        other.handle.stop()


def test_a_garbled_provider_answer_leaves_the_provider_key_out_of_the_log(
    gateway: RunningGateway, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An answer the HTTP client cannot parse fails with an error that holds the whole
    request (headers and the provider key among them): 502 for the client, and the log
    says what broke without the key."""
    from tests.conftest import start_gateway

    caplog.set_level(logging.DEBUG)
    garbled = b"HTTP/1.1 200 OK\r\nContent-Type application/json\r\nContent-Length: 2\r\n\r\n{}"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer() -> None:
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = server.accept()
                    with conn:
                        conn.recv(65536)
                        conn.sendall(garbled)

        threading.Thread(target=answer, daemon=True).start()
        port = server.getsockname()[1]
        other = start_gateway(
            gateway.settings.database_url.replace("spendgate.db", "garbled.db"),
            f"http://127.0.0.1:{port}",
            tmp_path,
        )
        try:
            key = other.create_key()
            for path, body in [
                ("/v1/chat/completions", CHAT),
                ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}),
            ]:
                response = post(other, path, key["key"], json=body)
                assert response.status_code == 502, response.text
        finally:
            other.admin.close()
            other.handle.stop()
    assert "ClientResponseError" in caplog.text and "Invalid header" in caplog.text
    leaked = [s for s in UPSTREAM_SECRETS.values() if s in caplog.text]
    assert leaked == []


def test_abandoned_stream_is_billed_for_what_upstream_produced(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """The client hangs up after two events; spendgate reads on and bills the real usage."""
    key = gateway.create_key()
    fake.stream_delay_seconds = 0.01
    body = {**CHAT, "stream": True}
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {key['key']}"},
        ) as response,
    ):
        lines = response.iter_lines()
        got = [next(lines) for _ in range(3)]
    assert any(line.startswith("data: ") for line in got)
    deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
    rows = gateway.ledger()
    while not rows and time.monotonic() < deadline:
        threading.Event().wait(0.05)
        rows = gateway.ledger()
    [row] = rows
    assert row["status"] == "client_cancelled"
    assert not row["usage_estimated"] and row["output_tokens"] > 1 and row["cost_nanos"] > 0


def test_stream_cut_by_upstream_is_estimated_and_flagged(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """An upstream that dies mid-stream: billed on an estimate, flagged as such."""
    key = gateway.create_key()
    fake.drop_stream_after = 4
    with (
        httpx.Client(timeout=30) as http,
        http.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            json={**CHAT, "stream": True},
            headers={"authorization": f"Bearer {key['key']}"},
        ) as response,
    ):
        list(response.iter_lines())
    [row] = gateway.ledger()
    assert row["status"] == "incomplete" and row["usage_estimated"] is True
    assert row["output_tokens"] >= 3 and row["cost_nanos"] > 0


def test_anthropic_stream_cut_after_message_start_bills_the_output_it_streamed(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """message_start carries the input and a placeholder ``output_tokens: 1``; the real
    output comes in message_delta. A stream cut before it is billed for the output the
    client was sent (one token an event, at least), flagged as an estimate, not for 1."""
    key = gateway.create_key()
    fake.drop_stream_after = 30  # message_start, content_block_start, ping, 27 deltas
    sdk = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    deltas = 0
    with contextlib.suppress(anthropic.APIError):
        for event in sdk.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=200,
            stream=True,
            messages=[{"role": "user", "content": "tell me a long story"}],
        ):
            deltas += event.type == "content_block_delta"
    assert deltas == 27
    [row] = gateway.ledger()
    assert row["status"] == "incomplete" and row["usage_estimated"] is True
    assert row["output_tokens"] >= deltas
    assert row["input_tokens"] > 0 and row["cost_nanos"] > 0


def test_a_cut_stream_ends_with_an_error_the_sdks_raise(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """When the provider's stream breaks, the client is told in its wire's own stream
    error (OpenAI ``data: {"error": …}``, Anthropic ``event: error``), so the SDKs raise
    instead of handing over a truncated answer as if it were whole."""
    key = gateway.create_key()
    fake.drop_stream_after = 4
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    with pytest.raises(openai.APIError, match="upstream stream broke"):
        list(oai.chat.completions.create(**CHAT, stream=True))
    with pytest.raises(openai.APIError, match="upstream stream broke"):
        list(oai.responses.create(model="gpt-4o", input="hi", stream=True))
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0)
    with pytest.raises(anthropic.APIStatusError, match="upstream stream broke") as info:
        list(
            claude.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=50,
                stream=True,
                messages=[{"role": "user", "content": "hi"}],
            )
        )
    assert info.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": info.value.body["error"]["message"]},  # type: ignore[index]
    }
    rows = gateway.ledger()
    assert [r["status"] for r in rows] == ["incomplete"] * 3


def test_unreachable_redis_fails_closed_with_503(gateway: RunningGateway, tmp_path: object) -> None:
    """With budgets to enforce and Redis down, calls get a clear 503, not a 500 or free spend."""
    from tests.conftest import start_gateway

    db = gateway.settings.database_url
    if not db.startswith("postgresql"):
        db = db.replace("spendgate.db", "redisdown.db")
    other = start_gateway(
        db,
        gateway.url,
        tmp_path,
        demo=True,  # type: ignore[arg-type]
        env_extra={"SPENDGATE_REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    try:
        key = other.create_key()
        other.post(
            "/admin/budgets",
            {"scope_type": "key", "scope_id": key["id"], "amount_usd": "5", "hard_limit": True},
        )
        response = post(
            other, "/v1/chat/completions", key["key"], json={**CHAT, "model": "demo-small"}
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "state_unavailable"
        assert response.headers["retry-after"] == "5"
        assert other.ledger() == []
    finally:
        other.admin.close()
        other.handle.stop()


def test_a_failing_redis_script_fails_closed_and_says_so(
    gateway: RunningGateway, tmp_path: object
) -> None:
    """Redis reachable but refusing the budget script (here: a counter that is no longer a
    number): 503, fail closed, and the message says the counters failed rather than that
    Redis cannot be reached. Once the counter is sound again, calls flow."""
    from redis import Redis

    from tests.conftest import REDIS_URL, start_gateway

    db = gateway.settings.database_url
    if not db.startswith("postgresql"):
        db = db.replace("spendgate.db", "redis-script.db")
    other = start_gateway(
        db,
        gateway.url,
        tmp_path,
        demo=True,  # type: ignore[arg-type]
        env_extra={"SPENDGATE_REDIS_URL": REDIS_URL},
    )
    redis = Redis.from_url(REDIS_URL)
    try:
        key = other.create_key()
        budget = other.post(
            "/admin/budgets",
            {"scope_type": "key", "scope_id": key["id"], "amount_usd": "5", "hard_limit": True},
        )
        chat = {**CHAT, "model": "demo-small"}
        assert post(other, "/v1/chat/completions", key["key"], json=chat).status_code == 200
        prefix = other.settings.redis_prefix
        [bucket] = list(redis.scan_iter(match=f"{prefix}b:{budget['id']}:*"))
        redis.hset(bucket, "reserved", "not-a-number")
        response = post(other, "/v1/chat/completions", key["key"], json=chat)
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "state_unavailable"
        assert "failed" in error["message"] and "cannot reach" not in error["message"]
        redis.hset(bucket, "reserved", "0")
        assert post(other, "/v1/chat/completions", key["key"], json=chat).status_code == 200
    finally:
        redis.close()
        other.admin.close()
        other.handle.stop()


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/embeddings", "POST"),
        ("GET", "/v1/messages", "POST"),
        ("DELETE", "/v1/messages", "POST"),
        ("POST", "/v1/models", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    gateway: RunningGateway, method: str, path: str, allow: str
) -> None:
    """A known proxy route called with the wrong method is 405 with ``Allow``, in the
    route's own error format; nothing is billed."""
    key = gateway.create_key()
    response = httpx.request(
        method, gateway.url + path, headers={"authorization": f"Bearer {key['key']}"}, timeout=30
    )
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    body = response.json()
    if path == "/v1/messages":
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        assert allow in body["error"]["message"]
    else:
        assert body["error"]["code"] == "method_not_allowed"
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] is None
    assert gateway.ledger() == []


def test_an_sdk_base_url_without_or_with_twice_v1_gets_a_404_saying_what_to_change(
    gateway: RunningGateway,
) -> None:
    """The commonest set-up slip: an OpenAI SDK's base_url without /v1 got the console's
    HTML 404 page (the SDK said only "Error code: 404"), an Anthropic SDK's with /v1 a
    bare "unknown endpoint POST /v1/v1/messages". Both are 404s in the route's format
    saying what to change; nothing is billed."""
    key = gateway.create_key()["key"]
    without = openai.OpenAI(base_url=gateway.url, api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as chat:
        without.chat.completions.create(
            model="demo-small", messages=[{"role": "user", "content": "hi"}]
        )
    assert chat.value.response.headers["content-type"] == "application/json"
    message = chat.value.body["message"]  # type: ignore[index]
    assert "unknown endpoint POST /chat/completions: spendgate serves it at " in message
    assert "/v1/chat/completions" in message and "base_url ends in /v1" in message
    with pytest.raises(openai.NotFoundError) as models:
        without.models.list()
    assert "serves it at /v1/models" in models.value.body["message"]  # type: ignore[index]
    twice = anthropic.Anthropic(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as messages:
        twice.messages.create(
            model="demo-small", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert "the path has /v1 twice" in messages.value.message
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as images:  # a route that is not proxied
        sdk.images.generate(model="demo-small", prompt="a cat")
    said = images.value.body["message"]  # type: ignore[index]
    assert said.startswith("unknown endpoint POST /v1/images/generations: spendgate proxies ")
    assert "/v1/chat/completions" in said and "GET /v1/models" in said
    assert gateway.ledger() == []
