"""The bench's other servers: the shared backends (a private Redis and a fresh
PostgreSQL database) that put spendgate in its scale-out mode, and Portkey's gateway.

Kept apart from ``gateway_bench.py`` (which drives the load and writes the report);
standard library only, like it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
PORTKEY_DIR = HERE / ".portkey"
PORTKEY_VERSION = "1.15.2"
PORTKEY_SERVER = PORTKEY_DIR / "node_modules/@portkey-ai/gateway/build/start-server.js"
#: the PostgreSQL server every helper of this machine shares (trust auth)
PG_ADMIN = ("-h", "127.0.0.1", "-U", "postgres", "-d", "postgres")


class SharedBackends:
    """A Redis of the bench's own (a free port, nothing on disk) and a PostgreSQL
    database made for this run and dropped after it: spendgate's PostgreSQL + Redis mode,
    with nobody else's keys or rows in the way."""

    def __init__(self, port: int, core: str, logdir: Path, wrapper: tuple[str, ...] = ()) -> None:
        self.port = port
        self.database = f"spendgate_bench_{uuid.uuid4().hex[:10]}"
        self._core = core
        self._logdir = logdir
        #: a command Redis runs under, e.g. ``valgrind --tool=callgrind …``
        self._wrapper = wrapper
        self._redis: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server not found (Debian package redis-server)")
        out = open(self._logdir / "redis.log", "ab")  # noqa: SIM115 (closed with the process)
        self._redis = subprocess.Popen(
            [
                "taskset",
                "-c",
                self._core,
                *self._wrapper,
                server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        self._psql(f'CREATE DATABASE "{self.database}"')
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ping = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            )
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise RuntimeError(f"the bench's Redis on port {self.port} did not start")

    def env(self) -> dict[str, str]:
        return {
            "SPENDGATE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{self.database}",
            "SPENDGATE_REDIS_URL": f"redis://127.0.0.1:{self.port}/0",
        }

    def reset(self) -> None:
        """Empty both between two spendgate servers, so each starts as a fresh install."""
        subprocess.run(["redis-cli", "-p", str(self.port), "flushall"], capture_output=True)
        self._psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self._psql(f'CREATE DATABASE "{self.database}"')

    def redis_cpu_pid(self) -> int | None:
        return self._redis.pid if self._redis is not None else None

    def backend_pids(self) -> list[int]:
        """The PostgreSQL server processes serving connections to this run's database
        (their CPU is the database's share of a call; the server's shared processes,
        checkpointer and WAL writer, are not in it)."""
        out = self.query(f"SELECT pid FROM pg_stat_activity WHERE datname = '{self.database}'")
        return [int(line) for line in out.split()]

    def transactions(self) -> tuple[int, int]:
        """(transactions, ledger rows) in this run's database since it was made. A server's
        transaction counts reach ``pg_stat_database`` when its connection goes idle or
        closes: read them after the gateway has stopped."""
        tx = self.query(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            f"WHERE datname = '{self.database}'"
        )
        rows = self.query("SELECT count(*) FROM ledger", self.database)
        return int(tx or 0), int(rows or 0)

    def redis_counts(self) -> tuple[int, int]:
        """(commands, read events) the bench's Redis has processed; a read event is one
        batch of bytes from a client, so reads per call ~ round trips per call."""
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), "info", "stats"], capture_output=True, text=True
        ).stdout
        stats = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return int(stats["total_commands_processed"]), int(stats["total_reads_processed"])

    @staticmethod
    def query(sql: str, database: str = "postgres") -> str:
        out = subprocess.run(
            ["psql", *PG_ADMIN[:-1], database, "-At", "-c", sql], capture_output=True, text=True
        )
        return out.stdout.strip()

    def stop(self) -> None:
        if self._redis is not None and self._redis.poll() is None:
            self._redis.terminate()
            try:
                self._redis.wait(10)
            except subprocess.TimeoutExpired:
                self._redis.kill()
        self._psql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)', check=False)

    @staticmethod
    def _psql(sql: str, check: bool = True) -> None:
        subprocess.run(["psql", *PG_ADMIN, "-q", "-c", sql], check=check, capture_output=True)


def portkey_installed() -> bool:
    return PORTKEY_SERVER.exists() and shutil.which("node") is not None


def install_portkey() -> None:
    """``npm install @portkey-ai/gateway`` into ``bench/.portkey`` (gitignored), once."""
    if portkey_installed():
        return
    if shutil.which("npm") is None:
        raise RuntimeError("npm not found: Portkey's gateway is a Node.js package")
    PORTKEY_DIR.mkdir(exist_ok=True)
    subprocess.run(
        [
            "npm",
            "install",
            "--no-audit",
            "--no-fund",
            f"@portkey-ai/gateway@{PORTKEY_VERSION}",
        ],
        cwd=PORTKEY_DIR,
        check=True,
    )


def portkey_argv(core: str, port: int) -> list[str]:
    """Portkey's own server (Hono on Node), headless, one process on ``core``."""
    return ["taskset", "-c", core, "node", str(PORTKEY_SERVER), f"--port={port}", "--headless"]


def portkey_env() -> dict[str, str]:
    return {**os.environ, "NODE_ENV": "production"}


def portkey_headers(upstream_port: int) -> dict[str, str]:
    """Portkey has no config file for this: each request names the provider and, as a
    custom host, the fake upstream; the bearer token passes through to it."""
    return {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"http://127.0.0.1:{upstream_port}/v1",
    }
