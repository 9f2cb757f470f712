"""Durability: implausible usage is marked on the row; rows the database refuses are set
aside instead of blocking the ledger.

Revision ID: 0010_durability
Revises: 0009

``ledger.usage_implausible``: the provider reported more tokens than any call can use;
the figures were clamped (``spendgate.core.usage.MAX_TOKENS_PER_CALL``).
``ledger_rejected``: a row the database refused, kept as its spool record with the
reason, so the rows after it still land (``spendgate.store.ledger.LedgerWriter``).
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_durability"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(
            sa.Column("usage_implausible", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "ledger_rejected",
        sa.Column("request_id", sa.String(100), primary_key=True),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_rejected")
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("usage_implausible")
