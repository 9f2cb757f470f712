"""``/wallets``: prepaid balances — balance, reserved, low-balance level, days to empty at
the current rate, the history of top-ups and daily debits; create, top up (audited),
change the low-balance level, close.

Every action is the admin API's route function (``spendgate.admin.wallets``) called with
the signed-in caller narrowed to ``wallets.read`` / ``wallets.write``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import schemas as s
from spendgate.admin import wallets as api
from spendgate.admin.routes import list_keys
from spendgate.console.admin_forms import body_of, done
from spendgate.console.forms import (
    INVALID,
    ObjectForm,
    Refill,
    form_page,
    scope_fields,
    scope_refill,
)
from spendgate.console.layout import Svc, User, require, scope_for
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.core.runway import days_to_empty
from spendgate.services import Services
from spendgate.store.console_auth import SignedIn

router = APIRouter(include_in_schema=False)
#: the days the current rate of spend is measured over
RATE_DAYS = 7
#: the days of debits the wallet page lists
HISTORY_DAYS = 30


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), UTC)


async def _paid(svc: Services, wallet_id: str, days: list[date]) -> list[int]:
    """What the wallet paid for the calls of each UTC day ``days[i]`` up to ``days[i +
    1]``: the figure its balance counts, day by day (``PolicyStore.wallet_history``), so
    nothing from before it opened or after it closed, and nothing a ticket's grant paid
    for."""
    await svc.ledger.flush()
    row = await svc.policies.get_wallet(wallet_id)
    bounds = [_midnight(day) for day in days]
    return await svc.policies.wallet_history(api.wallet_of(row), row["closed_at"], bounds)


async def _daily_debits(svc: Services, wallet: dict[str, Any], days: int) -> dict[date, int]:
    """What the wallet paid per UTC day over the last ``days`` (today the last)."""
    tomorrow = svc.clock.now().astimezone(UTC).date() + timedelta(days=1)
    edges = [tomorrow - timedelta(days=back) for back in range(days, -1, -1)]
    return dict(zip(edges[:-1], await _paid(svc, wallet["id"], edges), strict=True))


async def _runway(svc: Services, wallet: dict[str, Any]) -> Decimal | None:
    if wallet["status"] != "open":
        return None
    now = svc.clock.now()
    age_days = max(1, (now - wallet["created_at"]).days + 1)
    window = min(RATE_DAYS, age_days)
    tomorrow = now.astimezone(UTC).date() + timedelta(days=1)
    [spent] = await _paid(svc, wallet["id"], [tomorrow - timedelta(days=window), tomorrow])
    balance = usd_to_nanos(Decimal(wallet["balance_usd"]))
    return days_to_empty(balance, spent, window)


async def _scopes(svc: Services, user: Any) -> dict[str, Any]:
    """What the caller may open a wallet for: their org, its teams and keys."""
    who = require(user, Can.WALLETS_WRITE)
    teams = [
        t
        for t in await svc.directory.list_teams(who.org_id)
        if who.sees(Owner.of(t["org_id"], t["id"]))
    ]
    keys_reader = who.acting_for(Can.KEYS_READ) if who.may(Can.KEYS_READ) else None
    keys = await list_keys(svc, keys_reader, who.org_id) if keys_reader else []
    return {"org_id": who.org_id, "teams": teams, "key_choices": keys}


@router.get("/wallets")
async def wallets_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _wallets_page(request, svc, user)


async def _wallets_page(
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.WALLETS_READ)
    rows = await api.list_wallets(svc, who, scope_for(svc, who), who.org_filter(None))
    wallets = [{"row": w, "runway": await _runway(svc, w)} for w in rows]
    labels = {w["id"]: await api.scope_label(svc, w["scope_type"], w["scope_id"]) for w in rows}
    ctx: dict[str, Any] = {"wallets": wallets, "labels": labels}
    if user.principal.may(Can.WALLETS_WRITE):
        ctx["form"] = await _scopes(svc, user)
    return await form_page(request, "wallets/list.html", ctx, sent_back)


@router.post("/wallets")
async def create_wallet(
    request: Request,
    svc: Svc,
    user: User,
    scope: Annotated[str, Form(max_length=100)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    low_balance_usd: Annotated[str, Form(max_length=40)] = "",
    initial_topup_usd: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    who = require(user, Can.WALLETS_WRITE)
    fields = {
        "name": name,
        "low_balance_usd": low_balance_usd,
        "initial_topup_usd": initial_topup_usd,
    }
    try:
        body = body_of(s.WalletIn, scope_fields(scope, fields))
        wallet = await api.create_wallet(body, svc, request, who, scope_for(svc, who))
    except INVALID as exc:
        sent_back = scope_refill(exc, scope, fields)
        return await _wallets_page(request, svc, user, sent_back)
    return done(request, f"/wallets/{wallet['id']}")


@router.get("/wallets/{wallet_id}")
async def wallet_page(wallet_id: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    return await _wallet_page(wallet_id, request, svc, user)


async def _wallet_page(
    wallet_id: str,
    request: Request,
    svc: Services,
    user: SignedIn,
    sent_back: Refill | None = None,
) -> HTMLResponse:
    who = require(user, Can.WALLETS_READ)
    scope = scope_for(svc, who)
    wallet = await api.get_wallet(wallet_id, svc, scope)
    topups = await api.list_topups(wallet_id, svc, scope)
    debits = await _daily_debits(svc, wallet, HISTORY_DAYS)
    history = sorted(
        [("top-up", t["created_at"], t["amount_usd"], t["note"], t["created_by"]) for t in topups]
        + [
            ("debit", datetime.combine(d, datetime.min.time(), UTC), format_usd(n), "spend", "")
            for d, n in debits.items()
            if n
        ],
        key=lambda h: h[1],
        reverse=True,
    )
    owner = await scope.of_policy(wallet)
    ctx = {
        "wallet": wallet,
        "label": await api.scope_label(svc, wallet["scope_type"], wallet["scope_id"]),
        "history": history,
        "runway": await _runway(svc, wallet),
        "history_days": HISTORY_DAYS,
        "rate_days": RATE_DAYS,
        "may_write": owner is not None and user.principal.can(Can.WALLETS_WRITE, owner),
    }
    shown = {"name": wallet["name"] or "", "low_balance_usd": str(wallet["low_balance_usd"])}
    return await form_page(request, "wallets/detail.html", ctx, sent_back, shown)


TOP_UP = ObjectForm(Can.WALLETS_WRITE, s.TopupIn, api.top_up, _wallet_page, "/wallets/{}")
EDIT = ObjectForm(Can.WALLETS_WRITE, s.WalletPatch, api.update_wallet, _wallet_page, "/wallets/{}")


@router.post("/wallets/{wallet_id}/topups")
async def top_up(
    wallet_id: str,
    request: Request,
    svc: Svc,
    user: User,
    amount_usd: Annotated[str, Form(max_length=40)] = "",
    note: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    fields = {"amount_usd": amount_usd, "note": note}
    return await TOP_UP.submit(wallet_id, request, svc, user, fields)


@router.post("/wallets/{wallet_id}")
async def update_wallet(
    wallet_id: str,
    request: Request,
    svc: Svc,
    user: User,
    name: Annotated[str, Form(max_length=200)] = "",
    low_balance_usd: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    fields = {"name": name, "low_balance_usd": low_balance_usd}
    return await EDIT.submit(wallet_id, request, svc, user, fields)


@router.post("/wallets/{wallet_id}/close")
async def close_wallet(wallet_id: str, request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.WALLETS_WRITE)
    await api.close_wallet(wallet_id, svc, request, who, scope_for(svc, who))
    return done(request, f"/wallets/{wallet_id}")
