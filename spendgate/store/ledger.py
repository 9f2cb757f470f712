"""The ledger: one row per proxied call, made durable in the spool on the hot path and
written to the database in batches off it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.errors import DatabaseUnavailable
from spendgate.stopping import end_tasks
from spendgate.store import daily, rollups, schema
from spendgate.store.cost_sums import COST_REST, COST_WHOLE, cost_from_sums, exact_cost_sum
from spendgate.store.database import database_unreachable, insert_new, lost_to_the_moment
from spendgate.store.events import PendingEvent, record_event
from spendgate.store.showback import usage_report
from spendgate.store.spool import START, Position, Spool, frame

log = logging.getLogger("spendgate.ledger")

#: re-exported: callers of the ledger's report (``ledger.usage_report``) get the one that
#: reads the rollups, and the exact sums other stores use stay importable from here
__all__ = [
    "COST_REST",
    "COST_WHOLE",
    "LedgerEntry",
    "LedgerWriter",
    "Pending",
    "cost_from_sums",
    "exact_cost_sum",
    "insert_entries",
    "store_batch",
    "usage_report",
]


class LedgerEntry(NamedTuple):
    """One proxied call."""

    request_id: str
    org_id: str
    team_id: str | None
    user_id: str | None
    agent_id: str | None
    key_id: str
    tags: list[str]
    provider: str
    model: str
    upstream_model: str
    kind: str
    stream: bool
    status: str
    http_status: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_nanos: int | None
    price_unknown: bool
    usage_estimated: bool
    latency_ms: int
    started_at: datetime
    finished_at: datetime
    #: the provider reported more than ``core.usage.MAX_TOKENS_PER_CALL``: clamped
    usage_implausible: bool = False
    #: the shared counters never saw its settle (``schema.ledger.c.uncounted``)
    uncounted: bool = False
    #: the part of ``cache_write_tokens`` written to the 1-hour cache (last, with a
    #: default: spool files written before it replay with 0)
    cache_write_1h_tokens: int = 0
    #: web searches run by a server-side tool, billed per search (after the defaulted
    #: fields: spool files written before it replay with 0)
    web_searches: int = 0
    #: the service tier or speed whose prices the call was billed at, as the price data
    #: names it (``core.pricing.Priced.context``, e.g. ``service_tier=priority``); None:
    #: the standard prices (spool files written before it replay with None)
    price_context: str | None = None


_SQLITE_INSERT = (
    f"INSERT INTO ledger ({', '.join(LedgerEntry._fields)}) "
    f"VALUES ({', '.join('?' for _ in LedgerEntry._fields)}) "
    "ON CONFLICT (request_id) DO NOTHING"
)
_TAGS = LedgerEntry._fields.index("tags")
#: SQLite binds a ``None`` parameter only after looking for an adapter for it: it builds
#: a key tuple, then asks its protocol for ``__adapt__``, which raises (and drops) an
#: AttributeError with a formatted message, for each NULL a ledger row binds (its team,
#: user, agent, ``price_context``…): the one NULL ``price_context`` added cost the hot
#: path benchmark ~8,000 instructions a call. An adapter registered for ``None`` that
#: returns it, a C call (``{}.get``: None for any key), stops the search: the same NULL
#: is bound.
_NO_ADAPTERS: dict[None, None] = {}
sqlite3.register_adapter(type(None), _NO_ADAPTERS.get)
#: which of a batch's request ids the ledger has already: one statement whatever the
#: batch's size (the ids go as one JSON array). An expanding ``IN (?, ?, …)`` is a new
#: statement for each batch size, and SQLite keeps 128 prepared ones per connection, so
#: each pooled connection's memory grew with every new batch size (issue #19)
_SQLITE_KNOWN = "SELECT request_id FROM ledger WHERE request_id IN (SELECT value FROM json_each(?))"


def _postgres_insert() -> str:
    """One statement for a whole batch on PostgreSQL: each column as one array
    parameter (its type from ``schema.ledger``), unnested into rows; the request ids
    it stored come back, so rows already in the ledger need no query of their own."""
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    arrays = ", ".join(
        f"${i}::{schema.ledger.c[name].type.compile(dialect=dialect)}[]"
        for i, name in enumerate(LedgerEntry._fields, 1)
    )
    return (
        f"INSERT INTO ledger ({', '.join(LedgerEntry._fields)}) SELECT * FROM unnest({arrays}) "
        "ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
    )


_POSTGRES_INSERT = _postgres_insert()
_TIMES = (LedgerEntry._fields.index("started_at"), LedgerEntry._fields.index("finished_at"))


def _sqlite_time(value: datetime) -> str:
    """The text form SQLAlchemy's SQLite DATETIME stores (UTC, naive)."""
    if value.utcoffset():
        value = value.astimezone(UTC)
    return value.isoformat(sep=" ", timespec="microseconds")[:26]


