"""Real processes for fault tests: a private PostgreSQL and Redis the test may stop, kill
and restart, and gateway replicas run as ``spendgate serve`` subprocesses.

The machine's own PostgreSQL and Redis are never touched: each server here gets its own
data directory and a free port on 127.0.0.1, and is gone when the test ends::

    with PrivatePostgres() as pg, PrivateRedis() as redis:
        upstream = UpstreamProcess.start()
        replicas = [Replica.start(pg.url, redis.url, config, master_key=MASTER) for _ in range(3)]
        ...
        redis.kill(); redis.start()          # Redis restarted empty
        pg.stop(); ...; pg.start()           # a database outage
        replicas[0].kill()                   # kill -9

Everything binds to 127.0.0.1. PostgreSQL refuses to run as root, so when the tests run
as root the cluster is created and served as the ``postgres`` user (``runuser``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

PG_BIN = next((str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"))), "")


#: where :func:`free_port` picks: below Linux's ephemeral range (32768-60999), so no
#: outgoing connection takes a port picked here, split in one share per pytest-xdist
#: worker (``PYTEST_XDIST_WORKER`` ``gw<n>``), so no two workers pick the same one
PORTS_FROM, PORTS_TO, PORTS_PER_WORKER = 20000, 32000, 1500
_next_port: int | None = None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now, for a server started after.

    A port the kernel lends (bind to 0, then close) can be lent again at once: to another
    test worker for its own server, which then answered this one's requests (a CI run's
    CLI test got another gateway's 401), or to an outgoing connection. Ports are taken in
    turn from this process's share of :data:`PORTS_FROM`..:data:`PORTS_TO` instead, each
    checked free, so a port comes back to a worker only after its whole share."""
    global _next_port
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker[2:].isdigit() else os.getpid()
    shares = (PORTS_TO - PORTS_FROM) // PORTS_PER_WORKER
    start = PORTS_FROM + (index % shares) * PORTS_PER_WORKER
    if _next_port is None:
        _next_port = start + os.getpid() % PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = start + (_next_port - start) % PORTS_PER_WORKER
        _next_port = port + 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use (a server of this worker, or a service of the machine)
            return port
    raise RuntimeError(f"no free port in {start}-{start + PORTS_PER_WORKER - 1}")


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something accepts connections on 127.0.0.1:``port``; fails if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


class StderrLines:
    """The lines a process writes to stderr, read in a thread so that its pipe never fills
    (a process whose stderr nobody reads blocks once the pipe holds 64 KiB)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, times: int = 1, timeout: float = 120) -> list[str]:
        """The first ``times`` matches of ``pattern``; fails if the process exits first
        (``timeout`` is a guard against hanging, not a measurement)."""
        deadline = time.monotonic() + timeout
        while True:
            reading = self.thread.is_alive()  # read first: then every line is in when not
            found = [m.group(0) for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(found) >= times:
                return found[:times]
            assert reading, f"the process closed its stderr (exited):\n{self.text}"
            assert time.monotonic() < deadline, f"no {pattern!r} ×{times}:\n{self.text}"
            time.sleep(0.05)

    def until_exit(self, timeout: float = 120) -> str:
        """Everything the process wrote to stderr, once it has exited."""
        self.proc.wait(timeout)
        self.thread.join(timeout)
        return self.text


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PrivatePostgres:
    """A PostgreSQL cluster of its own (trust auth, database ``spendgate``)."""

    def __init__(self) -> None:
        if not PG_BIN:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.dir = Path(tempfile.mkdtemp(prefix="sg-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(
            _as_postgres(
                [
                    f"{PG_BIN}/initdb",
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.start()
        subprocess.run(
            _as_postgres(
                [
                    f"{PG_BIN}/createdb",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "spendgate",
                ]
            ),
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/spendgate"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(self.data), "-w", *args]),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} "
            "-c fsync=off -c max_connections=200"
        )
        self._ctl("-o", options, "-l", str(self.dir / "log"), "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: sessions are cut off; ``immediate``: like a crash)."""
        self._ctl("-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def close(self) -> None:
        if self.running():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class PrivateRedis:
    """A Redis of its own that keeps nothing on disk: ``kill`` then ``start`` is a Redis
    that came back empty. ``persist=True``: every write is fsynced to an append-only file
    in a temp dir first, so ``kill`` then ``start`` is a Redis that came back with every
    key (an outage that lost nothing, as a network partition would)."""

    def __init__(self, *, persist: bool = False) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="sg-redis-")) if persist else None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *options: str, loaded: bool = True) -> None:
        """Start (again); ``options``: more ``redis-server`` options, for this start only;
        ``loaded``: return once it answers commands (not while it reads its data back)."""
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *(
                    ["--appendonly", "no"]
                    if self.dir is None
                    else ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
                ),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, 60, self.proc)  # guards against hanging, not measurements
        if loaded:
            self._wait_loaded(60)

    def _wait_loaded(self, timeout: float) -> None:
        """Until Redis answers ``PING`` with ``PONG``: one restarted with its append-only
        file listens at once but answers ``-LOADING`` until it has read the file back."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"Redis on port {self.port} did not answer PING within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: every key is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


@dataclass
class ManagedProcess:
    """A child process with its output in a file (read it when a test fails)."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    log: IO[bytes] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the process to exit; returns the exit code (uvicorn
        re-raises the signal after its graceful shutdown, so a clean exit is -15: read
        ``output()`` for "Application shutdown complete")."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.alive():
            self.kill()
        self.log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _spawn(
    cmd: list[str],
    port: int,
    env: Mapping[str, str],
    log_dir: Path,
    name: str,
    cwd: Path | None = None,
) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        start_new_session=True,
    )
    return ManagedProcess(proc, port, log_path, log)


class UpstreamProcess:
    """The fake OpenAI/Anthropic upstream (``spendgate.testing.fake_upstream``) in its own
    process, so a gateway under test never shares a loop or a GIL with it."""

    @staticmethod
    def start(log_dir: Path, port: int | None = None) -> ManagedProcess:
        port = port or free_port()
        managed = _spawn(
            [sys.executable, "-m", "spendgate.testing.fake_upstream", "--port", str(port)],
            port,
            {},
            log_dir,
            "upstream",
        )
        wait_for_port(port, 120, managed.proc)  # a guard against hanging
        return managed


class Replica:
    """One gateway process: ``spendgate serve`` with the given database, Redis and config."""

    @staticmethod
    def start(
        log_dir: Path,
        env: Mapping[str, str],
        *,
        config: Path | None = None,
        port: int | None = None,
        workdir: Path | None = None,
        timeout: float = 120,
    ) -> ManagedProcess:
        """Start and wait until ``/healthz`` answers. ``env`` holds ``SPENDGATE_*`` (the
        master key, database and Redis URLs); ``workdir`` is where relative paths (a
        SQLite file, the ledger spool) land."""
        port = port or free_port()
        cmd = [sys.executable, "-m", "spendgate", "serve", "--port", str(port)]
        if config is not None:
            cmd += ["--config", str(config)]
        managed = _spawn(cmd, port, env, log_dir, "replica", cwd=workdir)
        deadline = time.monotonic() + timeout
        while True:
            if not managed.alive():
                raise RuntimeError(f"replica exited early:\n{managed.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{managed.url}/healthz", timeout=1).status_code == 200:
                    return managed
            if time.monotonic() > deadline:
                managed.close()
                raise TimeoutError(f"replica not healthy in {timeout} s:\n{managed.output()}")
            time.sleep(0.1)
