"""Forecasts: the latest forecast of each budget (spendgate.store.forecasts).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "budget_forecasts",
        sa.Column("budget_id", sa.String(length=40), nullable=False),
        sa.Column("period_key", sa.String(length=40), nullable=False),
        sa.Column("generated_at", TS, nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("history_days", sa.Integer(), nullable=False),
        sa.Column("spent_nanos", sa.BigInteger(), nullable=False),
        sa.Column("p10_nanos", sa.BigInteger(), nullable=False),
        sa.Column("p50_nanos", sa.BigInteger(), nullable=False),
        sa.Column("p90_nanos", sa.BigInteger(), nullable=False),
        sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
        sa.Column("percent_of_budget", sa.String(length=20), nullable=False),
        sa.Column("crossings", JSON, nullable=False),
        sa.Column("limit_nanos", sa.BigInteger(), nullable=False),
        sa.Column("overrun_band", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["budget_id"], ["budgets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("budget_id"),
    )


def downgrade() -> None:
    op.drop_table("budget_forecasts")
