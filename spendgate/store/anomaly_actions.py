"""What an anomaly may do on opening, per key or team: pause it, or apply a temporary rate
limit, until someone acknowledges (or lifts it). Both are plain rows of the existing
``rate_limits`` table, so enforcement needs nothing new on the hot path:

- **pause**: every rate-limit row of the scope gets ``rpm = 0``, and a ``*`` row with
  ``rpm = 0`` is added if the scope has none (one row governs a call per scope, the most
  specific, so each row must refuse). Calls get 429 ``rate_limit_exceeded``.
- **rate_limit**: every row of the scope is tightened to the configured ``rpm``, ``tpm``
  and ``max_spend_usd`` where it allows more, and a ``*`` row with them is added if none.

What was changed is kept on the anomaly (``action``: rows created, each changed row's
previous values, the time they were written). Lifting deletes the rows it created and
puts back the values it changed, but only for rows nobody has edited since (their
``updated_at`` is still the action's): a person's later change wins. Applying and
lifting are audited; a scope whose earlier anomaly's action is still in force is not
tightened again (the new episode names the one in force).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from spendgate.core.audit_chain import AuditEvent
from spendgate.errors import Conflict, NotFound
from spendgate.security.credentials import new_id
from spendgate.store import audit as audit_store
from spendgate.store import schema
from spendgate.store.database import delete_one, insert_new
from spendgate.store.schema import UTCDateTime

ACTIONS = ("pause", "rate_limit")
LIMIT_FIELDS = ("rpm", "tpm", "max_spend_nanos")
DEFAULT_WINDOW_SECONDS = 600
#: how the audit log names the anomaly checker
SYSTEM_ACTOR = "anomaly-watch"

anomaly_actions = sa.Table(
    "anomaly_actions",
    schema.metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    #: key | team
    sa.Column("scope_type", sa.String(10), nullable=False),
    sa.Column("scope_id", sa.String(40), nullable=False),
    #: pause | rate_limit
    sa.Column("action", sa.String(20), nullable=False),
    sa.Column("rpm", sa.Integer(), nullable=True),
    sa.Column("tpm", sa.BigInteger(), nullable=True),
    sa.Column("max_spend_nanos", sa.BigInteger(), nullable=True),
    sa.Column("spend_window_seconds", sa.Integer(), nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("scope_type", "scope_id", name="uq_anomaly_actions_scope"),
)


def _anomalies() -> sa.Table:
    return schema.metadata.tables["anomalies"]


# -- the configuration -------------------------------------------------------------------------
async def create_config(conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
    values = {"id": new_id("anact"), **values}
    if not await insert_new(conn, anomaly_actions, values, ["scope_type", "scope_id"]):
        raise Conflict(
            f"{values['scope_type']} {values['scope_id']} already has an anomaly action; "
            "delete it first"
        )
    return values


async def list_configs(engine: AsyncEngine, org_id: str | None) -> list[dict[str, Any]]:
    t = anomaly_actions
    query = sa.select(t).order_by(t.c.created_at, t.c.id)
    if org_id is not None:
        query = query.where(t.c.org_id == org_id)
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(query)]


async def get_config(engine: AsyncEngine, config_id: str) -> dict[str, Any]:
    t = anomaly_actions
    async with engine.connect() as conn:
        row = (await conn.execute(sa.select(t).where(t.c.id == config_id))).first()
    if row is None:
        raise NotFound(f"anomaly action {config_id} not found")
    return dict(row._mapping)


async def delete_config(conn: AsyncConnection, config_id: str) -> None:
    await delete_one(conn, anomaly_actions, config_id, "anomaly action")


# -- applying -----------------------------------------------------------------------------------
def limits_of(config: dict[str, Any]) -> dict[str, int]:
    """The rate-limit fields an action sets: ``rpm = 0`` to pause, else those configured."""
    if config["action"] == "pause":
        return {"rpm": 0}
    return {f: int(config[f]) for f in LIMIT_FIELDS if config[f] is not None}


async def apply_action(
    conn: AsyncConnection, anomaly: dict[str, Any], now: datetime
) -> dict[str, Any] | None:
    """Apply the scope's configured action for a newly opened ``anomaly`` (in its
    transaction); what was done, or None when the scope has no action."""
    if anomaly["scope_type"] not in ("key", "team"):
        return None
    t = anomaly_actions
    config = (
        await conn.execute(
            sa.select(t).where(
                t.c.scope_type == anomaly["scope_type"], t.c.scope_id == anomaly["scope_id"]
            )
        )
    ).first()
    if config is None:
        return None
    cfg = dict(config._mapping)
    a = _anomalies()
    earlier = (
        await conn.execute(
            sa.select(a.c.id).where(
                a.c.org_id == anomaly["org_id"],
                a.c.scope_type == anomaly["scope_type"],
                a.c.scope_id == anomaly["scope_id"],
                a.c.action_state == "active",
            )
        )
    ).first()
    if earlier is not None:
        return {"kind": cfg["action"], "applied": False, "in_force_from": earlier.id}
    limits = limits_of(cfg)
    created, changed = await _tighten(conn, anomaly, cfg, limits, now)
    action = {
        "kind": cfg["action"],
        "applied": True,
        "applied_at": now.isoformat(),
        "limits": limits,
        "created": created,
        "changed": changed,
    }
    await conn.execute(
        a.update().where(a.c.id == anomaly["id"]).values(action=action, action_state="active")
    )
    await audit_store.append(
        conn,
        AuditEvent(
            now,
            "system",
            SYSTEM_ACTOR,
            "anomaly.action_applied",
            "anomaly",
            anomaly["id"],
            None,
            action,
        ),
        org_id=anomaly["org_id"],
        team_ids=[anomaly["team_id"]] if anomaly["team_id"] else [],
    )
    return action


async def _tighten(
    conn: AsyncConnection,
    anomaly: dict[str, Any],
    cfg: dict[str, Any],
    limits: dict[str, int],
    now: datetime,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    r = schema.rate_limits
    rows = (
        await conn.execute(
            sa.select(r).where(
                r.c.scope_type == anomaly["scope_type"], r.c.scope_id == anomaly["scope_id"]
            )
        )
    ).all()
    changed: dict[str, dict[str, Any]] = {}
    for row in rows:
        before = {
            f: getattr(row, f)
            for f, v in limits.items()
            if getattr(row, f) is None or getattr(row, f) > v
        }
        if before:
            tighter = {f: limits[f] for f in before}
            await conn.execute(r.update().where(r.c.id == row.id).values(**tighter, updated_at=now))
            changed[row.id] = before
    created: list[str] = []
    if not any(row.model == "*" for row in rows):
        values = {
            "id": new_id("rl"),
            "org_id": anomaly["org_id"],
            "scope_type": anomaly["scope_type"],
            "scope_id": anomaly["scope_id"],
            "model": "*",
            "rpm": limits.get("rpm"),
            "tpm": limits.get("tpm"),
            "max_concurrent": None,
            "max_spend_nanos": limits.get("max_spend_nanos"),
            "spend_window_seconds": int(cfg["spend_window_seconds"] or DEFAULT_WINDOW_SECONDS),
            "created_at": now,
            "updated_at": now,
        }
        if await insert_new(conn, r, values, ["scope_type", "scope_id", "model"]):
            created.append(values["id"])
    return created, changed


# -- lifting ------------------------------------------------------------------------------------
async def lift_action(
    conn: AsyncConnection, anomaly: dict[str, Any], now: datetime, by: str
) -> dict[str, Any] | None:
    """Undo an anomaly's action still in force (the caller audits it); what was undone, or
    None if nothing was in force."""
    action = anomaly.get("action")
    if anomaly.get("action_state") != "active" or not action:
        return None
    r = schema.rate_limits
    applied_at = datetime.fromisoformat(action["applied_at"])
    kept: list[str] = []
    for limit_id in action.get("created", []):
        done = await conn.execute(
            r.delete().where(r.c.id == limit_id, r.c.updated_at == applied_at)
        )
        if done.rowcount != 1:
            kept.append(limit_id)
    for limit_id, before in action.get("changed", {}).items():
        done = await conn.execute(
            r.update()
            .where(r.c.id == limit_id, r.c.updated_at == applied_at)
            .values(**before, updated_at=now)
        )
        if done.rowcount != 1:
            kept.append(limit_id)
    lifted = {**action, "lifted_at": now.isoformat(), "lifted_by": by, "left_as_edited": kept}
    a = _anomalies()
    await conn.execute(
        a.update()
        .where(a.c.id == anomaly["id"], a.c.action_state == "active")
        .values(action=lifted, action_state="lifted")
    )
    return lifted