def sqlite_row(entry: LedgerEntry) -> tuple[Any, ...]:
    row: list[Any] = list(entry)
    row[_TAGS] = json.dumps(entry.tags)
    for index in _TIMES:
        row[index] = _sqlite_time(row[index])
    return tuple(row)


async def insert_entries(conn: AsyncConnection, entries: list[LedgerEntry]) -> list[LedgerEntry]:
    """Insert the rows of a batch that the ledger does not have yet, and return them.

    This is the one function that writes ledger rows. A request id is stored once: a
    replayed spool file or a batch retried after a lost commit acknowledgement repeats
    rows, which are left out here (and by ``ON CONFLICT DO NOTHING`` should two
    writers race). Both go to the driver directly: SQLite's executemany, PostgreSQL one
    ``unnest`` of column arrays; the per-row parameter processing of SQLAlchemy Core
    doubled the cost of a ledger row on SQLite, and tripled it on PostgreSQL."""
    fresh = {e.request_id: e for e in entries}
    if conn.dialect.name == "postgresql":
        columns = [list(values) for values in zip(*fresh.values(), strict=True)]
        columns[_TAGS] = [orjson.dumps(tags).decode() for tags in columns[_TAGS]]
        stored = await conn.exec_driver_sql(_POSTGRES_INSERT, tuple(columns))
        return [fresh[request_id] for (request_id,) in stored]
    known = await conn.exec_driver_sql(_SQLITE_KNOWN, (orjson.dumps(list(fresh)).decode(),))
    for (request_id,) in known:
        fresh.pop(request_id, None)
    new = list(fresh.values())
    if not new:
        return []
    await conn.exec_driver_sql(_SQLITE_INSERT, [sqlite_row(e) for e in new])
    return new


async def add_rollups(conn: AsyncConnection, inserted: Sequence[LedgerEntry]) -> None:
    """Count rows just inserted into the rollups, in the caller's transaction; first the
    orgs' daily zones are read and locked (``spendgate.store.daily``: no zone change
    can pass a batch that folds days in the old zone)."""
    if not inserted:
        return
    zones = await daily.lock_zones(conn, [e.org_id for e in inserted])
    main, tags = rollups.aggregate((int(e.started_at.timestamp()), e) for e in inserted)
    for sql, rows in rollups.driver_writes(conn.dialect.name, main, tags, zones):
        await conn.exec_driver_sql(sql, rows)


class Pending(NamedTuple):
    """A ledger row on its way to the database, with the events its call caused."""

    entry: LedgerEntry
    events: tuple[PendingEvent, ...] = ()
    #: where it is in this process's spool (None: held in memory only)
    position: Position | None = None


async def store_batch(conn: AsyncConnection, batch: Sequence[Pending]) -> int:
    """The batch's new rows, their rollups (``spendgate.store.rollups``) and, in the same
    transaction, their events (with their
    outbox rows, by ``record_event``; a dedup key already fired is skipped). A row that
    was already stored had its events stored with it, so they are not repeated."""
    inserted = await insert_entries(conn, [p.entry for p in batch])
    await add_rollups(conn, inserted)
    new = {e.request_id for e in inserted}
    for pending in batch:
        if pending.entry.request_id not in new:
            continue
        for ev in pending.events:
            await record_event(
                conn, ev.type, ev.data, ev.created_at, org_id=ev.org_id, dedup_key=ev.dedup_key
            )
    return len(new)


# -- spool records ------------------------------------------------------------------------------
def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_record(entry: LedgerEntry, events: Sequence[PendingEvent]) -> bytes:
    """A spool line: the row's fields in ``LedgerEntry._fields`` order, then its events."""
    evs = [[e.type, e.dedup_key, e.data, e.created_at, e.org_id] for e in events]
    return frame(orjson.dumps([list(entry), evs], default=_default))


