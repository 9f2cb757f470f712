"""``sg_sum8``: a sum of BIGINTs that stays a BIGINT, for the usage reports (PostgreSQL).

Revision ID: 0021_sum8
Revises: 0020_team_daily

PostgreSQL's ``sum(bigint)`` adds in 128 bits and returns a ``numeric``, which a report
casts back to BIGINT: over the ~20,000 groups of a month by team x model x day that
widening and narrowing was most of the aggregation's time (the daily query 109 ms ->
68-76 ms under ``EXPLAIN ANALYZE`` with this aggregate). ``int8pl`` is BIGINT's own
``+``: it raises "bigint out of range" on overflow, as the cast back did, and never
rounds. Rollup sums stay far below 2^63 (money is stored as whole dollars plus nanos).
SQLite's ``sum`` of integers is already a 64-bit integer: nothing to do there.
"""

from alembic import op

revision = "0021_sum8"
down_revision = "0020_team_daily"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE AGGREGATE sg_sum8(bigint) (SFUNC = int8pl, STYPE = bigint)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP AGGREGATE IF EXISTS sg_sum8(bigint)")
