"""How the command line prints values in its tables."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from spendgate.cli import app as cli
from spendgate.cli.output import show


def test_a_mapping_prints_as_the_pairs_its_option_takes(capsys: pytest.CaptureFixture[str]) -> None:
    """`statements rule fixed --share team_a=30` printed its shares as Python's repr
    (`{'team_a': '30'}`, and `{}` for an even rule): as `team_a=30`, and nothing for none."""
    rules = [
        {"id": "alr_1", "method": "fixed", "shares": {"team_a": "30", "team_b": "70"}},
        {"id": "alr_2", "method": "even", "shares": {}},
    ]
    show(rules, False, ["id", "method", "shares"])
    out = capsys.readouterr().out
    assert "team_a=30,team_b=70" in out
    assert "{" not in out and "'" not in out


def test_a_group_help_gives_each_command_its_summary_on_one_line() -> None:
    """`spendgate wallets --help` broke a summary wrapped in its docstring over two rows
    of the commands table ("… refused with 402 when" / "it runs dry, …"): one line."""
    result = CliRunner().invoke(cli, ["wallets", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    (create,) = [line for line in result.output.splitlines() if "│ create" in line]
    assert "refused with 402 when it runs dry, and from the start if it is created" in create
