"""Cost tickets: a call a wallet could not fund asks for funding instead of only failing.

Revision ID: 0017_tickets
Revises: 0013_showback

``wallets.ticket_mode`` (off | on | auto) and ``wallets.ticket_auto_below_nanos``;
``wallet_tickets``: one row per request for funding, with at most one open ticket per
wallet and requester key (a partial unique index: ``status = 'open'``). See
``spendgate.store.tickets``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0017_tickets"
down_revision = "0013_showback"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("wallets") as batch:
        batch.add_column(
            sa.Column("ticket_mode", sa.String(10), nullable=False, server_default="off")
        )
        batch.add_column(sa.Column("ticket_auto_below_nanos", sa.BigInteger(), nullable=True))
    op.create_table(
        "wallet_tickets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("wallet_id", sa.String(40), sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("team_id", sa.String(40), nullable=True),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("asked_nanos", sa.BigInteger(), nullable=False),
        sa.Column("refusals", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("last_request_id", sa.String(40), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_refused_at", TS, nullable=False),
        sa.Column("decided_by", sa.String(100), nullable=True),
        sa.Column("decided_at", TS, nullable=True),
        sa.Column("reason", sa.String(500), nullable=True),
        sa.Column("granted_nanos", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("closed_at", TS, nullable=True),
        sa.Column("used_nanos", sa.BigInteger(), nullable=True),
        sa.Column("denial_told_at", TS, nullable=True),
    )
    op.create_index("ix_wallet_tickets_org_id", "wallet_tickets", ["org_id"])
    op.create_index(
        "uq_wallet_tickets_open",
        "wallet_tickets",
        ["wallet_id", "key_id"],
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )
    op.create_index("ix_wallet_tickets_wallet_status", "wallet_tickets", ["wallet_id", "status"])


def downgrade() -> None:
    op.drop_table("wallet_tickets")
    with op.batch_alter_table("wallets") as batch:
        batch.drop_column("ticket_auto_below_nanos")
        batch.drop_column("ticket_mode")
