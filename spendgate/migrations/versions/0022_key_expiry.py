"""An index for the sweep's keys close to their expiry.

Revision ID: 0022_key_expiry
Revises: 0021_sum8

``announce_expiring_keys`` asks every minute for the keys not revoked whose
``expires_at`` falls within the lead time (``Directory.keys_expiring``); with no index on
``expires_at`` that read every row of ``virtual_keys``. ``ix_virtual_keys_expiring`` is a
partial index on ``expires_at`` over the keys it can find: not revoked, with an expiry
(most keys have none). The query's ``revoked_at IS NULL`` is the predicate's first term,
and its ``expires_at > now`` implies the second, so PostgreSQL and SQLite both use it.
"""

import sqlalchemy as sa
from alembic import op

revision = "0022_key_expiry"
down_revision = "0021_sum8"
branch_labels = None
depends_on = None

LIVE_WITH_EXPIRY = sa.text("revoked_at IS NULL AND expires_at IS NOT NULL")


def upgrade() -> None:
    op.create_index(
        "ix_virtual_keys_expiring",
        "virtual_keys",
        ["expires_at"],
        sqlite_where=LIVE_WITH_EXPIRY,
        postgresql_where=LIVE_WITH_EXPIRY,
    )


def downgrade() -> None:
    op.drop_index("ix_virtual_keys_expiring", table_name="virtual_keys")
