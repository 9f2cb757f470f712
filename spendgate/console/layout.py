"""What every console page shares: the signed-in user, the templates, the page frame.

A page module declares ``user: User`` (or ``Who``) and renders with :func:`page`, which
adds what the base layout needs (the user, the unread count, the CSRF token) and the
headers every console page carries (a strict CSP: scripts and styles from this origin
only, nothing inline; ``no-store``). To add a page group: a module with an
``APIRouter``, included in ``spendgate.console.app.build_console``, templates under
``templates/<group>/`` extending ``base.html``, and a link in ``base.html``'s nav.

Permission checks are the admin API's (``spendgate.core.access``): :func:`require`
answers a page like ``admin.deps.allow`` answers an API call, and narrows the caller to
the permission for the scope checks that follow.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from spendgate.admin.deps import Scope, permitted
from spendgate.core.access import Can, Principal
from spendgate.security.web import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    new_csrf_token,
    request_is_https,
    set_csrf_cookie,
)
from spendgate.services import Services
from spendgate.store.console_auth import ConsoleAuth, SignedIn
from spendgate.webhooks.notifications import unread_count

#: scripts, styles and images from this origin only; nothing inline, no CDN
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.autoescape = True


class SignInRequired(Exception):
    """No live session: the page answers with a redirect to /login."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def console_auth(request: Request) -> ConsoleAuth:
    auth: ConsoleAuth = request.app.state.console_auth
    return auth


Svc = Annotated[Services, Depends(services)]
Auth = Annotated[ConsoleAuth, Depends(console_auth)]


async def signed_in(request: Request, svc: Svc, auth: Auth) -> SignedIn:
    """The session's user, or a redirect to the sign-in page (back here afterwards)."""
    secret = request.cookies.get(SESSION_COOKIE)
    found = None if not secret else await auth.session(secret, svc.clock.now())
    if found is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(target)
    request.state.console_user = found
    return found


User = Annotated[SignedIn, Depends(signed_in)]


def require(user: SignedIn, permission: Can) -> Principal:
    """The caller narrowed to ``permission``; 403 when no role of theirs holds it (the
    admin API's own check, ``admin.deps.permitted``)."""
    return permitted(user.principal, permission)


def scope_for(svc: Services, who: Principal) -> Scope:
    """The admin API's per-object scope checks, for this caller."""
    return Scope(svc, who)


def csrf_token(request: Request) -> str:
    """The double-submit token for this page's forms (a new one if the browser has none)."""
    token = request.cookies.get(CSRF_COOKIE) or getattr(request.state, "new_csrf", None)
    if not token:
        token = new_csrf_token()
        request.state.new_csrf = token
    return str(token)


def harden(request: Request, response: Response) -> Response:
    response.headers["content-security-policy"] = CONSOLE_CSP
    response.headers["cache-control"] = "no-store"
    fresh = getattr(request.state, "new_csrf", None)
    if fresh:
        set_csrf_cookie(response, fresh, secure=request_is_https(request.scope))
    return response


async def page(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """Render ``template`` inside the layout."""
    user: SignedIn | None = getattr(request.state, "console_user", None)
    svc = services(request)
    unread = 0
    if user is not None and user.principal.user_id is not None:
        unread = await unread_count(svc.engine, user.principal.user_id)
    ctx = {
        "user": user,
        "unread": unread,
        "csrf": csrf_token(request),
        "path": request.url.path,
        "Can": Can,
        **(context or {}),
    }
    response = templates.TemplateResponse(request, template, ctx, status_code=status)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return harden(request, response)  # type: ignore[return-value]


def login_url(next_path: str) -> str:
    return "/login?next=" + quote(next_path, safe="/")


def local_time(value: datetime | None) -> str:
    """How an instant is shown: UTC, to the minute."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def to_the_second(value: str | datetime | None) -> str:
    """An audit entry's instant in a table (ISO text or a datetime): UTC to the second, as
    a dispute reads it (the entry's own page has it whole, microseconds and offset)."""
    if value is None:
        return ""
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return (at if at.tzinfo is None else at.astimezone(UTC)).strftime("%Y-%m-%d %H:%M:%S")


templates.env.filters["when"] = local_time
templates.env.filters["to_the_second"] = to_the_second
