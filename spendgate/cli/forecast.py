"""``spendgate forecast``: where a budget's period will land."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from spendgate.cli.http import DEFAULT_URL, JsonOpt, UrlOpt, admin_path, call
from spendgate.cli.output import console, show


def forecast(
    budget_id: str,
    refresh: Annotated[
        bool,
        typer.Option(
            help="Recompute now (needs the permission to change the budget: an org admin, "
            "finance, or a team admin of each of its teams)"
        ),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    as_json: JsonOpt = False,
) -> None:
    """Where a budget's current period is expected to land (P10/P50/P90)."""
    data = call(
        url,
        "GET",
        admin_path("forecasts", budget_id),
        params={"refresh": str(refresh).lower()},
        options={"refresh": "--refresh"},
    )
    if not as_json:
        data = {
            **data,
            "crossings": ", ".join(
                f"{name} {day or 'not this period'}" for name, day in data["crossings"].items()
            ),
        }
    show(
        data,
        as_json,
        [
            "period_key",
            "method",
            "history_days",
            "spent_usd",
            "p10_usd",
            "p50_usd",
            "p90_usd",
            "percent_of_budget",
            "confidence",
            "limit_usd",
            "hits_hard_cap_on",
            "overrun_band",
            "crossings",
        ],
    )
    if not as_json:
        console.print(Text(data["outlook"]))
