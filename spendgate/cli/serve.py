"""``spendgate serve`` and ``spendgate db migrate``: run the gateway, migrate its schema."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable
from typing import Annotated, Any

import typer

from spendgate.cli.output import console, err_console

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


def serve(
    demo: Annotated[
        bool, typer.Option(help="Add the simulated provider (demo-small, demo-large)")
    ] = False,
    config: Annotated[str | None, typer.Option("--config", envvar="SPENDGATE_CONFIG")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 4100,
    workers: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Run the gateway (SQLite and in-process state unless configured otherwise)."""
    import uvicorn

    from spendgate.errors import ConfigError
    from spendgate.observability.logs import configure
    from spendgate.observability.workers import multiprocess_directory
    from spendgate.settings import load_settings

    if config:
        os.environ["SPENDGATE_CONFIG"] = config
    os.environ["SPENDGATE_DEMO"] = "1" if demo else "0"
    try:
        settings = load_settings(demo=demo, host=host, port=port)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from exc
    log_config = configure(settings.log_level, settings.log_format)
    say = _teller(settings.log_format)
    if not settings.master_key:
        os.environ["SPENDGATE_MASTER_KEY"] = "sg-master-" + secrets.token_urlsafe(24)
        say("warning", "SPENDGATE_MASTER_KEY is not set; generated one for this run:")
        say("shown", f"  export SPENDGATE_MASTER_KEY={os.environ['SPENDGATE_MASTER_KEY']}")
    if workers > 1 and not settings.redis_url:
        say(
            "error",
            "--workers > 1 needs SPENDGATE_REDIS_URL: budget, wallet and rate-limit counters "
            "live in each process otherwise, and caps would not hold across workers.",
        )
        raise typer.Exit(2)
    if demo:
        say(
            "info",
            "demo mode: models demo-small and demo-large come from the SIMULATED provider "
            "(deterministic fake replies, real prices).",
        )
    say(
        "info",
        f"spendgate listening on http://{settings.host}:{settings.port} "
        f"(database {_without_password(settings.database_url)})",
    )
    with multiprocess_directory(workers):
        _run(uvicorn, settings, workers, log_config)


def _without_password(url: str) -> str:
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
            err_console.print(f"{style}{message}[/]" if style else message)
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
        timeout_graceful_shutdown=30,
        server_header=False,
        proxy_headers=False,
    )


@db_app.command("migrate")
def db_migrate(
    revision: Annotated[str, typer.Argument()] = "head",
    database_url: Annotated[
        str, typer.Option("--database-url", envvar="SPENDGATE_DATABASE_URL")
    ] = "sqlite:///spendgate.db",
) -> None:
    """Apply the Alembic migrations to the database."""
    from spendgate.store.database import migrate_url

    migrate_url(database_url, revision)
    console.print(f"database at {revision}: {database_url}")


# -- admin API client ------------------------------------------------------------------------
