"""The narrow spend rollup: org x 15-minute bucket x team x provider x model x kind x status.

Revision ID: 0018_team_rollup
Revises: 0017_tickets

``usage_team_rollup`` (``spendgate.store.rollups``): what a report that names no user,
agent, key or tag reads. Its primary key starts with ``org_id, bucket`` and INCLUDEs the
sums on PostgreSQL (index-only scans); on SQLite the table is ``WITHOUT ROWID`` (the key
is the table). Filled here from ``usage_rollup`` by one ``INSERT … SELECT … GROUP BY``;
from now on the ledger writer adds to it in each batch's transaction.
"""

import sqlalchemy as sa
from alembic import op

from spendgate.store import rollups

revision = "0018_team_rollup"
down_revision = "0017_tickets"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_team_rollup",
        sa.Column("org_id", sa.String(200), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False, autoincrement=False),
        *(sa.Column(c, sa.String(200), nullable=False) for c in rollups.NARROW_KEY[2:]),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in rollups.STORED_COLUMNS),
        sa.PrimaryKeyConstraint(
            *rollups.NARROW_KEY,
            name="pk_usage_team_rollup",
            postgresql_include=list(rollups.STORED_COLUMNS),
        ),
        sqlite_with_rowid=False,
    )
    op.execute(rollups.fold_narrow())


def downgrade() -> None:
    op.drop_table("usage_team_rollup")
