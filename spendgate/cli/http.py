"""What every ``spendgate`` command that talks to the admin API shares: the options, the
authenticated client, the error handling and the list/get commands of a resource.
Output (tables, JSON, secrets shown once) is ``spendgate.cli.output``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import typer
from rich.text import Text

from spendgate.cli.output import err_console, show

DEFAULT_URL = "http://127.0.0.1:4100"
UrlOpt = Annotated[str, typer.Option("--url", envvar="SPENDGATE_URL", help="Gateway base URL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]
ConfigOpt = Annotated[str | None, typer.Option("--config", envvar="SPENDGATE_CONFIG")]
#: the commands that open the database without serving: resolve it with
#: ``settings.database_url_of`` when not given, as ``serve`` would
DatabaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="SPENDGATE_DATABASE_URL",
        help="default: \\[gateway] database_url of --config, else sqlite:///spendgate.db",
    ),
]


def admin_path(*segments: str) -> str:
    """An admin API path from its segments, each escaped whole: an id or name holding
    ``/``, ``?``, ``#``, ``%`` or spaces stays one segment, and one that is ``.`` or
    ``..`` is not folded away by the client, so it can never name another resource."""
    return "/admin/" + "/".join(_segment(s) for s in segments)


def _segment(value: str) -> str:
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def client(url: str, timeout: float | None = 60) -> httpx.Client:
    """An admin API client as ``SPENDGATE_ADMIN_TOKEN`` (else ``SPENDGATE_MASTER_KEY``);
    exit 2 if ``url`` is not a URL at all (``http://[::1``, a port that is not a number)."""
    token = os.environ.get("SPENDGATE_ADMIN_TOKEN") or os.environ.get("SPENDGATE_MASTER_KEY")
    if not token:
        err_console.print("[red]set SPENDGATE_ADMIN_TOKEN (or SPENDGATE_MASTER_KEY)[/]")
        raise typer.Exit(2)
    try:
        return httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=timeout
        )
    except httpx.InvalidURL as exc:  # not an HTTPError: it was a traceback
        err_console.print(Text(f"--url {url} is not a valid URL: {exc}", style="red"))
        raise typer.Exit(2) from exc


def fail(response: httpx.Response, options: Mapping[str, str] | None = None) -> None:
    """Exit 1 with the API's own error message if the answer is an error; ``options``
    maps API fields to the command's options named for them (``start`` → ``--from``),
    so the message names what the user typed."""
    if response.status_code < 400:
        return
    response.read()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = _foreign(response)
    for field, option in (options or {}).items():  # a list's item (``alerts.1``) too
        message = re.sub(rf"(?<![\w-]){re.escape(field)}(\.\d+)?(?![\w-])", option, message)
    err_console.print(f"[red]error {response.status_code}:[/] {message}")
    raise typer.Exit(1)


def _foreign(response: httpx.Response) -> str:
    """An error answer that is not the admin API's JSON: its text when that is one short
    line; else (a web page: the console's URL given as ``--url``, a proxy's error page)
    one line saying so, instead of the page."""
    text = response.text.strip()
    kind = response.headers.get("content-type", "").split(";")[0].strip()
    if text and "\n" not in text and len(text) <= 300 and "html" not in kind:
        return text
    return (
        f"{response.request.url} did not answer as spendgate's admin API "
        f"({kind or 'no content type'}); --url takes the gateway's base URL, such as "
        f"{DEFAULT_URL}"
    )


def call(
    url: str, method: str, path: str, *, options: Mapping[str, str] | None = None, **kwargs: Any
) -> Any:
    """One admin API call: its JSON (or text; None for an empty answer), or exit (with
    errors naming ``options`` instead of the API's fields, see :func:`fail`)."""
    try:
        with client(url) as http:
            response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        err_console.print(f"[red]cannot reach spendgate at {url}:[/] {exc}")
        raise typer.Exit(1) from exc
    fail(response, options)
    if response.status_code == 204 or not response.content:
        return None
    if "json" in response.headers.get("content-type", ""):
        return response.json()
    return response.text


def crud_group(
    name: str,
    resource: str,
    columns: list[str],
    readable: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> typer.Typer:
    """``list`` and ``get`` of the resource at ``/admin/<resource>`` (``readable``: a
    row as the table shows it, see ``output.show``)."""
    path = admin_path(resource)
    group = typer.Typer(help=f"Manage {name}.", no_args_is_help=True)

    @group.command("list")
    def list_(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
        """List them."""
        show(call(url, "GET", path), as_json, columns, readable=readable)

    @group.command("get")
    def get(object_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
        """Show one by id."""
        show(
            call(url, "GET", admin_path(resource, object_id)),
            as_json,
            columns,
            readable=readable,
        )

    return group


def given(body: dict[str, Any]) -> dict[str, Any]:
    """A request body of the options given: one left out (``None``) is not sent, so the
    API keeps its default (create) or the stored value (update)."""
    return {k: v for k, v in body.items() if v is not None}


def opt_list(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


_RELATIVE = re.compile(r"^\+(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def when(value: str | None) -> str | None:
    """An instant for the API: ISO 8601 as given, or relative to now: ``+30m``, ``+12h``,
    ``+7d``, ``+2w`` (so a README example never goes stale)."""
    if value is None:
        return None
    found = _RELATIVE.match(value.strip())
    if found is None and value.strip().startswith("+"):  # meant as a time from now
        err_console.print(
            f"[red]{value.strip()!r} is not a time from now:[/] write +N followed by m, h, d "
            "or w (+30m, +12h, +7d, +2w), or an ISO 8601 time"
        )
        raise typer.Exit(2)
    if found is None:
        return value
    try:
        delta = timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
        return (datetime.now(UTC) + delta).isoformat(timespec="seconds")
    except OverflowError as exc:  # past the calendar (the API takes times up to 9000)
        err_console.print(f"[red]{value.strip()} is too far from now[/]")
        raise typer.Exit(2) from exc


def default_org(url: str, team: str | None) -> str:
    """The org a key, team, user or agent (or a month's statements) is for when ``--org`` is
    not given: its team's, else the only org the caller sees (an org admin's token sees its
    own; the master key sees every org); several: exit 2 asking for ``--org``."""
    if team is not None:
        return str(call(url, "GET", admin_path("teams", team))["org_id"])
    orgs = call(url, "GET", "/admin/orgs")
    if len(orgs) == 1:
        return str(orgs[0]["id"])
    err_console.print(
        f"[red]--org is required: you can see {len(orgs)} orgs[/] "
        "(an org admin's token sees its own org; the master key sees every org)"
    )
    raise typer.Exit(2)
