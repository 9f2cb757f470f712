"""No conflict clause rewrites a guarded row; the chain-head row only moves forward.

Revision ID: 0027_audit_replace_guards
Revises: 0026_rollup_estimates

SQLite's ``INSERT OR REPLACE`` (and ``REPLACE``) deletes the stored row it collides with
without firing that table's DELETE trigger (unless the connection turned
``recursive_triggers`` on), so the append-only ``audit_log``, ``audit_checkpoints``,
``statements`` and ``statement_months`` (0003, 0013) could have a row rewritten. A
BEFORE INSERT trigger on each refuses an insert that would collide with a stored row on
any of its unique keys or its rowid. PostgreSQL needs nothing there: ``INSERT … ON
CONFLICT DO UPDATE`` fires the UPDATE trigger, which refuses.

``audit_chain_head`` (one row, id 1: the last seq and hash handed out; every append
moves it, so it cannot be append-only) gets triggers on both databases refusing a
DELETE (and TRUNCATE), a second row, a change of its id and a seq going back. Appends
(``seq + 1``) and the purge's lock (``seq = seq``) pass.

Self-contained DDL: what this revision creates does not change with the application.
"""

from alembic import op

revision = "0027_audit_replace_guards"
down_revision = "0026_rollup_estimates"
branch_labels = None
depends_on = None

#: each append-only table's unique keys (its primary key first)
UNIQUE_KEYS = {
    "audit_log": (("id",), ("seq",)),
    "audit_checkpoints": (("id",), ("seq",)),
    "statements": (("id",), ("org_id", "team_id", "month", "version")),
    "statement_months": (("org_id", "month"),),
}
HEAD_REFUSED = "audit_chain_head only moves forward"


def _sqlite_no_replace(table: str) -> str:
    # NEW.rowid is -1 in a BEFORE INSERT trigger when the rowid is left to SQLite
    collides = " OR ".join(
        "(" + " AND ".join(f"{c} = NEW.{c}" for c in key) + ")" for key in UNIQUE_KEYS[table]
    )
    return (
        f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} "
        f"WHEN EXISTS (SELECT 1 FROM {table} WHERE (NEW.rowid > 0 AND rowid = NEW.rowid) "
        f"OR {collides}) "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only, a stored row is kept: "
        f"INSERT OR REPLACE refused'); END"
    )


def _sqlite_head(name: str, op_: str, when: str) -> str:
    return (
        f"CREATE TRIGGER {name} BEFORE {op_} ON audit_chain_head {when}"
        f"BEGIN SELECT RAISE(ABORT, '{HEAD_REFUSED}: {op_} refused'); END"
    )


SQLITE_HEAD = {
    "audit_chain_head_no_delete": _sqlite_head("audit_chain_head_no_delete", "DELETE", ""),
    "audit_chain_head_one_row": _sqlite_head(
        "audit_chain_head_one_row",
        "INSERT",
        "WHEN NEW.id IS NOT 1 OR EXISTS (SELECT 1 FROM audit_chain_head) ",
    ),
    "audit_chain_head_no_rewind": _sqlite_head(
        "audit_chain_head_no_rewind", "UPDATE", "WHEN NEW.id IS NOT OLD.id OR NEW.seq < OLD.seq "
    ),
}

PG_HEAD_FUNCTION = f"""
CREATE OR REPLACE FUNCTION spendgate_audit_head_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' AND NEW.id = 1 AND NOT EXISTS (SELECT 1 FROM audit_chain_head) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '{HEAD_REFUSED}: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END
$$"""
_PG_EXECUTE = "EXECUTE FUNCTION spendgate_audit_head_guard()"
PG_HEAD = {
    "audit_chain_head_no_delete": f"BEFORE DELETE ON audit_chain_head FOR EACH ROW {_PG_EXECUTE}",
    "audit_chain_head_no_truncate": (
        f"BEFORE TRUNCATE ON audit_chain_head FOR EACH STATEMENT {_PG_EXECUTE}"
    ),
    "audit_chain_head_one_row": f"BEFORE INSERT ON audit_chain_head FOR EACH ROW {_PG_EXECUTE}",
    # appends do not call the function at all
    "audit_chain_head_no_rewind": (
        "BEFORE UPDATE ON audit_chain_head FOR EACH ROW "
        f"WHEN (NEW.id <> OLD.id OR NEW.seq < OLD.seq) {_PG_EXECUTE}"
    ),
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_HEAD_FUNCTION)
        for name, body in PG_HEAD.items():
            op.execute(f"CREATE TRIGGER {name} {body}")
        return
    for table in UNIQUE_KEYS:
        op.execute(_sqlite_no_replace(table))
    for ddl in SQLITE_HEAD.values():
        op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in PG_HEAD:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON audit_chain_head")
        op.execute("DROP FUNCTION IF EXISTS spendgate_audit_head_guard()")
        return
    for name in (*(f"{t}_no_replace" for t in UNIQUE_KEYS), *SQLITE_HEAD):
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
