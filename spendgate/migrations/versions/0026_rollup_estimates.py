"""The rollups count the calls billed on an estimate and their cost.

Revision ID: 0026_rollup_estimates
Revises: 0025_audit_team_ids

``usage_rollup``, ``usage_tag_rollup``, ``usage_team_rollup`` and ``usage_team_daily``
(``spendgate.store.rollups``) get ``estimated_calls`` and the estimated cost, stored like
the cost as whole dollars (``estimated_usd``) and the nanos below them
(``estimated_nanos``): the calls of their ledger rows with ``usage_estimated`` (a call
that timed out after its request was written, billed at its admission worst case; a
stream cut before the provider's usage) and the part of ``cost_*`` they make up.

Filled here from the ledger's estimated rows, summed by the writer's own ``aggregate``
and folds (the narrow rows from the wide ones, the daily ones in each org's daily
zone), as 0024 filled its column: every rollup row then holds the sum of its ledger
rows' figures, as if the writer had counted them from the start. Rows whose ledger rows
were purged (retention) keep 0: the ledger can no longer say. On PostgreSQL the narrow
and daily rollups' primary keys are rebuilt so that they INCLUDE the new sums too.
"""

import sqlalchemy as sa
from alembic import op

from spendgate.store import rollups

revision = "0026_rollup_estimates"
down_revision = "0025_audit_team_ids"
branch_labels = None
depends_on = None

COLUMNS = ("estimated_calls", "estimated_usd", "estimated_nanos")
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
          "cache_write_1h_tokens", "reasoning_tokens", "cost_usd", "cost_nanos",
          "unpriced_calls")  # fmt: skip
AFTER = (*BEFORE, *COLUMNS)
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
    """Every rollup row with estimated ledger rows gets their count and cost. Summed with
    no token figure: each sum is then ``[calls, cost, unpriced, estimated calls,
    estimated cost]``, the last two what is set."""
    main: rollups.Rollup = {}
    tags: rollups.Rollup = {}
    for page in rollups.ledger_pages(conn, (), "usage_estimated"):
        rollups.aggregate(page, main, tags, tokens=(), estimates=True)
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
            f"UPDATE {table} SET {', '.join(f'{c} = :{c}' for c in COLUMNS)} WHERE "
            + " AND ".join(f"{c} = :k{i}" for i, c in enumerate(key))
        )
        rows = []
        for k in sorted(rollup):
            calls, nanos = rollup[k][-2:]
            dollars, rest = divmod(nanos, rollups.NANOS)
            keys = {f"k{i}": v for i, v in enumerate(k)}
            rows.append({**dict(zip(COLUMNS, (calls, dollars, rest), strict=True)), **keys})
        for start in range(0, len(rows), 5000):
            conn.execute(update, rows[start : start + 5000])


def upgrade() -> None:
    for table in KEYS:
        for column in COLUMNS:
            op.add_column(
                table, sa.Column(column, sa.BigInteger(), nullable=False, server_default="0")
            )
    _cover(AFTER)
    _backfill(op.get_bind())


def downgrade() -> None:
    _cover(BEFORE)
    for table in KEYS:
        for column in COLUMNS:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
