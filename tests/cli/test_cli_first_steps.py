"""The CLI against a real `spendgate serve --demo`, where a new user trips: org names are
unique and `bootstrap` reuses an org by name; `wallets create` says plainly what an empty
wallet does; wallets are changed and closed; a forecast says when the hard cap stops
calls; delete commands answer `--json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openai
import pytest
from typer.testing import CliRunner

from spendgate.cli import app as cli
from tests.cli.test_cli_serve import MASTER, served
from tests.cli.test_cli_serve import run_cli as _run_cli

__all__ = ["served"]

Served = tuple[str, Path, subprocess.Popen[bytes]]


def run_cli(url: str, *args: str) -> Any:
    return _run_cli(url, *args)


def invoke(url: str, *args: str, columns: str = "200") -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, [*args, "--url", url], env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": columns}
    )
    return result.exit_code, result.stdout, result.stderr


def test_org_names_are_unique_and_bootstrap_reuses_the_org(served: Served) -> None:
    """`orgs create acme` then `bootstrap --org acme` (the README's order) leaves one org
    named acme, whose admin the bootstrap made; a second `orgs create acme` is a 409 that
    names the existing org."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "acme")
    made = run_cli(url, "bootstrap", "--org", "acme", "--email", "admin@acme.example")
    assert made["org_id"] == org["id"]
    named = [o for o in run_cli(url, "orgs", "list") if o["name"] == "acme"]
    assert [o["id"] for o in named] == [org["id"]]
    code, _, err = invoke(url, "orgs", "create", "acme")
    assert code == 1 and "409" in err and org["id"] in err
    code, _, err = invoke(url, "bootstrap", "--org", "fresh", "--email", "a@fresh.example")
    assert code == 0 and "using the existing org" not in err
    assert [o["name"] for o in run_cli(url, "orgs", "list")].count("fresh") == 1


def test_wallets_create_says_what_an_empty_wallet_does(served: Served) -> None:
    """Without --topup the CLI prints that the team's calls get 402 until a top-up (and
    how to top up); the calls do get 402; `--topup` in the same command avoids it; a second
    wallet for the team is refused naming the first; update and close work; a closed
    wallet lets the calls through."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "wallets-cli")
    team = run_cli(url, "teams", "create", "search", "--org", org["id"])
    key = run_cli(url, "keys", "create", "k", "--org", org["id"], "--team", team["id"])
    code, out, err = invoke(url, "wallets", "create", "--scope", "team", "--scope-id", team["id"])
    assert code == 0, err
    said = " ".join(err.split())
    assert f'calls from team "search" ({team["id"]}) get 402 insufficient_funds' in said
    [wallet_id] = [w for w in out.split() if w.startswith("wallet_")]
    assert f"spendgate wallets topup {wallet_id} --amount" in said
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key["key"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        sdk.chat.completions.create(model="demo-small", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 402

    code, _, err = invoke(url, "wallets", "create", "--scope", "team", "--scope-id", team["id"])
    assert code == 1 and "409" in err and wallet_id in err
    renamed = run_cli(url, "wallets", "update", wallet_id, "--name", "search fund")
    assert renamed["name"] == "search fund"
    closed = run_cli(url, "wallets", "close", wallet_id)
    assert closed["status"] == "closed"
    sdk.chat.completions.create(model="demo-small", messages=[{"role": "user", "content": "x"}])

    funded = run_cli(
        url,
        "wallets",
        "create",
        "--scope",
        "team",
        "--scope-id",
        team["id"],
        "--topup",
        "5",
    )
    assert funded["balance_usd"] == "5.00" and funded["notice"] is None
    sdk.chat.completions.create(model="demo-small", messages=[{"role": "user", "content": "x"}])


def test_delete_commands_answer_json(served: Served) -> None:
    """`budgets delete`, `limits delete` and `webhooks delete` take --json and print
    {"id", "deleted": true}; `db migrate --json` names the revision."""
    url, db, _ = served
    org = run_cli(url, "orgs", "create", "deleting")
    key = run_cli(url, "keys", "create", "k", "--org", org["id"])
    budget = run_cli(
        url,
        "budgets",
        "create",
        "--scope",
        "key",
        "--scope-id",
        key["id"],
        "--amount",
        "3",
    )
    limit = run_cli(
        url, "limits", "create", "--scope", "key", "--scope-id", key["id"], "--rpm", "5"
    )
    assert run_cli(url, "budgets", "delete", budget["id"]) == {"id": budget["id"], "deleted": True}
    assert run_cli(url, "limits", "delete", limit["id"]) == {"id": limit["id"], "deleted": True}
    missing = CliRunner().invoke(
        cli,
        ["webhooks", "delete", "whe_missing", "--url", url, "--json"],
        env={"SPENDGATE_MASTER_KEY": MASTER},
    )
    assert missing.exit_code == 1 and "404" in missing.stderr
    migrated = CliRunner().invoke(
        cli, ["db", "migrate", "--database-url", f"sqlite:///{db}", "--json"]
    )
    assert migrated.exit_code == 0, migrated.output
    assert json.loads(migrated.stdout) == {"revision": "head", "database_url": f"sqlite:///{db}"}


def test_forecast_says_when_the_hard_cap_stops_calls(served: Served) -> None:
    """A daily budget capped at ten calls' cost, six calls by local noon (a zone picked so
    that it is noon there now): the forecast of recorded spend stops at the cap, names today
    as the day it is reached, and the CLI prints that sentence."""
    url, _, _ = served
    utc_hour = datetime.now(UTC).hour
    offset = 12 - utc_hour  # Etc/GMT-N is N hours east of UTC
    zone = "Etc/GMT" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
    org = run_cli(url, "orgs", "create", "capped-forecast")
    key = run_cli(url, "keys", "create", "k", "--org", org["id"])
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=key["key"], max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="demo-small", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    )
    cost = Decimal(raw.headers["x-spendgate-cost-usd"])
    made = run_cli(
        url, "budgets", "create", "--scope", "key", "--scope-id", key["id"], "--period", "daily",
        "--timezone", zone, "--amount", str(cost * 10), "--hard",
    )  # fmt: skip
    for _ in range(5):
        sdk.chat.completions.create(
            model="demo-small", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    forecast = run_cli(url, "forecast", made["id"], "--refresh")
    assert forecast["method"] == "today_rate" and forecast["confidence"] == "low"
    assert Decimal(forecast["p90_usd"]) == Decimal(forecast["hard_cap_usd"]) == cost * 10
    local_today = datetime.now(UTC).astimezone(ZoneInfo(zone)).date().isoformat()
    assert forecast["hits_hard_cap_on"] == local_today
    code, out, _ = invoke(url, "forecast", made["id"], columns="300")
    assert code == 0
    assert f"will hit the hard cap (${forecast['hard_cap_usd']}) on {local_today}" in out


def test_long_lines_stay_whole_when_not_a_terminal(served: Served) -> None:
    """Piped or logged (no terminal, 80 columns), a message is one line: the invite link
    `bootstrap` prints can be copied whole, and an error reads as one line."""
    url, _, _ = served
    code, _, err = invoke(
        url, "bootstrap", "--org", "wrap", "--email", "a@wrap.example", columns="80"
    )
    assert code == 0, err
    [line] = [ln for ln in err.splitlines() if ln.startswith("console: open ")]
    assert "/invite/" in line and line.endswith("(one use, seven days)")
    code, _, err = invoke(url, "orgs", "create", "wrap", columns="80")
    assert code == 1
    [line] = [ln for ln in err.splitlines() if ln.startswith("error 409:")]
    assert "already exists" in line and line.endswith(")")


def test_users_agents_and_statements_go_to_the_one_org(served: Served, tmp_path: Path) -> None:
    """Like `keys create` and `teams create`, `users create`, `agents create` and the
    statements commands about one org (`export`, `show`, `close`, `reissue`, `rule`)
    without --org go to the one org the caller sees (the demo's here); with several they
    exit 2 asking for --org, and the export writes nothing. Before, `users create
    ops@acme.io --role org_admin` with the master key was `error 422: --org: org None does
    not exist`, the export started over every org's teams and failed half way with a 422,
    and `statements show/close/reissue/rule` were `error 422: org_id: required with the
    master key` even with one org."""
    url, _, _ = served
    (demo,) = run_cli(url, "orgs", "list")
    user = run_cli(url, "users", "create", "ops@demo.example", "--role", "org_admin")
    agent = run_cli(url, "agents", "create", "crawler")
    assert user["org_id"] == agent["org_id"] == demo["id"]
    out = tmp_path / "out"
    code, _, err = invoke(url, "statements", "export", "2026-11", "-o", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["statement-2026-11-org.csv"]
    month = "2025-11"  # ended whatever the day the test runs
    assert run_cli(url, "statements", "show", month)["statement"]["org_id"] == demo["id"]
    assert [s["team_id"] for s in run_cli(url, "statements", "close", month)] == [None]
    assert run_cli(url, "statements", "reissue", month) == []
    code, out, _ = invoke(url, "statements", "reissue", month)  # said once, not also "(none)"
    assert (code, out) == (0, "no statement changed\n")
    assert run_cli(url, "statements", "rule", "even")["method"] == "even"
    run_cli(url, "orgs", "create", "second")
    for args in (
        ("users", "create", "two@demo.example", "--role", "finance"),
        ("agents", "create", "crawler-2"),
        ("statements", "export", "2026-11", "-o", str(tmp_path / "two")),
        *(("statements", command, month) for command in ("show", "close", "reissue")),
        ("statements", "rule", "even"),
    ):
        code, _, err = invoke(url, *args)
        assert code == 2 and "--org is required: you can see 2 orgs" in err, (args, err)
    assert not (tmp_path / "two").exists()


def test_budgets_status_says_the_state_and_the_amount_it_counts_against(served: Served) -> None:
    """After `budgets except … --percent 50` (the README's launch-day raise) the status
    showed a percent used of an amount it did not show, and not whether calls are
    refused: it shows `state` and `effective_amount_usd`, as the API answers them."""
    url, _, _ = served
    (demo,) = run_cli(url, "orgs", "list")
    made = run_cli(url, "budgets", "create", "--scope", "org", "--scope-id", demo["id"],
                   "--amount", "10", "--hard")  # fmt: skip
    run_cli(url, "budgets", "except", made["id"], "--percent", "50", "--reason", "launch",
            "--expires-at", "+1d")  # fmt: skip
    code, out, err = invoke(url, "budgets", "status", made["id"], columns="80")
    assert code == 0, err
    shown = dict(line.split(None, 1) for line in out.splitlines() if len(line.split()) > 1)
    api = run_cli(url, "budgets", "status", made["id"])
    assert shown["effective_amount_usd"] == api["effective_amount_usd"] == "15.00"
    assert shown["state"] == api["state"] == "ok"


def test_keys_update_sets_and_clears_an_expiry(served: Served) -> None:
    """`PATCH /admin/keys/{id}` (and the console) set or clear a key's expiry; the CLI,
    which the README uses for every key task, could only set one at creation."""
    url, _, _ = served
    key = run_cli(url, "keys", "create", "expiring")
    set_ = run_cli(url, "keys", "update", key["id"], "--expires-at", "+30d")
    assert set_["expires_at"] is not None
    assert run_cli(url, "keys", "get", key["id"])["expires_at"] == set_["expires_at"]
    assert run_cli(url, "keys", "update", key["id"], "--no-expiry")["expires_at"] is None
    code, _, err = invoke(url, "keys", "update", key["id"])
    assert code == 2 and "--expires-at or --no-expiry" in err
    code, _, err = invoke(url, "keys", "update", key["id"], "--expires-at", "2020-01-01")
    assert code == 1 and "--expires-at: must be in the future" in err


def test_an_empty_list_says_so(served: Served) -> None:
    """`spendgate tickets list` on an empty queue printed nothing at all (a list too wide
    for the terminal is shown as blocks, one per row: none); now it says `(none)`, and
    `--json` stays `[]`."""
    url, _, _ = served
    for command in (["tickets", "list"], ["anomalies", "list"], ["webhooks", "list"]):
        code, out, err = invoke(url, *command, columns="80")
        assert (code, out.strip()) == (0, "(none)"), (command, out, err)
    assert run_cli(url, "tickets", "list") == []


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "create", "k", "--org", "org_x", "--expires-at", "+99999999999d"),
        ("keys", "create", "k", "--org", "org_x", "--expires-at", "+3000000d"),
        ("budgets", "except", "budget_x", "--reason", "r", "--percent", "5",
         "--expires-at", "+99999999999w"),
        ("tokens", "create", "--user", "user_x", "--expires-in-days", "999999999999999"),
        ("bootstrap", "--org", "o", "--email", "a@o.example", "--expires-in-days", "9999999"),
    ],
)  # fmt: skip
def test_an_expiry_past_the_calendar_is_a_clear_error(args: tuple[str, ...]) -> None:
    """A relative expiry too far out overflowed the calendar in the CLI itself (a
    traceback, exit 1): it is exit 2 naming the value, before anything is sent (nothing
    listens at the URL)."""
    result = CliRunner().invoke(
        cli,
        [*args, "--url", "http://127.0.0.1:9"],
        env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "200"},
    )
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert "too far from now" in result.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("keys", "create", "k", "--org", "org_x", "--expires-at", "+90x"),
         "'+90x' is not a time from now: write +N followed by m, h, d or w"),
        (("budgets", "except", "budget_x", "--reason", "r", "--percent", "5",
          "--expires-at", "+1.5d"), "'+1.5d' is not a time from now"),
    ],
)  # fmt: skip
def test_a_mistyped_time_from_now_says_what_is_taken(args: tuple[str, ...], said: str) -> None:
    """``+90x`` went to the API as it was and came back as "not an ISO 8601 date-time",
    which does not say that ``+90d`` would do: exit 2 naming the forms, nothing sent."""
    result = CliRunner().invoke(
        cli,
        [*args, "--url", "http://127.0.0.1:9"],
        env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "200"},
    )
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert said in result.stderr


@pytest.mark.parametrize("anchor", ["{}", "[1]", '{"seq": "x", "hash": "y"}'])
def test_a_file_that_is_not_an_anchor_is_named(tmp_path: Path, anchor: str) -> None:
    """``verify --since-anchor`` with a file that is JSON but no anchor printed Python's
    KeyError (``'seq'``) or TypeError text: it says what an anchor is, exit 2."""
    kept = tmp_path / "kept.json"
    kept.write_text(anchor)
    result = CliRunner().invoke(
        cli,
        ["audit", "verify", "--since-anchor", str(kept), "--url", "http://127.0.0.1:9"],
        env={"SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "200"},
    )
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    assert f"{kept} is not an anchor: expected a JSON object with a whole number seq" in (
        result.stderr.replace("\n", " ")
    )


@pytest.mark.parametrize(
    "args",
    [
        (b"budgets", b"get", b"\xff"),
        (b"orgs", b"create", b"caf\xe9"),
        (b"keys", b"create", b"k", b"--org", b"org_\xc3"),
        (b"orgs", b"\xff"),
    ],
)
def test_arguments_that_are_not_utf8_are_a_usage_error(args: tuple[bytes, ...]) -> None:
    """Bytes that are not UTF-8 reach Python as lone surrogates and crashed the CLI with
    a traceback when sent; they are exit 2 naming the argument, before anything is sent
    (nothing listens at the URL)."""
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"spendgate", *args, b"--url", b"http://127.0.0.1:9"],
        env={**os.environ, "SPENDGATE_MASTER_KEY": MASTER, "COLUMNS": "200"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 2, err
    assert "is not valid UTF-8" in err and "Traceback" not in err
    bad = next(a for a in args if not a.isascii())
    assert repr(bad) in err


def test_ids_are_one_path_segment_each(served: Served) -> None:
    """An id holding `/`, `..` or `?` is sent escaped, as one segment: `budgets get
    x/../../budgets` is a 404, not the list of budgets, and `budgets delete` of
    `x/../<other id>` deletes nothing."""
    url, _, _ = served
    org = run_cli(url, "orgs", "create", "escaping")
    key = run_cli(url, "keys", "create", "k", "--org", org["id"])
    budget = run_cli(
        url, "budgets", "create", "--scope", "key", "--scope-id", key["id"], "--amount", "3"
    )
    for odd in ("x/../../budgets", "..", "?limit=1", f"{budget['id']}?x=1"):
        code, out, err = invoke(url, "budgets", "get", odd, "--json")
        assert code == 1 and "404" in err and out == "", (odd, out, err)
    code, _, err = invoke(url, "budgets", "delete", f"x/../{budget['id']}")
    assert code == 1 and "404" in err
    assert run_cli(url, "budgets", "get", budget["id"])["id"] == budget["id"]


def test_keys_create_takes_the_org_of_the_token(served: Served) -> None:
    """An org admin's token needs no `--org`: the key goes to the token's org. With the
    master key (which sees every org) the org comes from `--team`, and without either
    it is a clear exit 2, not a 422 about a missing org_id."""
    url, _, _ = served
    run_cli(url, "orgs", "create", "another")
    made = run_cli(url, "bootstrap", "--org", "inferred", "--email", "a@inferred.example")
    as_admin = CliRunner().invoke(
        cli,
        ["keys", "create", "k", "--url", url, "--json"],
        env={"SPENDGATE_ADMIN_TOKEN": made["token"], "SPENDGATE_MASTER_KEY": ""},
    )
    assert as_admin.exit_code == 0, as_admin.output
    assert json.loads(as_admin.stdout)["org_id"] == made["org_id"]
    team = run_cli(url, "teams", "create", "search", "--org", made["org_id"])
    by_team = run_cli(url, "keys", "create", "k2", "--team", team["id"])
    assert (by_team["org_id"], by_team["team_id"]) == (made["org_id"], team["id"])
    code, _, err = invoke(url, "keys", "create", "k3")
    assert code == 2 and "--org is required" in err


def _scope(url: str) -> tuple[str, ...]:
    org = run_cli(url, "orgs", "create", "blanks")
    key = run_cli(url, "keys", "create", "k", "--org", org["id"])
    return ("--scope", "key", "--scope-id", key["id"])


def test_a_limit_without_a_spend_cap_shows_no_spend_window(served: Served) -> None:
    """A rate limit without a spend cap printed `spend_window_seconds 600` (the API's
    default window, kept in its answer): the table leaves it blank; `--json` answers
    as the API does."""
    url, _, _ = served
    scope = _scope(url)
    code, out, _ = invoke(url, "limits", "create", *scope, "--rpm", "5", columns="1000")
    assert code == 0
    header, _, row = out.splitlines()[1:4]
    cells = dict(zip(_cells(header), _cells(row), strict=True))
    assert cells["rpm"] == "5" and cells["max_spend_usd"] == cells["spend_window_seconds"] == ""
    limit_id = cells["id"]
    assert run_cli(url, "limits", "get", limit_id)["spend_window_seconds"] == 600
    for args in (("get", limit_id), ("list",), ("update", limit_id, "--tpm", "900")):
        code, out, _ = invoke(url, "limits", *args, columns="1000")
        assert code == 0 and " 600 " not in out, out
    code, out, _ = invoke(url, "limits", "update", limit_id, "--spend", "2", columns="1000")
    assert code == 0 and " 600 " in out


def test_a_percent_exception_shows_no_zero_amount(served: Served) -> None:
    """`budgets except --percent 50` printed `amount_usd 0.00`, as if the raise were
    nothing: the table leaves the field not used blank; `--json` answers as the API
    does (0 for it, as the README says)."""
    url, _, _ = served
    scope = _scope(url)
    budget = run_cli(url, "budgets", "create", *scope, "--amount", "3")
    grant = ("budgets", "except", budget["id"], "--reason", "launch", "--expires-at", "+1d")
    code, out, _ = invoke(url, *grant, "--percent", "50", columns="1000")
    header, _, row = out.splitlines()[1:4]
    cells = dict(zip(_cells(header), _cells(row), strict=True))
    assert code == 0 and cells["amount_usd"] == "" and cells["percent"].startswith("50"), out
    code, out, _ = invoke(url, *grant, "--amount", "2", columns="1000")
    header, _, row = out.splitlines()[1:4]
    cells = dict(zip(_cells(header), _cells(row), strict=True))
    assert code == 0 and cells["amount_usd"] == "2.00" and cells["percent"] == "", out
    answer = run_cli(url, *grant, "--percent", "50")
    assert answer["amount_usd"] == "0.00"


def _cells(line: str) -> list[str]:
    """The cells of a Rich table's line (``┃ id ┃ … ┃`` or ``│ lim_… │ … │``)."""
    return [c.strip() for c in line.replace("┃", "│").strip().strip("│").split("│")]


def test_limits_create_and_update_print_the_rows_warnings(served: Served) -> None:
    """A rate limit whose pattern matches no configured model governs no call: `limits
    create` and `limits update` print the API's warning (on stderr, so `--json` stays
    the answer alone); a row that governs calls prints none."""
    url, _, _ = served
    scope = _scope(url)
    warning = "warning: model: 'gpt-9*': matches no configured model; this row limits no call"
    code, out, err = invoke(
        url, "limits", "create", *scope, "--model", "gpt-9*", "--rpm", "5", "--json"
    )
    assert code == 0 and warning in err and json.loads(out)["warnings"] == [warning[9:]]
    code, out, err = invoke(url, "limits", "update", json.loads(out)["id"], "--rpm", "6")
    assert code == 0 and warning in err and "warning" not in out
    code, _, err = invoke(url, "limits", "create", *scope, "--model", "*", "--rpm", "5")
    assert code == 0 and "warning" not in err
