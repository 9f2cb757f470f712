"""The CLI at a terminal and without one (found in the CLI audit): Ctrl-C while the CLI is
still loading exits 130 without a traceback, ``audit export``'s progress bar is drawn only
on a terminal's stderr and never among the entries, and ``users set-password`` without a
terminal refuses in one line (or reads ``--password-stdin``) instead of Python's
GetPassWarning, and asks on stderr at one."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import tty
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.cli.test_cli_first_steps import Served
from tests.cli.test_cli_serve import MASTER, free_port, served

__all__ = ["served"]

#: the console script pip made for ``spendgate`` (what an operator runs), and ``-m``
COMMANDS = {
    "script": [str(Path(sys.executable).with_name("spendgate"))],
    "module": [sys.executable, "-m", "spendgate"],
}
PIPE_SIZE = 4096  # the smallest pipe Linux makes
ENV = {**os.environ, "SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "100"}


def _sigint_as_default() -> None:
    # a test run started in the background ignores SIGINT; the operator's shell does not
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _module(line: bytes) -> str:
    """The module an ``-X importtime`` line reports (``import time: 12 | 34 | a.b``)."""
    return line.rsplit(b"|", 1)[-1].strip().decode()


def _interrupt_during_import(command: list[str], trigger: str) -> tuple[int, bytes, bytes]:
    """Run ``command --version`` reporting each import on a 4 KiB stderr pipe, read that
    report up to the line of ``trigger`` (after the entry point's), then send SIGINT. The
    process cannot have finished loading: each import writes its line, and once the pipe
    is full it waits for the test to read. Returns the exit code, stdout, and stderr
    after ``trigger``."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    proc = subprocess.Popen(
        [*command, "--version"],
        env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=write_end,
        preexec_fn=_sigint_as_default,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb", buffering=0) as err:  # unbuffered: reads no further
        for awaited in ("spendgate.cli_start", trigger):  # the entry point, then trigger
            while True:
                line = err.readline()
                assert line, f"{awaited} was never imported"
                if line.startswith(b"import time:") and _module(line) == awaited:
                    break
        proc.send_signal(signal.SIGINT)
        rest = err.read()
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out, rest or b""


@pytest.mark.parametrize("how", sorted(COMMANDS))
def test_ctrl_c_while_the_cli_loads_exits_130_without_a_traceback(how: str) -> None:
    """Ctrl-C in the first few hundred milliseconds (typer, rich, httpx … importing)
    printed the traceback of whichever import it cut (KeyboardInterrupt); it exits 130
    and prints nothing, as Ctrl-C does once the command runs. Interrupted right after
    the entry point is loaded, midway, and near the end of loading."""
    command = COMMANDS[how]
    reference = subprocess.run(
        [*command, "--version"],
        env={**ENV, "PYTHONPROFILEIMPORTTIME": "1"},
        capture_output=True,
        timeout=60,
        check=True,
    )
    lines = reference.stderr.splitlines(keepends=True)
    entry = next(n for n, line in enumerate(lines) if _module(line) == "spendgate.cli_start")
    after = [len(b"".join(lines[n + 1 :])) for n in range(len(lines))]
    # the last line still followed by four full pipes of imports: loading is not over
    last = max(n for n in range(entry + 1, len(lines)) if after[n] > 4 * PIPE_SIZE)
    assert last > entry + 2, "the CLI loads too little to interrupt it in the middle"
    for n in (entry + 1, (entry + 1 + last) // 2, last):
        trigger = _module(lines[n])
        code, out, err = _interrupt_during_import(command, trigger)
        said = b"".join(line for line in err.splitlines(True) if b"import time:" not in line)
        assert (code, out, said) == (130, b"", b""), (trigger, said.decode())


def _entries(url: str, end: str) -> bytes:
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {MASTER}"}) as http:
        response = http.get("/admin/audit/export", params={"end": end})
        response.raise_for_status()
        return response.content


def _export(
    url: str, end: str, *, out: str, err: str, extra: tuple[str, ...] = ()
) -> tuple[int, bytes, bytes]:
    """``audit export`` with its stdout and stderr each a pipe or a terminal (``"tty"``;
    ``err="same"``: stderr is stdout's terminal, an operator's screen). The terminal is
    raw, so it passes bytes as written. Returns the exit code, stdout, stderr."""
    leader, follower = pty.openpty()
    tty.setraw(follower)
    try:
        proc = subprocess.Popen(
            [*COMMANDS["script"], "audit", "export", "--end", end, "--url", url, *extra],
            env=ENV,
            stdin=subprocess.DEVNULL,
            stdout=follower if out == "tty" else subprocess.PIPE,
            stderr={"same": subprocess.STDOUT, "tty": follower}.get(err, subprocess.PIPE),
        )
        os.close(follower)
        got = {"out": b"", "err": b""}
        reading = {leader: "out" if out == "tty" else "err"}
        for name, stream in (("out", proc.stdout), ("err", proc.stderr)):
            if stream is not None:
                reading[stream.fileno()] = name
        while reading:
            ready, _, _ = select.select(list(reading), [], [], 60)
            assert ready, "audit export hung"
            for fd in ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # a terminal whose last writer is gone
                    chunk = b""
                if chunk:
                    got[reading[fd]] += chunk
                else:
                    del reading[fd]
        return proc.wait(timeout=60), got["out"], got["err"]
    finally:
        os.close(leader)


def test_export_progress_only_on_a_terminals_stderr(served: Served, tmp_path: Path) -> None:
    """``audit export`` on a terminal drew its progress bar among the entries printed on
    that terminal, and in a pipe or a log it still wrote the bar to stderr. The bar is
    drawn only when stderr is a terminal and the export goes elsewhere; stdout carries
    exactly the export in every case."""
    url, _, _ = served
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {MASTER}"}) as http:
        org = http.post("/admin/orgs", json={"name": "shown"}).json()["id"]
        for n in range(30):
            assert http.post("/admin/teams", json={"name": f"t{n}", "org_id": org}).is_success
    end = datetime.now(UTC).isoformat()  # later exports (audited too) stay out of it
    entries = _entries(url, end)
    count = entries.count(b"\n")
    assert count >= 31 and b"\x1b" not in entries

    code, screen, _ = _export(url, end, out="tty", err="same")
    assert (code, screen) == (0, entries)  # an operator's screen: the entries alone

    code, out, err = _export(url, end, out="pipe", err="tty")  # `> file` at a terminal
    assert (code, out) == (0, entries)
    assert b"exporting" in err and f"{count}/{count}".encode() in err

    code, out, err = _export(url, end, out="pipe", err="pipe")  # cron, CI
    assert (code, out, err) == (0, entries, b"")

    code, out, err = _export(url, end, out="tty", err="pipe")
    assert (code, out, err) == (0, entries, b"")

    target = tmp_path / "audit.jsonl"
    code, out, err = _export(url, end, out="pipe", err="pipe", extra=("-o", str(target)))
    assert (code, out, target.read_bytes()) == (0, b"", entries)
    assert err.decode().splitlines() == [
        f"{count} entries written to {target}",
        f"anchor (keep it apart from the database): {target}.anchor.json",
    ]
    assert [json.loads(line)["seq"] for line in entries.splitlines()][:2] == [1, 2]


def test_set_password_without_a_terminal_says_to_pipe_it() -> None:
    """Without a terminal, ``users set-password`` printed Python's GetPassWarning, echoed
    and read whatever stdin held (nothing: "Aborted!"). It refuses in one line naming
    --password-stdin, exit 2, before any request; with the flag it reads the first line
    of stdin, asking nothing."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: no request gets that far
    base = [*COMMANDS["script"], "users", "set-password", "user_x", "--url", url]
    refused = subprocess.run(
        base, env=ENV, stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True
    )
    said = refused.stderr.decode()
    assert (refused.returncode, refused.stdout) == (2, b""), said
    assert said.splitlines() == [
        "no terminal to ask the password on: pipe it in with --password-stdin (one line), "
        'as in: echo "$PW" | spendgate users set-password user_x --password-stdin'
    ]
    piped = subprocess.run(
        [*base, "--password-stdin"],
        env=ENV,
        input=b"a long enough password\n",
        capture_output=True,
        start_new_session=True,
    )
    said = piped.stderr.decode()
    assert piped.returncode == 1 and said.startswith(f"cannot reach spendgate at {url}"), said
    assert "Warning" not in said and "password" not in said


def test_set_password_at_a_terminal_asks_twice_on_stderr() -> None:
    """At a terminal it asks twice without echo and no warning, as before; the prompts
    went to stdout, so ``set-password ID --json > result.json`` put them in the file and
    left the operator a blank line. They are on stderr; stdout carries the answer alone."""
    url = f"http://127.0.0.1:{free_port()}"
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*COMMANDS["script"], "users", "set-password", "user_x", "--json", "--url", url],
        env=ENV,
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=follower,
        start_new_session=True,  # no /dev/tty: getpass uses the terminal on stdin
    )
    os.close(follower)
    shown = b""
    try:
        for prompt in (b"password: ", b"Repeat for confirmation: "):
            while not shown.endswith(prompt):
                ready, _, _ = select.select([leader], [], [], 60)
                assert ready, shown
                shown += os.read(leader, 1024)
            os.write(leader, b"a long enough password\n")
        while True:
            try:
                chunk = os.read(leader, 1024)
            except OSError:  # the terminal's last writer is gone
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    out, _ = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (1, b"")
    said = re.sub(r"\x1b\[[0-9;]*m", "", shown.decode())  # the terminal's colours
    assert said.startswith("password: \r\nRepeat for confirmation: \r\n"), said
    assert "Warning" not in said and "a long enough password" not in said, said
    assert f"cannot reach spendgate at {url}" in said


def _close_stdin() -> None:
    os.close(0)


def test_set_password_with_stdin_closed_is_one_line_too() -> None:
    """Started with standard input closed (``<&-``, a daemon's child), Python has no
    ``sys.stdin`` at all: the terminal check printed an AttributeError traceback. It is
    no terminal: the same one line, exit 2; and ``--password-stdin`` says stdin is
    closed. No request is made either way."""
    url = f"http://127.0.0.1:{free_port()}"
    base = [*COMMANDS["script"], "users", "set-password", "user_x", "--url", url]
    refused = subprocess.run(
        base, env=ENV, capture_output=True, preexec_fn=_close_stdin, start_new_session=True
    )
    said = refused.stderr.decode()
    assert (refused.returncode, refused.stdout) == (2, b""), said
    assert said.splitlines() == [
        "no terminal to ask the password on: pipe it in with --password-stdin (one line), "
        'as in: echo "$PW" | spendgate users set-password user_x --password-stdin'
    ]
    flag = subprocess.run(
        [*base, "--password-stdin"],
        env=ENV,
        capture_output=True,
        preexec_fn=_close_stdin,
        start_new_session=True,
    )
    said = flag.stderr.decode()
    assert (flag.returncode, flag.stdout) == (2, b""), said
    assert said.splitlines() == ["--password-stdin: standard input is closed"]
