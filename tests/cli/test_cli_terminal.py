"""The CLI at a terminal and without one (found in the CLI audit): Ctrl-C while the CLI is
still loading exits 130 without a traceback."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_cli_serve import MASTER

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
    report up to the line of ``trigger``, then send SIGINT. The process cannot have
    finished loading: each import writes its line, and once the pipe is full it waits
    for the test to read. Returns the exit code, stdout, and stderr after ``trigger``."""
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
        while True:
            line = err.readline()
            assert line, f"{trigger} was never imported"
            if line.startswith(b"import time:") and _module(line) == trigger:
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
