"""Audit tampering by a database superuser (issue 24, item 2), on SQLite and PostgreSQL.

Each attack is done as a superuser would: the append-only triggers dropped, the rows
changed with plain SQL (hashes recomputed with SHA-256 where that helps the attacker —
the format is public), the triggers put back. ``GET /admin/audit/verify`` and
``spendgate audit verify`` must catch:

(a) an entry moved into another org's view;
(b) the newest entries deleted and the chain head moved back — by the head's MAC when
    the head is simply rewritten, and by a kept anchor when an old head row is restored;
(c) an entry edited with every later hash recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from spendgate.cli.audit import audit_app
from spendgate.core.audit_chain import chain_hash
from spendgate.store import audit as store
from tests.conftest import MASTER_KEY, RunningGateway
from tests.store.triggers import behind_the_triggers


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setenv("SPENDGATE_MASTER_KEY", MASTER_KEY)
    yield CliRunner()


async def superuser(engine: AsyncEngine, *statements: tuple[str, dict[str, Any]]) -> None:
    """Run SQL with the append-only triggers dropped, then put them back."""
    await behind_the_triggers(engine, *statements)


async def rehash_from(engine: AsyncEngine, seq: int) -> None:
    """What an attacker without the key can do after an edit: recompute every hash from
    ``seq`` on with plain SHA-256, and the head row's hash with them."""
    entries = [e async for e in store.iter_entries(engine)]
    prev = next((e.hash for e in entries if e.seq == seq - 1), "0" * 64)
    updates: list[tuple[str, dict[str, Any]]] = []
    for entry in (e for e in entries if e.seq >= seq):
        digest = chain_hash(prev, entry.canonical())
        updates.append(
            (
                "UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s",
                {"p": prev, "h": digest, "s": entry.seq},
            )
        )
        prev = digest
    updates.append(("UPDATE audit_chain_head SET hash = :h", {"h": prev}))
    await superuser(engine, *updates)


def world(gw: RunningGateway) -> dict[str, str]:
    """Two orgs with some audited changes each (every admin change is an entry)."""
    ids = {}
    for name in ("a", "b"):
        org = gw.post("/admin/orgs", {"name": name})["id"]
        team = gw.post("/admin/teams", {"org_id": org, "name": "t"})["id"]
        gw.post("/admin/keys", {"name": "k", "org_id": org, "team_id": team})
        gw.post("/admin/budgets", {"scope_type": "team", "scope_id": team, "amount_usd": "5"})
        ids[name] = org
    return ids


