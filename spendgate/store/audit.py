"""The audit log in the database: append-only, hash-chained, purged only behind a checkpoint.

Tables (created by migration 0003)::

    audit_log          one row per entry; ``seq`` 1, 2, 3… with no gaps, each row
                       carrying its ``prev_hash`` and ``hash`` (see ``spendgate.core.audit_chain``)
    audit_chain_head   one row (id 1): the last ``seq`` and ``hash`` handed out
    audit_checkpoints  one signed row per purge: where the chain resumes
    audit_purge_lock   empty except inside a purge transaction (see below)

**Append-only.** Triggers refuse UPDATE and DELETE on ``audit_log`` and
``audit_checkpoints`` (and TRUNCATE on PostgreSQL), on SQLite and PostgreSQL alike.
Migration 0027 adds its own (self-contained DDL, not ``GUARDS``): on SQLite an insert
colliding with a stored row is refused, since ``INSERT OR REPLACE`` deletes that row
without firing the DELETE trigger (PostgreSQL's ``ON CONFLICT DO UPDATE`` fires the
UPDATE one); and on both the chain-head row only moves forward — no DELETE, TRUNCATE,
second row, new id or lower seq.

**Sealed with the audit key.** Entries are MAC'd (version 2, see
``spendgate.core.audit_chain``) with the audit key, which lives outside the database and
is bound to the engine once (:func:`bind_audit_key`), so every ``append`` through that
engine — admin changes, enforcement facts, exports — is sealed without each caller
carrying the key. The chain-head row carries a MAC of its seq and hash as well. An
engine with no key bound still appends, but its entries carry no MAC and fail a keyed
verification.

**One linear chain.** ``append`` first UPDATEs the chain-head row (``seq = seq + 1 …
RETURNING``), which takes PostgreSQL's row lock or SQLite's write lock before anything
is read, so concurrent appends from any number of replicas queue on that row and each
sees the hash its predecessor committed. ``append`` runs in the caller's transaction:
the change and its entry commit or roll back together. The head row stays locked until
the caller commits, so call ``append`` last in the transaction.

**Purge.** The DELETE trigger lets a row go only while ``audit_purge_lock`` holds a row
with ``up_to_seq >= seq``. ``purge`` inserts that row, deletes the old prefix of the
chain, deletes the lock row and writes a signed checkpoint, all in one transaction;
no other session ever sees the lock row (it is never committed), on either database.
Somebody who can write raw SQL can do the same, or drop the triggers: that is what
the hash chain and the signed checkpoints are for (``verify`` names the entry).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.audit_chain import (
    GENESIS,
    Anchor,
    AuditEntry,
    AuditEvent,
    Checkpoint,
    checkpoint_valid,
    entry_key,
    head_mac,
    retention_start,
    seal,
    sign_checkpoint,
)
from spendgate.core.audit_verify import ChainBreak, ChainState, ChainWalk, VerifyResult
from spendgate.errors import AuditUnavailable, Conflict, ValidationFailed
from spendgate.security.credentials import new_id
from spendgate.store.schema import JSONType, UTCDateTime, metadata

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("at", UTCDateTime(), nullable=False),
    sa.Column("actor_type", sa.String(20), nullable=False),
    sa.Column("actor_id", sa.String(200), nullable=False),
    sa.Column("action", sa.String(80), nullable=False),
    sa.Column("target_type", sa.String(40), nullable=False),
    sa.Column("target_id", sa.String(200), nullable=True),
    sa.Column("before", JSONType, nullable=True),
    sa.Column("after", JSONType, nullable=True),
    sa.Column("request_id", sa.String(100), nullable=True),
    sa.Column("source_ip", sa.String(64), nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    # who may read the entry (hashed from version 2; see migration 0007): the org, and the
    # teams as ",team_a,team_b," so one LIKE per team finds them on SQLite and PostgreSQL
    sa.Column("org_id", sa.String(40), nullable=True),
    # (PostgreSQL: any length since migration 0025, a user in many teams; SQLite never
    # enforced one)
    sa.Column("team_ids", sa.String(400).with_variant(sa.Text(), "postgresql"), nullable=True),
    # the entry's canonical version (1: before migration 0011) and its MAC (version 2)
    sa.Column("v", sa.SmallInteger(), nullable=False, server_default="1"),
    sa.Column("mac", sa.String(64), nullable=True),
    sa.UniqueConstraint("seq", name="uq_audit_log_seq"),
    sa.Index("ix_audit_log_at", "at"),
    sa.Index("ix_audit_log_action", "action"),
    sa.Index("ix_audit_log_target", "target_id"),
    sa.Index("ix_audit_log_org", "org_id", "seq"),
)

audit_chain_head = sa.Table(
    "audit_chain_head",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("mac", sa.String(64), nullable=True),
)

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False, unique=True),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("purged_before", UTCDateTime(), nullable=False),
    sa.Column("purged_count", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("signature", sa.String(64), nullable=False),
)

audit_purge_lock = sa.Table(
    "audit_purge_lock",
    metadata,
    sa.Column("up_to_seq", sa.BigInteger(), primary_key=True, autoincrement=False),
)

HEAD_ID = 1
DEFAULT_BATCH = 1000


# -- the guards (triggers) -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Guard:
    name: str
    table: str
    create: str

    def drop(self, dialect: str) -> str:
        on = f" ON {self.table}" if dialect == "postgresql" else ""
        return f"DROP TRIGGER IF EXISTS {self.name}{on}"


def _sqlite_refuse(name: str, table: str, op: str, when: str = "") -> Guard:
    return Guard(
        name,
        table,
        f"CREATE TRIGGER {name} BEFORE {op} ON {table} {when}"
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {op} refused'); END",
    )


_PURGING = "EXISTS (SELECT 1 FROM audit_purge_lock WHERE OLD.seq <= up_to_seq)"
PG_GUARD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION spendgate_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_log' THEN
        IF {_PURGING} THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$"""


