"""What the admin pages share: a form turned into the admin API's request body and the
redirect after a change (names to show instead of ids: ``console.naming``).

A console action calls the admin API's route function itself (``spendgate.admin.*``)
with the signed-in caller narrowed like the route's guard narrows a token
(:func:`spendgate.console.layout.require`): the same validation, scope checks, audit
entry and events, with no second copy of who may do what. A form's fields are parsed
with the route's own request model; a field it refuses is the 422 page naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, ValidationError

from spendgate.admin.schemas import error_message
from spendgate.console.layout import harden
from spendgate.errors import ValidationFailed

M = TypeVar("M", bound=BaseModel)


def body_of(model: type[M], data: Mapping[str, Any], *, nulls: Iterable[str] = ()) -> M:
    """``data`` (blank fields left out, except those in ``nulls``: sent as ``null``, which
    a PATCH reads as "remove") as the admin API's request model; the first field it
    refuses becomes a 422 naming that field."""
    cleared = set(nulls)
    fields = {
        k: (None if v == "" else v) for k, v in data.items() if v not in ("", None) or k in cleared
    }
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        # the field, not an item of it ("tags", not "tags.0"): the input it stands beside
        field = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int))
        field = field or "form"
        raise ValidationFailed(f"{field}: {error_message(first)}", param=field) from exc


def words(value: str) -> list[str]:
    """A list typed into one box: separated by commas, spaces or new lines."""
    return [w for w in value.replace(",", " ").split() if w]


def local_instant(value: str, field: str) -> datetime | None:
    """An ``<input type="datetime-local">`` value, read as UTC (the console shows UTC)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValidationFailed(f"{field}: not a date and time: {value!r}", param=field) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def done(request: Request, url: str) -> Response:
    """After a change: back to a page (303, so a reload does not repeat the change)."""
    return harden(request, RedirectResponse(url, status_code=303))


def by_id(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}
