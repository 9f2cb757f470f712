"""``spendgate anomalies``: spend anomalies (list, show, acknowledge, un-pause) and the
action a key or team takes on one (``actions list|create|delete``)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from spendgate.cli.http import DEFAULT_URL, JsonOpt, UrlOpt, admin_path, call, given
from spendgate.cli.output import deleted, show

anomalies = typer.Typer(help="Spend anomalies: out-of-band hourly spend.", no_args_is_help=True)
actions = typer.Typer(help="Pause or rate-limit a key or team on an anomaly.", no_args_is_help=True)
anomalies.add_typer(actions, name="actions")

COLUMNS = [
    "id",
    "status",
    "scope_type",
    "scope_id",
    "started_at",
    "expected_usd",
    "actual_usd",
    "excess_usd",
    "top_contributors",
    "action",
    "acknowledged_by",
]
ACTION_COLUMNS = ["id", "scope_type", "scope_id", "action", "rpm", "tpm", "max_spend_usd"]


def _readable(row: dict[str, Any]) -> dict[str, Any]:
    """Contributors and the action as short text for the table."""
    top = [
        f"{c['dimension']} {c['id']} {c['share_percent']}%" for c in row.get("contributors", [])[:3]
    ]
    action = row.get("action") or {}
    state = row.get("action_state")
    return {
        **row,
        "top_contributors": "; ".join(top),
        "action": f"{action.get('kind')} ({state})" if state else "",
    }


@anomalies.command("list")
def list_(
    status: Annotated[str, typer.Option(help="open|resolved|all")] = "all",
    scope_type: Annotated[str | None, typer.Option("--scope-type", help="key|team|model")] = None,
    scope_id: Annotated[str | None, typer.Option("--scope-id")] = None,
    unacknowledged: Annotated[bool, typer.Option(help="only those nobody acknowledged")] = False,
    limit: Annotated[int, typer.Option()] = 100,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Anomalies, newest first."""
    params: dict[str, Any] = {"status": status, "limit": limit}
    if scope_type:
        params["scope_type"] = scope_type
    if scope_id:
        params["scope_id"] = scope_id
    if unacknowledged:
        params["acknowledged"] = "false"
    rows = call(url, "GET", "/admin/anomalies", params=params)
    show(rows if as_json else [_readable(r) for r in rows], as_json, COLUMNS)


@anomalies.command("get")
def get(anomaly_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """One anomaly, with its contributors and action."""
    row = call(url, "GET", admin_path("anomalies", anomaly_id))
    show(row if as_json else _readable(row), as_json, [*COLUMNS, "upper_usd", "ack_note"])


@anomalies.command("ack")
def ack(
    anomaly_id: str,
    note: Annotated[str, typer.Option(help="why it is fine, or what was done")] = "",
    keep_action: Annotated[
        bool, typer.Option("--keep-action", help="leave its pause or rate limit in force")
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Acknowledge an anomaly (and lift the pause or rate limit it applied)."""
    body = {"note": note, "lift_action": not keep_action}
    row = call(url, "POST", admin_path("anomalies", anomaly_id, "acknowledge"), json=body)
    show(row if as_json else _readable(row), as_json, COLUMNS)


@anomalies.command("unpause")
def unpause(
    anomaly_id: str,
    note: Annotated[str, typer.Option()] = "",
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Lift the pause or rate limit an anomaly applied, without acknowledging it."""
    row = call(url, "POST", admin_path("anomalies", anomaly_id, "lift-action"), json={"note": note})
    show(row if as_json else _readable(row), as_json, COLUMNS)


@actions.command("list")
def actions_list(url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """The keys and teams that act on an anomaly."""
    show(call(url, "GET", "/admin/anomaly-actions"), as_json, ACTION_COLUMNS)


@actions.command("create")
def actions_create(
    scope: Annotated[str, typer.Option(help="key|team")],
    scope_id: Annotated[str, typer.Option("--scope-id")],
    pause: Annotated[
        bool, typer.Option("--pause", help="refuse every call until acknowledged")
    ] = False,
    rpm: Annotated[int | None, typer.Option()] = None,
    tpm: Annotated[int | None, typer.Option()] = None,
    max_spend: Annotated[str | None, typer.Option(help="USD per --window seconds")] = None,
    window: Annotated[int, typer.Option(help="seconds of the spend window")] = 600,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """On an anomaly of this key or team: --pause it, or apply a temporary rate limit."""
    body: dict[str, Any] = {
        "scope_type": scope,
        "scope_id": scope_id,
        "action": "pause" if pause else "rate_limit",
    }
    if not pause:
        body.update(rpm=rpm, tpm=tpm, max_spend_usd=max_spend, spend_window_seconds=window)
    show(call(url, "POST", "/admin/anomaly-actions", json=given(body)), as_json, ACTION_COLUMNS)


@actions.command("delete")
def actions_delete(action_id: str, url: UrlOpt = DEFAULT_URL, as_json: JsonOpt = False) -> None:
    """Stop acting on the scope's future anomalies."""
    call(url, "DELETE", admin_path("anomaly-actions", action_id))
    deleted(action_id, as_json)
