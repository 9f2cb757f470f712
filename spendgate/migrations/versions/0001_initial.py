"""Directory (orgs, teams, users, agents, virtual keys), ledger and events.

Revision ID: 0001
Revises:
"""

from alembic import op

from spendgate.store import schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TABLES = ("orgs", "teams", "users", "user_teams", "agents", "virtual_keys", "ledger", "events")


def upgrade() -> None:
    bind = op.get_bind()
    for name in _TABLES:
        schema.metadata.tables[name].create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for name in reversed(_TABLES):
        schema.metadata.tables[name].drop(bind)
