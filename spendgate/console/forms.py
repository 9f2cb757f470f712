"""HTML forms in, admin API bodies out; the API's validation errors back beside the field.

A console form is parsed into the admin API's own pydantic model (``BudgetIn``…) and
handed to the admin route function, so the checks are the API's. :func:`field_errors`
turns a pydantic ``ValidationError`` or a ``ValidationFailed`` (whose ``param`` names the
field) into ``{field: message}`` for the template; :func:`refill` and :func:`form_page`
send a refused form back (422) with each error beside the input it is about and what was
typed still in the form; an :class:`ObjectForm` is a form on one object's page that sends
one admin route's body and comes back to the page.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ValidationError

from spendgate.admin.deps import Scope
from spendgate.admin.schemas import error_message
from spendgate.console.admin_forms import body_of, done
from spendgate.console.layout import page, require, scope_for
from spendgate.core.access import Can, Principal
from spendgate.errors import ValidationFailed
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

M = TypeVar("M", bound=BaseModel)

BUDGET_FIELDS = (
    "name",
    "scope_type",
    "scope_id",
    "tag",
    "period",
    "timezone",
    "week_start",
    "amount_usd",
    "alert_percentages",
    "soft_limit_percent",
    "hard_limit",
    "hard_limit_percent",
    "categories.providers",
    "categories.models",
    "categories.kinds",
    "categories.tags",
)
#: what a patch may change (the scope of a budget is fixed once created)
EDITABLE = tuple(f for f in BUDGET_FIELDS if f not in ("scope_type", "scope_id", "tag"))


def split_list(value: str) -> list[str]:
    """``"50, 75,90"`` → ``["50", "75", "90"]`` (commas or spaces)."""
    return [part for part in value.replace(",", " ").split() if part]


def budget_body(form: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The admin API body a budget form stands for (blank optional fields left out)."""
    body: dict[str, Any] = {}
    categories: dict[str, list[str]] = {}
    for name in fields:
        raw = str(form.get(name, "")).strip()
        if name.startswith("categories."):
            categories[name.split(".", 1)[1]] = split_list(raw)
        elif name == "alert_percentages":
            body[name] = split_list(raw)
        elif name == "hard_limit":
            body[name] = form.get(name) == "on"
        elif raw or name in ("amount_usd", "scope_type"):
            body[name] = raw
    body["categories"] = categories
    return body


def form_values(row: Mapping[str, Any]) -> dict[str, str]:
    """A stored budget (``budget_out``) as the form shows it."""
    values = {k: "" if v is None else str(v) for k, v in row.items() if isinstance(v, str | None)}
    values["alert_percentages"] = ", ".join(row.get("alert_percentages", []))
    values["hard_limit"] = "on" if row.get("hard_limit") else ""
    for kind, items in (row.get("categories") or {}).items():
        values[f"categories.{kind}"] = ", ".join(items)
    return values


#: a form's words for the API fields it sends (``{"rpm": "Requests per minute"}``): the
#: labels its inputs show, so that a message naming a field names what the user sees. Only
#: API names that are not plain words belong here (``name`` would reword "name an amount").
Labels = Mapping[str, str]


def worded(message: str, labels: Labels) -> str:
    """``message`` with each API field it names (``rpm``, ``config.routing_key``) as the
    form's label for it; the API's own message, only its field names changed."""
    if not labels:
        return message
    names = "|".join(re.escape(n) for n in sorted(labels, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.])({names})(?!\w|\.\w)")
    return pattern.sub(lambda m: labels[m.group(1)], message)


def field_errors(
    exc: ValidationError | ValidationFailed, labels: Labels | None = None
) -> dict[str, str]:
    """``{field: message}`` for the form; the first error per field, the fields a message
    names in the form's ``labels``."""
    if isinstance(exc, ValidationFailed):
        field = exc.param or "form"
        message = exc.message.removeprefix(f"{field}: ")
        return {field: worded(message, labels or {})}
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
        field = ".".join(loc[:2]) if loc[:1] == ["categories"] else (loc[0] if loc else "form")
        out.setdefault(field, worded(error_message(err), labels or {}))
    return out


#: what a console form catches to show beside its fields (anything else is an error page)
INVALID = (ValidationError, ValidationFailed)


def typed(form: Mapping[str, Any]) -> dict[str, str]:
    """What was typed into a form (text fields only), to show again beside its errors."""
    return {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}


#: forms that pick a scope in one ``<select name="scope">`` (``team:…``, ``key:…``): the
#: API's ``scope_type`` / ``scope_id`` errors belong beside it
ONE_SCOPE = {"scope_type": "scope", "scope_id": "scope"}


