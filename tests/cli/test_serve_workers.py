"""``spendgate serve --workers 2`` as a real process group, stopped as people stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from spendgate.store.database import migrate_url
from spendgate.testing.processes import StderrLines
from tests.cli.test_cli_serve import MASTER, free_port
from tests.conftest import REDIS_URL


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended since the listing
            continue
    return found


def _ignores_ctrl_c(pid: int) -> bool:
    """Whether the process has SIGINT ignored (a forecast process past its start)."""
    status = Path(f"/proc/{pid}/status").read_text()
    ignored = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn"))
    return bool(int(ignored, 16) & (1 << (signal.SIGINT - 1)))


def _seed(db: Path) -> None:
    """A migrated database with one budget, so the workers' forecast pools start a
    process (a forecast round each second)."""
    migrate_url(f"sqlite:///{db}", "head")
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO orgs (id, name, created_at) VALUES "
            "('org_1', 'acme', '2026-01-01 00:00:00.000000')"
        )
        conn.execute(
            "INSERT INTO budgets VALUES ('budget_1', 'org_1', 'b', 'org', 'org_1', NULL, "
            "'monthly', 'UTC', 'monday', 1000000000000, '[\"80\"]', '100', 0, '100', '{}', "
            "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')"
        )


@contextmanager
def _serve_two_workers(
    db: Path, port: int, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], StderrLines]]:
    """``spendgate serve --workers 2`` on the SQLite file ``db`` and the test Redis, in a
    process group of its own, its stderr captured; the group is killed on the way out
    if the test has not stopped it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendgate", "serve", "--workers", "2", "--port", str(port)],
        env={
            **os.environ,
            "SPENDGATE_MASTER_KEY": MASTER,
            "SPENDGATE_DATABASE_URL": f"sqlite:///{db}",
            "SPENDGATE_REDIS_URL": REDIS_URL,
            "SPENDGATE_REDIS_PREFIX": f"sgtest:{uuid.uuid4().hex}:",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        yield proc, StderrLines(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_workers_stop_without_leaking_semaphores(tmp_path: Path, stop: str) -> None:
    """SIGTERM to the parent, or Ctrl-C (SIGINT to the whole process group, forecast
    processes included), once a worker's forecast pool has a process (started: it
    ignores Ctrl-C, left to its worker, which shuts the pool down): exit code 0,
    no "leaked semaphore" from the resource tracker, no traceback. (A worker dies of
    the SIGTERM uvicorn raises again after its graceful shutdown, running no exit
    handlers: the pool's semaphores must have been released by then.)"""
    db = tmp_path / "w.db"
    _seed(db)
    (tmp_path / "spendgate.toml").write_text("[gateway]\nforecast_refresh_seconds = 1\n")
    port = free_port()
    config = {"SPENDGATE_CONFIG": str(tmp_path / "spendgate.toml")}
    with _serve_two_workers(db, port, config) as (proc, log):
        # both workers past their start (a loaded machine can start the second late)
        log.wait_for(r"Application startup complete", times=2)
        deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
        while True:
            assert proc.poll() is None, log.text
            assert time.monotonic() < deadline, "no worker started a forecast process"
            ready = _ready(port)
            pool = [p for w in _children(proc.pid) for p in _children(w)]
            if ready and pool and all(_ignores_ctrl_c(p) for p in pool):
                break
            time.sleep(0.2)
        if stop == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        text = log.until_exit()
    assert proc.returncode == 0, text
    assert "leaked" not in text, text
    assert "Traceback" not in text, text


def test_workers_start_together_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    """Two workers on a SQLite file that does not exist yet: the schema is made once,
    before they start (each creating it raced: "table ... already exists", and the
    parent stopped), and both serve."""
    db = tmp_path / "fresh.db"
    port = free_port()
    with _serve_two_workers(db, port, {}) as (proc, log):
        deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
        while not _children(proc.pid):
            assert proc.poll() is None, log.text
            assert time.monotonic() < deadline, "no worker started"
            time.sleep(0.01)
        assert _migrated(db), "workers were started before the schema was made"
        # both serve: each said so (a child process is not yet a started worker, and a
        # loaded machine can start the second well after the first answers /readyz)
        log.wait_for(r"Application startup complete", times=2)
        while len(_children(proc.pid)) < 2 or not _ready(port):
            assert proc.poll() is None, log.text
            assert time.monotonic() < deadline, "the workers did not both start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        text = log.until_exit()
    assert proc.returncode == 0, text
    assert text.count("Application startup complete") == 2, text
    assert "already exists" not in text, text


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _migrated(db: Path) -> bool:
    if not db.exists():
        return False
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return bool(
            conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name = 'alembic_version'"
            ).fetchone()[0]
        ) and bool(conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0])


def test_a_worker_stalled_past_uvicorns_health_check_is_not_restarted(tmp_path: Path) -> None:
    """``[gateway] worker_healthcheck_seconds`` reaches uvicorn's supervisor: a worker that
    cannot answer its ping for 8 s (stopped here; a long GC or a starved machine in life)
    is still the same process afterwards, its calls in flight kept. With uvicorn's own
    5 s it was killed and replaced ("Child process [...] died")."""
    (tmp_path / "spendgate.toml").write_text("[gateway]\nworker_healthcheck_seconds = 600\n")
    port = free_port()
    with _serve_two_workers(
        tmp_path / "w.db", port, {"SPENDGATE_CONFIG": str(tmp_path / "spendgate.toml")}
    ) as (proc, log):
        log.wait_for(r"Application startup complete", times=2)
        workers = sorted(
            int(line.split("[")[1][:-1])
            for line in log.wait_for(r"Started server process \[\d+\]", times=2)
        )
        assert set(workers) <= set(_children(proc.pid)), log.text
        os.kill(workers[0], signal.SIGSTOP)
        try:
            time.sleep(8)  # past uvicorn's default of 5 s (the supervisor pings every 0.5 s)
        finally:
            with contextlib.suppress(ProcessLookupError):  # killed (and reaped) meanwhile
                os.kill(workers[0], signal.SIGCONT)
        assert set(workers) <= set(_children(proc.pid)), log.text
        assert _ready(port), log.text
        proc.send_signal(signal.SIGTERM)
        text = log.until_exit()
    assert proc.returncode == 0, text
    assert "died" not in text, text
