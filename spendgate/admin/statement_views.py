"""A statement as JSON, CSV, JSONL or a printable HTML page (Jinja2, shipped in the
package: ``admin/templates/statement.html``).

CSV and JSONL carry one record per figure — ``section, id, label, requests, cost_usd``,
then a team line's tokens and estimated calls and cost (``chargeback.LINE_COLUMNS``; empty on other
records and on statements stored before lines carried them), ``unpriced_requests`` and,
last, a team line's ``web_searches`` — with the statement's lines first (they add up to
its total), then each breakdown.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from spendgate.core import chargeback as cb
from spendgate.core.csv_cells import text_cell
from spendgate.core.money import format_usd

_templates = Environment(
    loader=PackageLoader("spendgate.admin", "templates"),
    autoescape=select_autoescape(["html"]),
)
#: ``unpriced_requests``: the calls of unknown price among ``requests`` (their cost, $0,
#: is not a price): a breakdown row's, and the statement's on its total. Columns added
#: since (``web_searches``) come last, so a script reading columns by position keeps
#: reading the ones it knows
LATER = ("web_searches",)
FIELDS = ("section", "id", "label", "requests", "cost_usd",
          *(c for c in cb.LINE_COLUMNS if c not in LATER), "unpriced_requests",
          *LATER)  # fmt: skip


def records(content: dict[str, Any]) -> list[dict[str, Any]]:
    out = [
        {"section": "lines", "id": line["id"], "label": line["label"],
         "cost_usd": format_usd(line["cost_nanos"]), **cb.shown_figures(line)}
        for line in content["lines"]
    ]  # fmt: skip
    out.append({"section": "total", "id": "total", "label": "Total", "requests": None,
                "cost_usd": format_usd(content["total_nanos"]),
                "unpriced_requests": content.get("unpriced_requests")})  # fmt: skip
    for section, rows in content["breakdown"].items():
        out += [
            {"section": section, "id": r["id"], "label": r["id"], "requests": r["requests"],
             "cost_usd": format_usd(r["cost_nanos"]),
             "unpriced_requests": r.get("unpriced_requests")}
            for r in rows
        ]  # fmt: skip
    return out


def render(fmt: str, meta: dict[str, Any], content: dict[str, Any]) -> Response | dict[str, Any]:
    """``meta``: provisional, version, content_hash, id (None while provisional)."""
    name = f"statement-{content['month']}-{content.get('team_id') or 'org'}"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(
            {**r, "id": text_cell(r["id"]), "label": text_cell(r["label"])}
            for r in records(content)
        )
        return Response(
            out.getvalue(),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="{name}.csv"'},
        )
    if fmt == "jsonl":
        head = {"section": "statement", **meta, "org_id": content["org_id"],
                "team_id": content.get("team_id"), "month": content["month"]}  # fmt: skip
        lines = [orjson.dumps(head, default=str)] + [orjson.dumps(r) for r in records(content)]
        return Response(
            b"\n".join(lines) + b"\n",
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{name}.jsonl"'},
        )
    if fmt == "html":
        title = (
            f"Statement {content['month']}: {content['team_name']}"
            if content["kind"] == "team"
            else f"Statement {content['month']}: {content['org_name']} (all teams)"
        )
        page = _templates.get_template("statement.html").render(
            title=title, s=content, usd=format_usd, figures=cb.shown_figures, **meta
        )
        return HTMLResponse(page)
    return {**meta, "total_usd": format_usd(content["total_nanos"]), "statement": content}
