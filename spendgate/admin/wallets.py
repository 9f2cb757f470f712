"""Admin routes for wallets: prepaid balances of an org, team or key, with top-ups.

One open wallet per scope: a second ``POST`` for the same scope is 409 naming the one it
has (two wallets would both have to fund every call, so an empty second one refused the
scope's traffic). A wallet is changed with ``PATCH`` (name, low-balance level) and ended
with ``POST …/close``: a closed wallet funds and refuses no call from then on, takes no
top-up, and stays readable with its top-ups and spend; its scope may get a new wallet.

A wallet with nothing left refuses its scope's calls with 402: every answer says so in
``notice``, so ``wallets create`` without a top-up is never a silent outage.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, Request

from spendgate.admin import schemas as s
from spendgate.admin.deps import Scope, Scoped, Svc, Who, audit, guard, org_asked, principal
from spendgate.admin.policies import scope_name, scope_owner
from spendgate.core.access import Can, Owner
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.errors import Conflict, ValidationFailed
from spendgate.guard.enforcement import wallet_bucket
from spendgate.services import Services
from spendgate.store.policies import Wallet

router = APIRouter(
    prefix="/admin", dependencies=[Depends(principal)], responses=s.ERRORS, tags=["wallets"]
)


def wallet_of(row: dict[str, Any]) -> Wallet:
    return Wallet(
        row["id"],
        row["org_id"],
        row["scope_type"],
        row["scope_id"],
        int(row["low_balance_nanos"]),
        row["created_at"],
        name=row["name"],
    )


async def scope_label(svc: Services, scope_type: str, scope_id: str) -> str:
    """``team "search" (team_…)``: how a person recognises the wallet's scope."""
    name = await scope_name(svc, scope_type, scope_id)
    if name is None:
        return f"{scope_type} {scope_id}"
    return f'{scope_type} "{name}" ({scope_id})'


def refusal_notice(wallet_id: str, balance_nanos: int, label: str) -> str:
    """What an open wallet with nothing left does to its scope's calls."""
    return (
        f"balance ${format_usd(balance_nanos)}: calls from {label} get 402 insufficient_funds "
        f"until wallet {wallet_id} is topped up (POST /admin/wallets/{wallet_id}/topups)"
    )


async def wallet_out(svc: Services, row: dict[str, Any]) -> dict[str, Any]:
    wallet = wallet_of(row)
    closed = row.get("closed_at") is not None
    if closed:  # what it funded, from the ledger: a live counter (re-)seeded now would
        # also count its scope's calls since the close
        await svc.ledger.flush()
        spent, _ = await svc.policies.wallet_spend(wallet, row["closed_at"])
        reserved, cap = 0, await svc.policies.funds(wallet)
    else:
        await svc.enforcer.seed_wallet(wallet)
        state = await svc.counters.state(wallet_bucket(wallet))
        spent, reserved = (state.spent, state.reserved) if state else (0, 0)
        cap = (state.cap or 0) if state else 0
    notice = None
    if not closed and cap - spent <= 0:
        label = await scope_label(svc, wallet.scope_type, wallet.scope_id)
        notice = refusal_notice(wallet.id, cap - spent, label)
    auto_below = row.get("ticket_auto_below_nanos")
    return {
        **{k: v for k, v in row.items() if k != "low_balance_nanos"},
        "tickets": row.get("ticket_mode") or "off",
        "tickets_auto_approve_below_usd": None if auto_below is None else format_usd(auto_below),
        "low_balance_usd": format_usd(wallet.low_balance_nanos),
        "topped_up_usd": format_usd(cap),
        "spent_usd": format_usd(spent),
        "reserved_usd": format_usd(reserved),
        "balance_usd": format_usd(cap - spent),
        "status": "closed" if closed else "open",
        "notice": notice,
    }


