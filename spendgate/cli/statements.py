"""``spendgate statements …``: monthly chargeback statements and allocation rules,
through the admin API. ``export`` writes every statement of a month (each team's and
the org's) as CSV, JSONL or HTML files, with a progress bar on a terminal's stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from spendgate.cli.http import DEFAULT_URL, JsonOpt, UrlOpt, admin_path, call, default_org
from spendgate.cli.output import console, err_console, progress_bar, show
from spendgate.core import chargeback as cb
from spendgate.core.money import format_usd

statements_app = typer.Typer(help="Monthly chargeback statements.", no_args_is_help=True)
OrgOpt = Annotated[str | None, typer.Option("--org", help="org id; default: every org you see")]
#: the commands about one org's statements: without ``--org``, the one org the caller sees
OneOrgOpt = Annotated[
    str | None, typer.Option("--org", help="org id; default: the one org you can see")
]
ISSUED = ["team_id", "version", "total_usd", "content_hash"]


def _org(org: str | None) -> dict[str, str]:
    return {"org_id": org} if org else {}


def _one_org(url: str, org: str | None, team: str | None = None) -> dict[str, str]:
    """The ``org_id`` of a call about one org's statements: ``--org``, else ``team``'s org,
    else the only org the caller sees (the master key was refused without ``--org``
    even when there was one org; see :func:`default_org`)."""
    return {"org_id": org or default_org(url, team)}


@statements_app.command("list")
def list_(
    org: OrgOpt = None,
    month: Annotated[str | None, typer.Option(help="YYYY-MM")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Stored statements (closed months and reissues)."""
    params = {**_org(org), **({"month": month} if month else {})}
    rows = call(url, "GET", "/admin/statements", params=params)
    show(rows, as_json, ["month", "team_id", "version", "total_usd", "content_hash", "created_at"])


@statements_app.command("show")
def show_(
    month: Annotated[str, typer.Argument(help="YYYY-MM")],
    org: Annotated[
        str | None,
        typer.Option("--org", help="org id; default: the team's org, else the one org you can see"),
    ] = None,
    team: Annotated[str | None, typer.Option("--team", help="absent: the org statement")] = None,
    version: Annotated[int | None, typer.Option()] = None,
    format_: Annotated[str, typer.Option("--format", help="table, csv, jsonl or html")] = "table",
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """One statement: its lines (which add up to its total) and status."""
    if format_ not in ("table", "csv", "jsonl", "html"):
        err_console.print("[red]--format must be table, csv, jsonl or html[/]")
        raise typer.Exit(2)
    params: dict[str, str | int] = {**_one_org(url, org, team)}
    if team:
        params["team_id"] = team
    if version:
        params["version"] = version
    if format_ in ("csv", "jsonl", "html"):
        sys.stdout.write(
            call(url, "GET", admin_path("statements", month), params={**params, "format": format_})
        )
        return
    data = call(url, "GET", admin_path("statements", month), params=params)
    if as_json:
        show(data, True, [])
        return
    st = data["statement"]
    status = "PROVISIONAL (month open)" if data["provisional"] else f"version {data['version']}"
    console.print(
        f"[bold]{st.get('team_name') or st['org_name']}[/] {month} ({st['timezone']}) — {status}"
    )
    show(
        [{**line, "cost_usd": format_usd(line["cost_nanos"]), **cb.shown_figures(line)}
         for line in st["lines"]],
        False,
        ["label", "cost_usd", "requests", "input_tokens", "output_tokens", "web_searches",
         "estimated_calls", "estimated_usd"],
    )  # fmt: skip
    console.print(f"total: ${data['total_usd']}")


def _issue(action: str, month: str, org: str | None, url: str, as_json: bool) -> None:
    data = call(url, "POST", admin_path("statements", month, action), json=_one_org(url, org))
    if not as_json and not data["statements"]:  # not also show()'s "(none)"
        console.print("no statement changed")
        return
    show(data["statements"], as_json, ISSUED)


@statements_app.command("close")
def close(
    month: Annotated[str, typer.Argument(help="YYYY-MM, ended in the org's zone")],
    org: OneOrgOpt = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Close a month: freeze every statement; their hashes go to the audit log."""
    _issue("close", month, org, url, as_json)


@statements_app.command("reissue")
def reissue(
    month: Annotated[str, typer.Argument(help="YYYY-MM, closed")],
    org: OneOrgOpt = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Reissue a closed month's statements that changed (late spend), with a diff."""
    _issue("reissue", month, org, url, as_json)


@statements_app.command("export")
def export(
    month: Annotated[str, typer.Argument(help="YYYY-MM")],
    output: Annotated[Path, typer.Option("--output", "-o", help="directory")] = Path("."),
    format_: Annotated[str, typer.Option("--format", help="csv, jsonl or html")] = "csv",
    org: OneOrgOpt = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: Annotated[
        bool, typer.Option("--json", help="print a JSON summary (the files written) on stdout")
    ] = False,
) -> None:
    """Every statement of the month (the org's and each team's), one file each."""
    if format_ not in ("csv", "jsonl", "html"):
        err_console.print("[red]--format must be csv, jsonl or html[/]")
        raise typer.Exit(2)
    # the org first: the master key's teams list would be every org's, and a statement it
    # asks for without --org a 422 half way through the progress bar
    of_org = _one_org(url, org)
    teams = call(url, "GET", "/admin/teams", params=of_org)
    targets: list[str | None] = [None, *(t["id"] for t in teams)]
    output.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    with progress_bar() as progress:
        task = progress.add_task("export", total=len(targets))
        for team in targets:
            params = {**of_org, "format": format_, **({"team_id": team} if team else {})}
            body = call(url, "GET", admin_path("statements", month), params=params)
            path = output / f"statement-{month}-{team or 'org'}.{format_}"
            path.write_text(body)
            files.append(str(path))
            progress.advance(task)
    if as_json:
        summary = {"month": month, "output": str(output), "format": format_, "files": files}
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        err_console.print(f"{len(targets)} statements written to {output}")


@statements_app.command("rule")
def rule(
    method: Annotated[str, typer.Argument(help="proportional, fixed or even")],
    tag: Annotated[str | None, typer.Option(help="only unowned spend with this tag")] = None,
    share: Annotated[
        list[str] | None, typer.Option("--share", help="TEAM_ID[=PERCENT]; repeat")
    ] = None,
    position: Annotated[int, typer.Option(help="rules are tried in this order")] = 0,
    org: OneOrgOpt = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Add an allocation rule for spend no team owns."""
    shares = {team: percent for team, _, percent in (s.partition("=") for s in share or [])}
    body = {
        **_one_org(url, org),
        "method": method,
        "tag": tag,
        "shares": shares,
        "position": position,
    }
    made = call(url, "POST", "/admin/allocation-rules", json=body)
    show(made, as_json, ["id", "method", "tag", "shares", "position"])
