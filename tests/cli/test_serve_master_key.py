"""`spendgate serve` as real processes, without SPENDGATE_MASTER_KEY: the generated key is
kept (0600) and reused, so webhook secrets still decrypt after a restart; a key that cannot
open the stored secrets stops the start, loudly; a busy port fails before anything is
printed."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from spendgate.security.master_key import kept_master_key
from spendgate.testing.fake_upstream import serve_in_thread
from spendgate.testing.processes import free_port
from spendgate.testing.webhook_receiver import Receiver


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The runner's environment without any SPENDGATE_* setting, plus ``extra``."""
    (tmp_path / "data").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
    env.update(
        SPENDGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'data' / 'spendgate.db'}",
        SPENDGATE_WEBHOOK_ALLOW_PRIVATE="1",
        **extra,
    )
    return env


@contextlib.contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`spendgate serve` until it answers /readyz; SIGTERM at the end."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendgate", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
    try:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "spendgate serve did not become ready"
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(60)


def finished(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`spendgate serve` expected to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "spendgate", "serve", "--port", str(free_port()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def deliveries_to(receiver: Receiver, count: int) -> None:
    deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
    while len(receiver.received) < count:
        assert time.monotonic() < deadline, f"{len(receiver.received)} deliveries, not {count}"
        time.sleep(0.1)


def test_the_generated_master_key_is_kept_and_webhooks_survive_a_restart(tmp_path: Path) -> None:
    """First start: a master key is generated, kept next to the SQLite file with mode 0600
    and printed. Second start: the same key, read back (its path named), still opens the
    admin API, and the webhook secret stored before the restart still signs deliveries a
    verifying receiver accepts."""
    receiver = Receiver()
    handle = serve_in_thread(receiver)
    env = clean_env(tmp_path)
    key_file = tmp_path / "data" / "spendgate-master.key"
    try:
        with serving(env) as (url, proc):
            key = key_file.read_text().strip()
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and key.startswith("sg-master-")
            admin = {"authorization": f"Bearer {key}"}
            hook = httpx.post(
                url + "/admin/webhooks",
                json={"url": handle.url + "/hook", "event_types": ["key.created"]},
                headers=admin,
            )
            assert hook.status_code == 201, hook.text
            receiver.secrets.append(hook.json()["secret"])
        first = proc.stdout.read() if proc.stdout else ""
        assert f"export SPENDGATE_MASTER_KEY={key}" in first and str(key_file) in first

        with serving(env) as (url, proc):
            org = httpx.post(url + "/admin/orgs", json={"name": "after"}, headers=admin)
            assert org.status_code == 201, org.text
            made = httpx.post(
                url + "/admin/keys", json={"name": "k", "org_id": org.json()["id"]}, headers=admin
            )
            assert made.status_code == 201
            deliveries_to(receiver, 1)
        second = proc.stdout.read() if proc.stdout else ""
        assert f"using the master key kept in {key_file}" in " ".join(second.split())
        assert key not in second  # shown once, when it was made
        assert key_file.read_text().strip() == key
        [delivered] = receiver.received
        assert delivered.verified and delivered.json()["data"]["key_id"] == made.json()["id"]
    finally:
        handle.stop()


def test_a_key_that_cannot_open_the_stored_secrets_stops_the_start(tmp_path: Path) -> None:
    """With another master key the stored webhook secret does not decrypt: serve exits
    non-zero, saying how many endpoints, which, and how to go on; with
    --allow-unreadable-secrets it starts, and says so."""
    env = clean_env(tmp_path, SPENDGATE_MASTER_KEY="sg-master-the-first-one")
    with serving(env) as (url, _):
        made = httpx.post(
            url + "/admin/webhooks",
            json={"url": "http://127.0.0.1:9/hook"},
            headers={"authorization": "Bearer sg-master-the-first-one"},
        )
        assert made.status_code == 201, made.text
    other = {**env, "SPENDGATE_MASTER_KEY": "sg-master-another-one"}
    refused = finished(other)
    said = " ".join((refused.stdout + refused.stderr).split())
    assert refused.returncode != 0
    assert "refusing to start: 1 webhook endpoint(s)" in said and made.json()["id"] in said
    assert "cannot decrypt" in said and "--allow-unreadable-secrets" in said
    assert "Application startup complete" not in said
    with serving(other, "--allow-unreadable-secrets") as (url, proc):
        admin = {"authorization": "Bearer sg-master-another-one"}
        org = httpx.post(url + "/admin/orgs", json={"name": "o"}, headers=admin).json()
        httpx.post(url + "/admin/keys", json={"name": "k", "org_id": org["id"]}, headers=admin)
        log = f"/admin/webhooks/{made.json()['id']}/deliveries"
        deadline = time.monotonic() + 120  # a guard against hanging, not a measurement
        while not any(d["attempts"] for d in httpx.get(url + log, headers=admin).json()):
            assert time.monotonic() < deadline, "no delivery attempt"
            time.sleep(0.2)
    output = " ".join((proc.stdout.read() if proc.stdout else "").split())
    assert "starting anyway" in output
    # each failing delivery is in the server's log too, not only in the delivery log
    assert f"webhook endpoint {made.json()['id']}: stored secret does not decrypt" in output


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    """A kept master key readable by others is not used: exit 2 with the chmod to run."""
    key_file = tmp_path / "data" / "spendgate-master.key"
    env = clean_env(tmp_path)
    key_file.write_text("sg-master-kept\n")
    key_file.chmod(0o644)
    done = finished(env)
    assert done.returncode == 2
    assert f"chmod 600 {key_file}" in " ".join(done.stderr.split())


def test_a_busy_port_fails_before_a_demo_key_or_listening_is_printed(tmp_path: Path) -> None:
    """Something already listens on the port: serve exits 1 naming the address and how
    to pick another (a second quickstart on 4100 was left guessing), and has printed no
    demo key, no generated master key and no "listening"."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "spendgate", "serve", "--demo", "--port", str(port)],
            env=clean_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    said = done.stdout + done.stderr
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in " ".join(said.split())
    assert "(another port: --port N, or --port 0 for any free one)" in " ".join(said.split())
    for never in ("sk-sg-", "listening", "SPENDGATE_MASTER_KEY", "demo org"):
        assert never not in said
    assert not (tmp_path / "data" / "spendgate-master.key").exists()


def test_the_key_file_is_written_whole_before_it_has_its_name(tmp_path: Path) -> None:
    """Two starts racing for the first key agree on one (the file is linked into place
    whole), and it is only its owner's."""
    path = tmp_path / "k" / "spendgate-master.key"
    first, second = kept_master_key(path), kept_master_key(path)
    assert first.created and not second.created and first.key == second.key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["spendgate-master.key"]


def test_workers_without_redis_fail_before_a_master_key_is_made(tmp_path: Path) -> None:
    """``--workers 2`` without Redis stops at once (exit 2) and leaves nothing behind: it
    generated, kept and printed a master key first, one the refused start never used."""
    done = finished(clean_env(tmp_path), "--demo", "--workers", "2")
    said = done.stdout + done.stderr
    assert done.returncode == 2
    assert "--workers > 1 needs SPENDGATE_REDIS_URL" in " ".join(said.split())
    for never in ("sk-sg-", "sg-master-", "listening", "SPENDGATE_MASTER_KEY"):
        assert never not in said
    assert not (tmp_path / "data" / "spendgate-master.key").exists()