def ticket_settings(
    mode: str, auto_below: Decimal | None, given: set[str], before: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The wallet columns for its cost-ticket setting; 422 for ``auto`` without an amount
    (an amount is kept with ``on``/``off`` and used once the wallet is set to ``auto``)."""
    values: dict[str, Any] = {}
    if "tickets" in given:
        values["ticket_mode"] = mode
    if "tickets_auto_approve_below_usd" in given:
        values["ticket_auto_below_nanos"] = None if auto_below is None else usd_to_nanos(auto_below)
    merged = {**(before or {}), **values}
    if merged.get("ticket_mode", "off") == "auto" and merged.get("ticket_auto_below_nanos") is None:
        raise ValidationFailed(
            "tickets_auto_approve_below_usd: required when tickets is auto",
            param="tickets_auto_approve_below_usd",
        )
    return values


def _audited(row: dict[str, Any]) -> dict[str, Any]:
    """A wallet's row as its audit entries show it."""
    out = {k: v for k, v in row.items() if k != "low_balance_nanos"}
    out["low_balance_usd"] = format_usd(int(row["low_balance_nanos"]))
    return out


async def wallet_in_scope(scope: Scope, wallet_id: str) -> tuple[dict[str, Any], Owner]:
    row = await scope.svc.policies.get_wallet(wallet_id)
    return row, scope.require(await scope.of_policy(row), "wallet", wallet_id)


@router.post(
    "/wallets",
    response_model=s.WalletOut,
    status_code=201,
    dependencies=guard(Can.WALLETS_WRITE),
)
async def create_wallet(
    body: s.WalletIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """A wallet for a scope that has none open (else 409 naming it). Without
    ``initial_topup_usd`` its balance is $0 and the scope's calls get 402 until a top-up:
    the answer's ``notice`` says so."""
    owner = await scope_owner(scope, body.scope_type, body.scope_id, None, None)
    named = await scope_name(svc, body.scope_type, body.scope_id) or body.scope_id
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        row = await svc.policies.create_wallet(
            conn,
            {
                "org_id": owner.org_id,
                "name": body.name or f"{body.scope_type} {named}",
                "scope_type": body.scope_type,
                "scope_id": body.scope_id,
                "low_balance_nanos": usd_to_nanos(body.low_balance_usd),
                "created_at": now,
                **ticket_settings(
                    body.tickets,
                    body.tickets_auto_approve_below_usd,
                    {"tickets", "tickets_auto_approve_below_usd"},
                ),
            },
        )
        if body.initial_topup_usd:
            await svc.policies.add_topup(
                conn,
                {
                    "wallet_id": row["id"],
                    "amount_nanos": usd_to_nanos(body.initial_topup_usd),
                    "note": "initial top-up",
                    "created_by": who.actor,
                    "created_at": now,
                },
            )
        await audit(
            conn,
            request,
            who,
            "wallet.created",
            "wallet",
            row["id"],
            now,
            owner=owner,
            after={**row, "initial_topup_usd": body.initial_topup_usd},
        )
    await svc.enforcer.policy_changed()
    return await wallet_out(svc, row)


@router.get("/wallets", response_model=list[s.WalletOut], dependencies=guard(Can.WALLETS_READ))
async def list_wallets(
    svc: Svc, who: Who, scope: Scoped, org_id: str | None = None
) -> list[dict[str, Any]]:
    """Open and closed wallets (``status``), oldest first."""
    rows = await svc.policies.list_wallets(await org_asked(svc, who, org_id))
    return [await wallet_out(svc, r) for r in await scope.filter(rows, scope.of_policy)]


@router.get(
    "/wallets/{wallet_id}", response_model=s.WalletOut, dependencies=guard(Can.WALLETS_READ)
)
async def get_wallet(wallet_id: str, svc: Svc, scope: Scoped) -> dict[str, Any]:
    return await wallet_out(svc, (await wallet_in_scope(scope, wallet_id))[0])


@router.patch(
    "/wallets/{wallet_id}", response_model=s.WalletOut, dependencies=guard(Can.WALLETS_WRITE)
)
async def update_wallet(
    wallet_id: str, body: s.WalletPatch, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Rename an open wallet or move its low-balance level (409 once closed). A level
    raised above the balance fires ``wallet.low_balance`` at once (``already_past``),
    unless it fired since the last top-up."""
    _, owner = await wallet_in_scope(scope, wallet_id)
    now = svc.clock.now()
    changes: dict[str, Any] = {"updated_at": now}
    if body.name is not None:
        changes["name"] = body.name
    if body.low_balance_usd is not None:
        changes["low_balance_nanos"] = usd_to_nanos(body.low_balance_usd)
    async with svc.engine.begin() as conn:
        before = await svc.policies.get_wallet(wallet_id, conn)
        changes.update(
            ticket_settings(
                body.tickets or "off",
                body.tickets_auto_approve_below_usd,
                set(body.model_fields_set),
                before,
            )
        )
        await svc.policies.update_wallet(conn, wallet_id, changes)
        after = {**before, **changes}
        await audit(
            conn,
            request,
            who,
            "wallet.updated",
            "wallet",
            wallet_id,
            now,
            owner=owner,
            before=_audited(before),
            after=_audited(after),
        )
    await svc.enforcer.policy_changed()
    if after["low_balance_nanos"] > before["low_balance_nanos"] and svc.sweeper is not None:
        # a low mark raised above the balance: the balance went through it since the
        # last top-up, as a settle would have, so it warns now (once per top-up)
        await svc.sweeper.sweep(wallet_ids={wallet_id}, already_past=True)
    return await wallet_out(svc, after)


@router.post(
    "/wallets/{wallet_id}/close",
    response_model=s.WalletOut,
    dependencies=guard(Can.WALLETS_WRITE),
)
async def close_wallet(
    wallet_id: str, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """From now on the wallet funds and refuses no call and takes no top-up; it stays
    readable (top-ups, spend, audit), and its scope may get a new wallet. 409 if closed."""
    _, owner = await wallet_in_scope(scope, wallet_id)
    now = svc.clock.now()
    async with svc.engine.begin() as conn:
        before = await svc.policies.get_wallet(wallet_id, conn)
        if before["closed_at"] is not None:
            raise Conflict(f"wallet {wallet_id} is already closed")
        changes = {"closed_at": now, "updated_at": now}
        await svc.policies.update_wallet(conn, wallet_id, changes)
        after = {**before, **changes}
        await audit(
            conn,
            request,
            who,
            "wallet.closed",
            "wallet",
            wallet_id,
            now,
            owner=owner,
            before=_audited(before),
            after=_audited(after),
        )
    await svc.enforcer.policy_changed()
    return await wallet_out(svc, after)


@router.post(
    "/wallets/{wallet_id}/topups",
    response_model=s.TopupOut,
    status_code=201,
    dependencies=guard(Can.WALLETS_WRITE),
)
async def top_up(
    wallet_id: str, body: s.TopupIn, svc: Svc, request: Request, who: Who, scope: Scoped
) -> dict[str, Any]:
    """Add funds to an open wallet (409 once closed)."""
    row, owner = await wallet_in_scope(scope, wallet_id)
    wallet = wallet_of(row)
    await svc.enforcer.seed_wallet(wallet)
    amount = usd_to_nanos(body.amount_usd)
    async with svc.engine.begin() as conn:
        topup = await svc.policies.add_topup(
            conn,
            {
                "wallet_id": wallet_id,
                "amount_nanos": amount,
                "note": body.note,
                "created_by": who.actor,
                "created_at": svc.clock.now(),
            },
        )
        await audit(
            conn,
            request,
            who,
            "wallet.topped_up",
            "wallet",
            wallet_id,
            svc.clock.now(),
            owner=owner,
            after={"topup_id": topup["id"], "amount_usd": format_usd(amount), "note": body.note},
        )
    await svc.counters.add_cap(wallet_bucket(wallet), amount)
    return {
        **{k: v for k, v in topup.items() if k != "amount_nanos"},
        "amount_usd": format_usd(amount),
    }


@router.get(
    "/wallets/{wallet_id}/topups",
    response_model=list[s.TopupOut],
    dependencies=guard(Can.WALLETS_READ),
)
async def list_topups(wallet_id: str, svc: Svc, scope: Scoped) -> list[dict[str, Any]]:
    await wallet_in_scope(scope, wallet_id)
    return [
        {
            **{k: v for k, v in t.items() if k != "amount_nanos"},
            "amount_usd": format_usd(int(t["amount_nanos"])),
        }
        for t in await svc.policies.list_topups(wallet_id)
    ]
