"""The audit log's pure core: canonical form, hash chain, MACs, anchors, checkpoints,
settings."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spendgate.core.audit_chain import (
    GENESIS,
    Anchor,
    AuditEntry,
    AuditEvent,
    Checkpoint,
    anchor_valid,
    canonical,
    chain_hash,
    checkpoint_valid,
    derive_key,
    enforcement_event,
    entry_key,
    head_mac,
    normalise,
    seal,
    sign_anchor,
    sign_checkpoint,
)
from spendgate.core.audit_verify import ChainState, ChainWalk, verify_chain
from spendgate.errors import ConfigError
from spendgate.settings import load_audit_settings

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
KEY = b"test-audit-key"


def event(n: int, **changes: Any) -> AuditEvent:
    base = AuditEvent(
        T0 + timedelta(minutes=n),
        "admin",
        "master",
        "budget.updated",
        "budget",
        f"bud_{n}",
        before={"amount_usd": Decimal("100.00")},
        after={"amount_usd": Decimal("150.00")},
        request_id=f"req_{n}",
        source_ip="10.0.0.1",
    )
    return dataclasses.replace(base, **changes)


def chain(n: int, start: ChainState | None = None) -> list[AuditEntry]:
    state = start or ChainState()
    out: list[AuditEntry] = []
    prev_hash, seq = state.hash, state.seq
    for i in range(n):
        entry = seal(seq + 1, f"aud_{seq + 1}", event(i), prev_hash)
        out.append(entry)
        prev_hash, seq = entry.hash, entry.seq
    return out


def edit(entry: AuditEntry, **changes: Any) -> AuditEntry:
    return dataclasses.replace(entry, event=dataclasses.replace(entry.event, **changes))


# -- canonical form ------------------------------------------------------------------------
def test_canonical_form_is_compact_sorted_and_exact() -> None:
    """Keys sorted, no spaces, Decimals as their exact strings, time in UTC with µs."""
    body = canonical(7, "aud_7", event(0).normalised(), 2, "org_1", ["team_b", "team_a"])
    assert json.loads(body) == {
        "v": 2,
        "org_id": "org_1",
        "team_ids": ["team_a", "team_b"],
        "seq": 7,
        "id": "aud_7",
        "at": "2026-03-01T09:30:00.000000+00:00",
        "actor_type": "admin",
        "actor_id": "master",
        "action": "budget.updated",
        "target_type": "budget",
        "target_id": "bud_0",
        "before": {"amount_usd": "100.00"},
        "after": {"amount_usd": "150.00"},
        "request_id": "req_0",
        "source_ip": "10.0.0.1",
    }
    assert b" " not in body
    keys = list(json.loads(body))
    assert keys == sorted(keys)


def test_the_same_instant_in_another_zone_hashes_the_same() -> None:
    """``at`` is normalised to UTC before hashing."""
    paris = T0.astimezone(timezone(timedelta(hours=1)))
    assert seal(1, "a", event(0), GENESIS).hash == seal(1, "a", event(0, at=paris), GENESIS).hash


def test_dict_key_order_does_not_change_the_hash() -> None:
    one = event(0, after={"a": 1, "b": [1, 2]})
    two = event(0, after={"b": [1, 2], "a": 1})
    assert seal(1, "a", one, GENESIS).hash == seal(1, "a", two, GENESIS).hash


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Decimal("1.50"), "1.50"),
        (0.1, "0.1"),
        (2**70, str(2**70)),
        ((1, "x"), [1, "x"]),
        ({3, 1, 2}, [1, 2, 3]),
        (
            datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-01T10:00:00.000000+00:00",
        ),
        ({"nested": {"d": Decimal("0.000001")}}, {"nested": {"d": "0.000001"}}),
    ],
)
def test_normalise(value: Any, expected: Any) -> None:
    assert normalise(value) == expected


def test_normalise_refuses_naive_datetimes_and_unknown_types() -> None:
    with pytest.raises(ValueError, match="naive"):
        normalise(datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="object"):
        normalise(object())


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text()
    | st.decimals(allow_nan=False)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_normalised_values_survive_a_json_round_trip(value: Any) -> None:
    """What is stored (JSON) reads back as exactly what was hashed."""
    stored = normalise(value)
    assert normalise(json.loads(json.dumps(stored))) == stored


# -- the chain -------------------------------------------------------------------------------
def test_an_intact_chain_verifies() -> None:
    entries = chain(5)
    result = verify_chain(entries, head=(5, entries[-1].hash))
    assert result.ok and result.checked == 5 and result.last_seq == 5
    assert entries[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))


def test_an_edited_entry_is_named() -> None:
    """Changing an amount behind the log's back breaks that entry's own hash."""
    entries = chain(5)
    entries[2] = edit(entries[2], after={"amount_usd": "1500.00"})
    result = verify_chain(entries)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.entry_id == "aud_3"
    assert "content" in result.first_bad.reason
    assert result.checked == 2


def test_a_deleted_entry_is_named_by_the_one_after_the_gap() -> None:
    entries = chain(5)
    del entries[1]
    result = verify_chain(entries)
    assert result.first_bad is not None
    assert (result.first_bad.entry_id, result.first_bad.seq) == ("aud_3", 3)
    assert "sequence gap" in result.first_bad.reason


def test_reordered_entries_are_detected() -> None:
    entries = chain(4)
    entries[1], entries[2] = entries[2], entries[1]
    result = verify_chain(entries)
    assert result.first_bad is not None and result.first_bad.entry_id == "aud_3"


def test_renumbered_entries_are_detected() -> None:
    """Swapping two entries' seq numbers (to hide a reorder) breaks the links."""
    entries = chain(4)
    a, b = entries[1], entries[2]
    entries[1] = dataclasses.replace(b, seq=2)
    entries[2] = dataclasses.replace(a, seq=3)
    result = verify_chain(entries)
    assert result.first_bad is not None and result.first_bad.entry_id == "aud_3"
    assert "prev_hash" in result.first_bad.reason