def _pg_guard(name: str, table: str, ops: str, each: str) -> Guard:
    return Guard(
        name,
        table,
        f"CREATE TRIGGER {name} BEFORE {ops} ON {table} "
        f"FOR EACH {each} EXECUTE FUNCTION spendgate_audit_guard()",
    )


GUARDS: dict[str, tuple[Guard, ...]] = {
    "sqlite": (
        _sqlite_refuse("audit_log_no_update", "audit_log", "UPDATE"),
        _sqlite_refuse("audit_log_no_delete", "audit_log", "DELETE", f"WHEN NOT {_PURGING} "),
        _sqlite_refuse("audit_checkpoints_no_update", "audit_checkpoints", "UPDATE"),
        _sqlite_refuse("audit_checkpoints_no_delete", "audit_checkpoints", "DELETE"),
    ),
    "postgresql": (
        _pg_guard("audit_log_guard", "audit_log", "UPDATE OR DELETE", "ROW"),
        _pg_guard("audit_log_no_truncate", "audit_log", "TRUNCATE", "STATEMENT"),
        _pg_guard("audit_checkpoints_guard", "audit_checkpoints", "UPDATE OR DELETE", "ROW"),
        _pg_guard("audit_checkpoints_no_truncate", "audit_checkpoints", "TRUNCATE", "STATEMENT"),
    ),
}


def guard_statements(dialect: str) -> list[str]:
    """DDL that makes the audit tables append-only (migration 0003 runs it)."""
    guards = [g.create for g in GUARDS[dialect]]
    return [PG_GUARD_FUNCTION, *guards] if dialect == "postgresql" else guards


def unguard_statements(dialect: str, *, drop_function: bool = False) -> list[str]:
    """DDL removing the audit tables' triggers. The PostgreSQL trigger function stays
    unless ``drop_function`` (migration 0003's downgrade): frozen statements' triggers
    use it too (``append_only_statements``)."""
    drops = [g.drop(dialect) for g in GUARDS[dialect]]
    if drop_function and dialect == "postgresql":
        drops.append("DROP FUNCTION IF EXISTS spendgate_audit_guard()")
    return drops


