"""Ledger rows say how many of their cache writes were for an hour.

Revision ID: 0023_cache_1h
Revises: 0022_key_expiry

``ledger.cache_write_1h_tokens``: the part of ``cache_write_tokens`` written to
Anthropic's 1-hour prompt cache, which is priced above the 5-minute one (2× input against
1.25×), so that a row's cost can be reproduced from its tokens. Rows from before this
revision were all priced as 5-minute writes: 0.
"""

import sqlalchemy as sa
from alembic import op

revision = "0023_cache_1h"
down_revision = "0022_key_expiry"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.add_column(
            sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("ledger") as batch:
        batch.drop_column("cache_write_1h_tokens")
