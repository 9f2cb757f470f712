"""``/allocation-rules``: how spend no team owns is shared out on chargeback statements
(list, create, delete after a confirmation page), linked from ``/statements``.

Every read and change is the admin API's route function (``spendgate.admin.statements``:
``list_rules``, ``create_rule``, ``delete_rule``) with the signed-in caller narrowed to
``statements.read`` (the list) or ``allocations.write`` (create, delete): the same
validation (``RuleIn`` and the share checks of ``core.chargeback``), org scoping (another
org's rule is 404) and audit entries as ``/admin/allocation-rules``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData

from spendgate.admin import statements as api
from spendgate.console.admin_forms import done
from spendgate.console.forms import INVALID, Refill, form_page, refill, typed
from spendgate.console.layout import Svc, User, page, require
from spendgate.core.access import Can
from spendgate.core.chargeback import METHODS
from spendgate.errors import NotFound
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)
#: the form's field for a team's fixed percentage
PERCENT = "percent."


async def _teams(svc: Services, user: SignedIn) -> list[dict[str, Any]]:
    teams = await svc.directory.list_teams(str(user.principal.org_id))
    return sorted(teams, key=lambda t: (str(t["name"]), str(t["id"])))


async def _rules_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
    ticked: set[str] | None = None,
) -> HTMLResponse:
    who = require(user, Can.STATEMENTS_READ)
    teams = await _teams(svc, user)
    ctx = {
        "rules": await api.list_rules(svc, who, None),
        "teams": teams,
        "team_names": {t["id"]: t["name"] for t in teams},
        "methods": METHODS,
        "may_write": user.principal.may(Can.ALLOCATIONS_WRITE),
        "ticked": ticked or set(),
    }
    shown = {"method": "proportional", "position": "0"}
    return await form_page(request, "statements/rules.html", ctx, sent_back, shown)


@router.get("/allocation-rules")
async def rules_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _rules_page(request, svc, user)


def _rule_body(form: FormData, teams: list[dict[str, Any]]) -> tuple[dict[str, Any], set[str]]:
    """The API body a rule form stands for: a team is in ``shares`` when ticked or given
    a percentage (the percentage is sent as typed: the API says whether the method takes
    one). Nothing ticked and no percentage: every team."""
    ticked = {str(v) for v in form.getlist("team")}
    shares: dict[str, str] = {}
    for team in teams:
        percent = str(form.get(PERCENT + team["id"], "")).strip()
        if team["id"] in ticked or percent:
            shares[team["id"]] = percent
    unknown = ticked - {t["id"] for t in teams}
    for team_id in sorted(unknown):  # a forged id: the API names it
        shares[team_id] = ""
    tag = str(form.get("tag", "")).strip()
    body = {
        "method": str(form.get("method", "")),
        "tag": tag or None,
        "position": str(form.get("position", "")).strip() or "0",
        "shares": shares,
    }
    return body, ticked


@router.post("/allocation-rules")
async def create_rule(request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.ALLOCATIONS_WRITE)
    form = await request.form()
    body, ticked = _rule_body(form, await _teams(svc, user))
    try:
        created = await api.create_rule(api.RuleIn.model_validate(body), svc, request, who)
    except INVALID as exc:
        return await _rules_page(request, svc, user, refill(exc, typed(form)), ticked)
    return done(request, f"/allocation-rules#rule-{created['id']}")


async def _rule(svc: Services, user: SignedIn, rule_id: str) -> dict[str, Any]:
    """The rule as the API lists it to a writer (404 when not in the caller's org)."""
    who = require(user, Can.ALLOCATIONS_WRITE)
    for rule in await api.list_rules(svc, who, None):
        if rule["id"] == rule_id:
            return rule
    raise NotFound(f"allocation rule {rule_id} not found")


@router.get("/allocation-rules/{rule_id}/delete")
async def delete_confirm(rule_id: str, request: Request, svc: Svc, user: User) -> Response:
    rule = await _rule(svc, user, rule_id)
    names = {t["id"]: t["name"] for t in await _teams(svc, user)}
    return await page(request, "statements/rule_delete.html", {"rule": rule, "team_names": names})


@router.post("/allocation-rules/{rule_id}/delete")
async def delete_rule(rule_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.ALLOCATIONS_WRITE)
    await api.delete_rule(rule_id, svc, request, who)
    return done(request, "/allocation-rules")
