"""Admin routes for the audit log: list, export (streamed), verify, purge.

Other admin routes record their changes with ``spendgate.admin.audit_trail.admin_event``
and ``spendgate.store.audit.append(conn, event)`` inside the transaction that makes the
change.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from spendgate.admin import schemas as s
from spendgate.admin.audit_trail import admin_event
from spendgate.admin.deps import Svc, Who, guard, principal
from spendgate.core.access import Can
from spendgate.core.access import Principal as Caller
from spendgate.core.audit_chain import (
    Anchor,
    AuditEntry,
    AuditSettings,
    anchor_valid,
    derive_key,
    retention_start,
    sign_anchor,
)
from spendgate.core.csv_cells import text_cell
from spendgate.errors import ConfigError, ValidationFailed
from spendgate.store import audit as store

router = APIRouter(
    prefix="/admin", dependencies=[Depends(principal)], tags=["audit"], responses=s.ERRORS
)

Principal = Who
EXPORT_BATCH = 2000
CSV_COLUMNS = (
    "seq",
    "id",
    "at",
    "actor_type",
    "actor_id",
    "action",
    "target_type",
    "target_id",
    "before",
    "after",
    "request_id",
    "source_ip",
    "prev_hash",
    "hash",
    "v",
    "org_id",
    "team_ids",
    "mac",
)
MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def audit_settings(request: Request, svc: Svc) -> AuditSettings:
    """``app.state.audit_settings`` when the app sets it; else the defaults, keyed by a
    key derived from the master key."""
    configured = getattr(request.app.state, "audit_settings", None)
    if isinstance(configured, AuditSettings):
        return configured
    if svc.settings.master_key is None:
        raise ConfigError("no audit key: set SPENDGATE_AUDIT_KEY or SPENDGATE_MASTER_KEY")
    return AuditSettings(derive_key(svc.settings.master_key))


Audit = Annotated[AuditSettings, Depends(audit_settings)]


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _filters(
    who: Caller,
    start: datetime | None,
    end: datetime | None,
    actor: str | None,
    action: str | None,
    target: str | None,
) -> store.AuditFilter:
    """The asked filters within the caller's scope: the master key reads every entry, an
    org's members their org's, team roles their teams'."""
    return store.AuditFilter(
        _utc(start),
        _utc(end),
        actor or None,
        action or None,
        target or None,
        org_id=None if who.is_master else who.org_id,
        team_ids=who.team_filter(),
    )


class AuditEntryOut(BaseModel):
    seq: int
    id: str
    at: datetime
    actor_type: str
    actor_id: str
    action: str
    target_type: str
    target_id: str | None
    before: Any
    after: Any
    request_id: str | None
    source_ip: str | None
    prev_hash: str
    hash: str
    v: int = Field(description="canonical version: 1 (no scope, no MAC) or 2")
    org_id: str | None
    team_ids: list[str]
    mac: str | None = Field(description="HMAC of the hash under the audit key (version 2)")


class AuditPage(BaseModel):
    entries: list[AuditEntryOut]
    #: pass as ``before_seq`` for the next (older) page; null on the last page
    next_before_seq: int | None


class AnchorOut(BaseModel):
    """A chain position to keep outside the database, signed with the audit key; give
    it back to a later verify (``expect_seq`` …, or ``spendgate audit verify
    --since-anchor FILE``) to detect entries deleted since."""

    seq: int
    hash: str
    at: str | None
    signature: str


class VerifyOut(BaseModel):
    ok: bool
    checked: int = Field(description="entries checked (an org admin: of their org)")
    last_seq: int
    last_hash: str
    checkpoint_seq: int | None
    first_bad_id: str | None
    first_bad_seq: int | None
    reason: str | None
    anchor: AnchorOut | None
    anchor_checked: bool | None = Field(
        description="whether the kept anchor given was compared (false: older than the "
        "newest purge); null: none given"
    )


class PurgeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: purge entries older than this; default: now minus the configured retention
    before: s.Instant | None = None


class PurgeOut(BaseModel):
    purged: int
    checkpoint_id: str | None
    checkpoint_seq: int | None
    entry_id: str | None


