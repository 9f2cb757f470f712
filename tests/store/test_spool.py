"""The ledger spool and the writer that drains it, on every backend and in both sync
modes: rows committed to the spool survive a crash and are replayed exactly once;
damaged lines, other databases' files and live processes' files are left alone; a row
the database refuses is set aside and the rest lands; a database that is down keeps
every row waiting. And when each mode puts a record on the disk itself."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.app import create_app
from spendgate.core.usage import TokenUsage
from spendgate.errors import ConfigError, DatabaseUnavailable
from spendgate.services import EventSink
from spendgate.settings import load_settings
from spendgate.store import schema
from spendgate.store.database import create_engine, database_fingerprint, migrate
from spendgate.store.events import PendingEvent, capture_events, list_events
from spendgate.store.ledger import LedgerEntry, LedgerWriter, encode_record
from spendgate.store.spool import SUFFIX, Spool, SyncMode, frame, unframe
from tests.conftest import _pg_execute as pg_admin
from tests.store.test_store import entry

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


@pytest.fixture(autouse=True, params=["interval", "call"])
def sync_mode(request: pytest.FixtureRequest) -> SyncMode:
    """Every test here runs with each ``spool_sync`` mode (``make_spool`` uses it)."""
    global SYNC
    SYNC = request.param
    return SYNC  # type: ignore[no-any-return]


SYNC: SyncMode = "interval"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


def make_spool(engine: AsyncEngine, directory: Path, **options: float) -> Spool:
    header = {"db": database_fingerprint(engine), "fields": list(LedgerEntry._fields)}
    return Spool(directory, header=header, max_bytes=int(options.pop("max_bytes", 1 << 30)),
                 sync=SYNC, **options)  # type: ignore[arg-type]  # fmt: skip


def crash(spool: Spool) -> None:
    """What ``kill -9`` leaves: the files, unlocked (the kernel drops a dead process's
    locks), and nothing written to the database; nor synced, in ``"interval"`` mode."""
    if spool._thread is not None:  # idle: every append was awaited
        spool._inbox.put(None)
        spool._thread.join()
        spool._thread = None
    if spool._syncer is not None:
        spool._syncer.cancel()
        spool._syncer = None
    for segment in spool._segments.values():
        os.close(segment.fd)
    spool._segments.clear()


async def dead_spools_of_two_releases(
    engine: AsyncEngine,
    directory: Path,
    old_fields: list[str],
    old_row: LedgerEntry,
    new_row: LedgerEntry,
) -> None:
    """What an upgrade finds in ``directory``: a file of the release before, whose header
    and record have only ``old_fields`` (``old_row``'s), and one of this release
    (``new_row``), both left by processes that died."""
    header = {"db": database_fingerprint(engine), "fields": old_fields}
    old = Spool(directory, header=header, max_bytes=1 << 30, sync="interval")
    old.open()
    values = old_row._asdict()
    await old.append(frame(orjson.dumps([[values[f] for f in old_fields], []], default=str)), None)
    crash(old)
    current = make_spool(engine, directory)
    current.open()
    await current.append(encode_record(new_row, []), None)
    crash(current)


async def ledger_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(schema.ledger.c.request_id))
        return sorted(r[0] for r in rows)


def crossing(n: int) -> PendingEvent:
    return PendingEvent(
        "budget.threshold_crossed", f"budget:b1:2026-05:alert:{n}", {"n": n}, NOW, "org_1"
    )


def spool_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


async def test_committed_rows_survive_a_crash_and_are_replayed_exactly_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Rows (with their events) on disk but not in the database when the process died
    are written by the next process, once; replaying the same file again adds nothing."""
    first = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    first.start()
    await asyncio.gather(
        *(
            first.commit(entry(n, team=None, model="m", cost=n, at=NOW), [crossing(n)])
            for n in range(40)
        )
    )
    assert first.pending == 40
    crash(first.spool)  # type: ignore[arg-type]
    assert await ledger_ids(engine) == []
    [leftover] = spool_files(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(leftover, copy / leftover.name)

    second = LedgerWriter(engine, spool=make_spool(engine, tmp_path))
    assert await second.replay_orphans() == 40
    assert await ledger_ids(engine) == [f"req_{n:06d}" for n in range(40)]
    assert spool_files(tmp_path) == []
    assert len(await list_events(engine, type_="budget.threshold_crossed")) == 40

    again = LedgerWriter(engine, spool=make_spool(engine, copy))
    assert await again.replay_orphans() == 40  # read again, stored never twice
    assert len(await ledger_ids(engine)) == 40
    assert len(await list_events(engine, type_="budget.threshold_crossed")) == 40


async def test_short_writes_are_completed(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that takes a few bytes per ``write`` still gets every record whole."""
    writer = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    writer.start()
    await writer.commit(entry(0, team=None, model="m", cost=0, at=NOW))  # the file's header
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    await asyncio.gather(
        *(writer.commit(entry(n, team=None, model="m", cost=n, at=NOW)) for n in range(1, 5))
    )
    crash(writer.spool)  # type: ignore[arg-type]
    monkeypatch.undo()
    replayer = LedgerWriter(engine, spool=make_spool(engine, tmp_path))
    assert await replayer.replay_orphans() == 5
    assert await ledger_ids(engine) == [f"req_{n:06d}" for n in range(5)]


async def test_a_live_processes_spool_is_never_claimed(engine: AsyncEngine, tmp_path: Path) -> None:
    """Another writer in the same directory does not replay files a live writer holds."""
    live = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    live.start()
    await live.commit(entry(1, team=None, model="m", cost=1, at=NOW))
    other = LedgerWriter(engine, spool=make_spool(engine, tmp_path))
    assert await other.replay_orphans() == 0
    assert await ledger_ids(engine) == []
    await live.close()
    assert await ledger_ids(engine) == ["req_000001"]


async def test_torn_and_damaged_lines_and_other_databases_files(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A line whose checksum fails is skipped, a torn last line ignored, and a file that
    names another database is left where it is."""
    writer = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    writer.start()
    for n in range(3):
        await writer.commit(entry(n, team=None, model="m", cost=1, at=NOW))
    crash(writer.spool)  # type: ignore[arg-type]
    [path] = spool_files(tmp_path)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"req_000001", b"req_999999")  # checksum no longer matches
    path.write_bytes(b"\n".join(lines) + b'0000abcd [["torn')
    assert unframe(frame(b"x")[:-1]) == b"x" and unframe(lines[2]) is None

    foreign = tmp_path / f"ledger-elsewhere{SUFFIX}"
    foreign.write_bytes(b'{"spendgate_spool": 1, "db": "another"}\n' + frame(b"[]"))
    replayer = LedgerWriter(engine, spool=make_spool(engine, tmp_path))
    assert await replayer.replay_orphans() == 2
    assert await ledger_ids(engine) == ["req_000000", "req_000002"]
    assert spool_files(tmp_path) == [foreign]


async def test_segments_are_deleted_once_written_and_a_backlog_is_read_back(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """More rows than the writer keeps in memory are read back from the spool, in order;
    once all are in the database, the spool is empty again."""
    spool = make_spool(engine, tmp_path, idle_rotate_seconds=0)
    writer = LedgerWriter(engine, flush_seconds=3600, batch_size=7, spool=spool, max_cached=10)
    spool.open()  # no writer task: only the flushes below write
    for n in range(50):
        await writer.commit(entry(n, team=None, model="m", cost=1, at=NOW))
    assert spool.backlog_bytes > 0 and writer.pending == 50
    assert await writer.flush() == 50
    assert await ledger_ids(engine) == [f"req_{n:06d}" for n in range(50)]
    assert writer.pending == 0
    assert spool_files(tmp_path) == [] and spool.backlog_bytes == 0
    await writer.commit(entry(50, team=None, model="m", cost=1, at=NOW))  # a new segment
    await writer.close()
    assert len(await ledger_ids(engine)) == 51


async def test_a_row_the_database_refuses_is_set_aside_and_the_rest_lands(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """One row no 64-bit column can hold among twenty: nineteen are stored, the refused
    one is kept in ``ledger_rejected`` with a ``ledger.row_rejected`` event, and the
    writer goes on with the next batch."""
    writer = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    writer.start()
    for n in range(20):
        row = entry(n, team=None, model="m", cost=1, at=NOW)
        await writer.commit(replace_cost(row, 2**63) if n == 13 else row)
    assert await writer.flush() == 20
    assert await ledger_ids(engine) == [f"req_{n:06d}" for n in range(20) if n != 13]
    async with engine.connect() as conn:
        rejected = (await conn.execute(sa.select(schema.ledger_rejected))).all()
    assert [r.request_id for r in rejected] == ["req_000013"]
    assert str(2**63) in rejected[0].record
    [event] = await list_events(engine, type_="ledger.row_rejected")
    assert event["data"]["request_id"] == "req_000013"
    await writer.commit(entry(20, team=None, model="m", cost=1, at=NOW))
    assert await writer.flush() == 1
    await writer.close()


def replace_cost(row: LedgerEntry, cost: int) -> LedgerEntry:
    return row._replace(cost_nanos=cost)


async def test_while_the_database_is_down_every_row_waits(tmp_path: Path) -> None:
    """A database nobody answers for: ``flush`` says so and keeps every row; ``close``
    leaves them in the spool for the next start."""
    down = create_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    spool = make_spool(down, tmp_path)
    writer = LedgerWriter(down, flush_seconds=3600, spool=spool)
    writer.start()
    for n in range(5):
        await writer.commit(entry(n, team=None, model="m", cost=1, at=NOW))
    with pytest.raises(DatabaseUnavailable):
        await writer.flush()
    assert writer.pending == 5
    await writer.close(wait_seconds=2)
    [path] = spool_files(tmp_path)
    assert path.read_bytes().count(b"\n") == 6  # the header and five rows
    await down.dispose()


async def test_a_database_that_cannot_take_writes_now_sets_no_row_aside(
    pg_database: str, tmp_path: Path
) -> None:
    """A PostgreSQL that answers but refuses every write (read-only: a hot standby, or a
    primary demoted by a failover) is an outage for the ledger, not five refused rows:
    they wait in the spool, and once writes are taken again all land, with their events,
    and none is in ``ledger_rejected`` or the spool's ``rejected.jsonl``."""
    engine = create_engine(pg_database)
    name = pg_database.rsplit("/", 1)[1]
    writer = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    writer.start()
    for n in range(5):
        await writer.commit(entry(n, team=None, model="m", cost=1, at=NOW), [crossing(n)])
    await pg_admin(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    await engine.dispose()  # the failover: every connection is a new one, to a read-only server
    try:
        with pytest.raises(DatabaseUnavailable):
            await writer.flush()
        assert writer.pending == 5
    finally:
        await pg_admin(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
        await engine.dispose()
    assert await writer.flush() == 5
    await writer.close()
    assert await ledger_ids(engine) == [f"req_{n:06d}" for n in range(5)]
    assert len(await list_events(engine, type_="budget.threshold_crossed")) == 5
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(schema.ledger_rejected))).all() == []
    assert not (tmp_path / "rejected.jsonl").exists()
    await engine.dispose()


@pytest.mark.parametrize("setting", ["statement_timeout", "lock_timeout"])
async def test_rows_a_timeout_cuts_wait_and_none_is_set_aside(
    pg_database: str, tmp_path: Path, setting: str
) -> None:
    """The ledger locked by someone else past the database's ``statement_timeout`` or
    ``lock_timeout``: every statement is refused for the moment it ran, not for its
    rows. The writer splits the batch, and a row still refused waits in the spool; none
    is set aside, and all land once the lock is gone."""
    name = pg_database.rsplit("/", 1)[1]
    await pg_admin(f'ALTER DATABASE "{name}" SET {setting} = 200')
    engine = create_engine(pg_database)
    writer = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    writer.start()
    for n in range(4):
        await writer.commit(entry(n, team=None, model="m", cost=1, at=NOW))
    locker = await asyncpg.connect(pg_database)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE ledger IN EXCLUSIVE MODE")
            with pytest.raises(DatabaseUnavailable):
                await writer.flush()
            assert writer.pending == 4
    finally:
        await locker.close()
    assert await writer.flush() == 4
    await writer.close()
    assert await ledger_ids(engine) == [f"req_{n:06d}" for n in range(4)]
    async with engine.connect() as conn:
        assert (await conn.execute(sa.select(schema.ledger_rejected))).all() == []
    assert not (tmp_path / "rejected.jsonl").exists()
    await engine.dispose()


def test_frames_round_trip() -> None:
    """A frame is its payload behind a checksum; any changed byte is detected."""
    line = frame(b'{"a": 1}')
    assert unframe(line[:-1]) == b'{"a": 1}'
    assert unframe(line[:-2] + b"2") is None
    assert unframe(b"zz") is None


class Syncs:
    """Which files ``os.fdatasync`` was asked to sync (by inode), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inodes: list[int] = []
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            self.inodes.append(os.fstat(fd).st_ino)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)


async def test_when_a_record_reaches_the_disk(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_mode: SyncMode
) -> None:
    """``"call"``: a record's segment is synced before its append returns.
    ``"interval"``: the append only writes (the file has the record at once, so a crash of
    the process loses nothing), and the segment is synced within ``sync_seconds``."""
    syncs = Syncs(monkeypatch)
    spool = make_spool(engine, tmp_path, sync_seconds=0.05)
    writer = LedgerWriter(engine, flush_seconds=3600, spool=spool)
    writer.start()
    await writer.commit(entry(0, team=None, model="m", cost=1, at=NOW))
    [path] = spool_files(tmp_path)
    inode = path.stat().st_ino
    assert b"req_000000" in path.read_bytes()
    if sync_mode == "call":
        assert syncs.inodes == [inode, inode]  # the new segment's header, then the record
    else:
        assert syncs.inodes == []
        await synced(syncs, [inode])
    await writer.commit(entry(1, team=None, model="m", cost=1, at=NOW))
    if sync_mode == "call":
        assert syncs.inodes == [inode] * 3
    else:
        assert syncs.inodes == [inode]
        await synced(syncs, [inode, inode])
    await writer.close()
    assert await ledger_ids(engine) == ["req_000000", "req_000001"]


async def synced(syncs: Syncs, expected: list[int]) -> None:
    """Wait for the interval's sync to have synced ``expected``."""
    deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
    while syncs.inodes != expected:
        assert time.monotonic() < deadline, syncs.inodes
        await asyncio.sleep(0.01)
    assert syncs.inodes == expected


async def test_a_failed_write_is_reported_and_the_next_goes_to_a_new_segment(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_mode: SyncMode
) -> None:
    """A disk that refuses a write: ``commit`` keeps the row in memory and says False
    (in either mode), the spool shows the error until a write succeeds, and
    nothing is appended after the failed write's leftovers."""
    spool = make_spool(engine, tmp_path)
    writer = LedgerWriter(engine, flush_seconds=3600, spool=spool)
    writer.start()
    assert await writer.commit(entry(0, team=None, model="m", cost=1, at=NOW))
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    assert not await writer.commit(entry(1, team=None, model="m", cost=1, at=NOW))
    assert spool.error is not None and spool.error.errno == 28
    monkeypatch.setattr(os, "write", real_write)
    assert await writer.commit(entry(2, team=None, model="m", cost=1, at=NOW))
    assert spool.error is None
    assert len(spool_files(tmp_path)) == 2
    await writer.close()
    assert await ledger_ids(engine) == ["req_000000", "req_000001", "req_000002"]


def test_the_sync_mode_is_a_setting(tmp_path: Path) -> None:
    """``interval`` every 0.1 s unless configured; ``SPENDGATE_SPOOL_SYNC`` wins over the
    file; the gateway's spool runs as configured; anything else is refused at startup."""
    defaults = load_settings(env={})
    assert (defaults.spool_sync, defaults.spool_sync_seconds) == ("interval", 0.1)
    config = tmp_path / "spendgate.toml"
    config.write_text('[gateway]\nspool_sync = "call"\nspool_sync_seconds = 0.5\n')
    settings = load_settings(config_path=str(config), env={})
    assert (settings.spool_sync, settings.spool_sync_seconds) == ("call", 0.5)
    env = {"SPENDGATE_SPOOL_SYNC": "interval"}
    assert load_settings(config_path=str(config), env=env).spool_sync == "interval"
    gateway = create_app(
        replace(settings, database_url=f"sqlite:///{tmp_path / 'sg.db'}", master_key="m" * 32)
    )
    spool = gateway.services.ledger.spool
    assert spool is not None and (spool.sync_mode, spool.sync_seconds) == ("call", 0.5)
    for bad, match in (
        ('spool_sync = "never"', 'must be "interval" or "call"'),
        ("spool_sync_seconds = 0", "spool_sync_seconds must be"),
        ("spool_sync_seconds = 60", "spool_sync_seconds must be"),
    ):
        config.write_text(f"[gateway]\n{bad}\n")
        with pytest.raises(ConfigError, match=match):
            load_settings(config_path=str(config), env={})
    with pytest.raises(ConfigError, match="SPENDGATE_SPOOL_SYNC"):
        load_settings(env={"SPENDGATE_SPOOL_SYNC": "always"})


async def test_a_writer_behind_a_database_that_answers_holds_calls_back(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """Past ``high_water`` rows waiting, ``commit`` waits for the writer (so a process
    short of CPU slows its calls rather than growing its backlog); a flush that brings it
    back under half of that lets the call go on; a database that is down holds nothing
    back (the rows wait in the spool)."""
    spool = make_spool(engine, tmp_path)
    writer = LedgerWriter(engine, flush_seconds=3600, spool=spool, high_water=4)
    spool.open()  # no writer task: only the flushes below write
    for n in range(3):
        await writer.commit(entry(n, team=None, model="m", cost=1, at=NOW))
    fourth = asyncio.create_task(writer.commit(entry(3, team=None, model="m", cost=1, at=NOW)))
    deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
    while writer.pending != 4:  # in ``"call"`` mode the spool's thread writes it first
        assert time.monotonic() < deadline, writer.pending
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not fourth.done() and writer.pending == 4  # in the spool, and waiting
    assert await writer.flush() == 4
    assert await fourth is True
    await writer.close()
    assert len(await ledger_ids(engine)) == 4

    down = create_engine("postgresql://postgres@127.0.0.1:1/nowhere")
    elsewhere = tmp_path / "down"
    writer = LedgerWriter(down, flush_seconds=3600, spool=make_spool(down, elsewhere), high_water=4)
    writer.database_ok = False  # what the writer's task concludes from a failed flush
    writer.spool.open()  # type: ignore[union-attr]
    for n in range(10):
        assert await writer.commit(entry(n, team=None, model="m", cost=1, at=NOW))
    assert writer.pending == 10
    await writer.close(wait_seconds=1)
    await down.dispose()


async def test_orphan_bytes_are_a_dead_processs_not_a_live_siblings(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """``serve --workers 2`` shares one spool directory: each worker's /readyz and
    ``spendgate_spool_orphan_bytes`` counted the other's live file as orphaned, so an
    alert on orphans fired for ever. Only a file nobody holds (a dead process's) counts."""
    live = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    live.start()
    await live.commit(entry(1, team=None, model="m", cost=1, at=NOW))
    sibling = make_spool(engine, tmp_path)
    assert sibling.waiting_bytes()[0] == 0
    [held] = spool_files(tmp_path)
    crash(live.spool)  # type: ignore[arg-type]
    assert sibling.waiting_bytes()[0] == held.stat().st_size > 0
    replayer = LedgerWriter(engine, spool=sibling)
    assert await replayer.replay_orphans() == 1  # the moment's shared lock is gone
    assert sibling.waiting_bytes()[0] == 0


@pytest.mark.parametrize(
    ("announce", "flag", "type_"),
    [("_unpriced", "price_unknown", "price.unknown"),
     ("_implausible", "usage_implausible", "usage.implausible")],
)  # fmt: skip
async def test_an_event_whose_deciding_call_dies_in_its_settle_comes_back_with_a_later_row(
    engine: AsyncEngine, database_url: str, tmp_path: Path, announce: str, flag: str, type_: str
) -> None:
    """The first call of the day at an unknown price (or with implausible usage) decides
    its event and is still settling (as the proxy books, the event is captured before the
    settle, the row spooled after it) when a second such call is booked; then the process
    dies. The second row carries the event too: the next process's replay stores it,
    once, and a replay of the same file again stores nothing more. A third call, after a
    row with the event is in the spool, carries nothing."""
    settings = load_settings(
        env={
            "SPENDGATE_DATABASE_URL": database_url,
            "SPENDGATE_MASTER_KEY": "m" * 32,
            "SPENDGATE_SPOOL_DIR": str(tmp_path / "spool"),
            "SPENDGATE_SPOOL_SYNC": SYNC,
        }
    )
    gateway = create_app(replace(settings, forecast_workers=0), engine=engine)
    ledger = gateway.services.ledger
    ledger.start()
    route = SimpleNamespace(name="m", provider=SimpleNamespace(name="openai"),
                            price=SimpleNamespace(model="no-such-model"))  # fmt: skip
    key = SimpleNamespace(id="key_1", org_id="org_1")
    usage = TokenUsage(input_tokens=10, output_tokens=5, implausible=flag == "usage_implausible")

    def booked(n: int) -> list[PendingEvent]:
        """What ``ProxyApp._record`` captures for call ``n``: the gateway's announcement."""
        call = SimpleNamespace(request_id=f"req_{n:06d}", key=key, route=route, started_at=NOW)
        captured: list[PendingEvent] = []
        with capture_events(captured):
            getattr(gateway, announce)(call, usage)
        return captured

    def row(n: int) -> LedgerEntry:
        return entry(n, team=None, model="m", cost=None, at=NOW)._replace(**{flag: True})

    assert len(booked(0)) == 1  # decided; its settle never returns
    served = booked(1)
    assert await ledger.commit(row(1), served)
    assert booked(2) == []  # the second row, with the event, is in the spool
    assert await ledger.commit(row(2), [])
    crash(ledger.spool)  # type: ignore[arg-type]
    [leftover] = spool_files(tmp_path / "spool")
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(leftover, copy / leftover.name)

    next_process = LedgerWriter(engine, spool=make_spool(engine, tmp_path / "spool"))
    assert await next_process.replay_orphans() == 2
    assert await ledger_ids(engine) == ["req_000001", "req_000002"]
    [event] = await list_events(engine, type_=type_)
    assert (event["dedup_key"], event["data"]["request_id"]) == (served[0].dedup_key, "req_000001")
    assert await LedgerWriter(engine, spool=make_spool(engine, copy)).replay_orphans() == 2
    assert len(await list_events(engine, type_=type_)) == 1
    await ledger.close()  # the dead process's writer task, ended (its rows are in already)


async def test_an_event_whose_row_the_spool_refused_is_remembered_once_it_is_stored(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that refuses writes: the row of the call that decided a ``price.unknown``
    is kept in memory (a crash would lose both), so calls served meanwhile carry the
    event too; once that row and its event are in the database, later calls carry it no
    more (they did, every one of them, as long as the disk refused writes: an insert
    the dedup key threw away per call)."""
    sink = EventSink(engine)
    writer = LedgerWriter(engine, flush_seconds=3600, spool=make_spool(engine, tmp_path))
    writer.on_spooled = sink.spooled
    writer.start()

    def booked() -> list[PendingEvent]:
        captured: list[PendingEvent] = []
        with capture_events(captured):
            sink.emit_once("price.unknown", "price.unknown:org_1:m:2026-05-04", {}, NOW, "org_1")
        return captured

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    real_write = os.write
    monkeypatch.setattr(os, "write", full)
    first = booked()
    assert len(first) == 1
    assert not await writer.commit(entry(1, team=None, model="m", cost=None, at=NOW), first)
    assert len(booked()) == 1  # not in the database yet: a call served now carries it too
    monkeypatch.setattr(os, "write", real_write)
    assert await writer.flush() == 1
    assert len(await list_events(engine, type_="price.unknown")) == 1
    assert booked() == []
    await writer.close()
