"""``spendgate budgets|wallets|limits``: budgets, wallets and rate limits through the admin
API."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.markup import escape

from spendgate.cli.http import (
    DEFAULT_URL,
    JsonOpt,
    UrlOpt,
    admin_path,
    call,
    crud_group,
    given,
    opt_list,
    when,
)
from spendgate.cli.output import deleted, err_console, show, warnings

#: the API's fields as the options that set them, so a 422 names what the user typed
#: (``--amount: must be an amount in USD…``, not ``amount_usd: …``); plain words that
#: also read as prose (period, model, timezone) are left as they are
OPTIONS = {
    "scope_type": "--scope",
    "scope_id": "--scope-id",
    "org_id": "--org",
    "week_start": "--week-start",
    "amount_usd": "--amount",
    "alert_percentages": "--alerts",
    "soft_limit_percent": "--soft",
    "hard_limit_percent": "--hard-percent",
    "expires_at": "--expires-at",
    "initial_topup_usd": "--topup",
    "low_balance_usd": "--low-balance",
    "tickets_auto_approve_below_usd": "--auto-approve-below",
    "rpm": "--rpm",
    "tpm": "--tpm",
    "max_concurrent": "--concurrent",
    "max_spend_usd": "--spend",
    "spend_window_seconds": "--window",
}
BUDGET_COLUMNS = [
    "id",
    "name",
    "scope_type",
    "scope_id",
    "tag",
    "period",
    "timezone",
    "amount_usd",
    "alert_percentages",
    "soft_limit_percent",
    "hard_limit",
    "hard_limit_percent",
]
budgets = crud_group("budgets", "budgets", BUDGET_COLUMNS)
WALLET_COLUMNS = [
    "id",
    "name",
    "scope_type",
    "scope_id",
    "balance_usd",
    "reserved_usd",
    "low_balance_usd",
    "tickets",
    "status",
]
wallets = crud_group("wallets", "wallets", WALLET_COLUMNS)


def _percents(value: str | None) -> list[str] | None:
    return opt_list(value) if value is not None else None


@budgets.command("create")
def budgets_create(
    scope: Annotated[str, typer.Option(help="org|team|user|agent|key|tag")],
    amount: Annotated[str, typer.Option(help="USD per period, e.g. 500")],
    scope_id: Annotated[str | None, typer.Option("--scope-id")] = None,
    tag: Annotated[str | None, typer.Option()] = None,
    org: Annotated[str | None, typer.Option("--org", help="required for tag budgets")] = None,
    period: Annotated[str, typer.Option(help="daily|weekly|monthly")] = "monthly",
    timezone: Annotated[str, typer.Option(help="IANA zone")] = "UTC",
    week_start: Annotated[str, typer.Option()] = "monday",
    alerts: Annotated[str, typer.Option(help="alert percentages")] = "50,75,90",
    soft: Annotated[str, typer.Option(help="soft limit percent")] = "75",
    hard: Annotated[bool, typer.Option("--hard/--no-hard", help="block at the hard limit")] = False,
    hard_percent: Annotated[str, typer.Option(help="hard limit percent (e.g. 110)")] = "100",
    models: Annotated[str | None, typer.Option(help="count only these models (patterns)")] = None,
    providers: Annotated[str | None, typer.Option(help="count only these providers")] = None,
    name: Annotated[str | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a budget (observation only unless --hard)."""
    body = {
        "name": name,
        "scope_type": scope,
        "scope_id": scope_id,
        "tag": tag,
        "org_id": org,
        "period": period,
        "timezone": timezone,
        "week_start": week_start,
        "amount_usd": amount,
        "alert_percentages": opt_list(alerts),
        "soft_limit_percent": soft,
        "hard_limit": hard,
        "hard_limit_percent": hard_percent,
        "categories": {"models": opt_list(models), "providers": opt_list(providers)},
    }
    show(
        call(url, "POST", "/admin/budgets", json=given(body), options=OPTIONS),
        as_json,
        BUDGET_COLUMNS,
    )


