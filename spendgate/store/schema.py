"""Table definitions (SQLAlchemy Core), shared by the stores and the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

metadata = sa.MetaData()

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    #: unique in the installation: ``bootstrap --org NAME`` and people find an org by name
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    #: the zone usage reports and statements are drawn in unless one is asked for
    sa.Column("reporting_timezone", sa.String(64), nullable=False, server_default="UTC"),
    sa.Column("week_start", sa.String(10), nullable=False, server_default="monday"),
    sa.Index("uq_orgs_name", "name", unique=True),
)

teams = sa.Table(
    "teams",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("email", sa.String(320), nullable=False),
    # the org role: org_admin | finance | member (none; team roles are per membership)
    sa.Column("role", sa.String(20), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("org_id", "email", name="uq_users_org_email"),
)

user_teams = sa.Table(
    "user_teams",
    metadata,
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), primary_key=True),
    # the user's role in this team: team_admin | viewer | member
    sa.Column("role", sa.String(20), nullable=False, server_default="member"),
)

agents = sa.Table(
    "agents",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), nullable=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

virtual_keys = sa.Table(
    "virtual_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("team_id", sa.String(40), sa.ForeignKey("teams.id"), nullable=True, index=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=True),
    sa.Column("agent_id", sa.String(40), sa.ForeignKey("agents.id"), nullable=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_prefix", sa.String(20), nullable=False),
    sa.Column("tags", JSONType, nullable=False),
    sa.Column("models", JSONType, nullable=False),
    sa.Column("allow_request_tags", sa.Boolean(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    #: the sweep's ``keys_expiring``: live keys by expiry (most keys have none)
    sa.Index(
        "ix_virtual_keys_expiring",
        "expires_at",
        sqlite_where=sa.text("revoked_at IS NULL AND expires_at IS NOT NULL"),
        postgresql_where=sa.text("revoked_at IS NULL AND expires_at IS NOT NULL"),
    ),
)

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("request_id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), nullable=False),
    sa.Column("team_id", sa.String(40), nullable=True),
    sa.Column("user_id", sa.String(40), nullable=True),
    sa.Column("agent_id", sa.String(40), nullable=True),
    sa.Column("key_id", sa.String(40), nullable=False),
    sa.Column("tags", JSONType, nullable=False),
    sa.Column("provider", sa.String(60), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("upstream_model", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("stream", sa.Boolean(), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("http_status", sa.Integer(), nullable=False),
    sa.Column("input_tokens", sa.BigInteger(), nullable=False),
    sa.Column("output_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
    sa.Column("cache_write_tokens", sa.BigInteger(), nullable=False),
    sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False),
    #: integer nano-dollars; NULL when the price is unknown (never a silent 0)
    sa.Column("cost_nanos", sa.BigInteger(), nullable=True),
    sa.Column("price_unknown", sa.Boolean(), nullable=False),
    sa.Column("usage_estimated", sa.Boolean(), nullable=False),
    sa.Column("latency_ms", sa.Integer(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=False),
    #: the provider reported more tokens than a call can use; the figures were clamped
    sa.Column("usage_implausible", sa.Boolean(), nullable=False, server_default=sa.false()),
    #: the shared counters (Redis) never saw this call's settle: admitted without Redis
    #: (fail-open) or a settle that could not reach it; ``Counters.catch_up`` adds it
    sa.Column("uncounted", sa.Boolean(), nullable=False, server_default=sa.false()),
    #: the part of ``cache_write_tokens`` written to Anthropic's 1-hour cache (priced
    #: above the 5-minute writes): with it a row's cost follows from its tokens
    sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    #: web searches a server-side search tool ran for the call, billed per search beside
    #: the tokens (migration 0028; 0 on rows from before it, when none was billed)
    sa.Column("web_searches", sa.BigInteger(), nullable=False, server_default="0"),
    #: the service tier or speed whose prices the call was billed at, as the price data
    #: names it (``service_tier=priority``, ``speed=fast``): the tier the provider
    #: reported, else the request's; NULL for the standard prices, and on rows from
    #: before migration 0029 (when none was recorded)
    sa.Column("price_context", sa.Text(), nullable=True),
    sa.Index("ix_ledger_started_at", "started_at"),
    sa.Index("ix_ledger_org_started", "org_id", "started_at"),
    sa.Index("ix_ledger_team_started", "team_id", "started_at"),
    sa.Index("ix_ledger_key_started", "key_id", "started_at"),
)

#: rows the database refused, set aside so the rest of their batch landed
ledger_rejected = sa.Table(
    "ledger_rejected",
    metadata,
    sa.Column("request_id", sa.String(100), primary_key=True),
    sa.Column("rejected_at", UTCDateTime(), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    #: the row as its spool record (JSON)
    sa.Column("record", sa.Text(), nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("type", sa.String(60), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("org_id", sa.String(40), nullable=True, index=True),
    #: a fact that must fire once (a threshold in a period) carries a unique key
    sa.Column("dedup_key", sa.String(300), nullable=True, unique=True),
    sa.Column("data", JSONType, nullable=False),
)

budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("scope_type", sa.String(10), nullable=False),
    sa.Column("scope_id", sa.String(40), nullable=True),
    sa.Column("tag", sa.String(64), nullable=True),
    sa.Column("period", sa.String(10), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("week_start", sa.String(10), nullable=False),
    sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
    #: percentages as decimal strings, exact
    sa.Column("alert_percentages", JSONType, nullable=False),
    sa.Column("soft_limit_percent", sa.String(20), nullable=False),
    sa.Column("hard_limit", sa.Boolean(), nullable=False),
    sa.Column("hard_limit_percent", sa.String(20), nullable=False),
    sa.Column("categories", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

budget_exceptions = sa.Table(
    "budget_exceptions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "budget_id",
        sa.String(40),
        sa.ForeignKey("budgets.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
    sa.Column("percent", sa.String(20), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("granted_by", sa.String(100), nullable=False),
    sa.Column("starts_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

wallets = sa.Table(
    "wallets",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("scope_type", sa.String(10), nullable=False),
    sa.Column("scope_id", sa.String(40), nullable=False),
    sa.Column("low_balance_nanos", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    #: a closed wallet is history: it governs no call, takes no top-up, stays readable
    sa.Column("closed_at", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=True),
    #: cost tickets: off (refuse only) | on (a refusal opens a ticket) | auto (and one
    #: asking less than ``ticket_auto_below_nanos`` is approved at once)
    sa.Column("ticket_mode", sa.String(10), nullable=False, server_default="off"),
    sa.Column("ticket_auto_below_nanos", sa.BigInteger(), nullable=True),
    #: one open wallet per scope (a closed one frees its scope for a new wallet)
    sa.Index(
        "uq_wallets_open_scope",
        "scope_type",
        "scope_id",
        unique=True,
        sqlite_where=sa.text("closed_at IS NULL"),
        postgresql_where=sa.text("closed_at IS NULL"),
    ),
)

wallet_topups = sa.Table(
    "wallet_topups",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("wallet_id", sa.String(40), sa.ForeignKey("wallets.id"), nullable=False, index=True),
    sa.Column("amount_nanos", sa.BigInteger(), nullable=False),
    sa.Column("note", sa.String(500), nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

#: cost tickets (``spendgate.store.tickets``): a call a wallet could not fund asks for
#: funding; an approval is a one-time grant reserved for the requester until it expires
wallet_tickets = sa.Table(
    "wallet_tickets",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("wallet_id", sa.String(40), sa.ForeignKey("wallets.id"), nullable=False),
    sa.Column("key_id", sa.String(40), nullable=False),
    sa.Column("team_id", sa.String(40), nullable=True),
    #: open | approved | denied | expired | superseded
    sa.Column("status", sa.String(12), nullable=False),
    #: the largest shortfall of the refused calls attached to it
    sa.Column("asked_nanos", sa.BigInteger(), nullable=False),
    sa.Column("refusals", sa.Integer(), nullable=False),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("last_request_id", sa.String(40), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("last_refused_at", UTCDateTime(), nullable=False),
    sa.Column("decided_by", sa.String(100), nullable=True),
    sa.Column("decided_at", UTCDateTime(), nullable=True),
    sa.Column("reason", sa.String(500), nullable=True),
    sa.Column("granted_nanos", sa.BigInteger(), nullable=True),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("closed_at", UTCDateTime(), nullable=True),
    #: what the grant paid for, written when it closed
    sa.Column("used_nanos", sa.BigInteger(), nullable=True),
    #: when the requester was told of the denial (its next refused call)
    sa.Column("denial_told_at", UTCDateTime(), nullable=True),
    #: one open ticket per wallet and requester key: repeated refusals attach to it
    sa.Index(
        "uq_wallet_tickets_open",
        "wallet_id",
        "key_id",
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    ),
    sa.Index("ix_wallet_tickets_wallet_status", "wallet_id", "status"),
)

rate_limits = sa.Table(
    "rate_limits",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("scope_type", sa.String(10), nullable=False),
    sa.Column("scope_id", sa.String(40), nullable=False),
    #: a model name or a shell pattern (``gpt-5*-mini``, ``*``)
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("rpm", sa.Integer(), nullable=True),
    sa.Column("tpm", sa.BigInteger(), nullable=True),
    sa.Column("max_concurrent", sa.Integer(), nullable=True),
    sa.Column("max_spend_nanos", sa.BigInteger(), nullable=True),
    sa.Column("spend_window_seconds", sa.Integer(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("scope_type", "scope_id", "model", name="uq_rate_limits_scope_model"),
)

admin_tokens = sa.Table(
    "admin_tokens",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False),
    sa.Column("token_prefix", sa.String(20), nullable=False),
    sa.Column("created_by", sa.String(80), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("token_hash", name="uq_admin_tokens_hash"),
)

# -- the web console (``spendgate.store.console_auth``) ----------------------------------
console_passwords = sa.Table(
    "console_passwords",
    metadata,
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("session_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
)

console_invites = sa.Table(
    "console_invites",
    metadata,
    sa.Column("invite_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("created_by", sa.String(60), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("used_at", UTCDateTime(), nullable=True),
)
