"""The ``spendgate`` command: serve the gateway, migrate, and drive the admin API."""

from __future__ import annotations

import os
import secrets
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

from spendgate.audit_cli import audit_app
from spendgate.cli_http import DEFAULT_URL, JsonOpt, UrlOpt, console, err_console
from spendgate.cli_http import call as _call
from spendgate.cli_http import show as _show
from spendgate.webhooks_cli import webhooks_app

app = typer.Typer(help="spendgate: an LLM API gateway for AI cost governance.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(audit_app, name="audit")



@app.command()
def serve(
    demo: Annotated[bool, typer.Option(help="Add the simulated provider (demo-small, demo-large)")] = False,
    config: Annotated[str | None, typer.Option("--config", envvar="SPENDGATE_CONFIG")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 4100,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Run the gateway (SQLite and in-process state unless configured otherwise)."""
    import uvicorn

    from spendgate.errors import ConfigError
    from spendgate.settings import load_settings

    if config:
        os.environ["SPENDGATE_CONFIG"] = config
    os.environ["SPENDGATE_DEMO"] = "1" if demo else "0"
    if not os.environ.get("SPENDGATE_MASTER_KEY"):
        os.environ["SPENDGATE_MASTER_KEY"] = "sg-master-" + secrets.token_urlsafe(24)
        err_console.print("[yellow]SPENDGATE_MASTER_KEY is not set; generated one for this run:[/]")
        err_console.print(f"  export SPENDGATE_MASTER_KEY={os.environ['SPENDGATE_MASTER_KEY']}")
    try:
        settings = load_settings(demo=demo, host=host, port=port)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from exc
    if workers > 1 and not settings.redis_url:
        err_console.print("[red]--workers > 1 needs SPENDGATE_REDIS_URL:[/] budget, wallet and "
                          "rate-limit counters live in each process otherwise, and caps would "
                          "not hold across workers.")
        raise typer.Exit(2)
    if demo:
        err_console.print("[cyan]demo mode:[/] models demo-small and demo-large come from the "
                          "SIMULATED provider (deterministic fake replies, real prices).")
    err_console.print(f"spendgate listening on http://{settings.host}:{settings.port} "
                      f"(database {settings.database_url})")
    uvicorn.run("spendgate.app:app_from_env", factory=True, host=settings.host, port=settings.port,
                workers=workers, loop="auto", http="auto", lifespan="on", access_log=False,
                log_level="info", timeout_graceful_shutdown=30, server_header=False,
                proxy_headers=False)


@db_app.command("migrate")
def db_migrate(
    revision: Annotated[str, typer.Argument()] = "head",
    database_url: Annotated[str, typer.Option("--database-url", envvar="SPENDGATE_DATABASE_URL")]
    = "sqlite:///spendgate.db",
) -> None:
    """Apply the Alembic migrations to the database."""
    from spendgate.store.database import migrate_url

    migrate_url(database_url, revision)
    console.print(f"database at {revision}: {database_url}")


# -- admin API client ------------------------------------------------------------------------
def _crud(name: str, path: str, columns: list[str]) -> typer.Typer:
    group = typer.Typer(help=f"Manage {name}.", no_args_is_help=True)

    @group.command("list")
    def list_(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
        """List them."""
        _show(_call(url, "GET", path), as_json, columns)

    @group.command("get")
    def get(object_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
        """Show one by id."""
        _show(_call(url, "GET", f"{path}/{object_id}"), as_json, columns)

    app.add_typer(group, name=name)
    return group


def _opt_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


orgs = _crud("orgs", "/admin/orgs", ["id", "name", "created_at"])
teams = _crud("teams", "/admin/teams", ["id", "org_id", "name"])
users = _crud("users", "/admin/users", ["id", "org_id", "email", "role", "team_ids"])
agents = _crud("agents", "/admin/agents", ["id", "org_id", "team_id", "name"])
KEY_COLUMNS = ["id", "name", "key_prefix", "org_id", "team_id", "tags", "status", "expires_at"]
keys = _crud("keys", "/admin/keys", KEY_COLUMNS)


@orgs.command("create")
def orgs_create(name: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Create an org."""
    _show(_call(url, "POST", "/admin/orgs", json={"name": name}), as_json, ["id", "name"])


@teams.command("create")
def teams_create(name: str, org: Annotated[str, typer.Option("--org")], url: UrlOpt = DEFAULT_URL,
                 as_json: JsonOpt = False) -> None:
    """Create a team in an org."""
    _show(_call(url, "POST", "/admin/teams", json={"name": name, "org_id": org}), as_json,
          ["id", "org_id", "name"])


@users.command("create")
def users_create(
    email: str,
    role: Annotated[str, typer.Option()] = "member",
    teams_: Annotated[str | None, typer.Option("--teams", help="comma separated team ids")] = None,
    org: Annotated[str | None, typer.Option("--org")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a user."""
    body = {"email": email, "role": role, "team_ids": _opt_list(teams_), "org_id": org}
    _show(_call(url, "POST", "/admin/users", json=body), as_json, ["id", "email", "role", "team_ids"])


@agents.command("create")
def agents_create(
    name: str,
    team: Annotated[str | None, typer.Option("--team")] = None,
    org: Annotated[str | None, typer.Option("--org")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create an agent (a workflow or bot that calls models)."""
    body = {"name": name, "team_id": team, "org_id": org}
    _show(_call(url, "POST", "/admin/agents", json=body), as_json, ["id", "org_id", "team_id", "name"])


@keys.command("create")
def keys_create(
    name: str,
    org: Annotated[str, typer.Option("--org")],
    team: Annotated[str | None, typer.Option("--team")] = None,
    user: Annotated[str | None, typer.Option("--user")] = None,
    agent: Annotated[str | None, typer.Option("--agent")] = None,
    tags: Annotated[str | None, typer.Option(help="comma separated")] = None,
    models: Annotated[str | None, typer.Option(help="comma separated; empty = all")] = None,
    allow_request_tags: Annotated[bool, typer.Option()] = False,
    expires_at: Annotated[str | None, typer.Option(help="ISO 8601")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a virtual key; its secret is printed once."""
    body = {"name": name, "org_id": org, "team_id": team, "user_id": user, "agent_id": agent,
            "tags": _opt_list(tags), "models": _opt_list(models),
            "allow_request_tags": allow_request_tags, "expires_at": expires_at}
    created = _call(url, "POST", "/admin/keys", json=body)
    _show(created, as_json, ["id", "name", "key"], secret="key")
    if not as_json:
        err_console.print("[yellow]The key is shown once; store it now.[/]")


@users.command("update")
def users_update(
    user_id: str,
    role: Annotated[str | None, typer.Option(help="org_admin, finance, team_admin, viewer, "
                                             "member")] = None,
    teams_: Annotated[str | None, typer.Option("--teams", help="comma separated team ids "
                                               "(replaces the user's teams)")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Change a user's role or teams (their admin tokens follow at once; audited)."""
    body: dict[str, Any] = {"role": role} if role else {}
    if teams_ is not None:
        body["team_ids"] = _opt_list(teams_)
    _show(_call(url, "PATCH", f"/admin/users/{user_id}", json=body), as_json,
          ["id", "email", "role", "team_ids"])


TOKEN_COLUMNS = ["id", "name", "user_id", "token_prefix", "status", "expires_at",
                 "last_used_at"]
tokens = _crud("tokens", "/admin/tokens", TOKEN_COLUMNS)


def _expiry(days: int | None) -> str | None:
    if days is None:
        return None
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@tokens.command("create")
def tokens_create(
    user: Annotated[str, typer.Option("--user", help="the user the token acts as")],
    name: Annotated[str, typer.Option()] = "cli",
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create an admin token (printed once; store it as SPENDGATE_ADMIN_TOKEN)."""
    body = {"user_id": user, "name": name, "expires_at": _expiry(expires_in_days)}
    _show(_call(url, "POST", "/admin/tokens", json=body), as_json, ["id", "name", "token"],
          secret="token")


@tokens.command("revoke")
def tokens_revoke(token_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Revoke an admin token: its next call gets 401."""
    _show(_call(url, "POST", f"/admin/tokens/{token_id}/revoke"), as_json, TOKEN_COLUMNS)


@app.command()
def bootstrap(
    org: Annotated[str, typer.Option("--org", help="name of the org to create")],
    email: Annotated[str, typer.Option("--email", help="the first org admin")],
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = 90,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """With the master key: create an org, its first org admin and that admin's token.

    The token is printed once; from then on the admin works with it
    (``SPENDGATE_ADMIN_TOKEN``) and the master key can go back in the safe."""
    made = _call(url, "POST", "/admin/orgs", json={"name": org})
    user = _call(url, "POST", "/admin/users",
                 json={"email": email, "role": "org_admin", "org_id": made["id"]})
    token = _call(url, "POST", "/admin/tokens", json={
        "user_id": user["id"], "name": "bootstrap", "expires_at": _expiry(expires_in_days)})
    _show({"org_id": made["id"], "user_id": user["id"], "token_id": token["id"],
           "token": token["token"], "expires_at": token["expires_at"]}, as_json,
          ["org_id", "user_id", "token_id", "token", "expires_at"], secret="token")


@keys.command("revoke")
def keys_revoke(key_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Revoke a key: its next call gets 401."""
    _show(_call(url, "POST", f"/admin/keys/{key_id}/revoke"), as_json, KEY_COLUMNS)


@keys.command("rotate")
def keys_rotate(key_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Give a key a new secret (printed once); the old secret stops working."""
    _show(_call(url, "POST", f"/admin/keys/{key_id}/rotate"), as_json, ["id", "name", "key"],
          secret="key")


BUDGET_COLUMNS = ["id", "name", "scope_type", "scope_id", "tag", "period", "timezone",
                  "amount_usd", "alert_percentages", "soft_limit_percent", "hard_limit",
                  "hard_limit_percent"]
budgets = _crud("budgets", "/admin/budgets", BUDGET_COLUMNS)
WALLET_COLUMNS = ["id", "name", "scope_type", "scope_id", "balance_usd", "reserved_usd",
                  "low_balance_usd"]
wallets = _crud("wallets", "/admin/wallets", WALLET_COLUMNS)


def _percents(value: str | None) -> list[str] | None:
    return _opt_list(value) if value is not None else None


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
    body = {"name": name, "scope_type": scope, "scope_id": scope_id, "tag": tag, "org_id": org,
            "period": period, "timezone": timezone, "week_start": week_start,
            "amount_usd": amount, "alert_percentages": _opt_list(alerts),
            "soft_limit_percent": soft, "hard_limit": hard, "hard_limit_percent": hard_percent,
            "categories": {"models": _opt_list(models), "providers": _opt_list(providers)}}
    _show(_call(url, "POST", "/admin/budgets", json={k: v for k, v in body.items() if v is not None}),
          as_json, BUDGET_COLUMNS)


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
    body = {"amount_usd": amount, "alert_percentages": _percents(alerts),
            "soft_limit_percent": soft, "hard_limit": hard, "hard_limit_percent": hard_percent}
    _show(_call(url, "PATCH", f"/admin/budgets/{budget_id}",
                json={k: v for k, v in body.items() if v is not None}), as_json, BUDGET_COLUMNS)


@budgets.command("delete")
def budgets_delete(budget_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Delete a budget."""
    _call(url, "DELETE", f"/admin/budgets/{budget_id}")
    console.print(f"deleted {budget_id}")


@budgets.command("status")
def budgets_status(budget_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Spent, reserved, thresholds fired and the next reset of a budget's current period."""
    data = _call(url, "GET", f"/admin/budgets/{budget_id}/status")
    if not as_json and data.get("forecast"):
        data = {**data, "forecast_p50_usd": data["forecast"]["p50_usd"],
                "forecast_percent": data["forecast"]["percent_of_budget"]}
    _show(data, as_json,
          ["period_key", "spent_usd", "reserved_usd", "percent_used", "hard_limit_usd",
           "remaining_to_hard_usd", "thresholds_fired", "next_reset", "forecast_p50_usd",
           "forecast_percent"])


@budgets.command("except")
def budgets_except(
    budget_id: str,
    reason: Annotated[str, typer.Option()],
    expires_at: Annotated[str, typer.Option(help="ISO 8601")],
    amount: Annotated[str | None, typer.Option(help="extra USD")] = None,
    percent: Annotated[str | None, typer.Option(help="extra percent of the amount")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Grant a temporary raise that ends by itself at --expires-at."""
    body = {"amount_usd": amount, "percent": percent, "reason": reason, "expires_at": expires_at}
    _show(_call(url, "POST", f"/admin/budgets/{budget_id}/exceptions",
                json={k: v for k, v in body.items() if v is not None}), as_json,
          ["id", "amount_usd", "percent", "reason", "expires_at"])


@wallets.command("create")
def wallets_create(
    scope: Annotated[str, typer.Option(help="org|team|key")],
    scope_id: Annotated[str, typer.Option("--scope-id")],
    topup: Annotated[str | None, typer.Option(help="initial top-up in USD")] = None,
    low_balance: Annotated[str, typer.Option(help="warn below this balance (USD)")] = "0",
    name: Annotated[str | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a prepaid wallet; calls it covers are refused with 402 when it runs dry."""
    body = {"scope_type": scope, "scope_id": scope_id, "initial_topup_usd": topup,
            "low_balance_usd": low_balance, "name": name}
    _show(_call(url, "POST", "/admin/wallets", json={k: v for k, v in body.items() if v is not None}),
          as_json, WALLET_COLUMNS)


@wallets.command("topup")
def wallets_topup(wallet_id: str, amount: Annotated[str, typer.Option()],
                  note: Annotated[str, typer.Option()] = "", url: UrlOpt = DEFAULT_URL,
                  as_json: JsonOpt = False) -> None:
    """Add funds to a wallet."""
    _show(_call(url, "POST", f"/admin/wallets/{wallet_id}/topups",
                json={"amount_usd": amount, "note": note}), as_json,
          ["id", "wallet_id", "amount_usd", "note", "created_at"])


LIMIT_COLUMNS = ["id", "scope_type", "scope_id", "model", "rpm", "tpm", "max_concurrent",
                 "max_spend_usd", "spend_window_seconds"]
limits = _crud("limits", "/admin/rate-limits", LIMIT_COLUMNS)


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
    body = {"scope_type": scope, "scope_id": scope_id, "model": model, "rpm": rpm, "tpm": tpm,
            "max_concurrent": concurrent, "max_spend_usd": spend, "spend_window_seconds": window}
    _show(_call(url, "POST", "/admin/rate-limits",
                json={k: v for k, v in body.items() if v is not None}), as_json, LIMIT_COLUMNS)


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
    body = {"rpm": rpm, "tpm": tpm, "max_concurrent": concurrent, "max_spend_usd": spend,
            "spend_window_seconds": window}
    _show(_call(url, "PATCH", f"/admin/rate-limits/{limit_id}",
                json={k: v for k, v in body.items() if v is not None}), as_json, LIMIT_COLUMNS)


@limits.command("delete")
def limits_delete(limit_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Remove a rate limit."""
    _call(url, "DELETE", f"/admin/rate-limits/{limit_id}")
    console.print(f"deleted {limit_id}")


@app.command()
def forecast(
    budget_id: str,
    refresh: Annotated[bool, typer.Option(help="Recompute now")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Where a budget's current period is expected to land (P10/P50/P90)."""
    data = _call(url, "GET", f"/admin/forecasts/{budget_id}",
                 params={"refresh": str(refresh).lower()})
    if not as_json:
        data = {**data, "crossings": ", ".join(f"{name} {day or 'not this period'}"
                                              for name, day in data["crossings"].items())}
    _show(data, as_json, ["period_key", "method", "history_days", "spent_usd", "p10_usd",
                          "p50_usd", "p90_usd", "percent_of_budget", "limit_usd",
                          "overrun_band", "crossings"])


@app.command()
def usage(
    by: Annotated[str, typer.Option("--by", help="e.g. team,model")] = "",
    start: Annotated[str | None, typer.Option()] = None,
    end: Annotated[str | None, typer.Option()] = None,
    org: Annotated[str | None, typer.Option("--org")] = None,
    csv_: Annotated[bool, typer.Option("--csv", help="CSV output")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Spend rolled up by team, model, key, day…"""
    params = {k: v for k, v in {"group_by": by, "start": start, "end": end, "org_id": org,
                                "format": "csv" if csv_ else "json"}.items() if v}
    data = _call(url, "GET", "/admin/usage", params=params)
    if csv_:
        sys.stdout.write(data)
        return
    if as_json:
        _show(data, True, [])
        return
    dims = data["group_by"]
    _show(data["rows"], False, [*dims, "requests", "errors", "input_tokens", "output_tokens",
                                "cost_usd", "unpriced_requests"])
    console.print(f"total: ${data['total_cost_usd']}"
                  + (f"  ({data['unpriced_requests']} calls with unknown price)"
                     if data["unpriced_requests"] else ""))


if __name__ == "__main__":
    app()
