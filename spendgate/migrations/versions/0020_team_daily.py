"""The daily narrow rollup: org x local day x team x provider x model x kind x status.

Revision ID: 0020_team_daily
Revises: 0019_uncounted

``usage_team_daily`` (``spendgate.store.rollups``): the narrow rollup's rows summed per
*local day* of the org's reporting zone, which ``usage_report`` reads for days, weeks and
months in that zone (a month is ~30 rows per team x model instead of ~3,000).
``usage_daily_zone``: the zone each org's daily rows are in. Both filled here: a zone row
for every org with narrow rollup rows or in the directory (its ``reporting_timezone``;
UTC for an org the directory does not know), and each org's daily rows folded from its
``usage_team_rollup`` rows by one ``INSERT … SELECT … GROUP BY`` per org. From now on the
ledger writer adds to it in each batch's transaction (``spendgate.store.daily``).
"""

import sqlalchemy as sa
from alembic import op

from spendgate.core import showback as sb
from spendgate.store import rollups

revision = "0020_team_daily"
down_revision = "0019_uncounted"
branch_labels = None
depends_on = None

#: the narrow and daily rollups' keys and the rollups' sums at this revision
#: (``spendgate.store.rollups`` has grown since: 0024)
NARROW_KEY = ("org_id", "bucket", "team_id", "provider", "model", "kind", "status")
DAILY_KEY = ("org_id", "day", "team_id", "model", "provider", "kind", "status")
STORED = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "cost_nanos",
    "unpriced_calls",
)


def upgrade() -> None:
    op.create_table(
        "usage_team_daily",
        sa.Column("org_id", sa.String(200), nullable=False),
        sa.Column("day", sa.BigInteger(), nullable=False, autoincrement=False),
        *(sa.Column(c, sa.String(200), nullable=False) for c in DAILY_KEY[2:]),
        *(sa.Column(c, sa.BigInteger(), nullable=False) for c in STORED),
        sa.PrimaryKeyConstraint(
            *DAILY_KEY, name="pk_usage_team_daily", postgresql_include=list(STORED)
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_daily_zone",
        sa.Column("org_id", sa.String(200), primary_key=True),
        sa.Column("timezone", sa.String(64), nullable=False),
    )
    conn = op.get_bind()
    spans = conn.execute(
        sa.text("SELECT org_id, min(bucket), max(bucket) FROM usage_team_rollup GROUP BY org_id")
    ).all()
    zones: dict[str, str] = dict(
        conn.execute(sa.text("SELECT id, reporting_timezone FROM orgs")).all()
    )
    for org in sorted(set(zones) | {org for org, _, _ in spans}):
        conn.execute(
            sa.text("INSERT INTO usage_daily_zone (org_id, timezone) VALUES (:o, :z)"),
            {"o": org, "z": zones.get(org) or "UTC"},
        )
    n = sa.table("usage_team_rollup", *(sa.column(c) for c in (*NARROW_KEY, *STORED)))
    d = sa.table("usage_team_daily", *(sa.column(c) for c in (*DAILY_KEY, *STORED)))
    for org, low, high in spans:
        segments = sb.offset_segments(int(low), int(high) + 1, zones.get(org) or "UTC")
        conn.execute(rollups.fold_daily(segments, n.c.org_id == org, source=n, into=d))


def downgrade() -> None:
    op.drop_table("usage_daily_zone")
    op.drop_table("usage_team_daily")
