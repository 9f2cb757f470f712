"""Spool files stranded by a change of the database's URL (README, *Failure behaviour*):
a gateway never replays a file naming another database, reports it apart
(``spool_foreign_bytes`` in ``/readyz`` and ``/metrics``, and a warning naming the
command), and ``spendgate db adopt-spool`` hands it to the database in use, after which
the next replay writes its rows, each request id once (rows the database had already
are skipped, their rollups not counted twice)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.store.database import url_fingerprint
from spendgate.store.ledger import LedgerEntry, Pending, encode_record, store_batch
from spendgate.store.spool import SUFFIX, Spool
from tests.conftest import RunningGateway
from tests.store.test_store import entry

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def old_spelling(database_url: str, tmp_path: Path) -> str:
    """The same database under another URL: ``localhost`` for ``127.0.0.1``, or the
    SQLite file reached through a symlinked directory."""
    if database_url.startswith("postgresql"):
        return database_url.replace("127.0.0.1", "localhost")
    path = Path(database_url.removeprefix("sqlite:///"))
    link = tmp_path / "data-link"
    link.symlink_to(path.parent)
    return f"sqlite:///{link / path.name}"


async def spool_file(directory: Path, database_url: str, entries: list[LedgerEntry]) -> Path:
    """What a process on ``database_url`` left when it died with ``entries`` unwritten."""
    header = {"db": url_fingerprint(database_url), "fields": list(LedgerEntry._fields)}
    before = set(os.listdir(directory)) if directory.exists() else set()  # noqa: ASYNC240
    spool = Spool(directory, header=header, max_bytes=1 << 30)
    spool.open()
    for one in entries:
        await spool.append(encode_record(one, ()), (one, ()))
    await spool.close()  # the file stays, unlocked, as a dead process's does
    [left] = set(os.listdir(directory)) - before
    return directory / left


async def store(engine: AsyncEngine, entries: list[LedgerEntry]) -> None:
    async with engine.begin() as conn:
        await store_batch(conn, [Pending(e) for e in entries])


async def counts(engine: AsyncEngine) -> tuple[list[str], int]:
    """The ledger's request ids (with repeats, if any) and the calls its rollups count."""
    async with engine.connect() as conn:
        ids = [r[0] for r in await conn.execute(sa.text("SELECT request_id FROM ledger"))]
        calls = (await conn.execute(sa.text("SELECT SUM(calls) FROM usage_rollup"))).scalar()
    return sorted(ids), int(calls or 0)


def adopt_spool(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(cli, ["db", "adopt-spool", *args, "--json"])
    return result.exit_code, json.loads(result.stdout) if result.exit_code == 0 else result.output


def test_stranded_files_are_reported_apart_and_adopted_on_request(
    gateway: RunningGateway,
    database_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = gateway.app.services.engine
    spool_dir = tmp_path / "spool"
    rows = [entry(n, team=None, model="gpt-4o-mini", cost=1000, at=NOW) for n in range(5)]
    gateway.run(store(engine, rows[:2]))  # two of them had reached the database
    before = old_spelling(database_url, tmp_path)
    assert url_fingerprint(before) != url_fingerprint(database_url)
    stranded = gateway.run(spool_file(spool_dir, before, rows))
    size = stranded.stat().st_size

    ledger = gateway.app.services.ledger
    with caplog.at_level(logging.WARNING, logger="spendgate.spool"):
        assert gateway.run(ledger.replay_orphans()) == 0  # another database's: left alone
    assert f"spendgate db adopt-spool --from {url_fingerprint(before)}" in caplog.text
    ready = gateway.admin.get("/readyz").json()
    assert ready["spool_foreign_bytes"] == size and ready["spool_orphan_bytes"] == 0
    assert f"spendgate_spool_foreign_bytes {size}.0" in gateway.admin.get("/metrics").text

    # a file a live process holds is never touched
    held_path = spool_dir / f"ledger-live{SUFFIX}"
    original = stranded.read_bytes()
    held_path.write_bytes(original)
    held = os.open(held_path, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        where = ["--spool-dir", str(spool_dir), "--database-url", database_url]
        code, listed = adopt_spool(*where)  # no --from / --all: a listing only
        assert code == 0, listed
        assert listed["database"] == url_fingerprint(database_url)
        assert listed["files"] == [
            {"file": stranded.name, "db": url_fingerprint(before), "bytes": size, "adopted": False}
        ]
        assert listed["held"] == [held_path.name]
        assert adopt_spool(*where, "--from", "0123456789abcdef")[1]["files"][0]["adopted"] is False
        assert adopt_spool(*where, "--from", "x", "--all")[0] == 2

        code, done = adopt_spool(*where, "--from", url_fingerprint(before))
        assert code == 0, done
        assert [f["adopted"] for f in done["files"]] == [True]
        assert held_path.read_bytes() == original
        assert stranded.read_bytes().split(b"\n", 1)[1] == original.split(b"\n", 1)[1]
    finally:
        os.close(held)
    held_path.unlink()

    ready = gateway.admin.get("/readyz").json()
    assert ready["spool_foreign_bytes"] == 0 and ready["spool_orphan_bytes"] > 0
    assert gateway.run(ledger.replay_orphans()) == 5  # the periodic claim of a running gateway
    ids, calls = gateway.run(counts(engine))
    assert ids == [r.request_id for r in rows] and calls == 5  # once each, rollups too
    assert list(spool_dir.glob(f"*{SUFFIX}*")) == []
    assert gateway.admin.get("/readyz").json()["spool_orphan_bytes"] == 0


def test_adopt_spool_refuses_a_missing_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["db", "adopt-spool", "--spool-dir", str(tmp_path / "nowhere"), "--database-url",
         f"sqlite:///{tmp_path}/x.db"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "no spool directory at" in result.output


def test_a_config_file_that_does_not_load_is_a_clear_error(tmp_path: Path) -> None:
    """``--config`` names the spool directory even with ``--database-url`` given: a
    missing file is the command's one-line configuration error (exit 2), as for every
    other command, not a traceback."""
    missing = tmp_path / "nope.toml"
    result = CliRunner().invoke(
        cli,
        ["db", "adopt-spool", "--database-url", f"sqlite:///{tmp_path / 'g.db'}",
         "--config", str(missing)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "config file not found" in result.output
