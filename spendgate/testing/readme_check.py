"""Run the README's examples, in order, against a real ``spendgate serve --demo``.

A fenced block is run when the line right before it is ``<!-- readme-check -->``; the
README is the only copy of the commands. The gateway starts the way a new user starts it
(no ``SPENDGATE_MASTER_KEY``: the generated key is read from its output), in an empty
directory, on a free port that replaces ``127.0.0.1:4100`` in the examples.

* ``bash`` blocks: one command per line (``\\`` continues a line; ``#`` comments are
  dropped). ``export NAME=VALUE`` sets the environment of what follows; ``spendgate …``
  (or ``.venv/bin/spendgate …``) runs the CLI with ``--json`` added, and remembers the
  ids, keys and tokens its answer names; ``curl …`` runs curl with ``--fail``.
* ``python`` blocks run in a fresh interpreter (the SDK snippets).
* Placeholders in the examples are filled from what came before: ``org_…`` (and every
  ``<prefix>_…``) is the last such id made, ``sk-sg-…`` the last virtual key shown,
  ``sg-admin-…`` the last admin token, ``…`` alone in ``export`` the value known for it.

``python -m spendgate.testing.readme_check [README.md]`` prints each command and its
outcome and exits 1 at the first failure; ``tests/cli/test_readme_commands.py`` runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from spendgate.testing.processes import free_port

MARKER = "<!-- readme-check -->"
README_ADDRESS = "127.0.0.1:4100"
ID = re.compile(r"^([a-z]+)_[0-9a-f]{8,}$")
PLACEHOLDER = re.compile(r"\b([a-z]+)_…")
DEMO_KEY = re.compile(r"its virtual key \(shown once\): (sk-sg-\S+)")
MASTER_KEY = re.compile(r"export SPENDGATE_MASTER_KEY=(\S+)")


@dataclass(frozen=True)
class Block:
    language: str
    line: int
    text: str


@dataclass(frozen=True)
class Outcome:
    line: int
    command: str
    ok: bool
    output: str


class ReadmeCheckFailed(AssertionError):
    pass


def marked_blocks(readme: str) -> list[Block]:
    """The fenced blocks preceded by the marker line, in order."""
    lines = readme.splitlines()
    blocks: list[Block] = []
    for n, line in enumerate(lines):
        if line.strip() != MARKER or n + 1 >= len(lines):
            continue
        fence = lines[n + 1].strip()
        if not fence.startswith("```"):
            raise ReadmeCheckFailed(f"README line {n + 1}: {MARKER} is not before a fence")
        end = next(i for i in range(n + 2, len(lines)) if lines[i].strip() == "```")
        blocks.append(Block(fence[3:].strip(), n + 3, "\n".join(lines[n + 2 : end])))
    return blocks


def shell_commands(block: Block) -> Iterator[tuple[int, list[str]]]:
    """(README line, words) of each command in a bash block, comments dropped."""
    pending, start = "", block.line
    for n, line in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(pending + line, comments=True)
        pending = ""
        if words:
            yield start, words


@dataclass
class State:
    """What the examples so far made: the environment, ids by prefix, secrets."""

    env: dict[str, str]
    workdir: Path
    ids: dict[str, str] = field(default_factory=dict)
    secret_key: str = ""
    admin_token: str = ""
    master_key: str = ""
    outcomes: list[Outcome] = field(default_factory=list)

    def fill(self, text: str) -> str:
        text = text.replace(README_ADDRESS, self.env["SPENDGATE_URL"].removeprefix("http://"))
        text = text.replace("sk-sg-…", self.secret_key).replace("sg-admin-…", self.admin_token)

        def known(match: re.Match[str]) -> str:
            prefix = match.group(1)
            if prefix not in self.ids:
                raise ReadmeCheckFailed(f"no {prefix}_… made before it is used")
            return self.ids[prefix]

        return PLACEHOLDER.sub(known, text)

    def remember(self, answer: Any) -> None:
        """Ids (of one object: a list names too many), keys and tokens an answer shows."""
        if isinstance(answer, dict):
            for name, value in answer.items():
                found = ID.match(value) if isinstance(value, str) else None
                if found and (name == "id" or name.endswith("_id")):
                    self.ids[found.group(1)] = value
            if str(answer.get("key", "")).startswith("sk-sg-"):
                self.secret_key = answer["key"]
            if str(answer.get("token", "")).startswith("sg-admin-"):
                self.admin_token = answer["token"]


def run_block(state: State, block: Block) -> None:
    if block.language == "python":
        code = state.fill(block.text)
        done = subprocess.run(
            [sys.executable, "-c", code], env=state.env, capture_output=True, text=True, timeout=120
        )
        record(state, block.line, "python block", done.returncode == 0, done.stdout + done.stderr)
        return
    for line, words in shell_commands(block):
        run_command(state, line, [state.fill(w) for w in words])


def run_command(state: State, line: int, words: list[str]) -> None:
    shown = shlex.join(words)
    if words[0] == "export":
        name, _, value = words[1].partition("=")
        if value == "…":
            value = {"SPENDGATE_MASTER_KEY": state.master_key}[name]
        state.env[name] = value
        record(state, line, shown, True, "")
        return
    if Path(words[0]).name == "spendgate":
        words = [sys.executable, "-m", "spendgate", *words[1:]]
        if "--json" not in words:
            words.append("--json")
    elif words[0] == "curl":
        words = ["curl", "--fail", *(_expand(w, state.env) for w in words[1:])]
    else:
        raise ReadmeCheckFailed(f"README line {line}: no way to run {shown!r}")
    done = subprocess.run(
        words, env=state.env, cwd=state.workdir, capture_output=True, text=True, timeout=180
    )
    ok = done.returncode == 0
    if ok and words[1:3] == ["-m", "spendgate"]:
        try:
            state.remember(json.loads(done.stdout))
        except json.JSONDecodeError:
            ok = False
    record(state, line, shown, ok, done.stdout + done.stderr)


def _expand(word: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: env.get(m.group(1), ""), word)


def record(state: State, line: int, command: str, ok: bool, output: str) -> None:
    state.outcomes.append(Outcome(line, command, ok, output))
    if not ok:
        raise ReadmeCheckFailed(f"README line {line}: {command}\n{output[-3000:]}")


@contextlib.contextmanager
def demo_gateway(workdir: Path) -> Iterator[tuple[str, str, Path]]:
    """``spendgate serve --demo`` as a new user runs it: (url, its output so far, log)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
    port = free_port()
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "spendgate", "serve", "--demo", "--port", str(port)],
            env={**env, "COLUMNS": "200"},
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/readyz").status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ReadmeCheckFailed(f"serve --demo did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
            yield url, log_path.read_text(), log_path
        finally:
            proc.terminate()
            proc.wait(60)


def check(readme: Path) -> list[Outcome]:
    """Run every marked block of ``readme``; the outcomes, or ReadmeCheckFailed."""
    blocks = marked_blocks(readme.read_text())
    if not blocks:
        raise ReadmeCheckFailed(f"no block of {readme} is marked {MARKER}")
    with tempfile.TemporaryDirectory(prefix="readme-check-") as tmp:
        workdir = Path(tmp)
        with demo_gateway(workdir) as (url, started, _):
            env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
            env.update(SPENDGATE_URL=url, COLUMNS="200")
            demo, master = DEMO_KEY.search(started), MASTER_KEY.search(started)
            if demo is None or master is None:
                raise ReadmeCheckFailed(
                    f"serve --demo printed no demo key or master key:\n{started}"
                )
            state = State(env, workdir, secret_key=demo.group(1), master_key=master.group(1))
            for block in blocks:
                run_block(state, block)
            return state.outcomes


def main() -> None:
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    try:
        outcomes = check(readme)
    except ReadmeCheckFailed as exc:
        print(f"FAILED {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    for outcome in outcomes:
        print(f"ok  line {outcome.line}: {outcome.command}")
    print(f"{len(outcomes)} README commands ran")


if __name__ == "__main__":
    main()