def test_a_rehashed_edit_still_breaks_the_next_link() -> None:
    """Recomputing the edited entry's own hash moves the break to its successor."""
    entries = chain(4)
    forged = seal(2, "aud_2", edit(entries[1], actor_id="someone-else").event, entries[1].prev_hash)
    entries[1] = forged
    result = verify_chain(entries)
    assert result.first_bad is not None and result.first_bad.entry_id == "aud_3"


def test_a_deleted_tail_is_caught_by_the_chain_head() -> None:
    entries = chain(5)
    result = verify_chain(entries[:3], head=(5, entries[-1].hash))
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.entry_id is None and result.first_bad.seq == 4
    assert "missing at the end" in result.first_bad.reason


@pytest.mark.parametrize(
    ("head", "seq", "says"),
    [
        ((5, "tail"), 4, "chain head is at seq 5 but the last entry is seq 3: entries 4..5"),
        ((1, "first"), 2, "chain head is at seq 1, behind the last entry (seq 3): the head row"),
        ((3, "other"), 3, "chain head names seq 3 with hash 0000000000000000… but that entry"),
    ],
)
def test_a_head_that_does_not_name_the_last_entry_says_how(
    head: tuple[int, str], seq: int, says: str
) -> None:
    """The head row past the entries (tail deleted), behind them (the head rolled back),
    or on the last seq with another hash: each verdict says which, never "the head is at
    seq 1 but the last entry is seq 1"."""
    entries = chain(5)
    digests = {"tail": entries[4].hash, "first": entries[0].hash, "other": "0" * 64}
    result = verify_chain(entries[:3], head=(head[0], digests[head[1]]))
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.entry_id is None and result.first_bad.seq == seq
    assert result.first_bad.reason.startswith(says), result.first_bad.reason


