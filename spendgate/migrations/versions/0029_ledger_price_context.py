"""Ledger rows say the service tier or speed whose prices billed them.

Revision ID: 0029_ledger_price_context
Revises: 0028_ledger_web_searches

``ledger.price_context``: the price variant a call was billed at, as genai-prices' data
names it (``service_tier=priority``, ``service_tier=flex``, ``speed=fast``): the tier
the provider reported it ran at where the prices know it, else the one the request
named (``spendgate.core.pricing``). NULL means the standard prices. With it a row's cost
follows from its figures also for a call at a dearer (or cheaper) tier, and showback can
explain what a priority-default project spends.

Nullable text, no default: rows from before this revision read NULL (their tier was
never recorded; nothing to fill), and adding the column rewrites no table on either
database. The rollups do not carry it (a row's cost already has its tier in it).

Self-contained DDL: what this revision creates does not change with the application.
The ledger has no trigger, so adding and dropping a column keeps everything else.
"""

import sqlalchemy as sa
from alembic import op

revision = "0029_ledger_price_context"
down_revision = "0028_ledger_web_searches"
branch_labels = None
depends_on = None

COLUMN = "price_context"


def upgrade() -> None:
    op.add_column("ledger", sa.Column(COLUMN, sa.Text(), nullable=True))


def downgrade() -> None:
    op.execute(f"ALTER TABLE ledger DROP COLUMN {COLUMN}")
