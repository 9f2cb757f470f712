"""The rollups count 1-hour cache writes apart: ``cache_write_1h_tokens`` on each of them.

Revision ID: 0024_rollup_cache_1h
Revises: 0023_cache_1h

``usage_rollup``, ``usage_tag_rollup``, ``usage_team_rollup`` and ``usage_team_daily``
(``spendgate.store.rollups``) get ``cache_write_1h_tokens``: the part of their
``cache_write_tokens`` written to Anthropic's 1-hour cache, as the ledger has kept it
since 0023, so that usage reports can show it. Filled here from the ledger rows that
have any, summed by the writer's own ``aggregate`` and folds (the narrow rows from the
wide ones, the daily ones in each org's daily zone): every rollup row then holds the
sum of its ledger rows' figure, as if the writer had counted it from the start. Rows
from before 0023 have none (0). On PostgreSQL the narrow and daily rollups' primary
keys are rebuilt so that they INCLUDE the new sum too (index-only scans).
"""

import sqlalchemy as sa
from alembic import op

from spendgate.store import rollups

revision = "0024_rollup_cache_1h"
down_revision = "0023_cache_1h"
branch_labels = None
depends_on = None

COLUMN = "cache_write_1h_tokens"
#: each rollup table's key, in the order of ``rollups.aggregate``'s, ``narrow``'s and
#: ``daily``'s keys
WIDE_KEY = ("bucket", "org_id", "team_id", "user_id", "agent_id", "key_id", "provider", "model",
            "kind", "status")  # fmt: skip
KEYS = {
    "usage_rollup": (*WIDE_KEY, "tags"),
    "usage_tag_rollup": (*WIDE_KEY, "tag"),
    "usage_team_rollup": ("org_id", "bucket", "team_id", "provider", "model", "kind", "status"),
    "usage_team_daily": ("org_id", "day", "team_id", "model", "provider", "kind", "status"),
}
#: the sums before and after this revision, as the covering primary keys INCLUDE them
BEFORE = ("calls", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
          "reasoning_tokens", "cost_usd", "cost_nanos", "unpriced_calls")  # fmt: skip
AFTER = (*BEFORE[:5], COLUMN, *BEFORE[5:])
COVERED = ("usage_team_rollup", "usage_team_daily")


def _cover(sums: tuple[str, ...]) -> None:
    """PostgreSQL: the narrow and daily primary keys made to INCLUDE ``sums``."""
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in COVERED:
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}, "
            f"ADD CONSTRAINT pk_{table} PRIMARY KEY ({', '.join(KEYS[table])}) "
            f"INCLUDE ({', '.join(sums)})"
        )


def _backfill(conn: sa.Connection) -> None:
    tokens = (COLUMN,)
    main: rollups.Rollup = {}
    tags: rollups.Rollup = {}
    for page in rollups.ledger_pages(conn, tokens, f"{COLUMN} > 0"):
        rollups.aggregate(page, main, tags, tokens, estimates=False)
    teams = rollups.narrow(main)
    zones: dict[str, str] = dict(
        conn.execute(sa.text("SELECT org_id, timezone FROM usage_daily_zone")).all()
    )
    # an org with rollup rows has a daily zone (0020 and the writer see to it)
    days = rollups.daily({k: v for k, v in teams.items() if k[0] in zones}, zones)
    for table, rollup in (
        ("usage_rollup", main),
        ("usage_tag_rollup", tags),
        ("usage_team_rollup", teams),
        ("usage_team_daily", days),
    ):
        key = KEYS[table]
        update = sa.text(
            f"UPDATE {table} SET {COLUMN} = :sum WHERE "
            + " AND ".join(f"{c} = :k{i}" for i, c in enumerate(key))
        )
        rows = [
            {"sum": rollup[k][1], **{f"k{i}": v for i, v in enumerate(k)}} for k in sorted(rollup)
        ]
        for start in range(0, len(rows), 5000):
            conn.execute(update, rows[start : start + 5000])


def upgrade() -> None:
    for table in KEYS:
        op.add_column(table, sa.Column(COLUMN, sa.BigInteger(), nullable=False, server_default="0"))
    _cover(AFTER)
    _backfill(op.get_bind())


def downgrade() -> None:
    _cover(BEFORE)
    for table in KEYS:
        op.execute(f"ALTER TABLE {table} DROP COLUMN {COLUMN}")