def test_verification_resumes_from_a_checkpoint_state() -> None:
    first = chain(3)
    rest = chain(2, ChainState(3, first[-1].hash))
    assert verify_chain(rest, ChainState(3, first[-1].hash)).ok
    assert verify_chain(rest).first_bad is not None  # not from genesis


# -- checkpoints and settings -------------------------------------------------------------------
def checkpoint() -> Checkpoint:
    return Checkpoint("acp_1", 1000, "ab" * 32, T0, 1000, T0 + timedelta(days=400))


def test_a_signed_checkpoint_verifies_only_with_its_key_and_content() -> None:
    signed = sign_checkpoint(checkpoint(), KEY)
    assert checkpoint_valid(signed, KEY)
    assert not checkpoint_valid(signed, b"other-key")
    assert not checkpoint_valid(dataclasses.replace(signed, seq=2000), KEY)
    assert not checkpoint_valid(dataclasses.replace(signed, hash="cd" * 32), KEY)
    assert not checkpoint_valid(checkpoint(), KEY)  # unsigned


def test_audit_settings_from_the_environment() -> None:
    explicit = load_audit_settings({"SPENDGATE_AUDIT_KEY": "k1"}, "master")
    assert explicit.key == b"k1" and explicit.retention_days == 365
    derived = load_audit_settings({"SPENDGATE_AUDIT_RETENTION_DAYS": "730"}, "master")
    assert derived.key == derive_key("master") != derive_key("other")
    assert derived.retention_days == 730


@pytest.mark.parametrize(
    "env",
    [
        {"SPENDGATE_AUDIT_RETENTION_DAYS": "30"},
        {"SPENDGATE_AUDIT_MIN_RETENTION_DAYS": "90"},
        {"SPENDGATE_AUDIT_MIN_RETENTION_DAYS": "500", "SPENDGATE_AUDIT_RETENTION_DAYS": "400"},
        {"SPENDGATE_AUDIT_RETENTION_DAYS": "a year"},
    ],
)
def test_retention_below_the_minimum_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="RETENTION"):
        load_audit_settings(env, "master")


def test_no_key_at_all_is_refused() -> None:
    with pytest.raises(ConfigError, match="AUDIT_KEY"):
        load_audit_settings({}, None)


