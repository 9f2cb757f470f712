"""``spendgate webhooks …``: manage webhook endpoints through the admin API.

Mounted by ``spendgate.cli`` with ``app.add_typer(webhooks_app, name="webhooks")``.
Every command but ``reencrypt`` (which works on the database with the encryption keys)
goes through the admin API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from spendgate.cli.http import (
    DEFAULT_URL,
    ConfigOpt,
    DatabaseUrlOpt,
    JsonOpt,
    UrlOpt,
    admin_path,
    given,
)
from spendgate.cli.http import call as _call
from spendgate.cli.output import console, deleted, err_console
from spendgate.cli.output import show as _show
from spendgate.webhooks.catalog import UNCHECKED_KINDS

if TYPE_CHECKING:
    from spendgate.webhooks.secrets_box import SecretBox
    from spendgate.webhooks.store import ReencryptReport

webhooks_app = typer.Typer(
    help="Webhook endpoints (signed), Slack and PagerDuty alerts.", no_args_is_help=True
)
COLUMNS = ["id", "kind", "url", "event_types", "scope_type", "scope_id", "enabled"]


def _types(value: str | None) -> list[str] | None:
    return None if value is None else [t.strip() for t in value.split(",") if t.strip()]


@webhooks_app.command("list")
def list_(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """All endpoints."""
    _show(_call(url, "GET", "/admin/webhooks"), as_json, COLUMNS)


@webhooks_app.command("get")
def get(endpoint_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Show one endpoint (and why it was disabled, if it was)."""
    _show(
        _call(url, "GET", admin_path("webhooks", endpoint_id)),
        as_json,
        [*COLUMNS, "disabled_reason", "failing_since"],
    )


