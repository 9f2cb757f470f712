"""One open wallet per scope, wallets that can be changed and closed; org names unique;
forecasts bounded by the hard cap.

Revision ID: 0012_wallet_scope
Revises: 0011_roles_audit

``wallets.closed_at`` (a closed wallet is history: it governs no call and takes no
top-up, its top-ups stay readable) and ``wallets.updated_at``; a unique index on the
scope of the wallets not closed. Scopes that already had several open wallets (a second
``POST /admin/wallets`` used to be accepted, and its empty wallet refused the scope's
calls) keep the one with the most top-ups (the oldest on a tie); the others are closed.

``orgs.name`` is unique: an org that shares an older org's name is renamed
``"<name> (<org id>)"``.

``budget_forecasts.hard_cap_nanos`` and ``uncapped_p50_nanos``: a forecast of recorded
spend stops at the hard cap (``spendgate.core.forecasting``).
"""

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012_wallet_scope"
down_revision = "0011_roles_audit"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
OPEN = sa.text("closed_at IS NULL")
wallets = sa.table("wallets", sa.column("id", sa.String), sa.column("closed_at", TS))
orgs = sa.table("orgs", sa.column("id", sa.String), sa.column("name", sa.String))


def _close_duplicate_wallets(conn: sa.Connection) -> None:
    rows = conn.execute(
        sa.text(
            "SELECT w.id, w.scope_type, w.scope_id, w.created_at, "
            "COALESCE((SELECT SUM(t.amount_nanos) FROM wallet_topups t "
            "WHERE t.wallet_id = w.id), 0) AS topped_up FROM wallets w"
        )
    ).all()
    by_scope: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in rows:
        by_scope[(row.scope_type, row.scope_id)].append(row)
    now = datetime.now(UTC)
    if conn.dialect.name == "sqlite":
        now = now.replace(tzinfo=None)
    for scoped in by_scope.values():
        scoped.sort(key=lambda w: (-int(w.topped_up), str(w.created_at), w.id))
        for extra in scoped[1:]:
            conn.execute(wallets.update().where(wallets.c.id == extra.id).values(closed_at=now))


def _rename_duplicate_orgs(conn: sa.Connection) -> None:
    seen: set[str] = set()
    for row in conn.execute(sa.text("SELECT id, name FROM orgs ORDER BY created_at, id")).all():
        if row.name in seen:
            renamed = f"{row.name} ({row.id})"[:200]
            conn.execute(orgs.update().where(orgs.c.id == row.id).values(name=renamed))
        seen.add(row.name)


def upgrade() -> None:
    op.add_column("wallets", sa.Column("closed_at", TS, nullable=True))
    op.add_column("wallets", sa.Column("updated_at", TS, nullable=True))
    conn = op.get_bind()
    _close_duplicate_wallets(conn)
    op.create_index(
        "uq_wallets_open_scope",
        "wallets",
        ["scope_type", "scope_id"],
        unique=True,
        sqlite_where=OPEN,
        postgresql_where=OPEN,
    )
    _rename_duplicate_orgs(conn)
    op.create_index("uq_orgs_name", "orgs", ["name"], unique=True)
    op.add_column("budget_forecasts", sa.Column("hard_cap_nanos", sa.BigInteger(), nullable=True))
    op.add_column(
        "budget_forecasts", sa.Column("uncapped_p50_nanos", sa.BigInteger(), nullable=True)
    )


def downgrade() -> None:
    with op.batch_alter_table("budget_forecasts") as batch:
        batch.drop_column("uncapped_p50_nanos")
        batch.drop_column("hard_cap_nanos")
    op.drop_index("uq_orgs_name", table_name="orgs")
    op.drop_index("uq_wallets_open_scope", table_name="wallets")
    with op.batch_alter_table("wallets") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("closed_at")
