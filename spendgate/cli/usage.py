"""``spendgate usage``: spend rolled up through the admin API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from spendgate.cli.http import DEFAULT_URL, JsonOpt, UrlOpt, call
from spendgate.cli.output import console, show


def usage(
    by: Annotated[str, typer.Option("--by", help="e.g. team,model")] = "",
    start: Annotated[str | None, typer.Option()] = None,
    end: Annotated[str | None, typer.Option()] = None,
    org: Annotated[str | None, typer.Option("--org")] = None,
    csv_: Annotated[bool, typer.Option("--csv", help="CSV output")] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Spend rolled up by team, model, key, day…"""
    params = {
        k: v
        for k, v in {
            "group_by": by,
            "start": start,
            "end": end,
            "org_id": org,
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
    show(
        data["rows"],
        False,
        [
            *dims,
            "requests",
            "errors",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "unpriced_requests",
        ],
    )
    console.print(
        f"total: ${data['total_cost_usd']}"
        + (
            f"  ({data['unpriced_requests']} calls with unknown price)"
            if data["unpriced_requests"]
            else ""
        )
    )
