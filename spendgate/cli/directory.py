"""``spendgate orgs|teams|users|agents|keys|tokens`` and ``bootstrap``: the directory of
who calls, through the admin API."""

from __future__ import annotations

import sys
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
    default_org,
    opt_list,
    when,
)
from spendgate.cli.output import err_console, show

#: the API's fields as the options that set them, so a 422 names what the user typed
OPTIONS = {
    "org_id": "--org",
    "team_id": "--team",
    "team_ids": "--teams",
    "user_id": "--user",
    "agent_id": "--agent",
    "expires_at": "--expires-at",
    "reporting_timezone": "--timezone",
    "week_start": "--week-start",
}
orgs = crud_group("orgs", "orgs", ["id", "name", "created_at"])
teams = crud_group("teams", "teams", ["id", "org_id", "name"])
users = crud_group("users", "users", ["id", "org_id", "email", "role", "team_ids"])
agents = crud_group("agents", "agents", ["id", "org_id", "team_id", "name"])
KEY_COLUMNS = ["id", "name", "key_prefix", "org_id", "team_id", "tags", "status", "expires_at"]
keys = crud_group("keys", "keys", KEY_COLUMNS)


@orgs.command("create")
def orgs_create(name: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Create an org."""
    show(call(url, "POST", "/admin/orgs", json={"name": name}), as_json, ["id", "name"])


@orgs.command("update")
def update_org(
    org_id: str,
    timezone: Annotated[str | None, typer.Option(help="reporting zone (IANA)")] = None,
    week_start: Annotated[str | None, typer.Option(help="monday … sunday")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Set the org's reporting zone and week start (usage reports, statements)."""
    body = {
        k: v for k, v in {"reporting_timezone": timezone, "week_start": week_start}.items() if v
    }
    made = call(url, "PATCH", admin_path("orgs", org_id), json=body, options=OPTIONS)
    show(made, as_json, ["id", "name", "reporting_timezone", "week_start"])


@teams.command("create")
def teams_create(
    name: str,
    org: Annotated[
        str | None, typer.Option("--org", help="default: the one org you can see")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a team in an org."""
    body = {"name": name, "org_id": org or default_org(url, None)}
    show(
        call(url, "POST", "/admin/teams", json=body, options=OPTIONS),
        as_json,
        ["id", "org_id", "name"],
    )


@users.command("create")
def users_create(
    email: str,
    role: Annotated[str, typer.Option()] = "member",
    teams_: Annotated[str | None, typer.Option("--teams", help="comma separated team ids")] = None,
    org: Annotated[
        str | None,
        typer.Option("--org", help="default: the teams' org, else the one org you can see"),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a user."""
    team_ids = opt_list(teams_)
    # without --org: the org of the --teams (the API's), else the one org the caller sees
    body = {
        "email": email,
        "role": role,
        "team_ids": team_ids,
        "org_id": org or (None if team_ids else default_org(url, None)),
    }
    made = call(url, "POST", "/admin/users", json=body, options=OPTIONS)
    show(made, as_json, ["id", "email", "role", "team_ids"])


@users.command("invite")
def users_invite(user_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """A one-time link (seven days) where the user chooses a console password."""
    show(
        call(url, "POST", admin_path("users", user_id, "console-invite")),
        as_json,
        ["user_id", "expires_at", "url"],
        secret="url",
    )


@users.command("set-password")
def users_set_password(
    user_id: str,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="read the password from standard input (its first line)"
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Set a user's console password (asked for twice, not echoed; at least 12
    characters). Their open console sessions end. In a script, without a terminal:
    echo "$PW" | spendgate users set-password USER_ID --password-stdin"""
    stdin = sys.stdin  # None when started with it closed (``<&-``): not a terminal either
    if password_stdin and stdin is None:
        err_console.print("[red]--password-stdin: standard input is closed[/]")
        raise typer.Exit(2)
    if password_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif stdin is None or not stdin.isatty():  # else getpass warns, reads the pipe, echoes
        err_console.print(
            "[red]no terminal to ask the password on:[/] pipe it in with --password-stdin "
            '(one line), as in: echo "$PW" | spendgate users set-password '
            f"{escape(user_id)} --password-stdin"
        )
        raise typer.Exit(2)
    else:
        # asked on stderr: stdout carries the answer alone (``--json > result.json``)
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True, err=True)
    call(url, "PUT", admin_path("users", user_id, "console-password"), json={"password": password})
    show({"user_id": user_id, "password_set": True}, as_json, ["user_id", "password_set"])


@agents.command("create")
def agents_create(
    name: str,
    team: Annotated[str | None, typer.Option("--team")] = None,
    org: Annotated[
        str | None,
        typer.Option("--org", help="default: the team's org, else the one org you can see"),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create an agent (a workflow or bot that calls models)."""
    body = {
        "name": name,
        "team_id": team,
        "org_id": org or (None if team else default_org(url, None)),
    }
    show(
        call(url, "POST", "/admin/agents", json=body, options=OPTIONS),
        as_json,
        ["id", "org_id", "team_id", "name"],
    )


@keys.command("create")
def keys_create(
    name: str,
    org: Annotated[
        str | None,
        typer.Option("--org", help="default: the team's org, else the one org you can see"),
    ] = None,
    team: Annotated[str | None, typer.Option("--team")] = None,
    user: Annotated[str | None, typer.Option("--user")] = None,
    agent: Annotated[str | None, typer.Option("--agent")] = None,
    tags: Annotated[str | None, typer.Option(help="comma separated")] = None,
    models: Annotated[str | None, typer.Option(help="comma separated; empty = all")] = None,
    allow_request_tags: Annotated[bool, typer.Option()] = False,
    expires_at: Annotated[
        str | None, typer.Option(help="ISO 8601, or from now: +30m, +12h, +7d, +2w")
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create a virtual key; its secret is printed once."""
    body = {
        "name": name,
        "org_id": org or default_org(url, team),
        "team_id": team,
        "user_id": user,
        "agent_id": agent,
        "tags": opt_list(tags),
        "models": opt_list(models),
        "allow_request_tags": allow_request_tags,
        "expires_at": when(expires_at),
    }
    created = call(url, "POST", "/admin/keys", json=body, options=OPTIONS)
    show(created, as_json, ["id", "name", "key"], secret="key")
    if not as_json:
        err_console.print("[yellow]The key is shown once; store it now.[/]")


@users.command("update")
def users_update(
    user_id: str,
    role: Annotated[
        str | None, typer.Option(help="org_admin, finance, team_admin, viewer, member")
    ] = None,
    teams_: Annotated[
        str | None,
        typer.Option("--teams", help="comma separated team ids (replaces the user's teams)"),
    ] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Change a user's role or teams (their admin tokens follow at once; audited)."""
    body: dict[str, Any] = {"role": role} if role else {}
    if teams_ is not None:
        body["team_ids"] = opt_list(teams_)
    show(
        call(url, "PATCH", admin_path("users", user_id), json=body, options=OPTIONS),
        as_json,
        ["id", "email", "role", "team_ids"],
    )


TOKEN_COLUMNS = ["id", "name", "user_id", "token_prefix", "status", "expires_at", "last_used_at"]
tokens = crud_group("tokens", "tokens", TOKEN_COLUMNS)


def _expiry(days: int | None) -> str | None:
    return None if days is None else when(f"+{days}d")


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
    show(
        call(
            url,
            "POST",
            "/admin/tokens",
            json=body,
            options={**OPTIONS, "expires_at": "--expires-in-days"},
        ),
        as_json,
        ["id", "name", "token"],
        secret="token",
    )


@tokens.command("revoke")
def tokens_revoke(token_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Revoke an admin token: its next call gets 401."""
    show(call(url, "POST", admin_path("tokens", token_id, "revoke")), as_json, TOKEN_COLUMNS)


def bootstrap(
    org: Annotated[str, typer.Option("--org", help="name of the org (created if new)")],
    email: Annotated[str, typer.Option("--email", help="the first org admin")],
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = 90,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """With the master key: an org (made, or the one of that name), its admin, a token.

    The token is printed once; from then on the admin works with it
    (``SPENDGATE_ADMIN_TOKEN``) and the master key can go back in the safe."""
    expires_at = _expiry(expires_in_days)  # a bad one stops us before anything is made
    existing = call(url, "GET", "/admin/orgs", params={"name": org})
    if existing:
        made = existing[0]
        if not as_json:
            err_console.print(f"using the existing org {escape(org)} ({made['id']})")
    else:
        made = call(url, "POST", "/admin/orgs", json={"name": org})
    user = call(
        url,
        "POST",
        "/admin/users",
        json={"email": email, "role": "org_admin", "org_id": made["id"]},
    )
    token = call(
        url,
        "POST",
        "/admin/tokens",
        json={"user_id": user["id"], "name": "bootstrap", "expires_at": expires_at},
    )
    invite = call(url, "POST", admin_path("users", user["id"], "console-invite"))
    if not as_json:
        err_console.print(
            f"console: open {escape(invite['url'])} to choose {escape(email)}'s password "
            "(one use, seven days)"
        )
    show(
        {
            "org_id": made["id"],
            "user_id": user["id"],
            "token_id": token["id"],
            "token": token["token"],
            "expires_at": token["expires_at"],
            "console_invite_url": invite["url"],
        },
        as_json,
        ["org_id", "user_id", "token_id", "token", "expires_at"],
        secret="token",
    )


@keys.command("update")
def keys_update(
    key_id: str,
    expires_at: Annotated[
        str | None, typer.Option(help="ISO 8601, or from now: +30m, +12h, +7d, +2w")
    ] = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="clear the expiry")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Set a key's expiry (a new one announces key.expiring again) or clear it."""
    if (expires_at is None) == (not no_expiry):
        err_console.print("[red]give one of --expires-at or --no-expiry[/]")
        raise typer.Exit(2)
    body = {"expires_at": None if no_expiry else when(expires_at)}
    show(
        call(url, "PATCH", admin_path("keys", key_id), json=body, options=OPTIONS),
        as_json,
        KEY_COLUMNS,
    )


@keys.command("revoke")
def keys_revoke(key_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Revoke a key: its next call gets 401."""
    show(call(url, "POST", admin_path("keys", key_id, "revoke")), as_json, KEY_COLUMNS)


@keys.command("rotate")
def keys_rotate(key_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Give a key a new secret (printed once); the old secret stops working."""
    show(
        call(url, "POST", admin_path("keys", key_id, "rotate")),
        as_json,
        ["id", "name", "key"],
        secret="key",
    )
