"""Browser-facing hardening for everything outside ``/v1``: the admin API and the console.

- ``SecurityHeaders``: pure-ASGI middleware adding ``X-Content-Type-Options``,
  ``X-Frame-Options``, ``Referrer-Policy``, a ``Content-Security-Policy`` (per path
  prefix: JSON gets ``default-src 'none'``, ``/docs`` what Swagger UI needs),
  ``Cache-Control: no-store`` under ``/admin`` and ``Strict-Transport-Security`` on
  HTTPS requests only.
- ``CsrfGuard``: double-submit CSRF check for unsafe methods on requests a browser could
  forge (a session cookie, or a form content type): the ``sg_csrf`` cookie must equal the
  ``X-CSRF-Token`` header or the ``csrf_token`` form field. ``Authorization: Bearer``
  requests with non-form bodies pass untouched: a browser never adds that header
  cross-site.
- Cookie helpers for the console: ``set_session_cookie`` (HttpOnly, SameSite, Secure on
  HTTPS, Path=/), ``new_csrf_token`` and ``set_csrf_cookie``.

The proxy (``/v1``) never goes through any of this: it serves SDKs, not browsers.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from starlette.requests import cookie_parser
from starlette.responses import Response

from spendgate.errors import PermissionDenied
from spendgate.proxy.wire import Message, Receive, Scope, Send

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

#: JSON responses: nothing may be loaded, nobody may frame them
JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
#: /docs (``spendgate.admin.docs``): Swagger UI's script, stylesheet and favicon and the
#: page's start-up script, all from this origin (nothing inline, no CDN); it fetches
#: /openapi.json and sends "try it out" calls here; Swagger UI sets inline styles and
#: uses data: images.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
DEFAULT_CSP_BY_PREFIX: tuple[tuple[str, str], ...] = (("/docs", DOCS_CSP),)
HSTS = "max-age=31536000"

SESSION_COOKIE = "sg_session"
CSRF_COOKIE = "sg_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
SameSite = Literal["lax", "strict"]


def request_is_https(scope: Mapping[str, Any]) -> bool:
    """Did this request come over TLS (as the ASGI server saw it)?"""
    return scope.get("scheme") in ("https", "wss")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _raw(headers: Iterable[tuple[str, str]]) -> RawHeaders:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class SecurityHeaders:
    """Add the security headers to every HTTP response of ``app``.

    Headers the app already set win (so a console page can send its own CSP), except
    ``Cache-Control`` under the no-store prefixes, which is always ``no-store``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        content_security_policy: str = JSON_CSP,
        csp_by_prefix: Sequence[tuple[str, str]] = DEFAULT_CSP_BY_PREFIX,
        no_store_prefixes: Sequence[str] = ("/admin",),
        hsts: str = HSTS,
    ) -> None:
        self.app = app
        common = [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
        ]
        self._csp_by_prefix = [
            (prefix, _raw([*common, ("content-security-policy", csp)]))
            for prefix, csp in csp_by_prefix
        ]
        self._default = _raw([*common, ("content-security-policy", content_security_policy)])
        self._no_store_prefixes = tuple(no_store_prefixes)
        self._hsts = _raw([("strict-transport-security", hsts)])

    def headers_for(self, scope: Mapping[str, Any]) -> tuple[RawHeaders, bool]:
        """The defaults for this request's responses, and whether it must not be stored."""
        path: str = scope["path"]
        defaults = next(
            (h for prefix, h in self._csp_by_prefix if _under(path, prefix)), self._default
        )
        if request_is_https(scope):
            defaults = defaults + self._hsts
        return defaults, any(_under(path, p) for p in self._no_store_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        defaults, no_store = self.headers_for(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: RawHeaders = list(message.get("headers", ()))
                if no_store:
                    headers = [(k, v) for k, v in headers if k.lower() != b"cache-control"]
                    headers.append((b"cache-control", b"no-store"))
                present = {k.lower() for k, _ in headers}
                headers.extend((k, v) for k, v in defaults if k not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CsrfFailed(PermissionDenied):
    code = "csrf_failed"


def csrf_error_body(err: CsrfFailed) -> bytes:
    """The admin error format (``{"error": {"message", "type", "code", "param"}}``)."""
    return orjson.dumps(
        {"error": {"message": err.message, "type": err.kind, "code": err.code, "param": err.param}}
    )


def _header(headers: RawHeaders, name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _is_bearer(headers: RawHeaders) -> bool:
    return (_header(headers, b"authorization") or "")[:7].lower() == "bearer "


def _form_field(content_type: str, media: str, body: bytes, name: str) -> str | None:
    if media == "application/x-www-form-urlencoded":
        for key, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
            if key == name:
                return value
        return None
    if media == "multipart/form-data":
        head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n"
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        if not message.is_multipart():
            return None
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == name:
                payload = part.get_payload(decode=True)
                return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else None
    return None


class CsrfGuard:
    """Double-submit CSRF check in front of ``app`` (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cookie_name: str = CSRF_COOKIE,
        header_name: str = CSRF_HEADER,
        field_name: str = CSRF_FIELD,
        session_cookies: Sequence[str] = (SESSION_COOKIE,),
        max_body_bytes: int = 1024 * 1024,
    ) -> None:
        self.app = app
        self.cookie_name = cookie_name
        self.header_name = header_name.lower().encode("latin-1")
        self.field_name = field_name
        self.session_cookies = tuple(session_cookies)
        self.max_body_bytes = max_body_bytes

    def needs_check(self, method: str, headers: RawHeaders) -> bool:
        """Could a browser on another site have sent this request with the user's cookies?"""
        if method not in UNSAFE_METHODS:
            return False
        content_type = _header(headers, b"content-type") or ""
        form = content_type.split(";", 1)[0].strip().lower() in FORM_TYPES
        if form:
            return True
        if _is_bearer(headers):
            return False
        cookies = cookie_parser(_header(headers, b"cookie") or "")
        return any(name in cookies for name in self.session_cookies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: RawHeaders = list(scope.get("headers", ()))
        if not self.needs_check(scope["method"], headers):
            await self.app(scope, receive, send)
            return
        expected = cookie_parser(_header(headers, b"cookie") or "").get(self.cookie_name, "")
        presented = _header(headers, self.header_name)
        if presented is None:
            presented, receive = await self._token_from_form(headers, receive)
        if (
            not expected
            or not presented
            or not hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))
        ):
            await self._refuse(send, api_client=_is_bearer(headers))
            return
        await self.app(scope, receive, send)

    async def _token_from_form(
        self, headers: RawHeaders, receive: Receive
    ) -> tuple[str | None, Receive]:
        """Read the body for the form field, then hand the app a ``receive`` replaying it."""
        content_type = _header(headers, b"content-type") or ""
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return None, receive
        buffered: list[Message] = []
        size, complete = 0, False
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                break
            if not message.get("more_body", False):
                complete = True
                break
        token = None
        if complete:
            body = b"".join(m.get("body", b"") for m in buffered)
            token = _form_field(content_type, media, body, self.field_name)

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        return token, replay

    async def _refuse(self, send: Send, *, api_client: bool) -> None:
        message = (
            f"CSRF check failed: send the {self.cookie_name} cookie's value in the "
            f"{self.header_name.decode()} header or the {self.field_name} form field"
        )
        if api_client:  # most likely `curl -d` without a content type: it sends a form
            message += "; an API client sends its body as JSON with Content-Type: application/json"
        err = CsrfFailed(message)
        body = csrf_error_body(err)
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def set_session_cookie(
    response: Response,
    name: str,
    value: str,
    *,
    secure: bool,
    max_age: int | None,
    samesite: SameSite = "lax",
) -> None:
    """A session cookie scripts cannot read: HttpOnly, SameSite, Path=/, Secure on HTTPS
    (pass ``secure=request_is_https(request.scope)``)."""
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite=samesite
    )


def clear_session_cookie(
    response: Response, name: str, *, secure: bool, samesite: SameSite = "lax"
) -> None:
    response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite=samesite)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def set_csrf_cookie(
    response: Response, token: str, *, secure: bool, max_age: int | None = None
) -> None:
    """The double-submit cookie: readable by the console's own scripts (not HttpOnly) so
    they can echo it in ``X-CSRF-Token``; SameSite=Strict, Path=/."""
    response.set_cookie(
        CSRF_COOKIE,
        token,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=False,
        samesite="strict",
    )
