"""The console as an ASGI app: pages, their error pages and the shipped static files.

The gateway serves it for every path outside the admin API (``spendgate.app``), behind
the same ``CsrfGuard`` and ``SecurityHeaders`` as the admin API. Errors are pages, not
JSON: 401 → the sign-in page, 403/404/422 → an error page with the message; a request
for an object outside the caller's scope answers 404, as a missing one does.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spendgate.admin.deps import nul_in_path_or_query
from spendgate.console import (
    allocation_rules,
    anomalies,
    audit_log,
    auth,
    budgets,
    events,
    keys,
    notifications,
    org_settings,
    people,
    rate_limits,
    statements,
    tickets,
    usage,
    wallets,
    webhooks,
)
from spendgate.console.layout import SignInRequired, harden, login_url, page
from spendgate.console.usage_source import ClosedDays
from spendgate.errors import NotFound, SpendgateError, ValidationFailed
from spendgate.services import Services
from spendgate.store.console_auth import SESSION_LIFETIME, ConsoleAuth
from spendgate.store.database import database_failure

log = logging.getLogger("spendgate.console")

STATIC = Path(__file__).parent / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


#: the bodies of the console's forms
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def no_nul_characters(request: Request) -> None:
    """The admin API's rule for pages: a NUL character in the path, the query string or a
    form field is refused (422). PostgreSQL cannot store or compare it as text, so it
    reached the database as an error: a 503 "database unavailable" page."""
    where = nul_in_path_or_query(request)
    content_type = request.headers.get("content-type", "")
    if where is None and request.method == "POST" and content_type.startswith(FORM_TYPES):
        fields = await request.form()  # parsed once: the route is given the same form
        if any(
            "\x00" in k or (isinstance(v, str) and "\x00" in v) for k, v in fields.multi_items()
        ):
            where = "form"
    if where is not None:
        raise ValidationFailed(f"{where}: NUL characters are not accepted", param=where)


def build_console(services: Services, *, session_lifetime: timedelta = SESSION_LIFETIME) -> FastAPI:
    app = FastAPI(
        docs_url=None, redoc_url=None, openapi_url=None, dependencies=[Depends(no_nul_characters)]
    )
    app.state.services = services
    app.state.console_auth = ConsoleAuth(services.engine, session_lifetime)
    app.state.closed_days = ClosedDays()  # /usage's figures of days that are over

    @app.exception_handler(SignInRequired)
    async def sign_in(request: Request, exc: SignInRequired) -> Response:
        return harden(request, RedirectResponse(login_url(exc.next_path), status_code=303))

    @app.exception_handler(SpendgateError)
    async def failed(request: Request, exc: SpendgateError) -> Response:
        return await page(
            request, "error.html", {"status": exc.status, "message": exc.message}, status=exc.status
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        message = f"{field}: {first.get('msg', 'invalid input')}"
        return await page(request, "error.html", {"status": 422, "message": message}, status=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = "page not found" if exc.status_code == 404 else str(exc.detail)
        return await page(
            request,
            "error.html",
            {"status": exc.status_code, "message": message},
            status=exc.status_code,
        )

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError) -> Response:
        """503 for an outage only (``database_failure``): a refused statement is no outage."""
        failure = database_failure(exc, f"console {request.url.path}")
        return HTMLResponse(failure.message, status_code=failure.status)

    @app.get("/console/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        path = STATIC / name
        media = STATIC_TYPES.get(path.suffix)
        if media is None or not path.is_file() or path.parent != STATIC:
            raise NotFound(f"{name} not found")
        return FileResponse(path, media_type=media, headers={"cache-control": "max-age=3600"})

    for module in (auth, usage, budgets, notifications):
        app.include_router(module.router)
    for module in (
        keys,
        wallets,
        rate_limits,
        webhooks,
        audit_log,
        people,
        org_settings,
        tickets,
        statements,
        allocation_rules,
        anomalies,
        events,
    ):  # console part 2: the admin pages
        app.include_router(module.router)
    return app
