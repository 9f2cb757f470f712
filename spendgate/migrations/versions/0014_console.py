"""The web console: passwords, sign-in sessions and invite links.

Revision ID: 0014_console
Revises: 0012_wallet_scope

``console_passwords`` holds one argon2 hash per user who may sign in. Sessions and
invite links are stored as SHA-256 hashes of their secrets (like admin tokens), so a
copy of the database opens no browser session.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014_console"
down_revision = "0012_wallet_scope"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "console_passwords",
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "console_sessions",
        sa.Column("session_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
    )
    op.create_table(
        "console_invites",
        sa.Column("invite_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("created_by", sa.String(60), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("console_invites")
    op.drop_table("console_sessions")
    op.drop_table("console_passwords")
