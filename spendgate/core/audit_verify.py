"""Verifying the audit chain, with no I/O: one entry at a time, in seq order.

The rules an entry must keep are in ``spendgate.core.audit_chain``'s header. A
:class:`ChainWalk` is fed pages of entries (the store reads them; nothing here does I/O),
names the first that breaks a rule, and at the end compares what it saw with the chain
head row and, when one is given, with an :class:`~spendgate.core.audit_chain.Anchor`
kept outside the database.

A walk may report for one org only (``org_id``): it still checks every entry — the
chain is one — but its figures (``checked``, ``last_seq``, ``last_hash``, the anchor it
hands out) are that org's entries', and a break in another org's entry is reported
without naming it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from spendgate.core.audit_chain import (
    GENESIS,
    Anchor,
    AuditEntry,
    chain_hash,
    entry_mac,
    head_mac,
    same_digest,
    sign_anchor,
)


@dataclass(frozen=True, slots=True)
class ChainState:
    """Where a walk of the chain stands: the last good entry's seq and hash, and the
    highest entry version seen (no later entry may be older)."""

    seq: int = 0
    hash: str = GENESIS
    checked: int = 0
    version: int = 1


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first entry that does not hold; ``entry_id`` is None for a missing tail, a
    bad head or checkpoint, or a failed anchor (then ``seq`` says where)."""

    entry_id: str | None
    #: None when the break is not the reader's to see (an org-scoped walk)
    seq: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    last_seq: int
    last_hash: str
    checkpoint_seq: int | None = None
    first_bad: ChainBreak | None = None
    #: the position to keep outside the database (signed), or None if nothing to anchor
    anchor: Anchor | None = None
    #: whether a given anchor was checked (False: it predates the newest purge); None:
    #: no anchor given
    anchor_checked: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        bad = self.first_bad
        return {
            "ok": self.ok,
            "checked": self.checked,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "checkpoint_seq": self.checkpoint_seq,
            "first_bad_id": bad.entry_id if bad else None,
            "first_bad_seq": bad.seq if bad else None,
            "reason": bad.reason if bad else None,
            "anchor": None if self.anchor is None else self.anchor.as_dict(),
            "anchor_checked": self.anchor_checked,
        }


def check_link(
    state: ChainState, entry: AuditEntry, sealing_key: bytes | None = None
) -> ChainState | ChainBreak:
    """One step of the walk: the next state, or why ``entry`` breaks the chain.

    ``sealing_key`` (``audit_chain.entry_key`` of the audit key) checks MACs; without
    it only the hashes are checked (anybody can recompute those)."""

    def broken(reason: str) -> ChainBreak:
        return ChainBreak(entry.id, entry.seq, reason)

    if entry.seq != state.seq + 1:
        what = "missing" if entry.seq > state.seq + 1 else "out of order"
        return broken(
            f"sequence gap: expected seq {state.seq + 1}, found {entry.seq} (entries {what})"
        )
    if entry.prev_hash != state.hash:
        return broken("prev_hash does not match the hash of the entry before it")
    if entry.version < state.version:
        return broken(f"entry version {entry.version} after a version {state.version} entry")
    try:
        body = entry.canonical()
    except ValueError as exc:
        return broken(str(exc))
    if not same_digest(chain_hash(entry.prev_hash, body), entry.hash):
        return broken("hash does not match the entry's content")
    if sealing_key is not None and entry.version >= 2:
        if entry.mac is None:
            return broken("entry carries no MAC (written without the audit key)")
        if not same_digest(entry_mac(sealing_key, entry.hash), entry.mac):
            return broken("MAC does not match: the entry was rewritten without the audit key")
    return ChainState(entry.seq, entry.hash, state.checked + 1, entry.version)