@router.get("/audit", response_model=AuditPage, dependencies=guard(Can.AUDIT_READ))
async def list_audit(
    svc: Svc,
    who: Principal,
    start: s.Instant | None = None,
    end: s.Instant | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
    before_seq: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Entries newest first, filtered by time, actor, action (``budget.*``) and target."""
    entries = await store.list_entries(
        svc.engine,
        _filters(who, start, end, actor, action, target),
        limit=limit,
        before_seq=before_seq,
    )
    last = entries[-1].seq if len(entries) == limit else None
    return {"entries": [e.as_dict() for e in entries], "next_before_seq": last}


async def _jsonl(pages: AsyncIterator[list[AuditEntry]]) -> AsyncIterator[bytes]:
    async for page in pages:
        yield b"".join(orjson.dumps(e.as_dict(), option=orjson.OPT_SORT_KEYS) + b"\n" for e in page)


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, str | int):
        return "" if value is None else text_cell(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


async def _csv(pages: AsyncIterator[list[AuditEntry]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    async for page in pages:
        for entry in page:
            row = entry.as_dict()
            writer.writerow([_cell(row[c]) for c in CSV_COLUMNS])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode()


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}},
    dependencies=guard(Can.AUDIT_READ),
)
async def export_audit(
    request: Request,
    svc: Svc,
    audit: Audit,
    principal: Principal,
    format: Literal["jsonl", "csv"] = "jsonl",
    start: s.Instant | None = None,
    end: s.Instant | None = None,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> StreamingResponse:
    """Stream every matching entry (oldest first) as JSON lines or CSV; the export is
    itself recorded (``audit.exported``) before the first byte is sent."""
    filters = _filters(principal, start, end, actor, action, target)
    up_to, _ = await store.head(svc.engine)
    total = await store.count_entries(svc.engine, filters, up_to_seq=up_to)
    now = svc.clock.now()
    await store.record(
        svc.engine,
        admin_event(
            request,
            principal.actor,
            "audit.exported",
            "audit_log",
            None,
            at=now,
            after={
                "format": format,
                "entries": total,
                "up_to_seq": up_to,
                "filters": {
                    "start": filters.start,
                    "end": filters.end,
                    "actor": actor,
                    "action": action,
                    "target": target,
                },
            },
        ),
        org_id=filters.org_id,
        team_ids=filters.team_ids or (),
    )
    pages = store.pages(svc.engine, 0, up_to, filters.conditions(), EXPORT_BATCH)
    body = _jsonl(pages) if format == "jsonl" else _csv(pages)
    name = f"spendgate-audit-{now:%Y%m%dT%H%M%SZ}.{format}"
    headers = {"content-disposition": f'attachment; filename="{name}"', "x-audit-count": str(total)}
    newest = await store.list_entries(svc.engine, filters, limit=1, before_seq=up_to + 1)
    if newest:  # the newest exported entry, signed: keep it to check later verifies with
        anchor = sign_anchor(Anchor(newest[0].seq, newest[0].hash, now), audit.key)
        headers["x-audit-anchor"] = orjson.dumps(anchor.as_dict()).decode()
    return StreamingResponse(body, media_type=MEDIA_TYPES[format], headers=headers)


Hash = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


def _kept_anchor(
    audit: AuditSettings,
    seq: int | None,
    hash_: str | None,
    at: datetime | None,
    signature: str | None,
) -> Anchor | None:
    if seq is None and hash_ is None:
        if at is not None or signature:
            raise ValidationFailed("expect_seq: give the anchor's seq and hash", param="expect_seq")
        return None
    if seq is None or hash_ is None:
        missing = "expect_seq" if seq is None else "expect_hash"
        raise ValidationFailed(f"{missing}: an anchor needs both seq and hash", param=missing)
    anchor = Anchor(seq, hash_, _utc(at), signature or "")
    if not anchor_valid(anchor, audit.key):
        raise ValidationFailed(
            "expect_signature: not this deployment's signature for that anchor (or it was altered)",
            param="expect_signature",
        )
    return anchor


@router.get("/audit/verify", response_model=VerifyOut, dependencies=guard(Can.AUDIT_VERIFY))
async def verify_audit(
    svc: Svc,
    audit: Audit,
    who: Principal,
    expect_seq: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    expect_hash: Hash | None = None,
    expect_at: s.Instant | None = None,
    expect_signature: Hash | None = None,
) -> dict[str, Any]:
    """Walk the chain from the newest signed checkpoint, checking every entry's hash and
    MAC and the head row; name the first bad entry. ``expect_*``: an anchor kept from an
    earlier verify or export — its entry must still be there with the same hash (catches
    entries deleted at the end). An org admin's figures are their org's."""
    anchor = _kept_anchor(audit, expect_seq, expect_hash, expect_at, expect_signature)
    result = await store.verify(
        svc.engine,
        audit.key,
        now=svc.clock.now(),
        anchor=anchor,
        org_id=None if who.is_master else who.org_id,
    )
    return result.as_dict()


@router.post("/audit/purge", response_model=PurgeOut, dependencies=guard(Can.AUDIT_PURGE))
async def purge_audit(
    request: Request, body: PurgeIn, svc: Svc, audit: Audit, principal: Principal
) -> dict[str, Any]:
    """Delete entries older than ``before`` (never younger than the configured
    retention), leaving a signed checkpoint so the chain still verifies."""
    now = svc.clock.now()
    before = _utc(body.before) or retention_start(now, audit.retention_days)
    event = admin_event(request, principal.actor, "audit.purged", "audit_log", None, at=now)
    result = await store.purge(
        svc.engine,
        before,
        audit.key,
        now=now,
        min_retention_days=audit.retention_days,
        actor=(event.actor_type, event.actor_id),
        request_id=event.request_id,
        source_ip=event.source_ip,
    )
    cp = result.checkpoint
    return {
        "purged": result.purged,
        "checkpoint_id": cp.id if cp else None,
        "checkpoint_seq": cp.seq if cp else None,
        "entry_id": result.entry.id if result.entry else None,
    }