@webhooks_app.command("create")
def create(
    target: Annotated[str, typer.Argument(help="https://… receiver URL")],
    kind: Annotated[str, typer.Option(help="webhook | slack | pagerduty")] = "webhook",
    events: Annotated[str, typer.Option(help='comma separated, "budget.*" or "*"')] = "*",
    scope_type: Annotated[str | None, typer.Option()] = None,
    scope_id: Annotated[str | None, typer.Option()] = None,
    routing_key: Annotated[str | None, typer.Option(help="PagerDuty integration key")] = None,
    description: Annotated[str, typer.Option()] = "",
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Create an endpoint; prints its signing secret once."""
    body: dict[str, Any] = {
        "url": target,
        "kind": kind,
        "event_types": _types(events),
        "scope_type": scope_type,
        "scope_id": scope_id,
        "description": description,
    }
    if routing_key:
        body["config"] = {"routing_key": routing_key}
    created = _call(url, "POST", "/admin/webhooks", json=body)
    _show_with_secret(created, as_json, COLUMNS)


@webhooks_app.command("update")
def update(
    endpoint_id: str,
    target: Annotated[str | None, typer.Option("--target")] = None,
    events: Annotated[str | None, typer.Option()] = None,
    enabled: Annotated[bool | None, typer.Option("--enable/--disable")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Change an endpoint (--enable re-arms one disabled for failing)."""
    body = given(
        {
            "url": target,
            "event_types": _types(events),
            "enabled": enabled,
            "description": description,
        }
    )
    _show(_call(url, "PATCH", admin_path("webhooks", endpoint_id), json=body), as_json, COLUMNS)


@webhooks_app.command("delete")
def delete(endpoint_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Delete an endpoint and its delivery log."""
    _call(url, "DELETE", admin_path("webhooks", endpoint_id))
    deleted(endpoint_id, as_json)


@webhooks_app.command("rotate-secret")
def rotate_secret(
    endpoint_id: str,
    overlap_seconds: Annotated[
        int, typer.Option(help="old secret keeps signing this long")
    ] = 86400,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """New signing secret (printed once); both sign during the overlap."""
    rotated = _call(
        url,
        "POST",
        admin_path("webhooks", endpoint_id, "rotate-secret"),
        json={"overlap_seconds": overlap_seconds},
    )
    _show_with_secret(rotated, as_json, ["id", "previous_secret_valid_until"])


def _show_with_secret(answer: dict[str, Any], as_json: bool, columns: list[str]) -> None:
    """An endpoint with its new signing secret (``--json``: the API's answer, as it is).
    A ``webhook`` receiver verifies deliveries with the secret, printed once; Slack and
    PagerDuty check no signature, so for them it is left out and said why (it was
    printed with "store the secret now", for nothing to use it)."""
    service = UNCHECKED_KINDS.get(answer["kind"])
    if as_json or service is None:
        _show(answer, as_json, [*columns, "secret"], secret="secret")
        if not as_json:
            err_console.print("[yellow]store the secret now: it is not shown again[/]")
        return
    _show(answer, False, columns)
    err_console.print(f"no secret to keep: {service} does not check the deliveries' signatures")


@webhooks_app.command("deliveries")
def deliveries(
    endpoint_id: str,
    status: Annotated[str | None, typer.Option(help="pending | succeeded | failed")] = None,
    limit: Annotated[int, typer.Option()] = 50,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """The delivery log, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    rows = _call(url, "GET", admin_path("webhooks", endpoint_id, "deliveries"), params=params)
    _show(
        rows,
        as_json,
        [
            "id",
            "event_type",
            "action",
            "status",
            "attempts",
            "last_response_code",
            "last_error",
            "next_attempt_at",
        ],
    )


@webhooks_app.command("redeliver")
def redeliver(
    endpoint_id: str, delivery_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False
) -> None:
    """Queue a delivery again (same webhook-id)."""
    row = _call(
        url, "POST", admin_path("webhooks", endpoint_id, "deliveries", delivery_id, "redeliver")
    )
    _show(row, as_json, ["id", "redelivery_of", "status", "next_attempt_at"])


@webhooks_app.command("test")
def test(endpoint_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Queue a webhook.test message to the endpoint (signed, retried and logged like any
    delivery: see `deliveries`)."""
    row = _call(url, "POST", admin_path("webhooks", endpoint_id, "test"))
    _show(row, as_json, ["id", "event_type", "status", "next_attempt_at"])


@webhooks_app.command("reencrypt")
def reencrypt(
    database_url: DatabaseUrlOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rewrite stored webhook secrets, PagerDuty keys and Slack URLs under the newest key.

    Rotation: put the new key first in SPENDGATE_SECRET_KEY (``new,old``) on every
    replica, run this, then drop the old key. Exits 1 if some secret decrypts with none
    of the keys."""
    from spendgate.cli.serve import without_password
    from spendgate.errors import ConfigError
    from spendgate.settings import checked_database_url, database_url_of
    from spendgate.store.database import CannotConnect, check_sqlite_path
    from spendgate.webhooks.secrets_box import SecretBox

    try:
        box = SecretBox.from_env(os.environ)
        database_url = checked_database_url(database_url or database_url_of(config))
    except ConfigError as exc:
        err_console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    try:
        check_sqlite_path(database_url, exists=True)
        report = asyncio.run(_reencrypt(database_url, box))
    except CannotConnect as exc:
        err_console.print(
            f"[red]cannot use the database[/] {without_password(database_url)}: {exc}",
            soft_wrap=True,
        )
        raise typer.Exit(1) from exc
    if as_json:
        sys.stdout.write(json.dumps(dataclasses.asdict(report)) + "\n")
    else:
        console.print(
            f"{report.endpoints} endpoints: {report.rewritten} re-encrypted under the "
            f"newest key, {report.sealed} Slack URLs encrypted"
        )
    if report.unreadable:
        err_console.print(
            "[red]no configured key decrypts the secrets of:[/] " + ", ".join(report.unreadable)
        )
        raise typer.Exit(1)


async def _reencrypt(database_url: str, box: SecretBox) -> ReencryptReport:
    from spendgate.store.database import check_connection, create_engine
    from spendgate.webhooks.store import WebhookStore

    engine = create_engine(database_url)
    try:
        await check_connection(engine, migrated=True)
        return await WebhookStore(engine, box).reencrypt()
    finally:
        await engine.dispose()