def append_only_statements(table: str, dialect: str) -> list[str]:
    """DDL refusing UPDATE and DELETE (and TRUNCATE on PostgreSQL) on another table
    that must never change once written (frozen statements), with the audit log's own
    trigger function, so there is one home for what "append-only" means. The function
    must exist (migration 0003 made it)."""
    if dialect == "postgresql":
        guards = (
            _pg_guard(f"{table}_guard", table, "UPDATE OR DELETE", "ROW"),
            _pg_guard(f"{table}_no_truncate", table, "TRUNCATE", "STATEMENT"),
        )
    else:
        guards = (
            _sqlite_refuse(f"{table}_no_update", table, "UPDATE"),
            _sqlite_refuse(f"{table}_no_delete", table, "DELETE"),
        )
    return [g.create for g in guards]


def drop_append_only_statements(table: str, dialect: str) -> list[str]:
    if dialect == "postgresql":
        names = (f"{table}_guard", f"{table}_no_truncate")
    else:
        names = (f"{table}_no_update", f"{table}_no_delete")
    return [Guard(n, table, "").drop(dialect) for n in names]


# -- rows <-> entries ------------------------------------------------------------------------
def _row(entry: AuditEntry) -> dict[str, Any]:
    e = entry.event
    return {
        "id": entry.id,
        "seq": entry.seq,
        "at": e.at,
        "actor_type": e.actor_type,
        "actor_id": e.actor_id,
        "action": e.action,
        "target_type": e.target_type,
        "target_id": e.target_id,
        "before": e.before,
        "after": e.after,
        "request_id": e.request_id,
        "source_ip": e.source_ip,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
        "org_id": entry.org_id,
        "team_ids": teams_column(entry.team_ids),
        "v": entry.version,
        "mac": entry.mac,
    }


_c = audit_log.c
#: read in this order; JSON cast to text and parsed by orjson (4x faster than going through Row
#: attributes and the stdlib decoder, which matters for a million-entry export)
_READ = (
    _c.seq,
    _c.id,
    _c.at,
    _c.actor_type,
    _c.actor_id,
    _c.action,
    _c.target_type,
    _c.target_id,
    sa.cast(_c.before, sa.Text).label("before"),
    sa.cast(_c.after, sa.Text).label("after"),
    _c.request_id,
    _c.source_ip,
    _c.prev_hash,
    _c.hash,
    _c.org_id,
    _c.team_ids,
    _c.v,
    _c.mac,
)


