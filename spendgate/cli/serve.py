"""``spendgate serve`` and ``spendgate db migrate``: run the gateway, migrate its schema."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from spendgate.cli.http import ConfigOpt, DatabaseUrlOpt, JsonOpt
from spendgate.cli.output import console, err_console

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
Say = Callable[[str, str], None]


def listenable_port(host: str, port: int) -> int:
    """The port ``serve`` listens on at ``host``: ``port``, or for 0 one the system has free
    now ("any free port"; uvicorn then binds that number). Raises OSError, or OverflowError
    for a port past 65535 (``--port 99999`` printed bind()'s traceback), when ``host:port``
    cannot be listened on (bound the way uvicorn binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        bound: int = probe.getsockname()[1]
    return bound


def _master_key(database_url: str, say: Say) -> None:
    """Without ``SPENDGATE_MASTER_KEY``: the key kept in the data directory (made and
    printed on the first start), so secrets encrypted with it still open after a restart."""
    from spendgate.security.master_key import kept_master_key, key_file

    path = key_file(database_url, os.environ)
    kept = kept_master_key(path)
    os.environ["SPENDGATE_MASTER_KEY"] = kept.key
    if kept.created:
        say(
            "warning",
            f"SPENDGATE_MASTER_KEY is not set: generated a master key and kept it in {path} "
            "(mode 0600); the next start uses it again:",
        )
        say("shown", f"  export SPENDGATE_MASTER_KEY={kept.key}")
    else:
        say(
            "warning",
            f"SPENDGATE_MASTER_KEY is not set: using the master key kept in {path} "
            f"(export SPENDGATE_MASTER_KEY=$(cat {path}))",
        )


def serve(
    demo: Annotated[
        bool, typer.Option(help="Add the simulated provider (demo-small, demo-large)")
    ] = False,
    config: ConfigOpt = None,
    host: Annotated[
        str | None, typer.Option(help="default: \\[gateway] host of --config, else 127.0.0.1")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="default: \\[gateway] port of --config, else 4100; 0: any free port (the one "
            "picked is printed)"
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1)] = 1,
    redis_failure_mode: Annotated[
        str | None,
        typer.Option(
            "--redis-failure-mode",
            help="When Redis is unreachable: closed (refuse calls that hold anything, the "
            "default) or open (serve them on this replica's share of each cap; see README "
            "'Failure behaviour'). Sets SPENDGATE_REDIS_FAILURE_MODE",
        ),
    ] = None,
    allow_unreadable_secrets: Annotated[
        bool,
        typer.Option(
            help="Start even if stored webhook secrets do not decrypt with the configured "
            "keys (their deliveries fail until fixed)"
        ),
    ] = False,
) -> None:
    """Run the gateway (SQLite and in-process state unless configured otherwise)."""
    import uvicorn

    from spendgate.errors import ConfigError
    from spendgate.observability.logs import configure
    from spendgate.observability.workers import multiprocess_directory
    from spendgate.settings import load_audit_settings, load_settings, unknown_config_keys

    if config:
        os.environ["SPENDGATE_CONFIG"] = config
    os.environ["SPENDGATE_DEMO"] = "1" if demo else "0"
    if allow_unreadable_secrets:
        os.environ["SPENDGATE_ALLOW_UNREADABLE_SECRETS"] = "1"
    if redis_failure_mode is not None:
        os.environ["SPENDGATE_REDIS_FAILURE_MODE"] = redis_failure_mode
    try:
        settings = load_settings(demo=demo, host=host, port=port)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    log_config = configure(settings.log_level, settings.log_format)
    say = _teller(settings.log_format)
    config_path = os.environ.get("SPENDGATE_CONFIG")
    for name in unknown_config_keys(config_path):
        say("warning", f"{config_path}: {name} is not a setting spendgate reads; ignored")
    # the options, else the config's [gateway] host and port, else 127.0.0.1:4100; port 0
    # is a free one picked now, so everything below names the port really listened on
    host = settings.host
    try:  # before a key is made or printed, or "listening" said
        port = listenable_port(host, settings.port)
    except (OSError, OverflowError) as busy:
        taken = isinstance(busy, OSError) and busy.errno == errno.EADDRINUSE
        hint = " (another port: --port N, or --port 0 for any free one)" if taken else ""
        say("error", f"cannot listen on {host}:{settings.port}: {busy}{hint}")
        raise typer.Exit(1) from busy
    # refused before a master key is generated and printed: a start that stops leaves
    # nothing behind (it made and printed a key the gateway never used)
    if workers > 1 and not settings.redis_url:
        say(
            "error",
            "--workers > 1 needs SPENDGATE_REDIS_URL: budget, wallet and rate-limit counters "
            "live in each process otherwise, and caps would not hold across workers.",
        )
        raise typer.Exit(2)
    # the app is built by uvicorn's factory (in each worker): it listens where we do and
    # its default public URL (printed links, invite links) names this address
    os.environ["SPENDGATE_SERVE_ADDRESS"] = f"{host}:{port}"
    try:
        if not settings.master_key:
            _master_key(settings.database_url, say)
        # again: with the key kept in the data directory, and the port picked for 0
        settings = load_settings(demo=demo, host=host, port=port)
        # read again by each worker's app: refused here, before "listening" is said
        load_audit_settings(os.environ, settings.master_key)
    except ConfigError as exc:
        say("error", f"configuration error: {exc}")
        raise typer.Exit(2) from exc
    if settings.public_url == f"http://{settings.host}:{settings.port}" and settings.host in (
        "0.0.0.0",
        "::",
    ):
        say(
            "warning",
            f"links in invites, alerts and notifications will point at {settings.public_url}, "
            "which nobody can open: set SPENDGATE_PUBLIC_URL (or [gateway] public_url) to "
            "the address people reach the gateway at",
        )
    if demo:
        say(
            "info",
            "demo mode: models demo-small and demo-large come from the SIMULATED provider "
            "(deterministic fake replies, real prices).",
        )
    say(
        "info",
        f"spendgate listening on http://{settings.host}:{settings.port} "
        f"(database {without_password(settings.database_url)})",
    )
    if workers > 1:  # once, here: workers starting together on a fresh SQLite file race
        from spendgate.store.database import migrate_url  # to create its tables

        migrate_url(settings.database_url)
    with multiprocess_directory(workers):
        _run(uvicorn, settings, workers, log_config)


def without_password(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


def _teller(fmt: str) -> Callable[[str, str], None]:
    """Messages for the person starting the gateway: Rich text, or JSON log lines (the
    generated master key, ``shown``, goes to the terminal without a log handler)."""
    from spendgate.observability.logs import console_line

    log = logging.getLogger("spendgate.serve")
    styles = {"warning": "[yellow]", "error": "[red]", "info": ""}

    def say(level: str, message: str) -> None:
        if fmt == "text":
            style = styles.get(level, "")
            text = escape(message)
            err_console.print(f"{style}{text}[/]" if style else text, soft_wrap=True)
        elif level == "shown":
            console_line(message, "json", logger="spendgate.serve")
        else:
            log.log(logging.getLevelName(level.upper()), message)

    return say


def _run(uvicorn: Any, settings: Any, workers: int, log_config: dict[str, Any]) -> None:
    uvicorn.run(
        "spendgate.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop="auto",
        http="auto",
        lifespan="on",
        access_log=False,
        log_config=log_config,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_drain_seconds,
        timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
        server_header=False,
        proxy_headers=False,
    )


@db_app.command("migrate")
def db_migrate(
    revision: Annotated[str, typer.Argument()] = "head",
    database_url: DatabaseUrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply the Alembic migrations to the database (the one serve would use)."""
    from alembic.util import CommandError

    from spendgate.errors import ConfigError
    from spendgate.settings import checked_database_url, database_url_of
    from spendgate.store.database import CannotConnect, migrate_url

    try:
        database_url = checked_database_url(database_url or database_url_of(config))
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    shown = without_password(database_url)
    try:
        migrate_url(database_url, revision)
    except CannotConnect as exc:
        err_console.print(
            f"[red]cannot connect to the database[/] {escape(shown)}: {escape(str(exc))}",
            soft_wrap=True,
        )
        raise typer.Exit(1) from exc
    except CommandError as exc:  # an unknown revision: Alembic's own message says which
        err_console.print(f"[red]cannot migrate to {escape(revision)}:[/] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if as_json:
        sys.stdout.write(json.dumps({"revision": revision, "database_url": shown}) + "\n")
    else:
        console.print(Text(f"database at {revision}: {shown}"))


# -- admin API client ------------------------------------------------------------------------
