"""What every ``spendgate`` command that talks to the admin API shares: the options, the
consoles, the authenticated client and the error handling. Kept apart from
``spendgate.cli`` so the command groups it mounts (audit, webhooks) can use it too."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:4100"
UrlOpt = Annotated[str, typer.Option("--url", envvar="SPENDGATE_URL", help="Gateway base URL")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def client(url: str, timeout: float | None = 60) -> httpx.Client:
    """An admin API client as ``SPENDGATE_ADMIN_TOKEN`` (else ``SPENDGATE_MASTER_KEY``)."""
    token = os.environ.get("SPENDGATE_ADMIN_TOKEN") or os.environ.get("SPENDGATE_MASTER_KEY")
    if not token:
        err_console.print("[red]set SPENDGATE_ADMIN_TOKEN (or SPENDGATE_MASTER_KEY)[/]")
        raise typer.Exit(2)
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"},
                        timeout=timeout)


def fail(response: httpx.Response) -> None:
    """Exit 1 with the API's own error message if the answer is an error."""
    if response.status_code < 400:
        return
    response.read()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    err_console.print(f"[red]error {response.status_code}:[/] {message}")
    raise typer.Exit(1)


def call(url: str, method: str, path: str, **kwargs: Any) -> Any:
    """One admin API call: its JSON (or text; None for an empty answer), or exit."""
    try:
        with client(url) as http:
            response = http.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        err_console.print(f"[red]cannot reach spendgate at {url}:[/] {exc}")
        raise typer.Exit(1) from exc
    fail(response)
    if response.status_code == 204 or not response.content:
        return None
    if "json" in response.headers.get("content-type", ""):
        return response.json()
    return response.text




def cell(value: Any) -> str:
    if value is None:
        return ""
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def show(data: Any, as_json: bool, columns: list[str], *, secret: str | None = None) -> None:
    """An answer as JSON, or as a table of ``columns``; when the table would not fit the
    terminal, as one ``column: value`` block per row instead (like psql's ``\\x auto``),
    so no id is cut short. ``secret`` names the column of a secret shown once: printed
    whole on a line of its own below, never in a cell a narrow terminal could cut short."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    shown = [c for c in columns if c != secret]
    table = Table(*shown)
    for row in rows:  # values as plain Text: a name like "[red]x" is not markup
        table.add_row(*(Text(cell(row.get(c))) for c in shown))
    natural = console.measure(table, options=console.options.update_width(10_000))
    if natural.maximum <= console.width:
        console.print(table)
    else:
        width = max(map(len, shown), default=0)
        for n, row in enumerate(rows):
            if n:
                console.print()
            for column in shown:
                console.print(Text.assemble((f"{column:<{width}}", "bold"), "  ",
                                            cell(row.get(column))), soft_wrap=True)
    for row in rows:
        if secret is not None and row.get(secret):
            sys.stdout.write(f"{secret}: {row[secret]}\n")