def _json(raw: str | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def entry_from_row(row: Sequence[Any]) -> AuditEntry:
    """An entry from a row selected with ``_READ``."""
    (
        seq,
        entry_id,
        at,
        actor_type,
        actor_id,
        action,
        target_type,
        target_id,
        before,
        after,
        request_id,
        source_ip,
        prev_hash,
        hash_,
        org_id,
        team_ids,
        version,
        mac,
    ) = row
    event = AuditEvent(
        at,
        actor_type,
        actor_id,
        action,
        target_type,
        target_id,
        _json(before),
        _json(after),
        request_id,
        source_ip,
    )
    teams = tuple(t for t in (team_ids or "").split(",") if t)
    return AuditEntry(int(seq), entry_id, event, prev_hash, hash_, int(version), org_id, teams, mac)


def _checkpoint(row: Any) -> Checkpoint:
    return Checkpoint(
        row.id,
        int(row.seq),
        row.hash,
        row.purged_before,
        int(row.purged_count),
        row.created_at,
        row.signature,
    )


# -- writing -----------------------------------------------------------------------------------
#: the execution option the audit key travels in, from the engine to every connection
KEY_OPTION = "spendgate_audit_key"


def bind_audit_key(engine: AsyncEngine, key: bytes) -> None:
    """Seal every entry appended through ``engine`` with ``key`` (call once, at startup)."""
    engine.sync_engine.update_execution_options(**{KEY_OPTION: key})


def _bound_key(conn: AsyncConnection) -> bytes | None:
    key = (
        conn.sync_connection.get_execution_options().get(KEY_OPTION)
        if conn.sync_connection
        else None
    )
    return key if isinstance(key, bytes) else None


def teams_column(team_ids: Iterable[str]) -> str | None:
    ids = sorted(set(team_ids))
    return f",{','.join(ids)}," if ids else None


async def append(
    conn: AsyncConnection,
    event: AuditEvent,
    *,
    entry_id: str | None = None,
    org_id: str | None = None,
    team_ids: Iterable[str] = (),
) -> AuditEntry:
    """Add ``event`` to the chain inside the caller's transaction (call it last).

    ``org_id``/``team_ids`` say who may read the entry (org-wide roles of that org, team
    roles of those teams); entries with neither are for the master key only."""
    head = audit_chain_head.c
    taken = (
        await conn.execute(
            sa.update(audit_chain_head)
            .where(head.id == HEAD_ID)
            .values(seq=head.seq + 1)
            .returning(head.seq, head.hash)
        )
    ).first()
    if taken is None:
        raise _head_missing()
    key = _bound_key(conn)
    entry = seal(
        int(taken.seq),
        entry_id or new_id("aud"),
        event,
        taken.hash,
        org_id=org_id,
        team_ids=team_ids,
        sealing_key=None if key is None else entry_key(key),
    )
    await conn.execute(audit_log.insert().values(**_row(entry)))
    await conn.execute(
        sa.update(audit_chain_head)
        .where(head.id == HEAD_ID)
        .values(hash=entry.hash, mac=None if key is None else head_mac(key, entry.seq, entry.hash))
    )
    return entry


def _head_missing() -> AuditUnavailable:
    return AuditUnavailable(
        "the audit chain head row is missing, so the audit log cannot be written or read"
        " to its end: restore it from the last entry and run 'spendgate audit verify'"
        " (entries at the end may have been deleted)"
    )


async def record(
    engine: AsyncEngine,
    event: AuditEvent,
    *,
    org_id: str | None = None,
    team_ids: Iterable[str] = (),
) -> AuditEntry:
    """``append`` in a transaction of its own, for facts that change nothing else."""
    async with engine.begin() as conn:
        return await append(conn, event, org_id=org_id, team_ids=team_ids)


# -- reading -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuditFilter:
    """``actor``/``target``: an id, or ``type:id``; ``action``: exact, or a prefix ending
    in ``*`` (``budget.*``); ``start`` inclusive, ``end`` exclusive."""

    start: datetime | None = None
    end: datetime | None = None
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    #: the reader's scope: entries of this org only, and (for team roles) of these teams
    org_id: str | None = None
    team_ids: frozenset[str] | None = None

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        c = audit_log.c
        out: list[sa.ColumnElement[bool]] = []
        if self.org_id is not None:
            out.append(c.org_id == self.org_id)
        if self.team_ids is not None:
            out.append(
                sa.or_(
                    sa.false(),
                    *(
                        c.team_ids.like(f"%,{_like(t)},%", escape="\\")
                        for t in sorted(self.team_ids)
                    ),
                )
            )
        if self.start is not None:
            out.append(c.at >= self.start)
        if self.end is not None:
            out.append(c.at < self.end)
        if self.actor:
            out.append(_typed_id(self.actor, c.actor_type, c.actor_id))
        if self.target:
            out.append(_typed_id(self.target, c.target_type, c.target_id))
        if self.action and self.action.endswith("*"):
            out.append(c.action.like(_like(self.action[:-1]) + "%", escape="\\"))
        elif self.action:
            out.append(c.action == self.action)
        return out


def _like(text: str) -> str:
    """``text`` with LIKE's wildcards escaped (escape character ``\\``)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _typed_id(
    value: str, type_col: sa.Column[Any], id_col: sa.Column[Any]
) -> sa.ColumnElement[bool]:
    kind, sep, ident = value.partition(":")
    if sep:
        return sa.and_(type_col == kind, id_col == ident)
    return id_col == value


async def head(engine: AsyncEngine) -> tuple[int, str]:
    """The last ``seq`` handed out and its hash."""
    seq, hash_, _ = await sealed_head(engine)
    return seq, hash_


async def sealed_head(engine: AsyncEngine) -> tuple[int, str, str | None]:
    """The last ``seq`` handed out, its hash and the head row's MAC."""
    h = audit_chain_head.c
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(h.seq, h.hash, h.mac).where(h.id == HEAD_ID))).first()
    if row is None:
        raise _head_missing()
    return int(row.seq), str(row.hash), row.mac


