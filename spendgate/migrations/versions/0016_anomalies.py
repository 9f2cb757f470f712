"""Spend anomalies: one row per episode, and the action a key or team takes on one.

Revision ID: 0016_anomalies
Revises: 0010_durability

``anomalies``: an episode of out-of-band hourly spend of a key, a team or a model of an
org (``spendgate.store.anomalies``); at most one open episode per scope (a partial unique
index: ``resolved_at IS NULL``). ``anomaly_actions``: per key or team, pause or a
temporary rate limit on an anomaly, until acknowledged (``spendgate.store.anomaly_actions``).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0016_anomalies"
down_revision = "0010_durability"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "anomalies",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), nullable=False, index=True),
        sa.Column("scope_type", sa.String(10), nullable=False),
        sa.Column("scope_id", sa.String(200), nullable=False),
        sa.Column("team_id", sa.String(40), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hour_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("method", sa.String(20), nullable=False),
        sa.Column("elapsed", sa.Float(), nullable=False),
        sa.Column("expected_nanos", sa.BigInteger(), nullable=False),
        sa.Column("upper_nanos", sa.BigInteger(), nullable=False),
        sa.Column("actual_nanos", sa.BigInteger(), nullable=False),
        sa.Column("peak_excess_nanos", sa.BigInteger(), nullable=False),
        sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("contributors", JSON, nullable=False),
        sa.Column("event_id", sa.String(40), nullable=True),
        sa.Column("acknowledged_by", sa.String(100), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_note", sa.String(1000), nullable=True),
        sa.Column("action", JSON, nullable=True),
        sa.Column("action_state", sa.String(10), nullable=True),
    )
    op.create_index(
        "uq_anomalies_open_scope",
        "anomalies",
        ["org_id", "scope_type", "scope_id"],
        unique=True,
        sqlite_where=sa.text("resolved_at IS NULL"),
        postgresql_where=sa.text("resolved_at IS NULL"),
    )
    op.create_index("ix_anomalies_started", "anomalies", ["started_at"])
    op.create_table(
        "anomaly_actions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
        sa.Column("scope_type", sa.String(10), nullable=False),
        sa.Column("scope_id", sa.String(40), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.BigInteger(), nullable=True),
        sa.Column("max_spend_nanos", sa.BigInteger(), nullable=True),
        sa.Column("spend_window_seconds", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("scope_type", "scope_id", name="uq_anomaly_actions_scope"),
    )


def downgrade() -> None:
    op.drop_table("anomaly_actions")
    op.drop_index("ix_anomalies_started", "anomalies")
    op.drop_index("uq_anomalies_open_scope", "anomalies")
    op.drop_table("anomalies")
