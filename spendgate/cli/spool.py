"""``spendgate db adopt-spool``: give spool files stranded by a change of the database's
URL to the database the gateway uses now.

A spool file names the database its rows belong to (``database_fingerprint``: a hash of
the URL without its password), and a gateway replays only its own database's files, so
a spool directory shared by mistake never writes one database's rows into another. A
new URL for the same database (another hostname, a pooler, ``sslmode`` added) names it
differently too: rows still in the spool then wait, reported as ``spool_foreign_bytes``,
until an operator says they are this database's. This command says so: it rewrites
those files' header (``spool.adopt``) and the next replay (a running gateway's claim of
dead processes' files, every 30 s, or the next start) writes them; rows the database has
already are skipped by request id."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from spendgate.cli.http import ConfigOpt, DatabaseUrlOpt, JsonOpt
from spendgate.cli.output import console, err_console, show


def adopt_spool(
    from_db: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Adopt the files of this database fingerprint (the one the gateway's "
            "warning, and the listing without options, name)",
        ),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Adopt the files of every other database")
    ] = False,
    spool_dir: Annotated[
        Path | None,
        typer.Option(
            "--spool-dir",
            envvar="SPENDGATE_SPOOL_DIR",
            help="default: serve's (\\[gateway] spool_dir of --config, else spendgate-spool "
            "next to the SQLite file or in the working directory)",
        ),
    ] = None,
    database_url: DatabaseUrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give spool files that name another database to this one (after a change of its
    URL), so the next replay writes their rows; without --from or --all, list them."""
    from spendgate.errors import ConfigError
    from spendgate.settings import checked_database_url, database_url_of, spool_directory_of
    from spendgate.store.database import url_fingerprint
    from spendgate.store.spool import SUFFIX, adopt, unheld_files

    if from_db is not None and every:
        err_console.print("[red]--from and --all exclude each other: give one[/]")
        raise typer.Exit(2)
    try:
        database_url = checked_database_url(database_url or database_url_of(config))
        directory = spool_dir or spool_directory_of(config, database_url, os.environ)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    if not directory.is_dir():
        err_console.print(Text(f"no spool directory at {directory}", style="red"))
        raise typer.Exit(1)
    here = url_fingerprint(database_url)
    files: list[dict[str, Any]] = []
    unheld = set()
    for path, header, size in unheld_files(directory):
        unheld.add(path.name)
        db = None if header is None else header.get("db")
        if header is None or db == here:
            continue  # unreadable (logged by the gateway), or this database's already
        chosen = every or from_db == db
        adopted = chosen and adopt(path, here) == db
        files.append({"file": path.name, "db": db, "bytes": size, "adopted": adopted})
    held = sorted(p.name for p in directory.glob(f"*{SUFFIX}") if p.name not in unheld)
    result = {"spool_dir": str(directory), "database": here, "files": files, "held": held}
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    console.print(Text(f"spool {directory}; this database: {here}"))
    show(files, False, ["file", "db", "bytes", "adopted"])
    if held:
        console.print(Text(f"{len(held)} file(s) held by a live process: left alone"))
    if files and from_db is None and not every:
        console.print(
            Text(
                "nothing changed: if these are this database's rows under an old URL, run "
                "again with --from <db> (or --all); the next replay writes them"
            )
        )