async def _head_or_last(engine: AsyncEngine) -> tuple[tuple[int, str, str | None] | None, int]:
    """The sealed head, and the seq a verify walks to: the head's; with the head row gone
    (deleted behind its triggers' back) the last entry's, so the walk still runs."""
    h = audit_chain_head.c
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(h.seq, h.hash, h.mac).where(h.id == HEAD_ID))).first()
        if row is not None:
            return (int(row.seq), str(row.hash), row.mac), int(row.seq)
        last = (await conn.execute(sa.select(sa.func.max(audit_log.c.seq)))).scalar()
    return None, int(last or 0)


async def pages(
    source: AsyncEngine | AsyncConnection,
    after_seq: int,
    up_to_seq: int,
    conditions: Sequence[sa.ColumnElement[bool]] = (),
    batch: int = DEFAULT_BATCH,
) -> AsyncIterator[list[AuditEntry]]:
    """Entries with ``after_seq < seq <= up_to_seq`` in seq order, ``batch`` at a time
    (keyset pagination; an engine is connected per page, so nothing is held between)."""
    c = audit_log.c
    last = after_seq
    while last < up_to_seq:
        query = (
            sa.select(*_READ)
            .where(c.seq > last, c.seq <= up_to_seq, *conditions)
            .order_by(c.seq)
            .limit(batch)
        )
        if isinstance(source, AsyncConnection):
            rows = (await source.execute(query)).all()
        else:
            async with source.connect() as conn:
                rows = (await conn.execute(query)).all()
        if not rows:
            return
        yield [entry_from_row(r) for r in rows]
        last = int(rows[-1].seq)
        if len(rows) < batch:
            return


async def iter_entries(
    engine: AsyncEngine, filters: AuditFilter = AuditFilter(), batch: int = DEFAULT_BATCH
) -> AsyncIterator[AuditEntry]:
    """Every matching entry in seq order, as of the call (later appends are not included)."""
    up_to, _ = await head(engine)
    async for page in pages(engine, 0, up_to, filters.conditions(), batch):
        for entry in page:
            yield entry


async def count_entries(
    engine: AsyncEngine, filters: AuditFilter = AuditFilter(), *, up_to_seq: int | None = None
) -> int:
    query = sa.select(sa.func.count()).select_from(audit_log).where(*filters.conditions())
    if up_to_seq is not None:
        query = query.where(audit_log.c.seq <= up_to_seq)
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def list_entries(
    engine: AsyncEngine,
    filters: AuditFilter = AuditFilter(),
    *,
    limit: int = 100,
    before_seq: int | None = None,
) -> list[AuditEntry]:
    """Newest first; pass the last ``seq`` seen as ``before_seq`` for the next page."""
    c = audit_log.c
    query = sa.select(*_READ).where(*filters.conditions()).order_by(c.seq.desc()).limit(limit)
    if before_seq is not None:
        query = query.where(c.seq < before_seq)
    async with engine.connect() as conn:
        return [entry_from_row(r) for r in await conn.execute(query)]


async def latest_checkpoint(conn: AsyncConnection) -> Checkpoint | None:
    c = audit_checkpoints.c
    row = (await conn.execute(sa.select(audit_checkpoints).order_by(c.seq.desc()).limit(1))).first()
    return None if row is None else _checkpoint(row)


# -- verifying and purging ---------------------------------------------------------------------
async def verify(
    engine: AsyncEngine,
    key: bytes,
    *,
    now: datetime,
    anchor: Anchor | None = None,
    org_id: str | None = None,
    batch: int = DEFAULT_BATCH,
) -> VerifyResult:
    """Walk the chain from the newest checkpoint (its signature checked) to the head,
    checking every entry's hash and MAC, the head row, and ``anchor`` when given; with
    ``org_id`` the figures are that org's (see ``spendgate.core.audit_verify``)."""
    async with engine.connect() as conn:
        checkpoint = await latest_checkpoint(conn)
    sealed, top_seq = await _head_or_last(engine)
    state = ChainState()
    if checkpoint is not None:
        if not checkpoint_valid(checkpoint, key):
            bad = ChainBreak(
                None, checkpoint.seq, f"checkpoint {checkpoint.id} has an invalid signature"
            )
            return VerifyResult(False, 0, checkpoint.seq, checkpoint.hash, checkpoint.seq, bad)
        state = ChainState(checkpoint.seq, checkpoint.hash)
    walk = ChainWalk(
        state,
        sealing_key=entry_key(key),
        checkpoint_seq=state.seq or None,
        anchor=anchor,
        org_id=org_id,
    )
    async for page in pages(engine, state.seq, top_seq, (), batch):
        if not walk.feed(page):
            break
    if sealed is None:
        result = walk.result(None, None, key, now)
        if not result.ok:
            return result
        missing = ChainBreak(
            None,
            None if org_id else result.last_seq,
            "the chain head row is missing: entries at the end may have been deleted",
        )
        return replace(result, ok=False, first_bad=missing, anchor=None)
    top_seq, top_hash, top_mac = sealed
    return walk.result((top_seq, top_hash), top_mac, key, now)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    purged: int
    checkpoint: Checkpoint | None
    entry: AuditEntry | None


