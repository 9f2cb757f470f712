"""``spendgate serve`` and ``spendgate db migrate``: run the gateway, migrate its schema."""

from __future__ import annotations

import os
import secrets
from typing import Annotated

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
        err_console.print(
            "[red]--workers > 1 needs SPENDGATE_REDIS_URL:[/] budget, wallet and "
            "rate-limit counters live in each process otherwise, and caps would "
            "not hold across workers."
        )
        raise typer.Exit(2)
    if demo:
        err_console.print(
            "[cyan]demo mode:[/] models demo-small and demo-large come from the "
            "SIMULATED provider (deterministic fake replies, real prices)."
        )
    err_console.print(
        f"spendgate listening on http://{settings.host}:{settings.port} "
        f"(database {settings.database_url})"
    )
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
        log_level="info",
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