class ChainWalk:
    """A verification in progress: feed it entries in seq order, then ask for the result."""

    def __init__(
        self,
        start: ChainState,
        *,
        sealing_key: bytes | None,
        checkpoint_seq: int | None = None,
        anchor: Anchor | None = None,
        org_id: str | None = None,
    ) -> None:
        self.state, self.broken = start, cast(ChainBreak | None, None)
        self._key, self._checkpoint_seq = sealing_key, checkpoint_seq
        self._anchor, self._org, self._start = anchor, org_id, start
        #: an anchor at the checkpoint the walk starts from is checked against it
        self._anchor_seen = (
            anchor is not None and anchor.seq == start.seq and anchor.hash == start.hash
        )
        self._org_checked, self._org_last = 0, (0, GENESIS)
        self._broken_entry: AuditEntry | None = None
        self._anchor_failed = False

    def feed(self, entries: Iterable[AuditEntry]) -> bool:
        """Check entries; False once the chain is broken (stop feeding)."""
        if self.broken is not None:
            return False
        for entry in entries:
            step = check_link(self.state, entry, self._key)
            if isinstance(step, ChainBreak):
                self.broken, self._broken_entry = step, entry
                return False
            anchor = self._anchor
            if anchor is not None and entry.seq == anchor.seq:
                if not same_digest(entry.hash, anchor.hash):
                    self.broken = ChainBreak(
                        entry.id, entry.seq, "entry differs from the kept anchor (other hash)"
                    )
                    self._broken_entry, self._anchor_failed = entry, True
                    return False
                self._anchor_seen = True
            if self._org is not None and entry.org_id == self._org:
                self._org_checked += 1
                self._org_last = (entry.seq, entry.hash)
            self.state = step
        return True

    def result(
        self,
        head: tuple[int, str] | None,
        head_seal: str | None,
        key: bytes | None,
        now: datetime,
    ) -> VerifyResult:
        """The verdict, comparing the walk with the head row (its seq, hash and MAC,
        checked with the audit ``key``) and with the kept anchor."""
        broken = self.broken or self._head_problem(head, head_seal, key) or self._anchor_problem()
        state = self.state
        anchor_checked = None
        if self._anchor is not None:
            anchor_checked = self._anchor_seen or self._anchor_failed
        if self._org is None:
            figures = (state.checked, state.seq, state.hash, self._checkpoint_seq)
        else:
            figures = (self._org_checked, *self._org_last, None)
            broken = self._for_org(broken)
        checked, last_seq, last_hash, checkpoint_seq = figures
        anchor = None
        if key is not None and last_seq > 0:
            anchor = sign_anchor(Anchor(last_seq, last_hash, now), key)
        return VerifyResult(
            broken is None,
            checked,
            last_seq,
            last_hash,
            checkpoint_seq,
            broken,
            anchor,
            anchor_checked,
        )

    def _head_problem(
        self, head: tuple[int, str] | None, head_seal: str | None, key: bytes | None
    ) -> ChainBreak | None:
        state = self.state
        if head is None:
            return None
        if head != (state.seq, state.hash):
            return head_mismatch(head, state)
        if key is None or (head_seal is None and state.version < 2):
            return None  # no key to check with, or a chain of version-1 entries only
        if head_seal is None or not same_digest(head_mac(key, *head), head_seal):
            return ChainBreak(
                None,
                state.seq,
                "chain head MAC does not match: the head row was rewritten "
                "(entries deleted at the end?)",
            )
        return None

    def _anchor_problem(self) -> ChainBreak | None:
        anchor = self._anchor
        if anchor is None or self._anchor_seen or anchor.seq < self._start.seq:
            return None  # fine, or older than the newest purge: nothing to compare with
        self._anchor_failed = True
        if anchor.seq > self.state.seq:
            return ChainBreak(
                None,
                anchor.seq,
                f"the kept anchor names seq {anchor.seq} but the chain now ends before "
                "it: entries deleted at the end",
            )
        return ChainBreak(None, anchor.seq, "the checkpoint differs from the kept anchor")

    def _for_org(self, broken: ChainBreak | None) -> ChainBreak | None:
        """A break in another org's entry, told without naming that entry."""
        entry = self._broken_entry
        if broken is None or self._anchor_failed:
            return broken
        if entry is not None and entry.org_id == self._org:
            return broken
        return ChainBreak(
            None,
            None,
            "the chain is broken outside this org's entries; the operator (master key) "
            "can see where",
        )


def head_mismatch(head: tuple[int, str], state: ChainState) -> ChainBreak:
    """What is wrong when the head row does not name the last entry walked: entries
    gone past it, a head left behind the entries, or a hash that is not the entry's."""
    seq, digest = head
    if seq > state.seq:
        return ChainBreak(
            None,
            state.seq + 1,
            f"chain head is at seq {seq} but the last entry is seq {state.seq}: "
            f"entries {state.seq + 1}..{seq} are missing at the end",
        )
    if seq < state.seq:
        return ChainBreak(
            None,
            seq + 1,
            f"chain head is at seq {seq}, behind the last entry (seq {state.seq}): the head "
            "row was rolled back, or entries were added without moving it",
        )
    return ChainBreak(
        None,
        seq,
        f"chain head names seq {seq} with hash {digest[:16]}… but that entry's hash is "
        f"{state.hash[:16]}…: the head row or the last entry was rewritten",
    )


def verify_chain(
    entries: Iterable[AuditEntry],
    start: ChainState | None = None,
    head: tuple[int, str] | None = None,
    *,
    sealing_key: bytes | None = None,
    anchor: Anchor | None = None,
) -> VerifyResult:
    """Walk ``entries`` from ``start`` (genesis by default); the first bad entry, if any.
    Without ``sealing_key`` MACs are not checked (hashes only)."""
    begin = start or ChainState()
    walk = ChainWalk(
        begin, sealing_key=sealing_key, checkpoint_seq=begin.seq or None, anchor=anchor
    )
    walk.feed(entries)
    return walk.result(head, None, None, datetime.min)
