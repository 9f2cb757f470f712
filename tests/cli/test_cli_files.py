"""The CLI as a new operator meets it (found auditing it against a real gateway): an
``-o`` or anchor path it cannot write is one line naming it (no traceback), Ctrl-C during
an export says how far it got, an unknown ``statements show --format`` is refused instead
of ignored, the last commands without ``--json`` take it, a ``--url`` that is not the
admin API is one line (not a web page), a 422 names the option typed, and ``audit list``
pages to older entries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

from spendgate.cli import app as cli
from tests.cli.test_cli_first_steps import Served, run_cli
from tests.cli.test_cli_serve import MASTER, served

__all__ = ["served"]


def invoke(*args: str) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(
        cli, list(args), env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "200"}
    )
    return result.exit_code, result.stderr, result.exception


def test_a_path_it_cannot_write_is_one_line(served: Served, tmp_path: Path) -> None:
    """``audit export -o``, ``audit verify --save-anchor`` and ``statements export -o``
    into a missing directory (or onto a directory, or a file where the directory should
    be) died with Python's FileNotFoundError traceback; each is exit 1 and one line
    naming the path."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "files")["id"]
    missing = tmp_path / "no" / "such" / "audit.jsonl"
    file_not_dir = tmp_path / "taken"
    file_not_dir.write_text("x")
    for args, path, why in [
        (("audit", "export", "-o", str(missing)), missing, "No such file or directory"),
        (("audit", "export", "-o", str(tmp_path)), tmp_path, "Is a directory"),
        (("audit", "verify", "--save-anchor", str(missing)), missing, "No such file or directory"),
        (("statements", "export", "2026-11", "--org", org, "-o", str(file_not_dir)),
         file_not_dir, "File exists"),
    ]:  # fmt: skip
        code, err, exc = invoke(*args, "--url", url)
        assert (code, type(exc)) == (1, SystemExit), (args, err, exc)
        assert err.strip().splitlines() == [f"{path}: {why}"], (args, err)


