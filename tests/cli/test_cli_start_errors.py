"""What an operator sees when ``spendgate db migrate`` or ``serve`` cannot start: one line
saying why and what it was given (no password), an exit code, never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from spendgate.settings import load_settings
from tests.cli.test_cli_serve import MASTER, free_port
from tests.conftest import PG_ADMIN_DSN


def spendgate(*args: str, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "spendgate", *args],
        env={**os.environ, "COLUMNS": "200", **env},
        capture_output=True,
        timeout=120,
    )
    return done.returncode, (done.stdout + done.stderr).decode()


def test_migrate_names_a_database_it_cannot_reach() -> None:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    down = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/spendgate"
    code, said = spendgate("db", "migrate", SPENDGATE_DATABASE_URL=down)
    assert code == 1
    assert said.startswith("cannot connect to the database postgresql://postgres:***@127.0.0.1")
    assert "Traceback" not in said and "hunter2" not in said
    missing = f"{base}/sg_missing_{uuid.uuid4().hex[:12]}"
    code, said = spendgate("db", "migrate", SPENDGATE_DATABASE_URL=missing)
    assert code == 1
    assert "does not exist" in said and "Traceback" not in said


def test_migrate_refuses_a_bad_url_or_revision(tmp_path: Path) -> None:
    code, said = spendgate("db", "migrate", SPENDGATE_DATABASE_URL="mysql://root:hunter2@db/x")
    assert code == 2
    assert "SPENDGATE_DATABASE_URL" in said and "hunter2" not in said
    code, said = spendgate(
        "db", "migrate", SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path}/no/such/dir/s.db"
    )
    assert (code, "Traceback" in said) == (1, False)
    assert f"the directory {tmp_path}/no/such/dir does not exist" in said
    url = f"sqlite:///{tmp_path}/s.db"
    code, said = spendgate("db", "migrate", "9999_nope", SPENDGATE_DATABASE_URL=url)
    assert (code, "Traceback" in said) == (2, False)
    assert "9999_nope" in said


def test_serve_refuses_bad_audit_settings_before_listening(tmp_path: Path) -> None:
    """The audit settings are read by each worker's app; ``serve`` checks them first, so a
    bad one is a configuration error (exit 2), not a traceback after "listening"."""
    code, said = spendgate(
        "serve",
        "--port",
        str(free_port()),
        SPENDGATE_MASTER_KEY=MASTER,
        SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path}/a.db",
        SPENDGATE_AUDIT_RETENTION_DAYS="10",
    )
    assert code == 2
    assert "configuration error: SPENDGATE_AUDIT_RETENTION_DAYS must be at least 365" in said
    assert "listening" not in said and "Traceback" not in said


def test_serve_names_a_port_out_of_range(tmp_path: Path) -> None:
    """``serve --port 99999`` died with bind()'s OverflowError traceback; it is one line
    naming the address, exit 1, as for a port already taken."""
    code, said = spendgate(
        "serve",
        "--port",
        "99999",
        SPENDGATE_MASTER_KEY=MASTER,
        SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path}/a.db",
    )
    assert code == 1 and "Traceback" not in said, said
    assert said.strip().endswith("cannot listen on 127.0.0.1:99999: bind(): port must be 0-65535.")


def test_reencrypt_needs_the_gateways_migrated_database(tmp_path: Path) -> None:
    """``webhooks reencrypt`` run without SPENDGATE_DATABASE_URL made an empty
    spendgate.db in the working directory and died on "no such table" (a traceback);
    against a database that is down it printed the driver's traceback. Each is one line
    and exit 1 now, and no file is made."""
    env = {"SPENDGATE_MASTER_KEY": MASTER}
    missing = tmp_path / "spendgate.db"
    code, said = spendgate(
        "webhooks", "reencrypt", SPENDGATE_DATABASE_URL=f"sqlite:///{missing}", **env
    )
    assert (code, "Traceback" in said, missing.exists()) == (1, False, False)
    assert f"there is no database file {missing}" in said
    missing.touch()
    code, said = spendgate(
        "webhooks", "reencrypt", SPENDGATE_DATABASE_URL=f"sqlite:///{missing}", **env
    )
    assert (code, "Traceback" in said) == (1, False)
    assert "it has no spendgate schema: run spendgate db migrate" in said
    down = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/spendgate"
    code, said = spendgate("webhooks", "reencrypt", SPENDGATE_DATABASE_URL=down, **env)
    assert (code, "Traceback" in said, "hunter2" in said) == (1, False, False)
    assert said.startswith("cannot use the database postgresql://postgres:***@127.0.0.1")


def test_serve_on_every_address_without_a_public_url_warns(tmp_path: Path) -> None:
    """``serve --host 0.0.0.0`` (the README's deployment line) made bootstrap's invite
    link and every alert's link ``http://0.0.0.0:4100/…``; serve now says so at start."""
    said = said_until_listening(tmp_path, "--host", "0.0.0.0")
    assert "will point at http://0.0.0.0:" in said and "set SPENDGATE_PUBLIC_URL" in said


def test_serve_says_in_one_line_that_the_database_is_down(tmp_path: Path) -> None:
    """A gateway started before its database (a pod, a Compose restart) logged the
    driver's traceback, a hundred lines each restart; it logs why in one line."""
    down = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/spendgate"
    code, said = spendgate(
        "serve",
        "--port",
        str(free_port()),
        SPENDGATE_MASTER_KEY=MASTER,
        SPENDGATE_DATABASE_URL=down,
        SPENDGATE_SPOOL_DIR=str(tmp_path / "spool"),
    )
    assert code != 0
    assert (
        "refusing to start: cannot connect to the database postgresql+asyncpg://postgres:***@"
        in (said)
    )
    assert "Traceback" not in said and "hunter2" not in said


def test_serve_names_config_keys_it_does_not_read(tmp_path: Path) -> None:
    """``spool_max_byte = 5`` (a typo) was ignored without a word: the gateway ran with
    the 1 GiB default. serve names each such key at start."""
    config = tmp_path / "spendgate.toml"
    config.write_text("[gateway]\nspool_max_byte = 5\nkey_cache_seconds = 5\n")
    said = said_until_listening(tmp_path, "--config", str(config))
    assert f"{config}: gateway.spool_max_byte is not a setting spendgate reads; ignored" in said
    assert "key_cache_seconds" not in said


def test_serve_listens_where_the_config_says(tmp_path: Path) -> None:
    """``[gateway] host`` and ``port`` were accepted as settings (no "not read" warning)
    yet ignored: ``serve``'s own defaults, 127.0.0.1:4100, always won. Without --host and
    --port the config's apply; a port or host of the wrong kind is one line, exit 2 (it
    was a ValueError / TypeError traceback)."""
    port = free_port()
    config = tmp_path / "spendgate.toml"
    config.write_text(f'[gateway]\nhost = "127.0.0.1"\nport = {port}\n')
    said = said_until_listening(tmp_path, "--config", str(config), port=False)
    assert f"listening on http://127.0.0.1:{port} " in said, said
    for bad, named in (('port = "abc"', "gateway.port"), ("port = 70000", "gateway.port"),
                       ("host = 5", "gateway.host")):  # fmt: skip
        config.write_text(f"[gateway]\n{bad}\n")
        code, said = spendgate("serve", "--config", str(config), SPENDGATE_MASTER_KEY=MASTER,
                               SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path}/p.db")  # fmt: skip
        assert (code, "Traceback" in said) == (2, False), said
        assert f"configuration error: {named} must be" in said


def test_serve_port_0_is_any_free_port_and_says_which(tmp_path: Path) -> None:
    """``--port 0`` fell back to the config's port (else 4100, where another gateway may
    run); it is a free port picked by the system now, and every line printed (listening
    on, the demo console link, uvicorn's) names that one. A config's ``port = 0`` (it was
    refused) means the same."""
    config = tmp_path / "spendgate.toml"
    config.write_text("[gateway]\nport = 0\n")
    assert load_settings(config_path=str(config), env={}).port == 0
    taken = free_port()
    config.write_text(f"[gateway]\nport = {taken}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendgate", "serve", "--demo", "--config", str(config),
         "--port", "0"],
        env={**os.environ, "COLUMNS": "300", "SPENDGATE_MASTER_KEY": MASTER,
             "SPENDGATE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        said = ""
        for line in proc.stderr:
            said += line
            if "Uvicorn running on" in line:
                break
        listening = re.search(r"listening on http://127\.0\.0\.1:(\d+) ", said)
        assert listening, said
        port = int(listening[1])
        assert port not in (0, 4100, taken), said
        assert f"console: http://127.0.0.1:{port}/login " in said, said
        assert f"Uvicorn running on http://127.0.0.1:{port} " in said, said
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        proc.kill()
        proc.wait()


def said_until_listening(tmp_path: Path, *args: str, port: bool = True) -> str:
    """What ``spendgate serve *args`` (SQLite in ``tmp_path``) writes to stderr up to
    its "listening on" line (on a free ``--port`` unless ``port`` is false); the server
    is stopped then."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendgate", "serve", *args,
         *(("--port", str(free_port())) if port else ())],
        env={**os.environ, "COLUMNS": "300", "SPENDGATE_MASTER_KEY": MASTER,
             "SPENDGATE_DATABASE_URL": f"sqlite:///{tmp_path}/p.db"},
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "listening on" in line:
                break
    finally:
        proc.kill()
        proc.wait()
    said = "".join(lines)
    return said


def test_migrate_and_reencrypt_use_the_database_of_the_config(tmp_path: Path) -> None:
    """With the database in the config file (``[gateway] database_url``) and not in
    ``SPENDGATE_DATABASE_URL``, ``serve --config`` used it but ``spendgate db migrate``
    (the README's step before rolling out replicas) and ``webhooks reencrypt`` did not
    read the config: they migrated a new ``spendgate.db`` in the working directory. They
    take ``--config`` (or ``SPENDGATE_CONFIG``) now, as serve does."""
    config = tmp_path / "spendgate.toml"
    config.write_text(f'[gateway]\ndatabase_url = "sqlite:///{tmp_path}/configured.db"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}

    def run(*args: str, **extra: str) -> tuple[int, str]:
        done = subprocess.run(
            [sys.executable, "-m", "spendgate", *args],
            env={**env, "COLUMNS": "200", "SPENDGATE_MASTER_KEY": MASTER, **extra},
            cwd=tmp_path,
            capture_output=True,
            timeout=120,
            text=True,
        )
        return done.returncode, done.stdout + done.stderr

    code, said = run("db", "migrate", "--config", str(config))
    assert code == 0, said
    assert f"database at head: sqlite:///{tmp_path}/configured.db" in said
    assert (tmp_path / "configured.db").exists()
    code, said = run("webhooks", "reencrypt", SPENDGATE_CONFIG=str(config))
    assert (code, said.strip()) == (
        0,
        "0 endpoints: 0 re-encrypted under the newest key, 0 Slack URLs encrypted",
    )
    assert not (tmp_path / "spendgate.db").exists()
    # SPENDGATE_DATABASE_URL still wins over the file, as in serve
    code, said = run("db", "migrate", "--config", str(config),
                     SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path}/env.db")  # fmt: skip
    assert code == 0 and (tmp_path / "env.db").exists(), said
    config.write_text("[gateway]\ndatabase_url = 5\n")
    code, said = run("db", "migrate", "--config", str(config))
    assert (code, "Traceback" in said) == (2, False), said
