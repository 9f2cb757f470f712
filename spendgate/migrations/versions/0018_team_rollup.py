"""The narrow spend rollup: org x 15-minute bucket x team x provider x model x kind x status.

Revision ID: 0018_team_rollup
Revises: 0017_tickets

``usage_team_rollup`` (``spendgate.store.rollups``): what a report that names no user,
agent, key or tag reads. Its primary key starts with ``org_id, bucket`` and INCLUDEs the
sums on PostgreSQL (index-only scans); on SQLite the table is ``WITHOUT ROWID`` (the key
is the table). Filled here from ``usage_rollup`` by one ``INSERT … SELECT … GROUP BY``;
from now on the ledger writer adds to it in each batch's transaction.

``statements.total_nanos`` (one BIGINT: overflows past $9.2 billion an org-month) becomes
``total_whole_usd`` + ``total_rest_nanos``, like the rollups' money. The table is
append-only, so its guards are dropped for the copy and put back.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

from spendgate.store import rollups
from spendgate.store.audit import append_only_statements, drop_append_only_statements

revision = "0018_team_rollup"
down_revision = "0017_tickets"
branch_labels = None
depends_on = None

NANOS = 1_000_000_000
#: the narrow rollup's key and the rollups' sums at this revision (``spendgate.store.rollups``
#: has grown since: 0024)
NARROW_KEY = ("org_id", "bucket", "team_id", "provider", "model", "kind", "status")
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
WIDE_KEY = ("bucket", "org_id", "team_id", "user_id", "agent_id", "key_id", "provider", "model",
            "kind", "status", "tags")  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "usage_team_rollup",
        sa.Column("org_id", sa.String(200), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False, autoincrement=False),
        *(sa.Column(c, sa.String(200), nullable=False) for c in NARROW_KEY[2:]),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in STORED),
        sa.PrimaryKeyConstraint(
            *NARROW_KEY, name="pk_usage_team_rollup", postgresql_include=list(STORED)
        ),
        sqlite_with_rowid=False,
    )
    wide = sa.table("usage_rollup", *(sa.column(c) for c in (*WIDE_KEY, *STORED)))
    narrow = sa.table("usage_team_rollup", *(sa.column(c) for c in (*NARROW_KEY, *STORED)))
    op.execute(rollups.fold_narrow(source=wide, into=narrow))
    with _unguarded():
        for column in ("total_whole_usd", "total_rest_nanos"):
            op.add_column(
                "statements",
                sa.Column(column, sa.BigInteger(), nullable=False, server_default="0"),
            )
        op.execute(
            f"UPDATE statements SET total_whole_usd = total_nanos / {NANOS}, "
            f"total_rest_nanos = total_nanos % {NANOS}"  # totals are never negative
        )
        op.execute("ALTER TABLE statements DROP COLUMN total_nanos")


def downgrade() -> None:
    with _unguarded():
        op.add_column(
            "statements",
            sa.Column("total_nanos", sa.BigInteger(), nullable=False, server_default="0"),
        )
        op.execute(
            f"UPDATE statements SET total_nanos = total_whole_usd * {NANOS} + total_rest_nanos"
        )
        for column in ("total_whole_usd", "total_rest_nanos"):
            op.execute(f"ALTER TABLE statements DROP COLUMN {column}")
    op.drop_table("usage_team_rollup")


@contextmanager
def _unguarded() -> Iterator[None]:
    dialect = op.get_bind().dialect.name
    for statement in drop_append_only_statements("statements", dialect):
        op.execute(statement)
    yield
    for statement in append_only_statements("statements", dialect):
        op.execute(statement)
