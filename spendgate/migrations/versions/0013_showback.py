"""Showback and chargeback: spend rollups, an org's reporting zone, statements.

Revision ID: 0013_showback
Revises: 0014_console

``usage_rollup`` and ``usage_tag_rollup`` (``spendgate.store.rollups``), filled here
from the ledger already stored (with the same aggregation the ledger writer uses from
now on). ``orgs.reporting_timezone`` (``UTC``) and ``orgs.week_start`` (``monday``).
``statements`` and ``statement_months``, append-only by the audit log's triggers;
``allocation_rules``; ``ledger_retention`` (``spendgate.store.showback_schema``).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from spendgate.store import rollups
from spendgate.store.audit import append_only_statements, drop_append_only_statements

revision = "0013_showback"
down_revision = "0014_console"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
JSON = sa.JSON().with_variant(JSONB(), "postgresql")
DIMS = ("org_id", "team_id", "user_id", "agent_id", "key_id", "provider", "model", "kind")
#: the rollups' sums at this revision (``spendgate.store.rollups`` has grown since: 0024)
STORED = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_nanos",
    "unpriced_calls",
)
TOKENS = STORED[1:6]


def _rollup(name: str, tag_column: str) -> None:
    op.create_table(
        name,
        sa.Column("bucket", sa.BigInteger(), primary_key=True, autoincrement=False),
        *(sa.Column(c, sa.String(200), primary_key=True) for c in (*DIMS, "status")),
        sa.Column(tag_column, sa.Text(), primary_key=True),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in STORED),
    )
    op.create_index(f"ix_{name}_org_bucket", name, ["org_id", "bucket"])
    op.create_index(f"ix_{name}_team_bucket", name, ["team_id", "bucket"])


def _backfill(conn: sa.Connection) -> None:
    """Both new rollups from the ledger, summed by the writer's ``aggregate`` over this
    revision's token columns, inserted whole (the tables are new)."""
    main: rollups.Rollup = {}
    tags: rollups.Rollup = {}
    for page in rollups.ledger_pages(conn, TOKENS):
        rollups.aggregate(page, main, tags, TOKENS, estimates=False)
    for name, tag_column, rollup in (
        ("usage_rollup", "tags", main),
        ("usage_tag_rollup", "tag", tags),
    ):
        names = ("bucket", *DIMS, "status", tag_column, *STORED)
        table = sa.table(name, *(sa.column(c) for c in names))
        rows = [
            dict(zip(names, (*key, *rollups.stored(rollup[key], estimates=False)), strict=True))
            for key in sorted(rollup)
        ]
        for start in range(0, len(rows), 5000):
            conn.execute(table.insert(), rows[start : start + 5000])


def upgrade() -> None:
    _rollup("usage_rollup", "tags")
    _rollup("usage_tag_rollup", "tag")
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(
            sa.Column("reporting_timezone", sa.String(64), nullable=False, server_default="UTC")
        )
        batch.add_column(
            sa.Column("week_start", sa.String(10), nullable=False, server_default="monday")
        )
    op.create_table(
        "statements",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("team_id", sa.String(40), nullable=False),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("total_nanos", sa.BigInteger(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("supersedes", sa.String(40), nullable=True),
        sa.Column("diff", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("org_id", "team_id", "month", "version", name="uq_statements_version"),
    )
    op.create_index("ix_statements_org_month", "statements", ["org_id", "month"])
    op.create_table(
        "statement_months",
        sa.Column("org_id", sa.String(40), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("closed_by", sa.String(200), nullable=False),
        sa.Column("closed_at", TS, nullable=False),
    )
    op.create_table(
        "allocation_rules",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(64), nullable=True),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("shares", JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "ledger_retention",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("purged_before", TS, nullable=False),
    )
    dialect = op.get_bind().dialect.name
    for table in ("statements", "statement_months"):
        for statement in append_only_statements(table, dialect):
            op.execute(statement)
    _backfill(op.get_bind())


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in ("statements", "statement_months"):
        for statement in drop_append_only_statements(table, dialect):
            op.execute(statement)
    for table in ("ledger_retention", "allocation_rules", "statement_months", "statements"):
        op.drop_table(table)
    # plain ALTER TABLE (SQLite >= 3.35 and PostgreSQL): a batch would recreate ``orgs``,
    # which SQLite refuses while other tables' foreign keys point at it
    for column in ("week_start", "reporting_timezone"):
        op.execute(f"ALTER TABLE orgs DROP COLUMN {column}")
    op.drop_table("usage_tag_rollup")
    op.drop_table("usage_rollup")
