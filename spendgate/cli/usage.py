"""``spendgate usage``: spend from the rollups through the admin API; ``usage rebuild``
recomputes rollups from the ledger; ``usage purge`` drops raw ledger rows past retention."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from spendgate.cli.http import DEFAULT_URL, JsonOpt, UrlOpt, call
from spendgate.cli.output import console, show

usage_app = typer.Typer(
    help="Spend rolled up by team, model, key, day… (and the rollups' upkeep).",
    invoke_without_command=True,
)
Dim = Annotated[str | None, typer.Option(help="only these values (comma separated)")]


@usage_app.callback()
def usage(
    ctx: typer.Context,
    by: Annotated[str, typer.Option("--by", help="e.g. team,model,day")] = "",
    start: Annotated[str | None, typer.Option(help="ISO 8601; wall time in --timezone")] = None,
    end: Annotated[str | None, typer.Option()] = None,
    timezone: Annotated[str | None, typer.Option(help="default: the org's")] = None,
    org: Annotated[str | None, typer.Option("--org")] = None,
    team: Dim = None,
    user: Dim = None,
    agent: Dim = None,
    key: Dim = None,
    tag: Dim = None,
    provider: Dim = None,
    model: Dim = None,
    kind: Dim = None,
    top: Annotated[int, typer.Option(help="keep N groups, fold the rest into 'other'")] = 0,
    cumulative: Annotated[bool, typer.Option(help="running totals per group")] = False,
    csv_: Annotated[bool, typer.Option("--csv", help="CSV output")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Spend rolled up by team, model, key, day… in the org's reporting zone."""
    if ctx.invoked_subcommand:
        return
    params = {
        k: v
        for k, v in {
            "group_by": by,
            "start": start,
            "end": end,
            "timezone": timezone,
            "org_id": org,
            "team_id": team,
            "user_id": user,
            "agent_id": agent,
            "key_id": key,
            "tag": tag,
            "provider": provider,
            "model": model,
            "kind": kind,
            "top": top or None,
            "cumulative": "true" if cumulative else None,
            "format": "csv" if csv_ else "json",
        }.items()
        if v
    }
    data = call(url, "GET", "/admin/usage", params=params)
    if csv_:
        sys.stdout.write(data)
        return
    if as_json:
        show(data, True, [])
        return
    dims = data["group_by"]
    extra = ["cumulative_cost_usd"] if cumulative else []
    # a group without that dimension (spend no team owns, untagged calls) is `none`, the
    # value that filters it (`--team none`), not a blank cell that reads as missing data
    rows = [{**row, **{d: "none" for d in dims if row.get(d) is None}} for row in data["rows"]]
    show(
        rows,
        False,
        [*dims, "requests", "errors", "input_tokens", "output_tokens", "web_searches",
         "cost_usd", *extra, "unpriced_requests", "estimated_calls", "estimated_usd"],
    )  # fmt: skip
    notes = []
    if data["estimated_calls"]:
        notes.append(
            f"${data['total_estimated_usd']} of it an estimate, {data['estimated_calls']} calls"
        )
    if data["unpriced_requests"]:
        notes.append(f"{data['unpriced_requests']} calls with unknown price")
    said = f"  ({'; '.join(notes)})" if notes else ""
    console.print(f"total: ${data['total_cost_usd']}{said}")


@usage_app.command("rebuild")
def rebuild(
    from_: Annotated[str, typer.Option("--from", help="ISO 8601, a quarter hour")],
    to: Annotated[str, typer.Option("--to", help="ISO 8601, exclusive")],
    dry_run: Annotated[bool, typer.Option(help="report differences only")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Recompute rollups from the ledger and report any difference (exit 1 if any)."""
    report = call(
        url,
        "POST",
        "/admin/usage/rebuild",
        json={"start": from_, "end": to, "dry_run": dry_run},
        options={"start": "--from", "end": "--to"},
    )
    if as_json:
        show(report, True, [])
    else:
        console.print(
            f"ledger rows {report['ledger_rows']}, rollup rows {report['rollup_rows']}, "
            f"differences {report['difference_count']}" + (" (fixed)" if report["fixed"] else "")
        )
        for diff in report["differences"]:
            console.print(
                f"  {diff['table']} {diff['bucket_start']} {'/'.join(diff['key'])}: "
                f"rollup {diff['rollup'] or '-'} ledger {diff['ledger'] or '-'}"
            )
    if report["difference_count"]:
        raise typer.Exit(1)


@usage_app.command("purge")
def purge(
    before: Annotated[str | None, typer.Option(help="default: now minus the retention")] = None,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Delete raw ledger rows past the retention (rollups and statements are kept)."""
    body = {"before": before} if before else {}
    show(call(url, "POST", "/admin/ledger/purge", json=body), as_json, ["purged", "before"])