def test_ctrl_c_during_an_export_says_how_far_it_got(served: Served) -> None:
    """Ctrl-C in the middle of ``audit export`` ended it with exit 130 and no word, the
    output cut anywhere; it says on stderr how many of how many entries were written and
    that the output is incomplete. The export's stdout is a pipe nobody reads past the
    first line, so the interrupt lands while it is still writing."""
    url, _, _ = served
    headers = {"authorization": f"Bearer {MASTER}"}
    with httpx.Client(base_url=url, headers=headers) as http:
        org = http.post("/admin/orgs", json={"name": "many"}).json()["id"]
        for n in range(400):  # ~250 KB of audit entries: more than a pipe holds
            assert http.post("/admin/teams", json={"name": f"t{n}", "org_id": org}).is_success
    proc = subprocess.Popen(
        [sys.executable, "-m", "spendgate", "audit", "export", "--url", url],
        env={**os.environ, "SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"{")  # the export is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    said = err.decode()
    assert proc.returncode == 130, said
    assert "Traceback" not in said
    last = said.strip().splitlines()[-1]
    assert last.startswith("export interrupted after "), said
    assert last.endswith(" entries; the output is incomplete"), said


def test_statements_show_refuses_an_unknown_format() -> None:
    """``statements show --format pdf`` printed the table as if no format were given;
    it is a usage error (exit 2) naming the formats, before anything is asked."""
    code, err, _ = invoke("statements", "show", "2026-11", "--format", "pdf", "--url",
                          "http://127.0.0.1:9")  # fmt: skip
    assert code == 2
    assert "--format must be table, csv, jsonl or html" in err


def test_the_last_commands_without_json_take_it(served: Served, tmp_path: Path) -> None:
    """README: every command takes ``--json``. ``anomalies actions delete`` refused it
    (exit 2, "No such option") and ``statements export`` too; the one prints
    ``{"id", "deleted": true}`` like the other deletes, the other the files it wrote."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "jsonly")["id"]
    team = run_cli(url, "teams", "create", "t", "--org", org)["id"]
    action = run_cli(
        url, "anomalies", "actions", "create", "--scope", "team", "--scope-id", team, "--pause"
    )
    gone = run_cli(url, "anomalies", "actions", "delete", action["id"])
    assert gone == {"id": action["id"], "deleted": True}
    out = tmp_path / "out"
    summary = run_cli(url, "statements", "export", "2026-11", "--org", org, "-o", str(out))
    names = [f"statement-2026-11-{n}.csv" for n in ("org", team)]
    assert summary == {
        "month": "2026-11",
        "output": str(out),
        "format": "csv",
        "files": [str(out / n) for n in names],
    }
    assert sorted(p.name for p in out.iterdir()) == sorted(names)


def test_a_url_that_is_not_the_admin_api_is_one_line(served: Served) -> None:
    """The sign-in link ``serve`` prints (``…/login``) given as ``--url`` got the
    console's 404 page, printed whole (dozens of lines of HTML) after ``error 404:``; it
    is one line naming the URL asked and what ``--url`` takes."""
    url, _, _ = served
    for args in (("keys", "list"), ("audit", "export")):
        code, err, _ = invoke(*args, "--url", f"{url}/login")
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"error 404: {url}/login/admin/"), err
        assert lines[0].endswith("--url takes the gateway's base URL, such as "
                                 "http://127.0.0.1:4100"), err  # fmt: skip


def test_a_url_that_is_not_a_url_is_a_usage_error() -> None:
    """``--url http://[::1`` (or a port that is not a number) died with httpx's InvalidURL
    traceback; it is one line naming the URL, exit 2, before anything is sent."""
    for url, why in (("http://[::1", "Invalid port: ':1'"), ("http://gw:port", "Invalid port")):
        for args in (("keys", "list"), ("audit", "export")):
            code, err, exc = invoke(*args, "--url", url)
            assert (code, type(exc)) == (2, SystemExit), (args, err, exc)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"--url {url} is not a valid URL: ")
            assert why in lines[0], lines


def test_a_422_names_the_option_that_was_typed(served: Served) -> None:
    """A bad ``--amount`` was refused as ``amount_usd: …``, a bad ``--alerts`` item as
    ``alert_percentages.1: …``, ``--hours 0`` as ``expires_in_hours: …``: names the user
    never typed, like ``reporting_timezone`` for ``orgs update --timezone``. Commands that
    send a body name their options."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "named")["id"]
    team = run_cli(url, "teams", "create", "t", "--org", org)["id"]
    wallet = run_cli(url, "wallets", "create", "--scope", "team", "--scope-id", team)["id"]
    scope = ("--scope", "team", "--scope-id", team)
    for args, said in [
        (("wallets", "topup", wallet, "--amount", "1e3"), "--amount: must be an amount in USD"),
        (("budgets", "create", *scope, "--amount", "5", "--alerts", "50,abc"),
         "--alerts: must be a percentage"),
        (("limits", "create", *scope),
         "--rpm: set at least one of --rpm, --tpm, --concurrent, --spend"),
        (("budgets", "create", "--scope", "team", "--scope-id", "team_nope", "--amount", "5"),
         "--scope-id: team team_nope does not exist"),
        (("tickets", "approve", "tkt_nope", "--reason", "r", "--hours", "0"), "--hours: "),
        (("keys", "create", "k", "--team", team, "--expires-at", "2020-01-01T00:00:00Z"),
         "--expires-at: must be in the future"),
        (("orgs", "update", org, "--timezone", "Nowhere"), "--timezone: unknown time zone"),
        (("users", "create", "u@named.example", "--role", "viewer", "--teams", "team_nope"),
         "--teams: team team_nope does not exist"),
    ]:  # fmt: skip
        code, err, _ = invoke(*args, "--url", url)
        assert (code, err.startswith(f"error 422: {said}")) == (1, True), (args, err)


def test_audit_list_pages_to_older_entries(served: Served) -> None:
    """``audit list`` showed the newest entries and no way to the older ones (the API's
    ``before_seq`` had no option; ``--json`` dropped ``next_before_seq``): the table ends
    with the ``--before-seq`` of the next page, which lists only older entries."""
    url, _, _ = served
    for n in range(5):
        run_cli(url, "orgs", "create", f"paged{n}")
    code, err, _ = invoke("audit", "list", "--limit", "2", "--url", url)
    assert code == 0, err
    newest = run_cli(url, "audit", "list", "--limit", "2")
    assert err.strip() == f"older entries: --before-seq {newest[-1]['seq']}"
    older = run_cli(url, "audit", "list", "--limit", "2", "--before-seq", str(newest[-1]["seq"]))
    assert [e["seq"] for e in older] == [newest[-1]["seq"] - 1, newest[-1]["seq"] - 2]


def test_version_prints_the_installed_version() -> None:
    """``spendgate --version`` names the installed package's version, and runs nothing
    else (no command needed)."""
    from importlib.metadata import version

    printed = CliRunner().invoke(cli, ["--version"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout == f"spendgate {version('spendgate')}\n"