async def purge(
    engine: AsyncEngine,
    before: datetime,
    key: bytes,
    *,
    now: datetime,
    min_retention_days: int,
    actor: tuple[str, str] = ("system", "retention"),
    request_id: str | None = None,
    source_ip: str | None = None,
    batch: int = DEFAULT_BATCH,
) -> PurgeResult:
    """Delete the oldest entries (the longest prefix of the chain all older than
    ``before``), after checking they are intact; leave a signed checkpoint and an
    ``audit.purged`` entry, all in one transaction."""
    oldest_allowed = retention_start(now, min_retention_days)
    if before > oldest_allowed:
        raise ValidationFailed(
            f"before: entries younger than {min_retention_days} days (and 12 months) are "
            f"kept (latest allowed: {oldest_allowed.isoformat()})",
            param="before",
        )
    c = audit_log.c
    async with engine.begin() as conn:
        hc = audit_chain_head.c  # lock the head first: appends wait until the purge is done
        await conn.execute(sa.update(audit_chain_head).where(hc.id == HEAD_ID).values(seq=hc.seq))
        checkpoint = await latest_checkpoint(conn)
        start = ChainState(checkpoint.seq, checkpoint.hash) if checkpoint else ChainState()
        top = int((await conn.execute(sa.select(hc.seq).where(hc.id == HEAD_ID))).scalar_one())
        first_young = (
            await conn.execute(sa.select(sa.func.min(c.seq)).where(c.at >= before))
        ).scalar_one()
        up_to = top if first_young is None else int(first_young) - 1
        if up_to <= start.seq:
            return PurgeResult(0, None, None)
        walk = ChainWalk(start, sealing_key=entry_key(key))
        async for page in pages(conn, start.seq, up_to, (), batch):
            if not walk.feed(page) and walk.broken is not None:
                broken = walk.broken
                raise Conflict(
                    f"audit chain broken at entry {broken.entry_id} (seq {broken.seq}):"
                    f" {broken.reason}; refusing to purge"
                )
        state = walk.state
        if state.seq != up_to:
            raise Conflict(f"audit chain ends at seq {state.seq} before {up_to}; refusing to purge")
        await conn.execute(audit_purge_lock.insert().values(up_to_seq=up_to))
        await conn.execute(sa.delete(audit_log).where(c.seq <= up_to))
        await conn.execute(sa.delete(audit_purge_lock))
        made = sign_checkpoint(
            Checkpoint(new_id("acp"), up_to, state.hash, before, up_to - start.seq, now), key
        )
        await conn.execute(
            audit_checkpoints.insert().values(
                id=made.id,
                seq=made.seq,
                hash=made.hash,
                purged_before=made.purged_before,
                purged_count=made.purged_count,
                created_at=made.created_at,
                signature=made.signature,
            )
        )
        entry = await append(
            conn,
            AuditEvent(
                now,
                actor[0],
                actor[1],
                "audit.purged",
                "audit_log",
                None,
                after={
                    "before": before,
                    "up_to_seq": up_to,
                    "purged": made.purged_count,
                    "checkpoint_id": made.id,
                },
                request_id=request_id,
                source_ip=source_ip,
            ),
        )
    return PurgeResult(made.purged_count, made, entry)


GENESIS_HEAD = {"id": HEAD_ID, "seq": 0, "hash": GENESIS}