def decode_record(
    payload: bytes, fields: Sequence[str], position: Position | None = None
) -> Pending:
    """A spool line back into a row and its events (``fields``: the file header's)."""
    values, evs = orjson.loads(payload)
    row = dict(zip(fields, values, strict=True))
    for name in ("started_at", "finished_at"):
        row[name] = datetime.fromisoformat(row[name])
    entry = LedgerEntry(**{f: row[f] for f in LedgerEntry._fields if f in row})
    events = tuple(
        PendingEvent(t, key, data, datetime.fromisoformat(at), org) for t, key, data, at, org in evs
    )
    return Pending(entry, events, position)


class LedgerWriter:
    """Takes each call's row (and the events it caused) from the hot path and writes
    them to the database in batches, from a background task.

    ``commit`` puts the row in the spool and returns once it is in the file: from then
    on a crash of the process cannot lose it. Rows are kept in memory for the writer (up
    to ``max_cached``; past that, during a long database outage, they are read back from
    the spool). A batch the database cannot take now is retried; a batch it refuses is
    split until the refused row is found, which is set aside (``ledger_rejected``, an
    event) so the rest lands. ``close`` writes what it can and leaves the rest in the
    spool.

    A writer that falls behind a database that answers (calls come in faster than their
    rows are stored: the process is short of CPU) writes bigger batches, and past
    ``high_water`` rows waiting, ``commit`` waits for it to catch up (at most
    ``5 × flush_seconds`` a call): calls slow down rather than the backlog, and the
    memory it takes, growing without end. During an outage nothing waits.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        flush_seconds: float = 0.2,
        batch_size: int = 500,
        spool: Spool | None = None,
        max_cached: int = 100_000,
        replay_seconds: float = 30.0,
        now: Callable[[], datetime] | None = None,
        high_water: int | None = None,
    ) -> None:
        self._engine = engine
        self._flush_seconds = flush_seconds
        self._batch_size = batch_size
        self._spool = spool
        self._max_cached = max_cached
        self._high_water = 10 * batch_size if high_water is None else high_water
        #: set while fewer than ``high_water`` rows wait (``commit`` goes on at once)
        self._room = asyncio.Event()
        self._room.set()
        self._replay_seconds = replay_seconds
        self._now = now or (lambda: datetime.now(UTC))
        self._memory: list[Pending] = []
        self._cache: deque[Pending] = deque()
        self._cache_whole = True
        self._head: list[Pending] = []
        self._cursor: Position = START
        self._committed = 0
        self._stored = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.written = 0
        #: False while the database cannot be reached (the rows wait in the spool)
        self.database_ok = True
        #: called after rows a dead process left in the spool were written
        self.on_replayed: Callable[[], None] | None = None
        #: called with a row's events once the row is in the spool (they reach the
        #: database with it, even after a crash), or, a row the spool refused (kept in
        #: memory), once it is in the database
        self.on_spooled: Callable[[Sequence[PendingEvent]], None] | None = None
        if spool is not None:
            spool.on_durable = self._durable

    @property
    def spool(self) -> Spool | None:
        return self._spool

    @property
    def full(self) -> bool:
        """True when the spool holds as much unwritten spend as it may: refuse new calls."""
        return self._spool is not None and self._spool.full

    def add(self, entry: LedgerEntry) -> None:
        """Queue ``entry`` in memory only (not crash-safe; the proxy uses ``commit``)."""
        self._memory.append(Pending(entry))
        if len(self._memory) >= self._batch_size:
            self._wake.set()

    async def commit(self, entry: LedgerEntry, events: Sequence[PendingEvent] = ()) -> bool:
        """Make ``entry`` and ``events`` durable, then queue them; True once on disk.
        Without a spool, or when the disk refuses the write (logged by the spool), they
        are queued in memory and False is returned: the call is still recorded unless
        the process dies before the database has it."""
        if self._spool is not None:
            try:
                await self._spool.append(encode_record(entry, events), (entry, tuple(events)))
            except (OSError, TypeError) as exc:
                log.error("ledger row %s kept in memory only: %s", entry.request_id, exc)
            else:
                if len(self._cache) >= self._high_water and self.database_ok:
                    await self._catch_up()
                return True
        self._memory.append(Pending(entry, tuple(events)))
        if len(self._memory) >= self._batch_size:
            self._wake.set()
        return False

    async def _catch_up(self) -> None:
        """Wait (bounded) until the writer is back under ``high_water`` rows."""
        self._room.clear()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5 * self._flush_seconds):
                await self._room.wait()

    def _durable(self, item: tuple[LedgerEntry, tuple[PendingEvent, ...]], at: Position) -> None:
        self._committed += 1
        if item[1] and self.on_spooled is not None:
            self.on_spooled(item[1])
        if self._cache_whole and len(self._cache) < self._max_cached:
            self._cache.append(Pending(item[0], item[1], at))
        else:
            self._cache_whole = False  # from here on the writer reads the spool file
        if len(self._cache) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Rows accepted and not yet in the database."""
        return len(self._memory) + self._committed - self._stored

    def start(self) -> None:
        """Open the spool and start the background task (on the serving loop)."""
        if self._spool is not None:
            self._spool.open()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="ledger-writer")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_replay = loop.time() + self._replay_seconds
        pause = self._flush_seconds
        while not self._closing:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for lost a cancel that
            # came in the loop iteration its wait ended in, and this loop never ended
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:  # close() writes what is left
                return
            try:
                await self.flush()
                if loop.time() >= next_replay:
                    await self.replay_orphans()
                    next_replay = loop.time() + self._replay_seconds
            except DatabaseUnavailable as exc:
                if self.database_ok:
                    log.warning("database unavailable (%s): ledger rows wait in the spool", exc)
                self.database_ok = False
                self._room.set()  # nothing waits for a database that is down
                pause = min(1.0, max(pause * 2, 0.05))
                continue
            if not self.database_ok:
                log.warning("database back: ledger backlog written")
            self.database_ok = True
            pause = self._flush_seconds

    async def flush(self) -> int:
        """Write everything accepted so far; returns the number of rows handed over.
        Raises ``DatabaseUnavailable`` (and keeps every row) if the database is down.

        Rows that arrive while it writes are taken only to fill a batch: the rest wait
        for the next flush, so a writer kept busy writes whole batches rather than a
        full one followed by a tail of a few rows each (500, 34, 2 at full speed)."""
        async with self._lock:
            owed = len(self._head) + len(self._memory) + len(self._cache)
            handed = 0
            while (handed < owed or not self._cache_whole) and (batch := self._next_batch()):
                await self._store(batch)
                self._head = []
                handed += len(batch)
                if batch[-1].position is not None:
                    self._cursor = batch[-1].position
                    self._stored += len(batch)
                elif self.on_spooled is not None:  # rows the spool refused: now stored
                    for pending in batch:
                        if pending.events:
                            self.on_spooled(pending.events)
                if self._spool is not None:
                    self._spool.release(self._cursor)
                if len(self._cache) < self._high_water // 2:
                    self._room.set()
            self.written += handed
            return handed

    async def _drain(self) -> None:
        """Flush until nothing is left, rows that arrive meanwhile included (at close)."""
        while await self.flush():
            pass

    def _next_batch(self) -> list[Pending]:
        if self._head:
            return self._head
        size = self._batch_size
        if len(self._cache) > 2 * size:  # behind: fewer, bigger transactions catch up
            size = min(len(self._cache), 4 * size)
        if self._memory:
            self._head, self._memory = self._memory[:size], self._memory[size:]
        elif self._cache:
            self._head = [self._cache.popleft() for _ in range(min(size, len(self._cache)))]
        elif self._spool is not None and not self._cache_whole:
            rows = self._spool.read(self._cursor, size)
            fields = LedgerEntry._fields
            self._head = [decode_record(payload, fields, at) for payload, at in rows]
            if not rows or rows[-1][1] == self._spool.durable:
                self._cache_whole = True  # caught up: newer rows are cached again
        return self._head

    async def _store(self, batch: list[Pending], retried: bool = False) -> None:
        """Store ``batch``; if the database refuses it, store all but the refused row."""
        try:
            async with self._engine.begin() as conn:
                await store_batch(conn, batch)
        except Exception as exc:
            # a database that answers but cannot take writes now (read-only after a
            # failover, out of disk, an SQLite file locked) refuses every row: they
            # wait, none is set aside; so does a row refused for the moment it ran
            # (a timeout, a deadlock), once a smaller batch was tried
            moment = lost_to_the_moment(exc)
            if (database_unreachable(exc) and not moment) or not await self._database_answers():
                raise DatabaseUnavailable(f"the database cannot be reached: {exc}") from exc
            if len(batch) > 1:
                mid = len(batch) // 2
                await self._store(batch[:mid])
                await self._store(batch[mid:])
            elif moment:
                raise DatabaseUnavailable(f"the database cannot take this row now: {exc}") from exc
            elif not retried:  # once more before it is set aside
                await self._store(batch, retried=True)
            else:
                await self._reject(batch[0], exc)

    async def _database_answers(self) -> bool:
        try:
            async with self._engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False
        return True

    async def _reject(self, pending: Pending, exc: Exception) -> None:
        """Set a row the database refuses aside (table ``ledger_rejected`` and a
        ``ledger.row_rejected`` event), so the rows after it are not held up."""
        entry = pending.entry
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        record = orjson.dumps([list(entry), []], default=_default).decode()
        now = self._now()
        data = {
            "request_id": entry.request_id,
            "key_id": entry.key_id,
            "model": entry.model,
            "reason": reason[:500],
        }
        log.error("ledger row %s refused by the database, set aside: %s", entry.request_id, reason)
        for events in (pending.events, ()):
            try:
                async with self._engine.begin() as conn:
                    await insert_new(
                        conn,
                        schema.ledger_rejected,
                        {
                            "request_id": entry.request_id,
                            "rejected_at": now,
                            "reason": reason,
                            "record": record,
                        },
                        ["request_id"],
                    )
                    await record_event(
                        conn,
                        "ledger.row_rejected",
                        data,
                        now,
                        org_id=entry.org_id,
                        dedup_key=f"ledger.row_rejected:{entry.request_id}",
                    )
                    for ev in events:
                        await record_event(
                            conn, ev.type, ev.data, ev.created_at, org_id=ev.org_id,
                            dedup_key=ev.dedup_key,
                        )  # fmt: skip
                return
            except Exception:
                log.exception("could not set ledger row %s aside in the database", entry.request_id)
        if self._spool is not None:  # never block the ledger: the row goes to a file
            with (self._spool.directory / "rejected.jsonl").open("a") as out:
                out.write(orjson.dumps({"reason": reason, "record": record}).decode() + "\n")

    async def replay_orphans(self) -> int:
        """Write the spool files that dead processes left in the directory (each claimed
        with a lock, so no two processes replay one); returns the rows replayed."""
        if self._spool is None:
            return 0
        orphans = self._spool.claim_orphans()
        replayed = 0
        try:
            while orphans:
                orphan = orphans[0]
                fields = orphan.header.get("fields") or LedgerEntry._fields
                batch: list[Pending] = []
                count = 0
                for payload in orphan.records():
                    try:
                        batch.append(decode_record(payload, fields))
                    except (ValueError, TypeError, KeyError) as exc:
                        log.error("spool %s: unreadable record skipped: %s", orphan.path, exc)
                        continue
                    if len(batch) >= self._batch_size:
                        await self._store(batch)
                        count += len(batch)
                        batch = []
                if batch:
                    await self._store(batch)
                    count += len(batch)
                orphans.pop(0).finish()
                replayed += count
                if count and self.on_replayed is not None:
                    self.on_replayed()
                log.warning("replayed %d ledger rows left by %s", count, orphan.path.name)
        finally:
            for orphan in orphans:
                orphan.release()
        return replayed

    async def close(self, wait_seconds: float = 10.0) -> None:
        """Stop the task and write what is left; rows the database cannot take now stay
        in the spool for the next start (rows held in memory only are reported lost)."""
        if self._task is not None:
            # asked to end after the flush in progress, not cancelled inside it (a cancel
            # inside a database call can leave an SQLite connection never closed)
            self._closing = True
            self._wake.set()
            self._room.set()
            await end_tasks([self._task], wait_seconds)
            self._task = None
        try:
            await asyncio.wait_for(self._drain(), wait_seconds)
            if self._spool is not None and self.pending == 0:
                self._spool.release(self._cursor, final=True)  # nothing left to replay
        except (DatabaseUnavailable, TimeoutError) as exc:
            durable = self._committed - self._stored
            log.warning(
                "shutdown with the database unavailable (%s): %d ledger rows stay in the "
                "spool for the next start",
                exc,
                durable,
            )
            lost = len(self._memory) + sum(1 for p in self._head if p.position is None)
            if lost:
                log.error("%d ledger rows held in memory only are lost", lost)
        if self._spool is not None:
            await self._spool.close()


async def ledger_rows(engine: AsyncEngine, limit: int = 100) -> list[dict[str, Any]]:
    table = schema.ledger
    query = sa.select(table).order_by(table.c.started_at.desc()).limit(limit)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]
