"""``/audit``: the audit log — filter by actor, action, object and time; one entry's
before/after side by side with the changed fields marked; export of what is filtered
(JSONL or CSV); and a "chain verified" badge.

The list, export and verification are the admin API's route functions
(``spendgate.admin.audit``): the same scope (team roles see their teams' entries), the
export recorded as ``audit.exported``, and the badge from the very walk
``spendgate audit verify`` asks for (``GET /admin/audit/verify`` →
``store.audit.verify`` → ``core.audit_verify``), naming the first bad entry if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from spendgate.admin import audit as api
from spendgate.console.admin_forms import local_instant
from spendgate.console.forms import field_errors
from spendgate.console.layout import Svc, User, harden, page, require
from spendgate.console.naming import Namer
from spendgate.core.access import Can
from spendgate.errors import NotFound, ValidationFailed

router = APIRouter(include_in_schema=False)
PAGE_SIZE = 50
FILTERS = ("actor", "action", "target", "start", "end")


@dataclass(frozen=True, slots=True)
class AuditQuery:
    actor: str
    action: str
    target: str
    start: datetime | None
    end: datetime | None
    raw: dict[str, str]

    def url(self, path: str = "/audit", **extra: Any) -> str:
        params = {**{k: v for k, v in self.raw.items() if v}, **extra}
        return path + ("?" + urlencode(params) if params else "")


def parse_query(params: dict[str, str]) -> AuditQuery:
    raw = {k: params.get(k, "").strip()[:200] for k in FILTERS}
    start = local_instant(raw["start"], "start")
    end = local_instant(raw["end"], "end")
    if start and end and end <= start:
        raise ValidationFailed("end: must be after start", param="end")
    return AuditQuery(raw["actor"], raw["action"], raw["target"], start, end, raw)


def _pretty(value: Any) -> str:
    if value is None:
        return ""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


def changed_fields(before: Any, after: Any) -> list[tuple[str, str, str]]:
    """(field, before, after) for every top-level field that differs."""
    if not isinstance(before, dict) and not isinstance(after, dict):
        return [] if before == after else [("(value)", _pretty(before), _pretty(after))]
    old = before if isinstance(before, dict) else {}
    new = after if isinstance(after, dict) else {}
    return [
        (k, _pretty(old.get(k)), _pretty(new.get(k)))
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


async def chain_badge(svc: Svc, user: User) -> dict[str, Any] | None:
    """The verification ``spendgate audit verify`` runs, for those who may run it."""
    if not user.principal.may(Can.AUDIT_VERIFY):
        return None
    who = require(user, Can.AUDIT_VERIFY)
    return await api.verify_audit(svc, svc.audit_settings, who)


@router.get("/audit")
async def audit_page(request: Request, svc: Svc, user: User) -> HTMLResponse:
    who = require(user, Can.AUDIT_READ)
    params = dict(request.query_params)
    try:
        q = parse_query(params)
        before_raw = request.query_params.get("before_seq", "")
        if before_raw and not before_raw.isdigit():
            raise ValidationFailed("before_seq: a whole number", param="before_seq")
        listing = await api.list_audit(
            svc,
            who,
            q.start,
            q.end,
            q.actor,
            q.action,
            q.target,
            int(before_raw) if before_raw else None,
            PAGE_SIZE,
        )
    except ValidationFailed as exc:  # the filters again, as typed, the message beside one
        raw = {k: params.get(k, "").strip()[:200] for k in FILTERS}
        ctx = {
            "q": AuditQuery(raw["actor"], raw["action"], raw["target"], None, None, raw),
            "errors": field_errors(exc),
            "badge": await chain_badge(svc, user),
        }
        return await page(request, "audit/list.html", ctx, status=422)
    namer = Namer(svc, user.principal)
    await namer.preload(
        [(e["target_type"], e["target_id"]) for e in listing["entries"]],
        [(e["actor_type"], e["actor_id"]) for e in listing["entries"]],
    )
    ctx = {
        "q": q,
        "entries": listing["entries"],
        "actors": {
            e["seq"]: await namer.audit_actor(e["actor_type"], e["actor_id"])
            for e in listing["entries"]
        },
        "targets": {
            e["seq"]: await namer.scope(e["target_type"], e["target_id"])
            for e in listing["entries"]
        },
        "next_url": q.url(before_seq=listing["next_before_seq"])
        if listing["next_before_seq"]
        else None,
        "badge": await chain_badge(svc, user),
    }
    return await page(request, "audit/list.html", ctx)


@router.get("/audit/export")
async def export(request: Request, svc: Svc, user: User) -> Response:
    who = require(user, Can.AUDIT_READ)
    q = parse_query(dict(request.query_params))
    fmt = request.query_params.get("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise ValidationFailed("format: jsonl or csv", param="format")
    answer = await api.export_audit(
        request,
        svc,
        svc.audit_settings,
        who,
        fmt,  # type: ignore[arg-type]  # checked just above
        q.start,
        q.end,
        q.actor,
        q.action,
        q.target,
    )
    return harden(request, answer)


@router.get("/audit/{seq}")
async def entry_page(seq: str, request: Request, svc: Svc, user: User) -> HTMLResponse:
    who = require(user, Can.AUDIT_READ)
    if not seq.isdigit() or not 0 < int(seq) < 2**63:
        raise NotFound(f"audit entry {seq} not found")
    found = await api.list_audit(svc, who, None, None, None, None, None, int(seq) + 1, 1)
    entries = found["entries"]
    if not entries or entries[0]["seq"] != int(seq):
        raise NotFound(f"audit entry {seq} not found")
    entry = entries[0]
    namer = Namer(svc, user.principal)
    ctx = {
        "entry": entry,
        "actor": await namer.audit_actor(entry["actor_type"], entry["actor_id"]),
        "target": await namer.scope(entry["target_type"], entry["target_id"]),
        "before": _pretty(entry["before"]),
        "after": _pretty(entry["after"]),
        "changes": changed_fields(entry["before"], entry["after"]),
    }
    return await page(request, "audit/entry.html", ctx)
