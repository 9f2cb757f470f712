"""Signing in and out of the console, and choosing a password from an invite link.

A failed sign-in counts against the source address in the same throttle as the proxy and
the admin API (``security.auth_throttle``): past the limit every attempt from it gets 429
until the window has passed, even with the right password.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from spendgate.console.layout import Auth, Svc, harden, page
from spendgate.errors import AuthenticationFailed, TooManyAuthFailures, ValidationFailed
from spendgate.security.auth_throttle import client_address
from spendgate.security.web import (
    SESSION_COOKIE,
    clear_session_cookie,
    request_is_https,
    set_session_cookie,
)

router = APIRouter(include_in_schema=False)
HOME = "/usage"


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another origin)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return HOME
    return value


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse(HOME, status_code=303)


@router.get("/login")
async def login_form(
    request: Request, next: str | None = None, password_set: bool = False
) -> HTMLResponse:
    ctx = {"next": safe_next(next), "email": "", "password_set": password_set}
    return await page(request, "login.html", ctx)


@router.post("/login")
async def login(
    request: Request,
    svc: Svc,
    auth: Auth,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = HOME,
) -> Response:
    target = safe_next(next)
    ctx = {"next": target, "email": email}
    try:
        with svc.auth_throttle.attempt(client_address(request.scope), svc.clock.monotonic()):
            user_id = await auth.check_password(email, password) if email and password else None
            if user_id is None:
                raise AuthenticationFailed("wrong email or password")
    except TooManyAuthFailures as exc:
        ctx["error"] = exc.message
        return await page(
            request, "login.html", ctx, status=429, headers={"retry-after": str(exc.retry_after)}
        )
    except AuthenticationFailed as exc:
        ctx["error"] = exc.message
        return await page(request, "login.html", ctx, status=401)
    secret, expires = await auth.open_session(user_id, svc.clock.now())
    response = RedirectResponse(target, status_code=303)
    max_age = int((expires - svc.clock.now()).total_seconds())
    set_session_cookie(
        response, SESSION_COOKIE, secret, secure=request_is_https(request.scope), max_age=max_age
    )
    return harden(request, response)


@router.post("/logout")
async def logout(request: Request, svc: Svc, auth: Auth) -> Response:
    secret = request.cookies.get(SESSION_COOKIE)
    if secret:
        await auth.end_session(secret, svc.clock.now())
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, SESSION_COOKIE, secure=request_is_https(request.scope))
    return harden(request, response)


@router.get("/invite/{secret}")
async def invite_form(secret: str, request: Request, svc: Svc, auth: Auth) -> HTMLResponse:
    found = await auth.invite_user(secret, svc.clock.now())
    if found is None:
        return await page(request, "invite.html", {"invalid": True}, status=404)
    return await page(request, "invite.html", {"email": found[1], "secret": secret})


@router.post("/invite/{secret}")
async def accept_invite(
    secret: str,
    request: Request,
    svc: Svc,
    auth: Auth,
    password: Annotated[str, Form(max_length=1024)] = "",
    confirm: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    found = await auth.invite_user(secret, svc.clock.now())
    if found is None:
        return await page(request, "invite.html", {"invalid": True}, status=404)
    ctx: dict[str, Any] = {"email": found[1], "secret": secret}
    if password != confirm:
        ctx["errors"] = {"confirm": "the two passwords differ"}
        return await page(request, "invite.html", ctx, status=422)
    try:
        user_id = await auth.accept_invite(secret, password, svc.clock.now())
    except ValidationFailed as exc:
        ctx["errors"] = {"password": exc.message.removeprefix("password: ")}
        return await page(request, "invite.html", ctx, status=422)
    if user_id is None:
        return await page(request, "invite.html", {"invalid": True}, status=404)
    return harden(
        request, RedirectResponse("/login?next=/usage&password_set=true", status_code=303)
    )
