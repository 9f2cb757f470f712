"""Tables for chargeback and ledger retention (created by migration 0013).

::

    statements          one row per issued statement version: frozen content (canonical
                        JSON) and its SHA-256; UPDATE and DELETE refused by triggers
    statement_months    one row per closed month of an org; also append-only
    allocation_rules    how spend no team owns is shared out (ordered per org)
    ledger_retention    one row (id 1): raw ledger rows before ``purged_before`` are gone

A team statement has ``team_id`` set; the org statement has ``team_id = ""``.
"""

from __future__ import annotations

import sqlalchemy as sa

from spendgate.store.schema import JSONType, UTCDateTime, metadata

statements = sa.Table(
    "statements",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), nullable=False),
    sa.Column("team_id", sa.String(40), nullable=False),
    sa.Column("month", sa.String(7), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    #: the total as whole dollars and the nanos below them (migration 0018), like the
    #: rollups: one BIGINT of nanos overflows past $9.2 billion
    sa.Column("total_whole_usd", sa.BigInteger(), nullable=False),
    sa.Column("total_rest_nanos", sa.BigInteger(), nullable=False),
    sa.Column("content", sa.Text(), nullable=False),
    sa.Column("content_hash", sa.String(64), nullable=False),
    sa.Column("supersedes", sa.String(40), nullable=True),
    #: against the version it supersedes (JSON); NULL on version 1
    sa.Column("diff", sa.Text(), nullable=True),
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("org_id", "team_id", "month", "version", name="uq_statements_version"),
    sa.Index("ix_statements_org_month", "org_id", "month"),
)

statement_months = sa.Table(
    "statement_months",
    metadata,
    sa.Column("org_id", sa.String(40), primary_key=True),
    sa.Column("month", sa.String(7), primary_key=True),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("closed_by", sa.String(200), nullable=False),
    sa.Column("closed_at", UTCDateTime(), nullable=False),
)

allocation_rules = sa.Table(
    "allocation_rules",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    #: rules are tried in this order; the first that matches a call's spend takes it
    sa.Column("position", sa.Integer(), nullable=False),
    #: the spend it covers: that of calls without a team carrying this tag; NULL: any
    sa.Column("tag", sa.String(64), nullable=True),
    #: proportional | fixed | even
    sa.Column("method", sa.String(20), nullable=False),
    #: fixed: {team_id: "percent"}; even/proportional: {team_id: ""} (empty: all teams)
    sa.Column("shares", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

ledger_retention = sa.Table(
    "ledger_retention",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("purged_before", UTCDateTime(), nullable=False),
)

#: the tables whose rows never change once written
FROZEN_TABLES = ("statements", "statement_months")