def scope_fields(scope: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A ``<select name="scope">`` value (``team:t1``) as the API's ``scope_type`` and
    ``scope_id``, with the form's other ``fields``."""
    scope_type, _, scope_id = scope.partition(":")
    return {"scope_type": scope_type, "scope_id": scope_id, **fields}


@dataclass(frozen=True, slots=True)
class Refill:
    """A refused form sent back: the API's errors keyed by the input each belongs beside,
    and what was typed, keyed the same way."""

    errors: dict[str, str]
    values: dict[str, Any]


def _input(field: str, moved: Mapping[str, str]) -> str:
    for api_field, name in moved.items():
        if field == api_field or field.startswith(api_field + "."):
            return name
    return field


def refill(
    exc: ValidationError | ValidationFailed,
    typed_in: Mapping[str, Any],
    *,
    form: str = "",
    moved: Mapping[str, str] | None = None,
    labels: Labels | None = None,
) -> Refill:
    """``exc`` and ``typed_in`` as the page shows them again. ``moved``: an API field (or
    one inside it, ``config.routing_key``) whose errors stand beside an input of another
    name. ``form``: on a page with several forms, the one sent (keys ``<form>.<field>``).
    ``labels``: the form's words for the API fields its messages may name."""
    errors = {_input(k, moved or {}): v for k, v in field_errors(exc, labels).items()}
    values = dict(typed_in)
    if form:
        errors = {f"{form}.{k}": v for k, v in errors.items()}
        values = {f"{form}.{k}": v for k, v in values.items()}
    return Refill(errors, values)


def scope_refill(
    exc: ValidationError | ValidationFailed,
    scope: str,
    fields: Mapping[str, Any],
    labels: Labels | None = None,
) -> Refill:
    """A refused form that picked its scope in one select (:func:`scope_fields`): the
    scope's errors beside the select, and the choice kept."""
    return refill(exc, {"scope": scope, **fields}, moved=ONE_SCOPE, labels=labels)


async def form_page(
    request: Request,
    template: str,
    context: dict[str, Any],
    sent_back: Refill | None,
    shown: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
) -> HTMLResponse:
    """A page with forms: blank (or filled with ``shown``) and ``status``; or a refused
    form ``sent_back``, 422, its errors beside their inputs and what was typed in them."""
    errors = sent_back.errors if sent_back else {}
    values = (sent_back.values if sent_back else {}) or dict(shown or {})
    ctx = {**context, "errors": errors, "values": values}
    return await page(request, template, ctx, status=422 if errors else status)


#: an object's page, again with a refused form: ``(object id, request, svc, user, sent_back)``
ObjectPage = Callable[[str, Request, Services, SignedIn, Refill | None], Awaitable[HTMLResponse]]


@dataclass(frozen=True, slots=True)
class ObjectForm(Generic[M]):
    """A form on an object's page whose fields are the body (``model``) of one admin
    route that changes the object, ``step(object_id, body, svc, request, who, scope)``,
    called as a caller narrowed to ``permission``. Refused: ``on_page`` again (422)
    with the errors beside the fields of the form ``name``. Done: 303 to ``url``
    (``{}`` is the object's id)."""

    permission: Can
    model: type[M]
    step: Callable[[str, M, Services, Request, Principal, Scope], Awaitable[object]]
    on_page: ObjectPage
    url: str
    name: str = ""
    #: fields a blank sends as ``null`` ("remove"), as :func:`body_of` reads ``nulls``
    nulls: tuple[str, ...] = ()
    #: the form's words for the API fields its messages may name (:func:`worded`)
    labels: Labels | None = None

    async def submit(
        self,
        object_id: str,
        request: Request,
        svc: Services,
        user: SignedIn,
        fields: Mapping[str, Any],
        typed_in: Mapping[str, Any] | None = None,
    ) -> Response:
        """Send ``fields``; ``typed_in`` is what the form shows again if refused (when
        it is not ``fields`` as they are: a ticked box is ``"on"`` in the form)."""
        who = require(user, self.permission)
        try:
            body = body_of(self.model, fields, nulls=self.nulls)
            await self.step(object_id, body, svc, request, who, scope_for(svc, who))
        except INVALID as exc:
            typed_back = fields if typed_in is None else typed_in
            sent_back = refill(exc, typed_back, form=self.name, labels=self.labels)
            return await self.on_page(object_id, request, svc, user, sent_back)
        return done(request, self.url.format(object_id))
