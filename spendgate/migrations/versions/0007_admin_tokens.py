"""Admin tokens; audit entries indexed by org and teams for scoped reading.

Revision ID: 0007
Revises: 0006

``audit_log.org_id`` / ``team_ids`` are filter columns, not part of the hashed entry:
entries written before this revision keep verifying, and the append-only triggers
protect the new columns like the rest of the row.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("token_prefix", sa.String(length=20), nullable=False),
        sa.Column("created_by", sa.String(length=80), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"]),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash", name="uq_admin_tokens_hash"),
    )
    op.create_index("ix_admin_tokens_user_id", "admin_tokens", ["user_id"], unique=False)
    op.add_column("audit_log", sa.Column("org_id", sa.String(length=40), nullable=True))
    op.add_column("audit_log", sa.Column("team_ids", sa.String(length=400), nullable=True))
    op.create_index("ix_audit_log_org", "audit_log", ["org_id", "seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_log_org", table_name="audit_log")
    op.drop_column("audit_log", "team_ids")  # SQLite >= 3.35 drops columns in place
    op.drop_column("audit_log", "org_id")
    op.drop_index("ix_admin_tokens_user_id", table_name="admin_tokens")
    op.drop_table("admin_tokens")
