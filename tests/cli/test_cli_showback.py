"""``spendgate usage``, ``usage rebuild`` and ``statements`` against a running gateway."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
from typer.testing import CliRunner

from spendgate.cli import app as cli
from tests.conftest import MASTER_KEY, RunningGateway


def _cli(gw: RunningGateway, *args: str, as_json: bool = True) -> Any:
    extra = ["--json"] if as_json else []
    result = CliRunner().invoke(
        cli, [*args, "--url", gw.url, *extra], env={"SPENDGATE_MASTER_KEY": MASTER_KEY}
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if as_json else result


def test_cli_usage_rebuild_and_statements(gateway: RunningGateway, tmp_path: Path) -> None:
    """The org's zone set by the CLI shapes ``usage --by day``; a rebuild finds nothing to
    fix; a month closed by the CLI exports every statement (the progress bar only on a
    terminal: none here, where it used to be left in the output)."""
    gw = gateway
    org = _cli(gw, "orgs", "create", "cli-showback")
    updated = _cli(gw, "orgs", "update", org["id"], "--timezone", "Australia/Lord_Howe")
    assert updated["reporting_timezone"] == "Australia/Lord_Howe"
    team = gw.post("/admin/teams", {"org_id": org["id"], "name": "ops"})
    key = gw.create_key(org_id=org["id"], team_id=team["id"])["key"]
    gw.clock.set(datetime(2026, 2, 10, 13, 15, tzinfo=UTC))  # 00:15 Feb 11 at Lord Howe (+11)
    openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0).chat.completions.create(
        model="demo-small", messages=[{"role": "user", "content": "hi"}]
    )
    report = _cli(gw, "usage", "--by", "day,team", "--org", org["id"])
    assert [r["day"] for r in report["rows"]] == ["2026-02-11"]
    utc = _cli(gw, "usage", "--by", "day", "--org", org["id"], "--timezone", "UTC")
    assert [r["day"] for r in utc["rows"]] == ["2026-02-10"]
    rebuilt = _cli(gw, "usage", "rebuild", "--from", "2026-02-01T00:00:00Z", "--to",
                   "2026-03-01T00:00:00Z", "--dry-run")  # fmt: skip
    assert rebuilt["difference_count"] == 0 and rebuilt["ledger_rows"] >= 1
    gw.clock.set(datetime(2026, 3, 10, tzinfo=UTC))
    closed = _cli(gw, "statements", "close", "2026-02", "--org", org["id"])
    assert {s["team_id"] for s in closed} == {None, team["id"]}
    shown = _cli(gw, "statements", "show", "2026-02", "--org", org["id"], "--team", team["id"])
    assert shown["version"] == 1 and shown["statement"]["total_nanos"] > 0
    out = tmp_path / "statements"
    result = _cli(gw, "statements", "export", "2026-02", "--org", org["id"], "-o", str(out),
                  "--format", "html", as_json=False)  # fmt: skip
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([f"statement-2026-02-{team['id']}.html", "statement-2026-02-org.html"])
    assert "2 statements written" in result.output and "exporting" not in result.output


def test_cli_usage_rebuild_errors_name_its_options(gateway: RunningGateway) -> None:
    """A bad ``--from``/``--to`` is reported under those names, not as the API's
    ``start``/``end``, which the user never typed."""
    env = {"SPENDGATE_MASTER_KEY": MASTER_KEY}
    for args, said in (
        (["--from", "2026-02-01T00:05:00Z", "--to", "2026-03-01T00:00:00Z"],
         "--from: must fall on a quarter hour"),
        (["--from", "2026-02-01T00:00:00Z", "--to", "2026-02-01T00:00:00Z"],
         "--to: must be after --from"),
        (["--from", "yesterday", "--to", "2026-02-01T00:00:00Z"],
         "--from: not an ISO 8601 date-time"),
    ):  # fmt: skip
        result = CliRunner().invoke(cli, ["usage", "rebuild", *args, "--url", gateway.url], env=env)
        assert result.exit_code == 1, result.output
        assert said in " ".join(result.output.split()), result.output
        assert "start" not in result.output and "end:" not in result.output


def test_cli_naming_a_missing_org_says_so(gateway: RunningGateway) -> None:
    """``--org`` with an id no org has is an error naming it (exit 1), not an empty
    table that reads as "nothing there"."""
    for args in (("statements", "list"), ("usage", "--by", "model")):
        result = CliRunner().invoke(
            cli,
            [*args, "--org", "org_missing", "--url", gateway.url, "--json"],
            env={"SPENDGATE_MASTER_KEY": MASTER_KEY},
        )
        assert result.exit_code == 1 and result.stdout == "", (args, result.output)
        assert "422" in result.stderr and "org_id: org org_missing not found" in result.stderr


def test_cli_usage_names_a_group_without_the_dimension_none(gateway: RunningGateway) -> None:
    """Spend no team owns was a blank team cell (the quickstart's demo key has no team):
    it reads `none`, the value `--team none` filters it by."""
    gw = gateway
    org = _cli(gw, "orgs", "create", "cli-no-team")
    key = gw.create_key(org_id=org["id"])["key"]
    openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0).chat.completions.create(
        model="demo-small", messages=[{"role": "user", "content": "hi"}]
    )
    result = CliRunner().invoke(
        cli,
        ["usage", "--by", "team,model", "--org", org["id"], "--url", gw.url],
        env={"SPENDGATE_MASTER_KEY": MASTER_KEY, "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.stdout.splitlines() if "demo-small" in line]
    assert row.split("│")[1].strip() == "none"
    filtered = _cli(gw, "usage", "--by", "team", "--org", org["id"], "--team", "none")
    assert [r["team"] for r in filtered["rows"]] == [None]