def test_the_core_imports_no_io_library() -> None:
    code = (
        "import sys, spendgate.core.audit_chain; "
        "print(sorted(m for m in sys.modules if m.split('.')[0]"
        " in {'sqlalchemy', 'httpx', 'fastapi', 'asyncpg', 'aiosqlite', 'starlette'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_enforcement_facts_become_system_entries() -> None:
    """A hard limit's first refusal is audited by the system; unknown types are not."""
    data = {"budget_id": "bud_1", "spent_usd": "100.00", "refused": True}
    made = enforcement_event("budget.hard_limit_reached", data, T0)
    assert made is not None
    assert (made.actor_type, made.actor_id, made.target_type, made.target_id) == (
        "system",
        "enforcer",
        "budget",
        "bud_1",
    )
    assert made.after == data
    assert enforcement_event("price.unknown", {"model": "x"}, T0) is None


@pytest.mark.parametrize(
    ("refuser", "field"),
    [("budget", "budget_id"), ("wallet", "wallet_id"), ("rate_limit", "limit_id")],
)
def test_a_refusal_for_an_unknown_price_is_audited_against_what_refused(
    refuser: str, field: str
) -> None:
    """``price.unknown`` marked refused names the budget, wallet or rate limit that
    refused the call: the entry's target; the key and model stay in ``after``."""
    data = {"model": "m", "key_id": "key_1", "refused": True, field: "x_1"}
    made = enforcement_event("price.unknown", data, T0)
    assert made is not None
    assert (made.action, made.target_type, made.target_id) == ("price.unknown", refuser, "x_1")
    assert made.after == data
    assert enforcement_event("price.unknown", {**data, "refused": False}, T0) is None


# -- version 2: scope in the hash, MACs under the audit key, anchors ----------------------------
SEALING = entry_key(KEY)


def sealed(n: int, *, org: str = "org_a", key: bytes | None = SEALING) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    prev = GENESIS
    for i in range(n):
        entry = seal(
            i + 1, f"aud_{i + 1}", event(i), prev, org_id=org, team_ids=["t1"], sealing_key=key
        )
        out.append(entry)
        prev = entry.hash
    return out


def rehashed(entries: list[AuditEntry], start: int) -> list[AuditEntry]:
    """What an attacker without the key does after an edit: recompute every hash from
    ``start`` on with plain SHA-256 (the MACs stay as they were)."""
    out = entries[:start]
    prev = out[-1].hash if out else GENESIS
    for entry in entries[start:]:
        entry = dataclasses.replace(entry, prev_hash=prev)
        entry = dataclasses.replace(entry, hash=chain_hash(prev, entry.canonical()))
        out.append(entry)
        prev = entry.hash
    return out


def test_version_1_entries_hash_exactly_as_before() -> None:
    """An entry sealed in version 1 hashes to the value the code before version 2 gave
    (pinned from that code), so old entries keep verifying."""
    old = seal(1, "aud_1", event(0), GENESIS, version=1)
    assert old.hash == "2ce888d1a58204f49ca55a0b10935ea597fcce5fed510d63976af521b1139595"
    assert old.mac is None
    assert verify_chain([old], sealing_key=SEALING).ok  # no MAC asked of version 1


def test_an_edit_with_every_later_hash_recomputed_is_caught_by_the_mac() -> None:
    """Issue 24 (c): hashes alone (anybody can recompute them) pass; the MAC names the
    edited entry."""
    entries = sealed(12)
    forged = rehashed(
        [*entries[:8], edit(entries[8], after={"amount_usd": "1.00"}), *entries[9:]], 8
    )
    assert verify_chain(forged).ok  # the plain hash chain is whole again
    result = verify_chain(forged, sealing_key=SEALING)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.entry_id == "aud_9" and "MAC" in result.first_bad.reason


def test_an_entry_moved_to_another_org_is_caught() -> None:
    """Issue 24 (a): the scope is in the hash, and in the MAC with it."""
    entries = sealed(5)
    moved = [*entries[:2], dataclasses.replace(entries[2], org_id="org_b"), *entries[3:]]
    first = verify_chain(moved, sealing_key=SEALING).first_bad
    assert first is not None and first.entry_id == "aud_3" and "content" in first.reason
    retargeted = [dataclasses.replace(entries[2], team_ids=("t2",))]
    result = verify_chain(rehashed(entries[:2] + retargeted + entries[3:], 2), sealing_key=SEALING)
    assert result.first_bad is not None and result.first_bad.entry_id == "aud_3"


def test_entries_without_a_mac_or_older_than_their_predecessor_are_caught() -> None:
    """An entry sealed without the key fails a keyed check; an entry passed off as
    version 1 after a version-2 one is refused."""
    unsigned = sealed(3, key=None)
    bad = verify_chain(unsigned, sealing_key=SEALING).first_bad
    assert bad is not None and bad.entry_id == "aud_1" and "no MAC" in bad.reason
    entries = sealed(4)
    downgraded = rehashed(
        [*entries[:2], dataclasses.replace(entries[2], version=1), *entries[3:]], 2
    )
    bad = verify_chain(downgraded, sealing_key=SEALING).first_bad
    assert bad is not None and bad.entry_id == "aud_3" and "version 1" in bad.reason


def test_the_head_row_mac_catches_a_head_moved_back() -> None:
    """Issue 24 (b), the plain attempt: the tail deleted and the head row set to the last
    remaining entry — the head's MAC no longer matches."""
    entries = sealed(6)
    now = T0 + timedelta(days=1)
    honest = ChainWalk(ChainState(), sealing_key=SEALING)
    honest.feed(entries)
    assert honest.result((6, entries[-1].hash), head_mac(KEY, 6, entries[-1].hash), KEY, now).ok
    walk = ChainWalk(ChainState(), sealing_key=SEALING)
    walk.feed(entries[:4])
    moved_back = (4, entries[3].hash)
    result = walk.result(moved_back, head_mac(KEY, 6, entries[-1].hash), KEY, now)
    assert not result.ok and result.first_bad is not None
    assert "head MAC" in result.first_bad.reason


def test_a_kept_anchor_catches_truncation_behind_a_restored_head() -> None:
    """Issue 24 (b), the careful attempt: the head row restored from an old copy (MAC and
    all) leaves nothing in the database to see; the anchor kept outside does."""
    entries = sealed(8)
    now = T0 + timedelta(days=1)
    kept = sign_anchor(Anchor(8, entries[-1].hash, now), KEY)
    assert anchor_valid(kept, KEY) and not anchor_valid(dataclasses.replace(kept, seq=5), KEY)
    walk = ChainWalk(ChainState(), sealing_key=SEALING, anchor=kept)
    walk.feed(entries[:5])
    old_head = (5, entries[4].hash)
    result = walk.result(old_head, head_mac(KEY, *old_head), KEY, now)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.seq == 8 and "deleted at the end" in result.first_bad.reason
    assert result.anchor_checked is True
    intact = ChainWalk(ChainState(), sealing_key=SEALING, anchor=kept)
    intact.feed(entries)
    fine = intact.result((8, entries[-1].hash), head_mac(KEY, 8, entries[-1].hash), KEY, now)
    assert fine.ok and fine.anchor_checked is True and fine.anchor is not None
    assert fine.anchor.seq == 8 and anchor_valid(fine.anchor, KEY)


def test_an_anchor_whose_entry_changed_is_named() -> None:
    entries = sealed(4)
    other = sign_anchor(Anchor(3, "ab" * 32), KEY)
    result = verify_chain(entries, sealing_key=SEALING, anchor=other)
    assert result.first_bad is not None and result.first_bad.entry_id == "aud_3"
    assert "anchor" in result.first_bad.reason


def test_an_org_walk_reports_that_orgs_figures_only() -> None:
    """Issue 24, item 3: an org's verify counts its own entries and hides where another
    org's entry broke."""
    mine, theirs = sealed(3, org="org_a"), []
    prev, seq = mine[-1].hash, 3
    for i in range(4):
        seq += 1
        entry = seal(seq, f"aud_{seq}", event(i), prev, org_id="org_b", sealing_key=SEALING)
        theirs.append(entry)
        prev = entry.hash
    now = T0 + timedelta(days=1)
    walk = ChainWalk(ChainState(), sealing_key=SEALING, org_id="org_a")
    walk.feed(mine + theirs)
    result = walk.result((7, prev), head_mac(KEY, 7, prev), KEY, now)
    assert result.ok and (result.checked, result.last_seq) == (3, 3)
    assert result.anchor is not None and result.anchor.seq == 3
    broken = [*theirs[:1], edit(theirs[1], actor_id="x"), *theirs[2:]]
    walk = ChainWalk(ChainState(), sealing_key=SEALING, org_id="org_a")
    walk.feed(mine + broken)
    result = walk.result((7, prev), head_mac(KEY, 7, prev), KEY, now)
    assert not result.ok and result.first_bad is not None
    assert result.first_bad.entry_id is None and "outside this org" in result.first_bad.reason


def test_any_text_in_a_tampered_digest_is_a_break_not_an_error() -> None:
    """Rows are attacker-controlled: non-ASCII in a hash or MAC is reported, not raised."""
    entries = sealed(3)
    for field in ("hash", "mac"):
        forged = [entries[0], dataclasses.replace(entries[1], **{field: "é" * 64}), entries[2]]
        bad = verify_chain(forged, sealing_key=SEALING).first_bad
        assert bad is not None and bad.entry_id == "aud_2"
    assert not anchor_valid(
        dataclasses.replace(sign_anchor(Anchor(1, "a" * 64), KEY), signature="é"), KEY
    )
