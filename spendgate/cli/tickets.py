"""``spendgate tickets``: the cost-ticket queue (list, get) and the approver's decisions
(approve, deny), over the admin API like every other group."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from spendgate.cli.http import DEFAULT_URL, JsonOpt, UrlOpt, admin_path, call
from spendgate.cli.output import show

tickets = typer.Typer(
    help="Cost tickets: calls a wallet could not fund, asking for funding.", no_args_is_help=True
)

COLUMNS = [
    "id",
    "status",
    "wallet",
    "key",
    "team_id",
    "asked_usd",
    "refusals",
    "balance_usd",
    "recent_spend_usd",
    "granted_usd",
    "used_usd",
    "expires_at",
    "reason",
]


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    """The wallet and key as short text for the table."""
    wallet = row.get("wallet") or {}
    return {
        **row,
        "wallet": f"{wallet.get('name')} ({wallet.get('id')})",
        "balance_usd": wallet.get("balance_usd"),
        "key": f"{row.get('key_name')} ({row.get('key_id')})",
    }


def _show(row: dict[str, Any], as_json: bool) -> None:
    show(row if as_json else _readable(row), as_json, COLUMNS)


@tickets.command("list")
def list_(
    status: Annotated[
        str, typer.Option(help="open|approved|denied|expired|superseded|all")
    ] = "open",
    wallet: Annotated[str | None, typer.Option("--wallet", help="a wallet id")] = None,
    limit: Annotated[int, typer.Option()] = 100,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """The queue: open tickets (or --status …), newest refusal first."""
    params: dict[str, Any] = {"status": status, "limit": limit}
    if wallet:
        params["wallet_id"] = wallet
    rows = call(url, "GET", "/admin/tickets", params=params)
    show(rows if as_json else [_readable(r) for r in rows], as_json, COLUMNS)


@tickets.command("get")
def get(ticket_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """One ticket: who asked, how much, the wallet's state, the grant."""
    _show(call(url, "GET", admin_path("tickets", ticket_id)), as_json)


@tickets.command("approve")
def approve(
    ticket_id: str,
    reason: Annotated[str, typer.Option(help="why it is funded (audited, sent in events)")],
    amount: Annotated[
        str | None, typer.Option(help="USD to grant (default: what was asked)")
    ] = None,
    more_than_asked: Annotated[
        bool, typer.Option("--more-than-asked", help="allow an amount above the ask")
    ] = False,
    hours: Annotated[int | None, typer.Option(help="how long the grant lasts (default 24)")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Fund the requester once; unused funding returns when the grant expires."""
    body: dict[str, Any] = {"reason": reason, "more_than_asked": more_than_asked}
    if amount is not None:
        body["amount_usd"] = amount
    if hours is not None:
        body["expires_in_hours"] = hours
    path = admin_path("tickets", ticket_id, "approve")
    options = {"amount_usd": "--amount", "expires_in_hours": "--hours"}
    _show(call(url, "POST", path, json=body, options=options), as_json)


@tickets.command("deny")
def deny(
    ticket_id: str,
    reason: Annotated[str, typer.Option(help="what the requester is told")],
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Refuse: the requester's next refused call says denied, and why."""
    _show(
        call(url, "POST", admin_path("tickets", ticket_id, "deny"), json={"reason": reason}),
        as_json,
    )
