"""Leases: which replica does a fleet-wide periodic job this time.

Revision ID: 0009
Revises: 0008

One row per job (``forecasts``: the scheduled refresh of every budget's forecast). A
replica runs the job only if it can take the lease, i.e. the row is missing or expired;
the lease is not given back, so the job runs about once per interval however many
replicas there are (``spendgate.store.leases``).
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("holder", sa.String(80), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
