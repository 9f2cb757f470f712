"""Request bodies for each endpoint kind, built from an event (pure).

- ``webhook``: the event itself, ``{"id", "type", "timestamp", "data"}``.
- ``slack``: an incoming-webhook message, ``{"text", "blocks"}``.
- ``pagerduty``: an Events API v2 event (``trigger`` or ``resolve``) with a
  ``dedup_key`` per budget, period window and threshold, so one incident tracks one
  breach of one window.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from spendgate.webhooks.catalog import Event, iso_z, title

log = logging.getLogger("spendgate.webhooks")

PAGERDUTY_SEVERITY = {"info": "info", "warning": "warning", "critical": "critical"}
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255


def encode(body: Mapping[str, Any]) -> str:
    """Compact JSON; the exact text that is signed and sent."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)


def generic_body(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "timestamp": iso_z(event.timestamp),
        "data": dict(event.data),
    }


def _scope(data: Mapping[str, Any]) -> str | None:
    kind = data.get("scope_type")
    if not kind:
        return None
    key_id = data.get("key_id")
    if kind == "key" and key_id and data.get("name") and data.get("scope_id") == key_id:
        return f"key {data['name']} ({key_id})"  # a key's own event: its name first
    return f"{kind} {data.get('scope_id') or data.get('tag') or ''}".strip()


def _money(value: Any) -> str:
    return f"${value}"


#: how a budget event's ``threshold`` level reads
LEVELS = {"alert": "alert", "soft": "soft limit", "hard": "hard limit"}


def _threshold(data: Mapping[str, Any]) -> str | None:
    """``soft limit 75%``: the level a threshold event is about (``percent`` alone for
    other events that carry one)."""
    if data.get("percent") is None or data.get("exception_id"):
        return None  # an exception's percent is its raise, not a level
    level = LEVELS.get(str(data.get("threshold")), "")
    return f"{level} {data['percent']}%".strip()


def _spent(d: Mapping[str, Any]) -> str:
    """``$79.99 of $100.00``, and the hard cap when it is not the amount (a hard limit
    below 100 %: ``(hard limit $80.00)``), which is what refuses calls."""
    text = f"{_money(d['spent_usd'])} of {_money(d['amount_usd'])}"
    cap = d.get("hard_limit_usd")
    if cap is not None and cap != d["amount_usd"]:
        text += f" (hard limit {_money(cap)})"
    return text


def facts(event: Event) -> list[tuple[str, str]]:
    """Labelled figures worth showing a person, in reading order."""
    d = event.data
    out: list[tuple[str, str]] = []
    if d.get("budget_id"):
        name = d.get("budget_name")
        out.append(("Budget", f"{name} ({d['budget_id']})" if name else str(d["budget_id"])))
    if d.get("wallet_id"):
        name = d.get("wallet_name")
        out.append(("Wallet", f"{name} ({d['wallet_id']})" if name else str(d["wallet_id"])))
    scope = _scope(d)
    if scope:
        out.append(("Scope", scope))
    threshold = _threshold(d)
    if threshold:
        out.append(("Threshold", threshold))
    if d.get("exception_id"):
        raised = d.get("percent") not in (None, 0, "0") and f"+{d['percent']}%"
        out.append(("Raise", raised or f"+{_money(d.get('amount_usd'))}"))
    if d.get("actual_usd") is not None and d.get("expected_usd") is not None:
        spend = f"{_money(d['actual_usd'])}, expected {_money(d['expected_usd'])}"
        out.append(("Spend this hour", spend))
    if d.get("percent_used") is not None:
        out.append(("Used", f"{d['percent_used']}%"))
    if d.get("outlook"):
        out.append(("Outlook", str(d["outlook"])))
    if d.get("spent_usd") is not None and d.get("amount_usd") is not None:
        out.append(("Spent", _spent(d)))
    if d.get("worst_case_usd") is not None and d.get("remaining_usd") is not None:
        out.append(
            (
                "Refusing",
                f"calls whose worst case exceeds {_money(d['remaining_usd'])} remaining "
                f"(one of {_money(d['worst_case_usd'])} was refused)",
            )
        )
    if d.get("balance_usd") is not None:
        out.append(("Balance", _money(d["balance_usd"])))
    if d.get("period_end"):
        out.append(("Period ends", str(d["period_end"])))
    for key in ("model", "key_id", "endpoint_id", "host", "reason", "expires_at"):
        value = d.get(key)
        if value is None:
            continue
        if key == "key_id" and d.get("scope_type") == "key" and d.get("scope_id") == value:
            continue  # the scope named the key already
        out.append((key.replace("_", " ").capitalize(), str(value)))
    return out


