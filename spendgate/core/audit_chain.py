"""The audit log's rules, with no I/O: canonical form, hash chain, signed checkpoints.

An entry is sealed by hashing its canonical form together with the hash of the entry
before it::

    hash(n) = sha256( hash(n-1) || "\\n" || canonical(entry n) )       hash(0) = GENESIS

``canonical`` is compact JSON with sorted keys over every field but the two hashes;
``at`` is ISO 8601 UTC with microseconds, ``Decimal`` and ``float`` become decimal
strings, sets sorted lists. ``normalise`` is applied *before* an entry is stored, so
the stored JSON is exactly what was hashed and reading it back gives the same bytes.

Verifying walks entries in sequence order from a start (genesis, or a purge
checkpoint) and names the first entry that breaks one of three rules:

    rule                                   what it catches
    seq == previous seq + 1                an entry deleted, or rows reordered
    prev_hash == previous entry's hash     an entry inserted or moved
    hash == H(prev_hash, canonical form)   an entry's content edited

A purge removes a prefix of the chain and leaves a checkpoint: the last purged entry's
sequence number and hash, HMAC-signed with the audit key. Verifying starts from the
newest checkpoint after checking its signature; without the key a checkpoint cannot
be forged to hide a deletion.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

GENESIS = "0" * 64
CANONICAL_VERSION = 1
DEFAULT_RETENTION_DAYS = 365
#: nobody may configure a retention shorter than this (SPEC §7: at least 12 months)
MIN_RETENTION_DAYS = 365
_KEY_DERIVATION_LABEL = b"spendgate/audit-checkpoint/v1"
_INT64 = 2**63

JSONValue = None | bool | int | str | list["JSONValue"] | dict[str, "JSONValue"]


def normalise(value: Any) -> JSONValue:
    """A JSON value that survives a database round trip unchanged (JSON and JSONB)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, Decimal | float):
        return str(value) if isinstance(value, Decimal) else repr(value)
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return normalise(value.value)
    if isinstance(value, Mapping):
        return {str(k): normalise(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((normalise(v) for v in value), key=lambda v: orjson.dumps(v))
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    raise TypeError(f"cannot put a {type(value).__name__} in the audit log")


def iso_utc(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the audit log")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, before it takes its place in the chain."""

    at: datetime
    actor_type: str  # admin | token | key | user | system
    actor_id: str
    action: str  # e.g. budget.updated, key.revoked, budget.hard_limit_reached
    target_type: str
    target_id: str | None
    #: anything ``normalise`` accepts; stored and hashed in normalised form
    before: Any = None
    after: Any = None
    request_id: str | None = None
    source_ip: str | None = None

    def normalised(self) -> AuditEvent:
        if self.at.tzinfo is None:
            raise ValueError("naive datetime given to the audit log")
        return AuditEvent(
            self.at.astimezone(UTC),
            self.actor_type,
            self.actor_id,
            self.action,
            self.target_type,
            self.target_id,
            normalise(self.before),
            normalise(self.after),
            self.request_id,
            self.source_ip,
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """A sealed entry: an event with its place (``seq``) and hashes."""

    seq: int
    id: str
    event: AuditEvent
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready (the export and API form)."""
        e = self.event
        return {
            "seq": self.seq,
            "id": self.id,
            "at": iso_utc(e.at),
            "actor_type": e.actor_type,
            "actor_id": e.actor_id,
            "action": e.action,
            "target_type": e.target_type,
            "target_id": e.target_id,
            "before": e.before,
            "after": e.after,
            "request_id": e.request_id,
            "source_ip": e.source_ip,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical(seq: int, entry_id: str, event: AuditEvent) -> bytes:
    """The bytes that are hashed: every field but the hashes, compact, keys sorted."""
    body = {
        "v": CANONICAL_VERSION,
        "seq": seq,
        "id": entry_id,
        "at": iso_utc(event.at),
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "before": event.before,
        "after": event.after,
        "request_id": event.request_id,
        "source_ip": event.source_ip,
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + body).hexdigest()


def seal(seq: int, entry_id: str, event: AuditEvent, prev_hash: str) -> AuditEntry:
    """Give a (normalised) event its place after the entry whose hash is ``prev_hash``."""
    event = event.normalised()
    return AuditEntry(
        seq, entry_id, event, prev_hash, chain_hash(prev_hash, canonical(seq, entry_id, event))
    )


#: enforcement facts (stored events) that also belong in the audit log: type -> target
ENFORCEMENT_TARGETS: dict[str, tuple[str, str]] = {
    "budget.threshold_crossed": ("budget", "budget_id"),
    "budget.soft_limit_reached": ("budget", "budget_id"),
    "budget.hard_limit_reached": ("budget", "budget_id"),
    "budget.exception_expired": ("budget_exception", "exception_id"),
    "wallet.low_balance": ("wallet", "wallet_id"),
    "wallet.depleted": ("wallet", "wallet_id"),
}


def enforcement_event(type_: str, data: Mapping[str, Any], at: datetime) -> AuditEvent | None:
    """The audit event for an enforcement fact (``None`` for types not audited), by the
    system actor ``enforcer``; the fact's data becomes ``after``."""
    target = ENFORCEMENT_TARGETS.get(type_)
    if target is None:
        return None
    target_id = data.get(target[1])
    request_id = data.get("request_id")
    return AuditEvent(
        at,
        "system",
        "enforcer",
        type_,
        target[0],
        None if target_id is None else str(target_id),
        None,
        dict(data),
        None if request_id is None else str(request_id),
    )


# -- verification -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChainState:
    """Where a walk of the chain stands: the last good entry's seq and hash."""

    seq: int = 0
    hash: str = GENESIS
    checked: int = 0


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first entry that does not hold; ``entry_id`` is None for a missing tail or a
    bad checkpoint (then ``seq`` says where)."""

    entry_id: str | None
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    last_seq: int
    last_hash: str
    checkpoint_seq: int | None = None
    first_bad: ChainBreak | None = None

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
        }


def check_link(state: ChainState, entry: AuditEntry) -> ChainState | ChainBreak:
    """One step of the walk: the next state, or why ``entry`` breaks the chain."""
    if entry.seq != state.seq + 1:
        what = "missing" if entry.seq > state.seq + 1 else "out of order"
        return ChainBreak(
            entry.id,
            entry.seq,
            f"sequence gap: expected seq {state.seq + 1}, found {entry.seq} (entries {what})",
        )
    if entry.prev_hash != state.hash:
        return ChainBreak(
            entry.id, entry.seq, "prev_hash does not match the hash of the entry before it"
        )
    expected = chain_hash(entry.prev_hash, canonical(entry.seq, entry.id, entry.event))
    if not hmac.compare_digest(expected, entry.hash):
        return ChainBreak(entry.id, entry.seq, "hash does not match the entry's content")
    return ChainState(entry.seq, entry.hash, state.checked + 1)


def walk(entries: Iterable[AuditEntry], state: ChainState) -> tuple[ChainState, ChainBreak | None]:
    """Check a run of entries (in seq order) continuing from ``state``: the last good
    state, and the first break if there is one."""
    for entry in entries:
        step = check_link(state, entry)
        if isinstance(step, ChainBreak):
            return state, step
        state = step
    return state, None


def finish(
    state: ChainState,
    broken: ChainBreak | None,
    head: tuple[int, str] | None,
    checkpoint_seq: int | None,
) -> VerifyResult:
    """The result of a walk, compared with the chain head (catches a deleted tail)."""
    if broken is None and head is not None and head != (state.seq, state.hash):
        broken = ChainBreak(
            None,
            state.seq + 1,
            f"chain head is at seq {head[0]} but the last entry is seq "
            f"{state.seq} (entries missing at the end)",
        )
    return VerifyResult(
        broken is None, state.checked, state.seq, state.hash, checkpoint_seq, broken
    )


def verify_chain(
    entries: Iterable[AuditEntry],
    start: ChainState | None = None,
    head: tuple[int, str] | None = None,
) -> VerifyResult:
    """Walk ``entries`` from ``start`` (genesis by default); the first bad entry, if any."""
    begin = start or ChainState()
    state, broken = walk(entries, begin)
    return finish(state, broken, head, begin.seq or None)


# -- checkpoints and the audit key ----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where the chain resumes after a purge: the last purged entry's seq and hash."""

    id: str
    seq: int
    hash: str
    purged_before: datetime
    purged_count: int
    created_at: datetime
    signature: str = field(default="", compare=False)

    def message(self) -> bytes:
        return orjson.dumps(
            {
                "v": CANONICAL_VERSION,
                "id": self.id,
                "seq": self.seq,
                "hash": self.hash,
                "purged_before": iso_utc(self.purged_before),
                "purged_count": self.purged_count,
                "created_at": iso_utc(self.created_at),
            },
            option=orjson.OPT_SORT_KEYS,
        )


def sign_checkpoint(checkpoint: Checkpoint, key: bytes) -> Checkpoint:
    signature = hmac.new(key, checkpoint.message(), hashlib.sha256).hexdigest()
    return Checkpoint(
        checkpoint.id,
        checkpoint.seq,
        checkpoint.hash,
        checkpoint.purged_before,
        checkpoint.purged_count,
        checkpoint.created_at,
        signature,
    )


def checkpoint_valid(checkpoint: Checkpoint, key: bytes) -> bool:
    expected = hmac.new(key, checkpoint.message(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, checkpoint.signature)


def derive_key(master_key: str) -> bytes:
    """The checkpoint key when no ``SPENDGATE_AUDIT_KEY`` is set: HMAC(master key, label)."""
    return hmac.new(master_key.encode(), _KEY_DERIVATION_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class AuditSettings:
    key: bytes = field(repr=False)
    retention_days: int = DEFAULT_RETENTION_DAYS
    min_retention_days: int = MIN_RETENTION_DAYS
