"""Ledger rows and rollups count the web searches they were billed for.

Revision ID: 0028_ledger_web_searches
Revises: 0027_audit_replace_guards

``ledger.web_searches``: the searches a server-side search tool ran for the call
(Anthropic's ``server_tool_use.web_search_requests``, a Responses answer's
``web_search_call`` items), which providers bill per search beside the tokens: with it
a row's cost follows from its figures. ``usage_rollup``, ``usage_tag_rollup``,
``usage_team_rollup`` and ``usage_team_daily`` (``spendgate.store.rollups``) sum it, so
usage reports and statements can say how much went on searches.

Rows from before this revision read 0, and so do the rollups: nothing to fill. Their
calls' searches were never recorded (the ledger had no column for them), so 0 is all
any rollup row could be rebuilt from. On PostgreSQL the narrow and daily rollups'
primary keys are rebuilt so that they INCLUDE the new sum too (index-only scans).

Self-contained DDL: what this revision creates does not change with the application.
The ledger has no trigger, so adding and dropping a column keeps everything else.
"""

import sqlalchemy as sa
from alembic import op

revision = "0028_ledger_web_searches"
down_revision = "0027_audit_replace_guards"
branch_labels = None
depends_on = None

COLUMN = "web_searches"
ROLLUPS = ("usage_rollup", "usage_tag_rollup", "usage_team_rollup", "usage_team_daily")
#: the narrow and daily rollups' keys, in their primary keys' order
COVERED = {
    "usage_team_rollup": ("org_id", "bucket", "team_id", "provider", "model", "kind", "status"),
    "usage_team_daily": ("org_id", "day", "team_id", "model", "provider", "kind", "status"),
}
#: the sums before and after this revision, as the covering primary keys INCLUDE them
BEFORE = ("calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
          "cache_write_1h_tokens", "reasoning_tokens", "cost_usd", "cost_nanos",
          "unpriced_calls", "estimated_calls", "estimated_usd", "estimated_nanos")  # fmt: skip
AFTER = (*BEFORE[:7], COLUMN, *BEFORE[7:])


def _cover(sums: tuple[str, ...]) -> None:
    """PostgreSQL: the narrow and daily primary keys made to INCLUDE ``sums``."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, key in COVERED.items():
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}, "
            f"ADD CONSTRAINT pk_{table} PRIMARY KEY ({', '.join(key)}) "
            f"INCLUDE ({', '.join(sums)})"
        )


def upgrade() -> None:
    # a NOT NULL column with a constant default: no table rewrite on either database
    for table in ("ledger", *ROLLUPS):
        op.add_column(table, sa.Column(COLUMN, sa.BigInteger(), nullable=False, server_default="0"))
    _cover(AFTER)


def downgrade() -> None:
    _cover(BEFORE)
    for table in ("ledger", *ROLLUPS):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {COLUMN}")
