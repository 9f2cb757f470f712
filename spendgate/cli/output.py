"""How the command line prints: Rich consoles, tables that turn into blocks when too wide
for the terminal, ``--json``, secrets shown once on a line of their own, and the
progress bar of an export."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

#: soft wrap: a line longer than the terminal is left for the terminal to wrap, so a link or
#: an error message piped into a file or a log stays one line (Rich would cut it at 80
#: columns when there is no terminal); tables still fit the width
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def progress_bar(*, beside: IO[bytes] | None = None) -> Progress:
    """An export's progress bar on stderr, drawn only when stderr is a terminal and
    ``beside`` (where the command writes its data, if not to files) is not one: in a pipe
    or a log the bar is noise, and its redraws would land in the middle of data printed
    on the same terminal. The data stream is never redirected through it."""
    shown = _isatty(sys.stderr) and not (beside is not None and _isatty(beside))
    return Progress(
        TextColumn("exporting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=not shown,
        redirect_stdout=False,
        redirect_stderr=False,
    )


def _isatty(stream: IO[bytes] | IO[str]) -> bool:
    """Whether ``stream`` is a terminal (a stand-in without a file, as tests use, is not)."""
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False


def cell(value: Any) -> str:
    """A value as a table cell: a list comma-separated, a mapping (an allocation rule's
    ``shares``) as ``key=value`` pairs, the way the options take them (``--share
    team_…=30``), not as Python's repr (``{'team_…': '30'}``; ``{}`` for none)."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return ",".join(f"{key}={cell(item)}" for key, item in value.items())
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def show(
    data: Any,
    as_json: bool,
    columns: list[str],
    *,
    secret: str | None = None,
    readable: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """An answer as JSON, or as a table of ``columns``; when the table would not fit the
    terminal, as one ``column: value`` block per row instead (like psql's ``\\x auto``),
    so no id is cut short; an empty list as ``(none)``. ``secret`` names the column of a
    secret shown once: printed whole on a line of its own below, never in a cell a narrow
    terminal could cut short. ``readable``: each row as the table shows it (``--json``
    prints the answer as it is)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    if readable is not None:
        rows = [readable(row) for row in rows]
    if not rows:  # else nothing at all would be printed when the columns are too wide
        console.print("(none)")
        return
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
                console.print(
                    Text.assemble((f"{column:<{width}}", "bold"), "  ", cell(row.get(column))),
                    soft_wrap=True,
                )
    for row in rows:
        if secret is not None and row.get(secret):
            sys.stdout.write(f"{secret}: {row[secret]}\n")


def warnings(data: dict[str, Any]) -> None:
    """An answer's ``warnings`` (a rate limit that governs no call…), one line each on
    stderr, so ``--json`` output stays the answer alone."""
    for message in data.get("warnings") or ():
        err_console.print(Text(f"warning: {message}", style="yellow"))


def deleted(object_id: str, as_json: bool) -> None:
    """What a delete command prints: ``{"id", "deleted": true}`` with ``--json``."""
    if as_json:
        sys.stdout.write(json.dumps({"id": object_id, "deleted": True}) + "\n")
    else:
        console.print(Text(f"deleted {object_id}"))
