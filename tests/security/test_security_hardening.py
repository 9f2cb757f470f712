"""Hardening (issue #7): failed-auth throttling per source address, security headers on
everything outside /v1, CSRF double-submit checks and session cookie attributes."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from starlette.responses import Response

from spendgate.errors import AuthenticationFailed, ConfigError, InvalidRequest
from spendgate.security.auth_throttle import AuthThrottle, TooManyAuthFailures, client_address
from spendgate.security.web import (
    CSRF_COOKIE,
    DOCS_CSP,
    JSON_CSP,
    SESSION_COOKIE,
    new_csrf_token,
    request_is_https,
    set_csrf_cookie,
    set_session_cookie,
)
from spendgate.settings import load_settings
from tests.conftest import MASTER_KEY, RunningGateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
BROWSER_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def sdk(gw: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


async def in_process(
    gw: RunningGateway,
    method: str,
    path: str,
    *,
    client: tuple[str, int],
    scheme: str = "http",
    **kwargs: Any,
) -> httpx.Response:
    """A request handed straight to the gateway's ASGI app (on its own loop), as if from
    ``client`` over ``scheme``: what a TCP test cannot fake."""
    transport = httpx.ASGITransport(app=gw.app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://gateway.test") as c:
        return await c.request(method, path, **kwargs)


# -- failed authentication, per source address -------------------------------------------
def test_throttle_locks_an_address_out_for_a_window() -> None:
    """The failure that reaches the limit locks the address out, with Retry-After, until
    one window has passed; then it is forgotten."""
    throttle = AuthThrottle(limit=3, window_seconds=60)
    for _ in range(2):
        throttle.failed("198.51.100.1", 100.0)
    throttle.check("198.51.100.1", 100.0)  # two failures: still allowed
    throttle.failed("198.51.100.1", 100.5)
    with pytest.raises(TooManyAuthFailures) as info:
        throttle.check("198.51.100.1", 100.5)
    err = info.value
    assert (err.status, err.code, err.headers()) == (
        429,
        "too_many_auth_failures",
        {"retry-after": "60"},
    )
    with pytest.raises(TooManyAuthFailures) as later:
        throttle.check("198.51.100.1", 160.2)
    assert later.value.headers() == {"retry-after": "1"}
    throttle.check("198.51.100.1", 160.5)
    assert throttle.tracked == 0


def test_throttle_other_addresses_are_not_affected() -> None:
    throttle = AuthThrottle(limit=2, window_seconds=60)
    throttle.failed("198.51.100.1", 0.0)
    throttle.failed("198.51.100.1", 0.0)
    with pytest.raises(TooManyAuthFailures):
        throttle.check("198.51.100.1", 1.0)
    throttle.check("198.51.100.2", 1.0)
    throttle.check("2001:db8::1", 1.0)
    throttle.failed("198.51.100.2", 1.0)
    throttle.check("198.51.100.2", 1.0)


def test_throttle_window_restarts_after_quiet_period() -> None:
    """Failures further apart than the window never add up to a lockout."""
    throttle = AuthThrottle(limit=3, window_seconds=60)
    for t in (0.0, 30.0, 61.0, 90.0, 122.0, 150.0):
        throttle.failed("198.51.100.9", t)
        throttle.check("198.51.100.9", t)


def test_throttle_memory_is_bounded() -> None:
    """At most ``max_tracked`` addresses are remembered, the oldest dropped first, and
    addresses whose window has passed are forgotten."""
    throttle = AuthThrottle(limit=2, window_seconds=60, max_tracked=100)
    for n in range(5000):
        throttle.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}", n * 0.001)
    assert throttle.tracked == 100
    throttle.failed("10.0.19.135", 5.0)  # n = 4999, kept: its second failure locks it out
    with pytest.raises(TooManyAuthFailures):
        throttle.check("10.0.19.135", 5.0)
    throttle.failed("10.0.0.0", 5.0)  # n = 0 was dropped: this is its first failure again
    throttle.check("10.0.0.0", 5.0)
    throttle.failed("192.0.2.1", 70.0)  # every other entry has expired by now
    assert throttle.tracked == 1


def test_throttle_disabled_and_context_manager() -> None:
    off = AuthThrottle(limit=0)
    for _ in range(100):
        off.failed("198.51.100.1", 0.0)
    off.check("198.51.100.1", 0.0)
    assert off.tracked == 0 and not off.enabled

    throttle = AuthThrottle(limit=2)
    with pytest.raises(InvalidRequest), throttle.attempt("198.51.100.1", 0.0):
        raise InvalidRequest("not an authentication failure: not counted")
    for _ in range(2):
        with pytest.raises(AuthenticationFailed), throttle.attempt("198.51.100.1", 0.0):
            raise AuthenticationFailed("bad token")
    with pytest.raises(TooManyAuthFailures), throttle.attempt("198.51.100.1", 1.0):
        pytest.fail("a locked-out address never gets to authenticate")
    assert client_address({"client": ("203.0.113.5", 443)}) == "203.0.113.5"
    assert client_address({}) == ""


def test_throttle_setting(tmp_path: Any) -> None:
    config = tmp_path / "c.toml"
    assert load_settings(env={}).auth_failures_per_minute == 20
    config.write_text("[gateway]\nauth_failures_per_minute = 0\n")
    assert load_settings(config_path=str(config), env={}).auth_failures_per_minute == 0
    config.write_text("[gateway]\nauth_failures_per_minute = -1\n")
    with pytest.raises(ConfigError, match="auth_failures_per_minute"):
        load_settings(config_path=str(config), env={})


def test_proxy_locks_out_an_address_after_20_failed_keys(gateway: RunningGateway) -> None:
    """20 bad keys from one address; the 21st attempt, even with a good key, gets 429 with
    Retry-After in the route's format; another address is unaffected; once the window has
    passed the good key works again."""
    key = gateway.create_key()
    for n in range(20):
        with pytest.raises(openai.AuthenticationError):
            sdk(gateway, f"sk-sg-wrong-{n}").chat.completions.create(**CHAT)
    with pytest.raises(openai.RateLimitError) as info:
        sdk(gateway, key["key"]).chat.completions.create(**CHAT)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "60"
    assert info.value.response.json()["error"]["code"] == "too_many_auth_failures"
    anthropic_style = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": key["key"]},
        json={
            "model": "claude-sonnet-4-5",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        },
    )
    assert anthropic_style.status_code == 429 and "retry-after" in anthropic_style.headers
    assert anthropic_style.json()["error"]["type"] == "rate_limit_error"
    models = httpx.get(
        gateway.url + "/v1/models", headers={"authorization": f"Bearer {key['key']}"}
    )
    assert models.status_code == 429

    elsewhere = gateway.run(
        in_process(
            gateway,
            "GET",
            "/v1/models",
            client=("203.0.113.7", 5000),
            headers={"authorization": f"Bearer {key['key']}"},
        )
    )
    assert elsewhere.status_code == 200, elsewhere.text

    gateway.clock.advance(59)
    with pytest.raises(openai.RateLimitError) as still:
        sdk(gateway, key["key"]).chat.completions.create(**CHAT)
    assert still.value.response.headers["retry-after"] == "1"
    gateway.clock.advance(1.5)
    answer = sdk(gateway, key["key"]).chat.completions.create(**CHAT)
    assert answer.choices
    assert len(gateway.ledger()) == 1  # nothing refused was billed


def test_admin_api_locks_out_an_address_after_20_failed_tokens(gateway: RunningGateway) -> None:
    """The admin API shares the throttle: 20 wrong bearer tokens, then even the master key
    gets 429 with Retry-After until the window has passed."""
    for n in range(20):
        wrong = httpx.get(
            gateway.url + "/admin/orgs", headers={"authorization": f"Bearer sg-wrong-{n}"}
        )
        assert wrong.status_code == 401, wrong.text
    locked = gateway.admin.get("/admin/orgs")
    assert locked.status_code == 429 and locked.headers["retry-after"] == "60"
    assert locked.json()["error"]["code"] == "too_many_auth_failures"
    gateway.clock.advance(61)
    assert gateway.admin.get("/admin/orgs").status_code == 200


# -- body size limits ----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/admin/orgs", "/login", "/v1/chat/completions"])
def test_a_chunked_body_over_the_limit_is_refused(gateway: RunningGateway, path: str) -> None:
    """A body sent in chunks, with no Content-Length to refuse it by up front, is
    refused once it passes the limit (1 MiB outside /v1, authenticated or not; 10 MiB on
    /v1, which refuses a bad key before reading any): never read whole into memory."""
    proxy = path.startswith("/v1/")
    size = 11 * 1024 * 1024 if proxy else 2 * 1024 * 1024
    secret = gateway.create_key()["key"] if proxy else MASTER_KEY

    def chunks() -> Any:
        yield b'{"name": "big", "model": "gpt-4o-mini", "pad": "'
        for _ in range(size // 65536):
            yield b"x" * 65536
        yield b'"}'

    for headers in [{"authorization": f"Bearer {secret}"}, *([] if proxy else [{}])]:
        response = httpx.post(
            gateway.url + path,
            content=chunks(),
            headers={**headers, "content-type": "application/json"},
            timeout=30,
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, (headers, response.text[:200])
        assert response.json()["error"]["code"] == "request_too_large"


# -- security headers ----------------------------------------------------------------------
def test_security_headers_on_admin_and_health_not_on_proxy(gateway: RunningGateway) -> None:
    key = gateway.create_key()
    admin = gateway.admin.get("/admin/orgs")
    assert admin.status_code == 200
    for name, value in {
        **BROWSER_HEADERS,
        "content-security-policy": JSON_CSP,
        "cache-control": "no-store",
    }.items():
        assert admin.headers.get(name) == value, name
    assert "strict-transport-security" not in admin.headers  # plain HTTP

    refused = httpx.get(gateway.url + "/admin/orgs")  # errors carry them too
    assert refused.status_code == 401 and refused.headers["cache-control"] == "no-store"
    assert refused.headers["x-frame-options"] == "DENY"

    health = httpx.get(gateway.url + "/healthz")
    assert health.status_code == 200
    for name, value in {**BROWSER_HEADERS, "content-security-policy": JSON_CSP}.items():
        assert health.headers.get(name) == value, name
    assert "no-store" not in health.headers.get("cache-control", "")

    docs = httpx.get(gateway.url + "/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    assert docs.headers["content-security-policy"] == DOCS_CSP
    assert "https:" not in DOCS_CSP and docs.headers["x-frame-options"] == "DENY"

    raw = sdk(gateway, key["key"]).chat.completions.with_raw_response.create(**CHAT)
    listed = httpx.get(
        gateway.url + "/v1/models", headers={"authorization": f"Bearer {key['key']}"}
    )
    for response_headers in (raw.headers, listed.headers):
        for name in (*BROWSER_HEADERS, "content-security-policy", "strict-transport-security"):
            assert name not in response_headers, name
        assert "no-store" not in response_headers.get("cache-control", "")


def test_hsts_only_over_https(gateway: RunningGateway) -> None:
    """Strict-Transport-Security is sent when the request came over HTTPS (never on /v1)."""
    secure = gateway.run(
        in_process(gateway, "GET", "/healthz", client=("127.0.0.1", 1), scheme="https")
    )
    assert secure.status_code == 200
    assert secure.headers["strict-transport-security"].startswith("max-age=")
    plain = gateway.run(in_process(gateway, "GET", "/healthz", client=("127.0.0.1", 1)))
    assert "strict-transport-security" not in plain.headers
    key = gateway.create_key()
    proxied = gateway.run(
        in_process(
            gateway,
            "GET",
            "/v1/models",
            client=("127.0.0.1", 1),
            scheme="https",
            headers={"authorization": f"Bearer {key['key']}"},
        )
    )
    assert proxied.status_code == 200 and "strict-transport-security" not in proxied.headers


# -- CSRF ------------------------------------------------------------------------------------
def assert_csrf_refused(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "csrf_failed" and error["message"]
    assert set(error) == {"message", "type", "code", "param"}
    assert response.headers["x-frame-options"] == "DENY"


def assert_past_csrf(response: httpx.Response) -> None:
    """The CSRF check let it through: whatever the route says, it is not csrf_failed."""
    assert response.status_code != 403 or response.json()["error"]["code"] != "csrf_failed"


def test_csrf_form_posts_need_a_matching_token(gateway: RunningGateway) -> None:
    bearer = {"authorization": f"Bearer {MASTER_KEY}"}
    token = new_csrf_token()
    with httpx.Client(base_url=gateway.url) as browser:
        # a form post without the token: refused before any route runs
        assert_csrf_refused(browser.post("/admin/orgs", data={"name": "evil"}, headers=bearer))
        assert_csrf_refused(
            browser.post(
                "/admin/orgs",
                content=b'{"name": "evil"}',
                headers={**bearer, "content-type": "text/plain"},
            )
        )
        # cookie and header disagree
        browser.cookies.set(CSRF_COOKIE, token)
        assert_csrf_refused(
            browser.post(
                "/admin/orgs",
                data={"name": "evil"},
                headers={**bearer, "x-csrf-token": token[:-1] + "x"},
            )
        )
        # a session cookie makes even a JSON post without Bearer need the token
        browser.cookies.set(SESSION_COOKIE, "session-id")
        assert_csrf_refused(browser.post("/admin/orgs", json={"name": "evil"}))
        # matching cookie and header (or form field): past CSRF, the route decides
        ok = browser.post(
            "/admin/orgs", data={"name": "x"}, headers={**bearer, "x-csrf-token": token}
        )
        assert_past_csrf(ok)
        assert ok.status_code in (400, 415, 422), ok.text
        field = browser.post("/admin/orgs", data={"name": "x", "csrf_token": token}, headers=bearer)
        assert_past_csrf(field)
        multipart = browser.post(
            "/admin/orgs", data={"csrf_token": token}, files={"f": ("a.txt", b"x")}, headers=bearer
        )
        assert_past_csrf(multipart)
        unauthenticated = browser.post(
            "/admin/orgs", json={"name": "x"}, headers={"x-csrf-token": token}
        )
        assert unauthenticated.status_code == 401  # past CSRF; no session login exists yet
        # safe methods are never checked
        assert browser.get("/admin/orgs", headers=bearer).status_code == 200
    assert not any(org["name"] == "evil" for org in gateway.get("/admin/orgs"))


def test_a_form_body_with_a_bearer_token_is_told_to_send_json(gateway: RunningGateway) -> None:
    """`curl -d '{...}'` without a content type sends a form: the refusal tells an API
    client to send JSON, and past the CSRF check a body that is not a JSON object is a
    422 that says so (not pydantic's "valid dictionary or object to extract fields")."""
    bearer = {"authorization": f"Bearer {MASTER_KEY}"}
    with httpx.Client(base_url=gateway.url) as client:
        curl_d = {**bearer, "content-type": "application/x-www-form-urlencoded"}
        refused = client.post("/admin/orgs", content=b'{"name": "x"}', headers=curl_d)
        assert_csrf_refused(refused)
        assert "Content-Type: application/json" in refused.json()["error"]["message"]
        token = new_csrf_token()
        client.cookies.set(CSRF_COOKIE, token)
        form = client.post(
            "/admin/orgs", data={"name": "x"}, headers={**bearer, "x-csrf-token": token}
        )
        assert form.status_code == 422, form.text
        assert form.json()["error"]["message"] == (
            "the request body must be a JSON object (Content-Type: application/json)"
        )
        no_type = client.post("/admin/orgs", content=b"name=x", headers=bearer)
        assert no_type.status_code == 422, no_type.text
    assert not any(org["name"] == "x" for org in gateway.get("/admin/orgs"))


def test_csrf_bearer_json_is_untouched(gateway: RunningGateway) -> None:
    """API clients (Bearer + JSON) never need a CSRF token, cookies or not."""
    made = gateway.post("/admin/orgs", {"name": "api-made"})
    assert made["id"]
    with_cookie = httpx.post(
        gateway.url + "/admin/orgs",
        json={"name": "cookie-jar"},
        headers={
            "authorization": f"Bearer {MASTER_KEY}",
            "cookie": f"{SESSION_COOKIE}=s; {CSRF_COOKIE}=t",
        },
    )
    assert with_cookie.status_code == 201, with_cookie.text


# -- cookies ---------------------------------------------------------------------------------
def test_session_cookie_attributes() -> None:
    secure = Response()
    set_session_cookie(secure, SESSION_COOKIE, "abc", secure=True, max_age=3600)
    cookie = secure.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=abc;")
    for part in ("HttpOnly", "Max-Age=3600", "Path=/", "SameSite=lax", "Secure"):
        assert part in cookie, part

    plain = Response()
    set_session_cookie(plain, SESSION_COOKIE, "abc", secure=False, max_age=None, samesite="strict")
    cookie = plain.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie

    csrf = Response()
    set_csrf_cookie(csrf, "tok", secure=True)
    cookie = csrf.headers["set-cookie"]
    assert cookie.startswith(f"{CSRF_COOKIE}=tok;") and "HttpOnly" not in cookie
    assert "SameSite=strict" in cookie and "Secure" in cookie and "Path=/" in cookie
    assert request_is_https({"scheme": "https"}) and not request_is_https({"scheme": "http"})
