"""An audit entry names any number of teams: ``audit_log.team_ids`` unbounded on PostgreSQL.

Revision ID: 0025_audit_team_ids
Revises: 0024_rollup_cache_1h

``team_ids`` (``,team_a,team_b,``: who may read the entry) was ``VARCHAR(400)``, room for
13 teams of the directory's ids. An event about a user names every team the user is in
(``store.events.with_teams``), and so does its audit entry: a budget or wallet event of a
user in 14 teams failed on PostgreSQL, and with it the ledger rows stored in its
transaction. The column becomes ``TEXT`` (no rewrite: the types are binary compatible, so
the append-only triggers see no UPDATE). SQLite never enforced the length: unchanged.

The downgrade narrows it back, and refuses (PostgreSQL's "value too long") while an
entry names more teams than fit: cutting the list would break the entry's hash.
"""

import sqlalchemy as sa
from alembic import op

revision = "0025_audit_team_ids"
down_revision = "0024_rollup_cache_1h"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("audit_log", "team_ids", type_=sa.Text(), existing_type=sa.String(400))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("audit_log", "team_ids", type_=sa.String(400), existing_type=sa.Text())