@budgets.command("update")
def budgets_update(
    budget_id: str,
    amount: Annotated[str | None, typer.Option()] = None,
    alerts: Annotated[str | None, typer.Option()] = None,
    soft: Annotated[str | None, typer.Option()] = None,
    hard: Annotated[bool | None, typer.Option("--hard/--no-hard")] = None,
    hard_percent: Annotated[str | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Change a budget's amount or limits."""
    body = {
        "amount_usd": amount,
        "alert_percentages": _percents(alerts),
        "soft_limit_percent": soft,
        "hard_limit": hard,
        "hard_limit_percent": hard_percent,
    }
    show(
        call(
            url,
            "PATCH",
            admin_path("budgets", budget_id),
            json=given(body),
            options=OPTIONS,
        ),
        as_json,
        BUDGET_COLUMNS,
    )


@budgets.command("delete")
def budgets_delete(budget_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Delete a budget."""
    call(url, "DELETE", admin_path("budgets", budget_id))
    deleted(budget_id, as_json)


@budgets.command("status")
def budgets_status(budget_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """State (blocked, refusing, over_soft_limit, at_risk or ok), amount (with active
    exceptions), spent, reserved, thresholds fired and the next reset of a budget's
    current period."""
    data = call(url, "GET", admin_path("budgets", budget_id, "status"))
    if not as_json and data.get("forecast"):
        data = {
            **data,
            "forecast_p50_usd": data["forecast"]["p50_usd"],
            "forecast_percent": data["forecast"]["percent_of_budget"],
        }
    show(
        data,
        as_json,
        [
            "period_key",
            "state",
            "effective_amount_usd",
            "spent_usd",
            "reserved_usd",
            "percent_used",
            "hard_limit_usd",
            "remaining_to_hard_usd",
            "refusing_since",
            "refused_worst_case_usd",
            "thresholds_fired",
            "next_reset",
            "forecast_p50_usd",
            "forecast_percent",
        ],
    )


@budgets.command("except")
def budgets_except(
    budget_id: str,
    reason: Annotated[str, typer.Option()],
    expires_at: Annotated[str, typer.Option(help="ISO 8601, or from now: +12h, +1d, +2w")],
    amount: Annotated[str | None, typer.Option(help="extra USD")] = None,
    percent: Annotated[str | None, typer.Option(help="extra percent of the amount")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Grant a temporary raise that ends by itself at --expires-at."""
    body = {
        "amount_usd": amount,
        "percent": percent,
        "reason": reason,
        "expires_at": when(expires_at),
    }
    show(
        call(
            url,
            "POST",
            admin_path("budgets", budget_id, "exceptions"),
            json=given(body),
            options=OPTIONS,
        ),
        as_json,
        ["id", "amount_usd", "percent", "reason", "expires_at"],
        readable=_exception_readable,
    )


def _exception_readable(row: dict[str, Any]) -> dict[str, Any]:
    """An exception as the table shows it: the raise it grants, by amount or by percent;
    the other field, which the API answers as 0, left blank (not "0.00", as if the raise
    were nothing)."""
    unused = "amount_usd" if Decimal(row["amount_usd"]) == 0 else "percent"
    if Decimal(row[unused]) != 0:  # neither is 0: both as they are
        return row
    return {**row, unused: None}


def _show_wallet(wallet: dict[str, Any], as_json: bool) -> None:
    """The wallet, and (on the terminal) what it does to its scope's calls now."""
    show(wallet, as_json, WALLET_COLUMNS)
    if not as_json and wallet.get("notice"):
        err_console.print(f"[yellow]{escape(wallet['notice'])}[/]")
        err_console.print(
            f"[yellow]  spendgate wallets topup {escape(wallet['id'])} --amount <USD>[/]"
        )


TICKETS_HELP = "cost tickets: off | on (a refused call asks an approver) | auto"


@wallets.command("create")
def wallets_create(
    scope: Annotated[str, typer.Option(help="org|team|key")],
    scope_id: Annotated[str, typer.Option("--scope-id")],
    topup: Annotated[
        str | None,
        typer.Option(help="initial top-up in USD (without one, the scope's calls get 402)"),
    ] = None,
    low_balance: Annotated[str, typer.Option(help="warn below this balance (USD)")] = "0",
    name: Annotated[str | None, typer.Option()] = None,
    tickets: Annotated[str | None, typer.Option(help=TICKETS_HELP)] = None,
    auto_approve_below: Annotated[
        str | None, typer.Option(help="with --tickets auto: approve asks below this (USD)")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a prepaid wallet (one per scope); calls it covers are refused with 402 when
    it runs dry, and from the start if it is created without --topup."""
    body = {
        "scope_type": scope,
        "scope_id": scope_id,
        "initial_topup_usd": topup,
        "low_balance_usd": low_balance,
        "name": name,
        "tickets": tickets,
        "tickets_auto_approve_below_usd": auto_approve_below,
    }
    _show_wallet(
        call(url, "POST", "/admin/wallets", json=given(body), options=OPTIONS),
        as_json,
    )


@wallets.command("update")
def wallets_update(
    wallet_id: str,
    name: Annotated[str | None, typer.Option()] = None,
    low_balance: Annotated[str | None, typer.Option(help="warn below this balance (USD)")] = None,
    tickets: Annotated[str | None, typer.Option(help=TICKETS_HELP)] = None,
    auto_approve_below: Annotated[
        str | None, typer.Option(help="with --tickets auto: approve asks below this (USD)")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Rename a wallet, move its low-balance warning or set its cost tickets."""
    body = {
        "name": name,
        "low_balance_usd": low_balance,
        "tickets": tickets,
        "tickets_auto_approve_below_usd": auto_approve_below,
    }
    _show_wallet(
        call(
            url,
            "PATCH",
            admin_path("wallets", wallet_id),
            json=given(body),
            options=OPTIONS,
        ),
        as_json,
    )


@wallets.command("close")
def wallets_close(wallet_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Close a wallet: it stops funding and refusing calls and takes no more top-ups; its
    history stays readable, and its scope may get a new wallet."""
    show(call(url, "POST", admin_path("wallets", wallet_id, "close")), as_json, WALLET_COLUMNS)


@wallets.command("topup")
def wallets_topup(
    wallet_id: str,
    amount: Annotated[str, typer.Option()],
    note: Annotated[str, typer.Option()] = "",
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Add funds to a wallet."""
    show(
        call(
            url,
            "POST",
            admin_path("wallets", wallet_id, "topups"),
            json={"amount_usd": amount, "note": note},
            options=OPTIONS,
        ),
        as_json,
        ["id", "wallet_id", "amount_usd", "note", "created_at"],
    )


LIMIT_COLUMNS = [
    "id",
    "scope_type",
    "scope_id",
    "model",
    "rpm",
    "tpm",
    "max_concurrent",
    "max_spend_usd",
    "spend_window_seconds",
]


def _limit_readable(row: dict[str, Any]) -> dict[str, Any]:
    """A rate limit as the table shows it: no spend window without a spend cap (the API
    answers its default window all the same; it means nothing there)."""
    if row.get("max_spend_usd") is None:
        return {**row, "spend_window_seconds": None}
    return row


limits = crud_group("limits", "rate-limits", LIMIT_COLUMNS, _limit_readable)


@limits.command("create")
def limits_create(
    scope: Annotated[str, typer.Option(help="key|team")],
    scope_id: Annotated[str, typer.Option("--scope-id")],
    model: Annotated[str, typer.Option(help="model name or pattern, e.g. gpt-5*-mini or *")] = "*",
    rpm: Annotated[int | None, typer.Option(help="requests per minute")] = None,
    tpm: Annotated[int | None, typer.Option(help="tokens per minute")] = None,
    concurrent: Annotated[int | None, typer.Option(help="calls in flight at once")] = None,
    spend: Annotated[str | None, typer.Option(help="max USD per spend window")] = None,
    window: Annotated[int, typer.Option(help="spend window in seconds")] = 600,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Limit a key or team on a model: rpm, tpm, concurrency, spend velocity."""
    body = {
        "scope_type": scope,
        "scope_id": scope_id,
        "model": model,
        "rpm": rpm,
        "tpm": tpm,
        "max_concurrent": concurrent,
        "max_spend_usd": spend,
        "spend_window_seconds": window,
    }
    made = call(url, "POST", "/admin/rate-limits", json=given(body), options=OPTIONS)
    show(made, as_json, LIMIT_COLUMNS, readable=_limit_readable)
    warnings(made)


@limits.command("update")
def limits_update(
    limit_id: str,
    rpm: Annotated[int | None, typer.Option()] = None,
    tpm: Annotated[int | None, typer.Option()] = None,
    concurrent: Annotated[int | None, typer.Option()] = None,
    spend: Annotated[str | None, typer.Option()] = None,
    window: Annotated[int | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Change a rate limit."""
    body = {
        "rpm": rpm,
        "tpm": tpm,
        "max_concurrent": concurrent,
        "max_spend_usd": spend,
        "spend_window_seconds": window,
    }
    changed = call(
        url, "PATCH", admin_path("rate-limits", limit_id), json=given(body), options=OPTIONS
    )
    show(changed, as_json, LIMIT_COLUMNS, readable=_limit_readable)
    warnings(changed)


@limits.command("delete")
def limits_delete(limit_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Remove a rate limit."""
    call(url, "DELETE", admin_path("rate-limits", limit_id))
    deleted(limit_id, as_json)
