"""The audit log's rules, with no I/O: canonical form, hash chain, MACs, anchors.

An entry is sealed by hashing its canonical form together with the hash of the entry
before it, and (from version 2) by a MAC of that hash under the audit key::

    hash(n) = sha256( hash(n-1) || "\\n" || canonical(entry n) )       hash(0) = GENESIS
    mac(n)  = HMAC-SHA256( K_entry, hash(n) )        K_entry = HMAC(audit key, label)

``canonical`` is compact JSON with sorted keys over every field but the hashes and the
MAC — from version 2 including who may read the entry (``org_id``, ``team_ids``), so an
entry cannot be moved into another org's or team's view; ``at`` is ISO 8601 UTC with
microseconds, ``Decimal`` and ``float`` become decimal strings, sets sorted lists.
``normalise`` is applied *before* an entry is stored, so the stored JSON is exactly
what was hashed and reading it back gives the same bytes.

The audit key lives outside the database (``SPENDGATE_AUDIT_KEY``), so somebody who
can rewrite the tables — a database superuser — can recompute SHA-256 hashes but not
MACs. Entries written before version 2 (``v`` = 1) keep verifying by their old form;
once a version-2 entry is in the chain, no later entry may be older.

Verifying walks entries in sequence order from a start (genesis, or a purge
checkpoint) and names the first entry that breaks one of these rules:

    rule                                   what it catches
    seq == previous seq + 1                an entry deleted, or rows reordered
    prev_hash == previous entry's hash     an entry inserted or moved
    hash == H(prev_hash, canonical form)   an entry's content (or scope) edited
    mac == HMAC(K_entry, hash)  (v >= 2)   an edit with every later hash recomputed
    v >= the previous entry's v            an entry passed off as an old one

**Truncation.** Deleting the newest entries and moving the chain head back leaves a
chain that is whole as far as the database can tell. The head row carries a MAC too
(:func:`head_mac`), which catches the plain attempt; an attacker who saved an old head
row can still restore it. What catches that is an **anchor** kept outside the database:
a signed ``(seq, hash)`` of the head (:class:`Anchor`), given out by every verify and
export. Verifying against a kept anchor checks that the entry it names is still there
with the same hash; an operator who keeps the latest anchor (the CLI writes it next to
each export) detects any truncation below it.

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
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

import orjson

from spendgate.core.showback import months_before

GENESIS = "0" * 64
#: the version new entries are sealed with (1: no scope, no MAC; 2: scope and MAC)
CANONICAL_VERSION = 2
VERSIONS = (1, 2)
DEFAULT_RETENTION_DAYS = 365
DEFAULT_ANCHOR_HOURS = 24
#: nobody may configure a retention shorter than this (SPEC §7: at least 12 months)
MIN_RETENTION_DAYS = 365
#: and whatever the days say, no entry younger than this many calendar months is purged
#: (twelve months hold 366 days when they hold a 29 February)
MIN_RETENTION_MONTHS = 12
_KEY_DERIVATION_LABEL = b"spendgate/audit-checkpoint/v1"
_ENTRY_LABEL = b"spendgate/audit-entry/v2"
_HEAD_LABEL = b"spendgate/audit-head/v2"
_ANCHOR_LABEL = b"spendgate/audit-anchor/v2"
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
    """A sealed entry: an event with its place (``seq``), who may read it, its hashes and
    (version 2) its MAC."""

    seq: int
    id: str
    event: AuditEvent
    prev_hash: str
    hash: str
    version: int = CANONICAL_VERSION
    org_id: str | None = None
    team_ids: tuple[str, ...] = ()
    mac: str | None = None

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
            "v": self.version,
            "org_id": self.org_id,
            "team_ids": list(self.team_ids),
            "mac": self.mac,
        }

    def canonical(self) -> bytes:
        return canonical(self.seq, self.id, self.event, self.version, self.org_id, self.team_ids)


def canonical(
    seq: int,
    entry_id: str,
    event: AuditEvent,
    version: int = CANONICAL_VERSION,
    org_id: str | None = None,
    team_ids: Iterable[str] = (),
) -> bytes:
    """The bytes that are hashed: every field but the hashes and the MAC, compact, keys
    sorted; from version 2 with the scope (``org_id``, sorted ``team_ids``)."""
    if version not in VERSIONS:
        raise ValueError(f"unknown audit entry version {version}")
    body: dict[str, Any] = {
        "v": version,
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
    if version >= 2:
        body["org_id"] = org_id
        body["team_ids"] = sorted(set(team_ids))
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, body: bytes) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + body).hexdigest()


def same_digest(a: str, b: str) -> bool:
    """Constant-time equality of two hex digests, one of which may come from a tampered
    row (any text: never an error)."""
    return hmac.compare_digest(a.encode("utf-8", "replace"), b.encode("utf-8", "replace"))


def _subkey(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def entry_key(key: bytes) -> bytes:
    """The key entry MACs are made with, derived from the audit key (so a MAC of an
    entry can never stand for a checkpoint, head or anchor signature)."""
    return _subkey(key, _ENTRY_LABEL)


def entry_mac(sealing_key: bytes, entry_hash: str) -> str:
    """``sealing_key`` is :func:`entry_key` of the audit key."""
    return hmac.new(sealing_key, entry_hash.encode("ascii"), hashlib.sha256).hexdigest()


def seal(
    seq: int,
    entry_id: str,
    event: AuditEvent,
    prev_hash: str,
    *,
    org_id: str | None = None,
    team_ids: Iterable[str] = (),
    sealing_key: bytes | None = None,
    version: int = CANONICAL_VERSION,
) -> AuditEntry:
    """Give a (normalised) event its place after the entry whose hash is ``prev_hash``,
    readable by ``org_id``/``team_ids``; MAC'd with ``sealing_key`` (:func:`entry_key`)
    when given — an entry sealed without it fails a keyed verification."""
    event = event.normalised()
    teams = tuple(sorted(set(team_ids)))
    body = canonical(seq, entry_id, event, version, org_id, teams)
    digest = chain_hash(prev_hash, body)
    mac = entry_mac(sealing_key, digest) if sealing_key is not None and version >= 2 else None
    return AuditEntry(seq, entry_id, event, prev_hash, digest, version, org_id, teams, mac)


#: enforcement facts (stored events) that also belong in the audit log: type -> target
ENFORCEMENT_TARGETS: dict[str, tuple[str, str]] = {
    "budget.threshold_crossed": ("budget", "budget_id"),
    "budget.soft_limit_reached": ("budget", "budget_id"),
    "budget.hard_limit_reached": ("budget", "budget_id"),
    "budget.calls_refused": ("budget", "budget_id"),
    "budget.exception_expired": ("budget_exception", "exception_id"),
    "wallet.low_balance": ("wallet", "wallet_id"),
    "wallet.depleted": ("wallet", "wallet_id"),
}


#: what refused a call whose model's price is unknown (``price.unknown`` marked refused,
#: once per org, model and day): a hard cap, a wallet or a rate limit's spend limit
UNPRICED_REFUSERS = (("budget", "budget_id"), ("wallet", "wallet_id"), ("rate_limit", "limit_id"))


def enforcement_event(type_: str, data: Mapping[str, Any], at: datetime) -> AuditEvent | None:
    """The audit event for an enforcement fact (``None`` for types not audited), by the
    system actor ``enforcer``; the fact's data (for a refusal, the key and model)
    becomes ``after``. A ``price.unknown`` is audited only when a limit refused the call."""
    target = ENFORCEMENT_TARGETS.get(type_)
    if type_ == "price.unknown" and data.get("refused") is True:
        target = next((t for t in UNPRICED_REFUSERS if data.get(t[1]) is not None), None)
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
                "v": 1,  # the checkpoint message has not changed since version 1
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
    return same_digest(expected, checkpoint.signature)


def head_mac(key: bytes, seq: int, entry_hash: str) -> str:
    """The MAC the chain-head row carries: of its seq and hash, under the audit key."""
    message = f"{seq}:{entry_hash}".encode("ascii")
    return hmac.new(_subkey(key, _HEAD_LABEL), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Anchor:
    """A chain position kept outside the database: entry ``seq`` had hash ``hash`` when
    it was taken (``at``); ``signature`` is an HMAC under the audit key ("" unsigned,
    e.g. typed in by an operator)."""

    seq: int
    hash: str
    at: datetime | None = None
    signature: str = field(default="", compare=False)

    def message(self) -> bytes:
        at = "" if self.at is None else iso_utc(self.at)
        return f"{self.seq}:{self.hash}:{at}".encode("ascii")

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "at": None if self.at is None else iso_utc(self.at),
            "signature": self.signature,
        }


def sign_anchor(anchor: Anchor, key: bytes) -> Anchor:
    signature = hmac.new(_subkey(key, _ANCHOR_LABEL), anchor.message(), hashlib.sha256)
    return Anchor(anchor.seq, anchor.hash, anchor.at, signature.hexdigest())


def anchor_valid(anchor: Anchor, key: bytes) -> bool:
    """An unsigned anchor is taken as given; a signed one must carry a valid signature."""
    if not anchor.signature:
        return True
    return same_digest(sign_anchor(anchor, key).signature, anchor.signature)


def retention_start(now: datetime, days: int) -> datetime:
    """The newest instant a purge may reach with a retention of ``days``: ``days`` back,
    and never inside the last :data:`MIN_RETENTION_MONTHS` calendar months."""
    return min(now - timedelta(days=days), months_before(now, MIN_RETENTION_MONTHS))


def derive_key(master_key: str) -> bytes:
    """The checkpoint key when no ``SPENDGATE_AUDIT_KEY`` is set: HMAC(master key, label)."""
    return hmac.new(master_key.encode(), _KEY_DERIVATION_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class AuditSettings:
    key: bytes = field(repr=False)
    retention_days: int = DEFAULT_RETENTION_DAYS
    min_retention_days: int = MIN_RETENTION_DAYS
    #: how often the signed head goes out as an ``audit.anchor`` event (0: never)
    anchor_hours: int = DEFAULT_ANCHOR_HOURS
