"""``/statements``: monthly chargeback statements — the months (open: drawn live and
provisional; closed: stored versions), a statement's page, CSV/JSONL downloads, a
printable view, and closing or reissuing a month.

Every read and change is the admin API's route function (``spendgate.admin.statements``)
with the signed-in caller narrowed to ``statements.read`` / ``statements.close``: a team
role reads its own teams' statements (another team's, or the org's, is 404), org-wide
roles read them all, and org admins and finance close and reissue, audited as the API
does. The figures, downloads and printable page are the API's own renderings.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import statements as api
from spendgate.admin.statement_views import records
from spendgate.console.admin_forms import done
from spendgate.console.forms import INVALID, Refill, form_page, refill
from spendgate.console.layout import Svc, User, harden, page, require, templates
from spendgate.console.naming import Namer
from spendgate.core import chargeback as cb
from spendgate.core.access import Can, Owner, Principal
from spendgate.core.money import format_usd
from spendgate.errors import Conflict, ValidationFailed
from spendgate.services import Services
from spendgate.store import statements as store
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)
#: open months offered besides the stored ones: this one and the ones before it
RECENT_MONTHS = 3
Month = Annotated[str, Query(max_length=7)]


def _recent(today: date, count: int) -> list[str]:
    year, month = today.year, today.month
    out = []
    for _ in range(count):
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out


async def _statement_targets(svc: Services, who: Principal) -> list[tuple[str | None, str]]:
    """(team id or None for the org, label) of each statement the caller may read."""
    out: list[tuple[str | None, str]] = [(None, "whole org")] if who.org_wide else []
    for team in await svc.directory.list_teams(who.org_id):
        if who.sees(Owner.of(team["org_id"], team["id"])):
            out.append((team["id"], f"team {team['name']}"))
    return out


@router.get("/statements")
async def statements_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _statements_page(request, svc, user)


async def _statements_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
    refused: Conflict | None = None,
) -> HTMLResponse:
    who = require(user, Can.STATEMENTS_READ)
    org = await svc.directory.get_org(str(who.org_id))
    today = svc.clock.now().astimezone(ZoneInfo(str(org["reporting_timezone"]))).date()
    stored = await api.list_statements(svc, who, None, None)
    versions: dict[tuple[str, str | None], int] = {}
    for row in stored:
        slot = (row["month"], row["team_id"])
        versions[slot] = max(versions.get(slot, 0), row["version"])
    months = sorted({*_recent(today, RECENT_MONTHS), *(r["month"] for r in stored)}, reverse=True)
    closed = {m: await store.closed_month(svc.engine, org["id"], m) for m in months}
    ctx = {
        "months": months,
        "closed": closed,
        "versions": versions,
        "targets": await _statement_targets(svc, who),
        "may_close": user.principal.may(Can.STATEMENTS_CLOSE),
        "timezone": org["reporting_timezone"],
        "actors": await Namer(svc, user.principal).actors(
            c.closed_by for c in closed.values() if c
        ),
        "refused": refused.message if refused else None,
    }
    status = refused.status if refused else 200
    return await form_page(request, "statements/list.html", ctx, sent_back, status=status)


async def _statement(
    svc: Services, user: SignedIn, month: str, team_id: str | None, version: int | None
) -> dict[str, Any]:
    """The API's JSON answer for one statement (404 outside the caller's teams)."""
    who = require(user, Can.STATEMENTS_READ)
    found = await api.get_statement(month, svc, who, None, team_id or None, version, "json")
    if not isinstance(found, dict):  # pragma: no cover - format json is a dict
        raise ValidationFailed("format: not json", param="format")
    return found


@router.get("/statements/{month}")
async def statement_page(
    month: str,
    request: Request,
    svc: Svc,
    user: User,
    team_id: Annotated[str, Query(max_length=40)] = "",
    version: Annotated[int | None, Query(ge=1)] = None,
) -> HTMLResponse:
    found = await _statement(svc, user, month, team_id, version)
    ctx = {**_view(found, month, team_id, version), "names": await _row_names(svc, user)}
    return await page(request, "statements/detail.html", ctx)


async def _row_names(svc: Services, user: SignedIn) -> dict[str, dict[str, str]]:
    """The names (a user's email) the reader may see of the keys, users and agents a
    statement's breakdown lists by id (``Namer``'s rule: a key's name needs ``keys.read``,
    so finance keeps its id). The statement itself (downloads, the record) keeps the ids."""
    namer = Namer(svc, user.principal)
    return {kind: await namer.names(kind) for kind in ("key", "user", "agent")}


def _view(found: dict[str, Any], month: str, team_id: str, version: int | None) -> dict[str, Any]:
    content = found["statement"]
    query = (f"team_id={team_id}" if team_id else "") + (
        f"{'&' if team_id else ''}version={version}" if version else ""
    )
    return {
        "meta": found,
        "s": content,
        "usd": format_usd,
        "figures": cb.shown_figures,
        "month": month,
        "query": query,
        "title": (
            f"Statement {month}: {content['team_name']}"
            if content["kind"] == "team"
            else f"Statement {month}: {content['org_name']} (all teams)"
        ),
        "record_count": len(records(content)),
    }


@router.get("/statements/{month}/print")
async def printable(
    month: str,
    request: Request,
    svc: Svc,
    user: User,
    team_id: Annotated[str, Query(max_length=40)] = "",
    version: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """The statement alone, for printing (no navigation; the console's stylesheet)."""
    found = await _statement(svc, user, month, team_id, version)
    ctx = {**_view(found, month, team_id, version), "names": await _row_names(svc, user)}
    response = templates.TemplateResponse(request, "statements/print.html", ctx)
    return harden(request, response)


@router.get("/statements/{month}/download")
async def download(
    month: str,
    svc: Svc,
    user: User,
    request: Request,
    format: Annotated[str, Query(pattern="^(csv|jsonl)$")] = "csv",
    team_id: Annotated[str, Query(max_length=40)] = "",
    version: Annotated[int | None, Query(ge=1)] = None,
) -> Response:
    """The API's CSV or JSONL of the statement, as an attachment."""
    who = require(user, Can.STATEMENTS_READ)
    found = await api.get_statement(month, svc, who, None, team_id or None, version, format)
    if not isinstance(found, Response):  # pragma: no cover - csv/jsonl are responses
        raise ValidationFailed("format: csv or jsonl", param="format")
    return harden(request, found)


async def _issue(
    request: Request, svc: Services, user: SignedIn, month: str, reissue: bool
) -> Response:
    who = require(user, Can.STATEMENTS_CLOSE)
    step = api.reissue_month if reissue else api.close_month
    try:
        store.month_window(month.strip(), "UTC")  # "YYYY-MM", beside the field
        await step(month.strip(), api.MonthIn(), svc, request, who)
    except INVALID as exc:
        return await _statements_page(request, svc, user, refill(exc, {"month": month}))
    except Conflict as exc:  # already closed / not closed: a message on the page (409)
        return await _statements_page(request, svc, user, refused=exc)
    return done(request, f"/statements?closed={month.strip()}#month-{month.strip()}")


@router.post("/statements/close")
async def close_month(
    request: Request, svc: Svc, user: User, month: Annotated[str, Form(max_length=20)] = ""
) -> Response:
    return await _issue(request, svc, user, month, reissue=False)


@router.post("/statements/reissue")
async def reissue_month(
    request: Request, svc: Svc, user: User, month: Annotated[str, Form(max_length=20)] = ""
) -> Response:
    return await _issue(request, svc, user, month, reissue=True)
