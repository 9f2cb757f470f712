"""Ledger rows the shared counters never counted are marked.

Revision ID: 0019_uncounted
Revises: 0018_team_rollup

``ledger.uncounted``: the call was admitted while Redis was unreachable (fail-open), or
its settle could not reach Redis. After an outage each bucket's counter takes exactly
this spend from the ledger (``Counters.catch_up``), instead of being raised to the
ledger's whole total, which could drop calls Redis had counted and whose rows were not
in the database yet. Rows from before this revision are all counted (false).
"""

import sqlalchemy as sa
from alembic import op

revision = "0019_uncounted"
down_revision = "0018_team_rollup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(
            sa.Column("uncounted", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("uncounted")