def summary(event: Event) -> str:
    """One readable line: what happened and the figures that matter. Figures that cannot
    be told (data of a shape :func:`facts` does not expect) leave the title alone, and
    are logged: the line is built while the event is stored, with the ledger row that
    may carry it, and how a notification reads must never keep either from the
    database (a KeyError here once set such rows aside)."""
    head = title(event.type)
    try:
        detail = ", ".join(f"{label.lower()} {value}" for label, value in facts(event))
    except Exception:  # a bug in the wording: the event is stored all the same
        log.exception("could not tell the figures of %s event %s", event.type, event.id)
        detail = ""
    text = f"{head}: {detail}" if detail else head
    return text[:MAX_SUMMARY]


#: the console page of the object an event is about, by the data field naming it
CONSOLE_PAGES = (("budget_id", "/usage/budgets/"), ("wallet_id", "/wallets/"), ("key_id", "/keys/"))


def console_link(event: Event, console_url: str) -> str:
    """The console page of what the event is about (its budget, wallet or key), else the
    notifications page; ``console_url`` is ``SPENDGATE_PUBLIC_URL`` ("" for a path)."""
    base = console_url.rstrip("/")
    for field, page in CONSOLE_PAGES:
        value = event.data.get(field)
        if value:
            return f"{base}{page}{quote(str(value), safe='')}"
    return f"{base}/notifications"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(event: Event, console_url: str) -> dict[str, Any]:
    link = console_link(event, console_url)
    fields = [
        {"type": "mrkdwn", "text": f"*{label}*\n{_slack_escape(value)}"}
        for label, value in facts(event)
    ][:10]  # Slack allows 10 fields per section
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title(event.type)[:150]}},
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"{event.severity} · {iso_z(event.timestamp)} · "
                    f"<{link}|Open in spendgate>",
                }
            ],
        }
    )
    return {"text": f"[{event.severity}] {_slack_escape(summary(event))} {link}", "blocks": blocks}


def incident_period(data: Mapping[str, Any]) -> str | None:
    """The period a budget event's incident is of: its window by its UTC bounds
    (``period_span``), or for an event stored before it carried them its local date
    (``period``), which its incident was opened under."""
    period = data.get("period_span") or data.get("period")
    return None if period is None else str(period)


def pagerduty_dedup_key(event: Event) -> str:
    """One incident per budget, period window and threshold; otherwise per event dedup key
    or id. The window is named by its UTC bounds (``period_span``), so a budget moved to
    another zone keeps its incident for the same hours under another date, and opens a new
    one for other hours under the same date. An event stored before it carried the span
    keeps the key it was triggered under, named by its local date (``period``): its
    resolve, built from the stored trigger, must name the same incident."""
    d = event.data
    period = incident_period(d)
    if d.get("budget_id") and period and d.get("threshold"):
        key = f"spendgate:budget:{d['budget_id']}:{period}:{d['threshold']}:{d.get('percent')}"
    else:
        key = f"spendgate:{event.dedup_key or event.id}"
    return key[:MAX_DEDUP_KEY]


def pagerduty_body(event: Event, routing_key: str, action: str, console_url: str) -> dict[str, Any]:
    dedup_key = pagerduty_dedup_key(event)
    if action == "resolve":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}
    d = event.data
    payload: dict[str, Any] = {
        "summary": summary(event),
        "source": "spendgate",
        "severity": PAGERDUTY_SEVERITY[event.severity],
        "timestamp": iso_z(event.timestamp),
        "class": event.type,
        "custom_details": dict(d),
    }
    if d.get("budget_id"):
        payload["component"] = f"budget {d['budget_id']}"
    scope = _scope(d)
    if scope:
        payload["group"] = scope
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": payload,
        "client": "spendgate",
        "client_url": console_url,
        "links": [{"href": console_link(event, console_url), "text": "Open in spendgate"}],
    }


def render(
    kind: str, event: Event, *, action: str, config: Mapping[str, Any], console_url: str
) -> dict[str, Any]:
    """The body an endpoint of ``kind`` receives for ``event``."""
    if kind == "slack":
        return slack_body(event, console_url)
    if kind == "pagerduty":
        return pagerduty_body(event, str(config.get("routing_key", "")), action, console_url)
    return generic_body(event)
