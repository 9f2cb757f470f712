"""`spendgate serve` as a real process, and the CLI driving it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.testing.processes import free_port

MASTER = "sg-master-cli-test"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """`spendgate serve --demo` with a ledger that only flushes on shutdown."""
    config = tmp_path / "spendgate.toml"
    config.write_text("[gateway]\nledger_flush_seconds = 3600\nledger_batch_size = 100000\n")
    db = tmp_path / "served.db"
    port = free_port()
    env = {
        **os.environ,
        "SPENDGATE_MASTER_KEY": MASTER,
        "SPENDGATE_DATABASE_URL": f"sqlite:///{db}",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spendgate",
            "serve",
            "--demo",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # a guard against hanging: a loaded machine took 30 s
    try:
        while True:
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "spendgate serve did not become ready"
            time.sleep(0.1)
        yield url, db, proc
    finally:  # a server that never became ready is stopped too
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_cli(url: str, *args: str) -> object:
    result = CliRunner().invoke(
        cli, [*args, "--url", url, "--json"], env={"SPENDGATE_MASTER_KEY": MASTER}
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_creates_objects_and_sigterm_flushes_the_ledger(
    served: tuple[str, Path, subprocess.Popen[bytes]],
) -> None:
    """Org, team, user, agent and key made with the CLI; calls metered; SIGTERM loses nothing."""
    url, db, proc = served
    org = run_cli(url, "orgs", "create", "acme")
    team = run_cli(url, "teams", "create", "search", "--org", org["id"])  # type: ignore[index]
    user = run_cli(url, "users", "create", "ana@acme.io", "--teams", team["id"])  # type: ignore[index]
    agent = run_cli(url, "agents", "create", "crawler", "--team", team["id"])  # type: ignore[index]
    key = run_cli(
        url,
        "keys",
        "create",
        "search-prod",
        "--org",
        org["id"],  # type: ignore[index]
        "--team",
        team["id"],
        "--user",
        user["id"],
        "--agent",
        agent["id"],  # type: ignore[index]
        "--tags",
        "prod,search",
    )
    secret = key["key"]  # type: ignore[index]
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)
    for n in range(5):
        sdk.chat.completions.create(
            model="demo-small", messages=[{"role": "user", "content": f"q{n}"}]
        )
    list(
        sdk.chat.completions.create(
            model="demo-large", stream=True, messages=[{"role": "user", "content": "s"}]
        )
    )
    report = run_cli(url, "usage", "--by", "team,model")
    rows = {r["model"]: r for r in report["rows"]}  # type: ignore[index]
    assert rows["demo-small"]["requests"] == 5 and rows["demo-large"]["requests"] == 1
    assert all(r["team"] == team["id"] for r in rows.values())  # type: ignore[index]

    for n in range(7):
        sdk.chat.completions.create(
            model="demo-small", messages=[{"role": "user", "content": f"x{n}"}]
        )
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.wait(timeout=120) in (0, -signal.SIGTERM)  # a guard against hanging
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "Application shutdown complete" in output
    # the demo admin's sign-in names the console where this server listens (--port)
    assert f"console: {url}/login" in output, output
    with sqlite3.connect(db) as conn:
        count, agents = conn.execute(
            "SELECT count(*), count(DISTINCT agent_id) FROM ledger WHERE key_id = ?", (key["id"],)
        ).fetchone()  # type: ignore[index]
    assert (count, agents) == (13, 1)


def test_cli_reports_errors_clearly(served: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """A bad id is a readable error and a non-zero exit, not a traceback."""
    url, _, _ = served
    result = CliRunner().invoke(
        cli, ["keys", "revoke", "key_missing", "--url", url], env={"SPENDGATE_MASTER_KEY": MASTER}
    )
    assert result.exit_code == 1
    assert "404" in result.output and "not found" in result.output
    wrong = CliRunner().invoke(
        cli, ["orgs", "list", "--url", url], env={"SPENDGATE_MASTER_KEY": "wrong"}
    )
    assert wrong.exit_code == 1 and "401" in wrong.output


def test_cli_budgets_and_wallets(served: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """Budgets and wallets made with the CLI are enforced on real calls."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "beta")
    key = run_cli(url, "keys", "create", "k", "--org", org["id"])  # type: ignore[index]
    made = run_cli(
        url,
        "budgets",
        "create",
        "--scope",
        "key",
        "--scope-id",
        key["id"],
        "--amount",
        "0.000001",
        "--hard",
        "--hard-percent",
        "110",  # type: ignore[index]
        "--timezone",
        "Europe/Berlin",
        "--alerts",
        "50,80",
    )
    assert made["hard_limit_percent"] == "110" and made["alert_percentages"] == ["50", "80"]  # type: ignore[index]
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key["key"], max_retries=0)  # type: ignore[index]
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(
            model="demo-small", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    run_cli(url, "budgets", "update", made["id"], "--amount", "5")  # type: ignore[index]
    sdk.chat.completions.create(
        model="demo-small", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    status = run_cli(url, "budgets", "status", made["id"])  # type: ignore[index]
    assert status["spent_usd"] != "0.00" and status["period_start_local"][-6:] in (
        "+01:00",
        "+02:00",
    )  # type: ignore[index]
    wallet = run_cli(
        url,
        "wallets",
        "create",
        "--scope",
        "org",
        "--scope-id",
        org["id"],  # type: ignore[index]
        "--topup",
        "0.000002",
    )
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(
            model="demo-small", max_tokens=1000, messages=[{"role": "user", "content": "x"}]
        )
    assert info.value.status_code == 402
    run_cli(url, "wallets", "topup", wallet["id"], "--amount", "1")  # type: ignore[index]
    sdk.chat.completions.create(
        model="demo-small", max_tokens=1000, messages=[{"role": "user", "content": "x"}]
    )


def test_cli_rate_limits(served: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """A limit made with the CLI refuses the call past it; update and delete work."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "gamma")
    key = run_cli(url, "keys", "create", "k", "--org", org["id"])  # type: ignore[index]
    made = run_cli(
        url,
        "limits",
        "create",
        "--scope",
        "key",
        "--scope-id",
        key["id"],  # type: ignore[index]
        "--model",
        "demo-*",
        "--rpm",
        "1",
    )
    assert made["rpm"] == 1 and made["model"] == "demo-*"  # type: ignore[index]
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key["key"], max_retries=0)  # type: ignore[index]
    sdk.chat.completions.create(model="demo-small", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="demo-large", messages=[{"role": "user", "content": "x"}])
    updated = run_cli(url, "limits", "update", made["id"], "--rpm", "100")  # type: ignore[index]
    assert updated["rpm"] == 100  # type: ignore[index]
    result = CliRunner().invoke(
        cli,
        ["limits", "delete", made["id"], "--url", url],  # type: ignore[index]
        env={"SPENDGATE_MASTER_KEY": MASTER},
    )
    assert result.exit_code == 0
    assert run_cli(url, "limits", "list") == []


def test_serve_refuses_several_workers_without_redis(tmp_path: Path) -> None:
    """In-process counters cannot hold a cap across worker processes: refuse, clearly."""
    env = {
        **os.environ,
        "SPENDGATE_MASTER_KEY": MASTER,
        "SPENDGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
    }
    env.pop("SPENDGATE_REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "spendgate", "serve", "--workers", "2", "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert b"SPENDGATE_REDIS_URL" in done.stdout + done.stderr


def test_cli_bootstrap_first_admin(served: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """The master key makes the first org admin and their token; the token then works on
    its own, sees only its org, and can make and revoke tokens for others of the org."""
    url, _, _ = served
    run_cli(url, "orgs", "create", "someone-else")
    made = run_cli(url, "bootstrap", "--org", "acme", "--email", "admin@acme.example")
    assert made["token"].startswith("sg-admin-")  # type: ignore[index]

    def as_admin(*args: str) -> object:
        result = CliRunner().invoke(
            cli,
            [*args, "--url", url, "--json"],
            env={
                "SPENDGATE_ADMIN_TOKEN": made["token"],  # type: ignore[index]
                "SPENDGATE_MASTER_KEY": "",
            },
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    orgs = as_admin("orgs", "list")
    assert [o["name"] for o in orgs] == ["acme"]  # type: ignore[union-attr, index]
    team = as_admin("teams", "create", "search", "--org", made["org_id"])  # type: ignore[index]
    # without --org: the one org the token sees (the README's form needed --org, the
    # only create of a team's object that did); the master key sees several orgs and is asked
    ops = as_admin("teams", "create", "ops")
    assert ops["org_id"] == made["org_id"]  # type: ignore[index]
    asked = CliRunner().invoke(cli, ["teams", "create", "x", "--url", url],
                               env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "200"})  # fmt: skip
    assert asked.exit_code == 2 and "--org is required: you can see" in asked.stderr
    # a team role is held in a team (issue 24): the viewer views one
    viewer = as_admin(
        "users",
        "create",
        "v@acme.example",
        "--role",
        "viewer",
        "--teams",
        team["id"],  # type: ignore[index]
    )
    token = as_admin("tokens", "create", "--user", viewer["id"], "--expires-in-days", "7")  # type: ignore[index]
    promoted = as_admin("users", "update", viewer["id"], "--role", "finance")  # type: ignore[index]
    assert promoted["role"] == "finance"  # type: ignore[index]
    revoked = as_admin("tokens", "revoke", token["id"])  # type: ignore[index]
    assert revoked["status"] == "revoked"  # type: ignore[index]
    gone = httpx.get(url + "/admin/orgs", headers={"authorization": f"Bearer {token['token']}"})  # type: ignore[index]
    assert gone.status_code == 401


def test_cli_prints_secrets_whole_in_a_narrow_terminal(
    served: tuple[str, Path, subprocess.Popen[bytes]],
) -> None:
    """A secret shown once must not be cut short by a table column on an 80-column
    terminal: it is printed whole on its own line."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "narrow")
    result = CliRunner().invoke(
        cli,
        ["keys", "create", "k", "--org", org["id"], "--url", url],  # type: ignore[index]
        env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    [line] = [x for x in result.stdout.splitlines() if x.startswith("key: ")]
    secret = line.removeprefix("key: ")
    assert secret.startswith("sk-sg-") and len(secret) > 40
    listed = httpx.get(url + "/v1/models", headers={"authorization": f"Bearer {secret}"})
    assert listed.status_code == 200


def test_cli_lists_never_cut_an_id_short(served: tuple[str, Path, subprocess.Popen[bytes]]) -> None:
    """A list too wide for the terminal is printed as one block per row, so every id can be
    copied into the next command; a wide terminal gets the table. Values are shown as they
    are, never read as Rich markup."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "ids-whole")
    key = run_cli(url, "keys", "create", "[bold]k[/]", "--org", org["id"])  # type: ignore[index]

    def listed(columns: str) -> str:
        result = CliRunner().invoke(
            cli,
            ["keys", "get", key["id"], "--url", url],  # type: ignore[index]
            env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": columns},
        )
        assert result.exit_code == 0, result.output
        return result.stdout

    narrow = listed("80")
    assert f"id          {key['id']}" in narrow.splitlines()  # type: ignore[index]
    assert any(line.split() == ["org_id", org["id"]] for line in narrow.splitlines())  # type: ignore[index]
    assert any(line.split() == ["name", "[bold]k[/]"] for line in narrow.splitlines())
    wide = listed("200")
    assert "┃ id" in wide and key["id"] in wide and "[bold]k[/]" in wide  # type: ignore[index]


def test_cli_forecast_and_status_show_where_the_period_lands(
    served: tuple[str, Path, subprocess.Popen[bytes]],
) -> None:
    """`spendgate forecast` prints P10/P50/P90 and each threshold's expected date; the budget
    status carries the forecast's P50 (the numbers themselves are tested in
    test_forecast_http.py: this server's ledger flushes only at shutdown)."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "forecasting")
    key = run_cli(url, "keys", "create", "k", "--org", org["id"])  # type: ignore[index]
    made = run_cli(
        url,
        "budgets",
        "create",
        "--scope",
        "key",
        "--scope-id",
        key["id"],  # type: ignore[index]
        "--amount",
        "3",
    )

    def text(*args: str) -> dict[str, str]:
        result = CliRunner().invoke(
            cli, [*args, "--url", url], env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "80"}
        )
        assert result.exit_code == 0, result.output
        fields = [line.split(None, 1) for line in result.stdout.splitlines() if line.strip()]
        return {f[0]: f[1] if len(f) > 1 else "" for f in fields}

    shown = text("forecast", made["id"], "--refresh")  # type: ignore[index]
    fresh = run_cli(url, "forecast", made["id"])  # type: ignore[index]
    assert shown["p50_usd"] == fresh["p50_usd"] and shown["method"] == fresh["method"]  # type: ignore[index]
    assert Decimal(shown["p10_usd"]) <= Decimal(shown["p50_usd"]) <= Decimal(shown["p90_usd"])
    assert "alert:50 not this period" in shown["crossings"]
    status = text("budgets", "status", made["id"])  # type: ignore[index]
    assert status["forecast_p50_usd"] == fresh["p50_usd"]  # type: ignore[index]


def test_cli_usage_by_key_keeps_each_key_in_its_row(
    served: tuple[str, Path, subprocess.Popen[bytes]],
) -> None:
    """A `key` column of usage is key ids, not a secret to print apart: it stays in the
    table, on its row."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "usage-by-key")
    key = run_cli(url, "keys", "create", "k", "--org", org["id"])  # type: ignore[index]
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key["key"], max_retries=0)  # type: ignore[index]
    sdk.chat.completions.create(
        model="demo-small", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    result = CliRunner().invoke(
        cli,
        ["usage", "--by", "key", "--org", org["id"], "--url", url],  # type: ignore[index]
        env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.stdout.splitlines() if key["id"] in line]  # type: ignore[index]
    assert row.startswith("│") and "key:" not in result.stdout


def test_serve_refuses_an_unknown_redis_failure_mode(tmp_path: Path) -> None:
    """``--redis-failure-mode`` takes closed or open; anything else stops before serving."""
    env = {
        **os.environ,
        "SPENDGATE_MASTER_KEY": MASTER,
        "SPENDGATE_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}",
    }
    done = subprocess.run(
        [
            sys.executable, "-m", "spendgate", "serve", "--port", str(free_port()),
            "--redis-failure-mode", "sideways",
        ],
        env=env,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert b"redis_failure_mode" in done.stdout + done.stderr
