"""Team roles per membership; audit entries sealed with a MAC and their scope.

Revision ID: 0011_roles_audit
Revises: 0016_anomalies

**Roles.** ``user_teams.role`` holds the user's role in that team (team_admin, viewer,
member). A user's current team role moves onto each of their memberships;
``users.role`` keeps only org roles (org_admin, finance) and is ``member`` otherwise.
Users with an org role keep it, and their memberships become ``member`` (their org role
reaches every team already).

**Audit.** ``audit_log.v`` is the entry's canonical version: 1 for every entry written
so far (they keep verifying as before), 2 for new ones, whose hash covers ``org_id`` and
``team_ids`` and which carry a ``mac`` under the audit key; the head row carries a
``mac`` too. Adding the columns updates no row, so the append-only triggers stay as
they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_roles_audit"
down_revision = "0016_anomalies"
branch_labels = None
depends_on = None

_TEAM_ROLES = "('team_admin', 'viewer')"


def upgrade() -> None:
    op.add_column(
        "user_teams",
        sa.Column("role", sa.String(length=20), nullable=False, server_default="member"),
    )
    op.execute(
        "UPDATE user_teams SET role = (SELECT users.role FROM users "
        "WHERE users.id = user_teams.user_id) "
        f"WHERE user_id IN (SELECT id FROM users WHERE role IN {_TEAM_ROLES})"
    )
    op.execute(f"UPDATE users SET role = 'member' WHERE role IN {_TEAM_ROLES}")
    op.add_column(
        "audit_log", sa.Column("v", sa.SmallInteger(), nullable=False, server_default="1")
    )
    op.add_column("audit_log", sa.Column("mac", sa.String(length=64), nullable=True))
    op.add_column("audit_chain_head", sa.Column("mac", sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Back to one role per user: the highest of their team roles, unless they hold an
    org role. Version-2 audit entries do not verify under the old code."""
    op.drop_column("audit_chain_head", "mac")
    op.drop_column("audit_log", "mac")  # SQLite >= 3.35 drops columns in place
    op.drop_column("audit_log", "v")
    for role in ("viewer", "team_admin"):
        op.execute(
            f"UPDATE users SET role = '{role}' WHERE role IN ('member', 'viewer') AND id IN "
            f"(SELECT user_id FROM user_teams WHERE role = '{role}')"
        )
    op.drop_column("user_teams", "role")