def entries(gw: RunningGateway, **filters: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = gw.get("/admin/audit", limit=1000, **filters)["entries"]
    return found


def verify(gw: RunningGateway, **params: Any) -> dict[str, Any]:
    result: dict[str, Any] = gw.get("/admin/audit/verify", **params)
    return result


def cli_verify(cli: CliRunner, gw: RunningGateway, *args: str) -> tuple[int, str]:
    done = cli.invoke(audit_app, ["verify", "--url", gw.url, *args])
    return done.exit_code, done.stdout


def test_an_intact_chain_is_sealed_and_verifies(gateway: RunningGateway, cli: CliRunner) -> None:
    """Every new entry is version 2 with a MAC; verify passes and hands out an anchor."""
    world(gateway)
    found = entries(gateway)
    assert found and all(e["v"] == 2 and len(e["mac"] or "") == 64 for e in found)
    result = verify(gateway)
    assert result["ok"] and result["checked"] == len(found)
    assert result["anchor"]["seq"] == result["last_seq"] and result["anchor"]["signature"]
    assert cli_verify(cli, gateway)[0] == 0


def test_a_moved_entry_is_caught(gateway: RunningGateway, cli: CliRunner) -> None:
    """(a) An org A entry re-labelled as org B's: caught as it stands, and still caught
    (by its MAC) after every hash from it on is recomputed."""
    orgs = world(gateway)
    victim = entries(gateway, action="key.created")[-1]  # the oldest: org A's
    assert victim["org_id"] == orgs["a"]
    engine = gateway.app.services.engine
    move = ("UPDATE audit_log SET org_id = :b WHERE seq = :s", {"b": orgs["b"], "s": victim["seq"]})
    gateway.run(superuser(engine, move))
    result = verify(gateway)
    assert not result["ok"] and result["first_bad_seq"] == victim["seq"]
    assert "content" in result["reason"]
    gateway.run(rehash_from(engine, victim["seq"]))
    result = verify(gateway)
    assert not result["ok"] and result["first_bad_seq"] == victim["seq"]
    assert "MAC" in result["reason"]
    code, out = cli_verify(cli, gateway)
    assert code == 1 and f"seq {victim['seq']}" in out


def test_an_edit_with_every_later_hash_recomputed_is_caught(
    gateway: RunningGateway, cli: CliRunner
) -> None:
    """(c) Entry 9 edited, entries 9.. rehashed with SHA-256 and the head row with them:
    the hash chain is whole, the MAC of entry 9 is not."""
    world(gateway)
    for n in range(4):
        gateway.post("/admin/orgs", {"name": f"more {n}"})
    assert len(entries(gateway)) == 12
    engine = gateway.app.services.engine
    edit = ("UPDATE audit_log SET actor_id = 'somebody-else' WHERE seq = 9", {})
    gateway.run(superuser(engine, edit))
    gateway.run(rehash_from(engine, 9))
    result = verify(gateway)
    assert not result["ok"] and result["first_bad_seq"] == 9 and "MAC" in result["reason"]
    code, out = cli_verify(cli, gateway)
    assert code == 1 and "seq 9" in out


def test_truncation_is_caught_by_the_head_mac_and_by_a_kept_anchor(
    gateway: RunningGateway, cli: CliRunner, tmp_path: Path
) -> None:
    """(b) The newest entries deleted. A head row merely moved back fails its MAC; an
    old head row restored whole (the attacker saved it) leaves the database consistent
    — then the anchor kept from an earlier export or verify catches it."""
    gw, engine = gateway, gateway.app.services.engine
    world(gw)
    keep = verify(gw)["last_seq"]

    async def head_row() -> dict[str, Any]:
        async with engine.connect() as conn:
            row = (await conn.execute(sa.select(store.audit_chain_head))).one()
        return dict(row._mapping)

    saved_head = gw.run(head_row())  # the attacker's copy, taken early
    gw.post("/admin/orgs", {"name": "c"})
    gw.post("/admin/orgs", {"name": "d"})
    export = tmp_path / "audit.jsonl"
    done = cli.invoke(audit_app, ["export", "--url", gw.url, "-o", str(export)])
    assert done.exit_code == 0, done.output
    anchor_file = Path(f"{export}.anchor.json")
    anchor = json.loads(anchor_file.read_text())
    assert anchor["seq"] > keep and anchor["signature"]
    saved = tmp_path / "verify.anchor.json"
    assert cli_verify(cli, gw, "--save-anchor", str(saved))[0] == 0
    assert json.loads(saved.read_text())["seq"] >= anchor["seq"]

    delete = ("DELETE FROM audit_log WHERE seq > :k", {"k": keep})
    naive = (
        "UPDATE audit_chain_head SET seq = :k, hash = :h",
        {"k": keep, "h": saved_head["hash"]},
    )
    gw.run(superuser(engine, delete, naive))
    result = verify(gw)
    assert not result["ok"] and "head MAC" in result["reason"]

    restore = ("UPDATE audit_chain_head SET mac = :m", {"m": saved_head["mac"]})
    gw.run(superuser(engine, restore))
    assert verify(gw)["ok"]  # nothing in the database shows it any more
    for kept in (anchor_file, saved):
        code, out = cli_verify(cli, gw, "--since-anchor", str(kept))
        assert code == 1 and "deleted at the end" in out
    code, out = cli_verify(cli, gw, "--expect-head", f"{anchor['seq']}:{anchor['hash']}")
    assert code == 1
    result = verify(gw, expect_seq=anchor["seq"], expect_hash=anchor["hash"])
    assert not result["ok"] and result["anchor_checked"] is True
    forged = {**anchor, "seq": keep}  # the kept file lowered: its signature no longer holds
    answer = gw.admin.get(
        "/admin/audit/verify",
        params={f"expect_{k}": v for k, v in forged.items()},
    )
    assert answer.status_code == 422 and answer.json()["error"]["param"] == "expect_signature"


def test_an_org_admins_verify_reports_their_own_figures(gateway: RunningGateway) -> None:
    """Issue 24, item 3: checked/last_seq are the org's own; a break elsewhere is not
    named to them."""
    orgs = world(gateway)
    admin = gateway.post(
        "/admin/users", {"email": "oa@a.example", "role": "org_admin", "org_id": orgs["a"]}
    )["id"]
    token = gateway.post("/admin/tokens", {"user_id": admin, "name": "oa"})["token"]
    headers = {"authorization": f"Bearer {token}"}
    everything = verify(gateway)
    theirs = httpx.get(f"{gateway.url}/admin/audit/verify", headers=headers).json()
    own = [e for e in entries(gateway) if e["org_id"] == orgs["a"]]
    assert theirs["ok"] and theirs["checked"] == len(own) < everything["checked"]
    assert theirs["last_seq"] == max(e["seq"] for e in own)
    assert theirs["checkpoint_seq"] is None
    other = next(e for e in entries(gateway) if e["org_id"] == orgs["b"])
    engine = gateway.app.services.engine
    gateway.run(
        superuser(
            engine, ("UPDATE audit_log SET actor_id = 'x' WHERE seq = :s", {"s": other["seq"]})
        )
    )
    theirs = httpx.get(f"{gateway.url}/admin/audit/verify", headers=headers).json()
    assert theirs["ok"] is False and theirs["first_bad_seq"] is None
    assert other["id"] not in json.dumps(theirs)
    assert verify(gateway)["first_bad_seq"] == other["seq"]
