"""``/events``: the org's events, newest first (budget levels, overruns, anomalies, …),
filtered by type — what webhooks deliver, to read without an endpoint.

The list is the admin API's route function (``GET /admin/events``) with the signed-in
caller narrowed to ``events.read`` (org admins and finance: the org's events).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from spendgate.admin import routes as api
from spendgate.console.layout import Svc, User, page, require
from spendgate.core.access import Can
from spendgate.errors import ValidationFailed

router = APIRouter(include_in_schema=False)


def _data(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


@router.get("/events")
async def events_page(
    request: Request,
    svc: Svc,
    user: User,
    type: Annotated[str, Query(max_length=100)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> HTMLResponse:
    who = require(user, Can.EVENTS_READ)
    try:
        rows = await api.events(svc, who, type.strip() or None, None, limit)
    except ValidationFailed as exc:  # an unknown type: said beside the field, kept typed
        message = exc.message.removeprefix("type: ")
        ctx = {"events": [], "type": type.strip(), "limit": limit, "errors": {"type": message}}
        return await page(request, "events.html", ctx, status=422)
    for row in rows:
        row["data_text"] = _data(row["data"])
    ctx = {"events": rows, "type": type.strip(), "limit": limit, "errors": {}}
    return await page(request, "events.html", ctx)
