"""Admin API input and output shapes: strict (unknown fields refused), documented."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic import (
    Strict as PydanticStrict,
)

from spendgate.admin.decimal_fields import Money as Money  # re-exported: s.Money
from spendgate.admin.decimal_fields import MoneyOrZero as MoneyOrZero
from spendgate.admin.decimal_fields import Percent as Percent
from spendgate.core.budget_windows import validate_timezone

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ObjectId = Annotated[str, StringConstraints(min_length=1, max_length=40)]
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def in_range(value: datetime) -> datetime:
    """An instant given to the admin API, as aware UTC (naive means UTC), between 1970 and
    9000 — far enough for any expiry, and nowhere near the calendar's overflow."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    try:
        utc = aware.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("must be between 1970 and 9000") from exc
    if not EARLIEST <= utc < LATEST:
        raise ValueError("must be between 1970 and 9000")
    return utc


def iso_text(value: object) -> object:
    """Times are ISO 8601 text, as the schema says: pydantic would otherwise read a number,
    or a query string of digits, as Unix seconds (so ``-2e-288`` meant 1970-01-01)."""
    if isinstance(value, int | float) or (isinstance(value, str) and _is_number(value)):
        raise ValueError("must be an ISO 8601 date-time string, e.g. 2026-05-01T00:00:00Z")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


#: a yes/no given as input: JSON true or false only (not 0, 1 or "yes")
Flag = Annotated[bool, PydanticStrict()]


def not_a_flag(value: object) -> object:
    """A count is a number: pydantic would otherwise read ``true`` as 1 and ``false`` as 0
    (so ``"rpm": true`` made a limit of one request a minute)."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not true or false")
    return value


#: a whole number given as input: a JSON integer (or the digits a console form sends),
#: never true or false
Whole = Annotated[int, BeforeValidator(not_a_flag)]

#: a time given as input (bodies and query strings)
Instant = Annotated[datetime, BeforeValidator(iso_text), AfterValidator(in_range)]
Role = Literal["org_admin", "finance", "team_admin", "viewer", "member"]
TeamRole = Literal["team_admin", "viewer", "member"]
#: what a tag must look like (``error_message`` says it in words)
TAG_PATTERN = r"^[A-Za-z0-9_.:/=+-]{1,64}$"
Tag = Annotated[str, StringConstraints(pattern=TAG_PATTERN)]
#: what an email address must look like (``error_message`` says it in words)
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+$"
#: a pattern's rule in words, for the message of a value that does not match it
PATTERN_WORDS = {
    EMAIL_PATTERN: "not an email address",
    TAG_PATTERN: "not a tag (1 to 64 letters, digits or _ . : / = + -)",
}
#: pydantic's error types for text that is no date-time ("yesterday": "input is too short")
NOT_A_TIME = frozenset({"datetime_parsing", "datetime_from_date_parsing", "datetime_type"})


def error_message(error: Mapping[str, Any]) -> str:
    """One pydantic error (``ValidationError.errors()[i]``) as a person reads it: a
    validator's own message without pydantic's "Value error, ", a time or a pattern
    (email, tag) said in words rather than as a regular expression. The admin API's
    422s and the console's forms say the same."""
    kind, given = error.get("type"), repr(error.get("input"))[:100]
    if kind in NOT_A_TIME and error.get("input") is None:
        return "required: a date-time such as 2026-05-01T00:00:00Z"
    if kind == "string_too_short" and error.get("input") == "":
        return "required"
    if kind in NOT_A_TIME:
        return f"not an ISO 8601 date-time such as 2026-05-01T00:00:00Z: {given}"
    pattern = (error.get("ctx") or {}).get("pattern")
    if kind == "string_pattern_mismatch" and pattern in PATTERN_WORDS:
        return f"{PATTERN_WORDS[pattern]}: {given}"
    return str(error.get("msg", "invalid input")).removeprefix("Value error, ")


Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=320, pattern=EMAIL_PATTERN),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Patch(Strict):
    """A partial update: a field left out is unchanged; an explicit ``null`` is accepted
    only where it means something (``nullable``: e.g. "no rpm limit"), else 422."""

    nullable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*")
    @classmethod
    def _no_stray_nulls(cls, value: Any, info: ValidationInfo) -> Any:
        """Per field (only those sent), so the 422 names it in ``param``."""
        if value is None and info.field_name not in cls.nullable:
            raise ValueError("may be left out but not set to null")
        return value


class OrgIn(Strict):
    name: Name


class Org(BaseModel):
    id: str
    name: str
    created_at: datetime
    #: usage reports and statements are drawn in this zone unless one is asked for
    reporting_timezone: str = "UTC"
    week_start: str = "monday"


class TeamIn(Strict):
    name: Name
    org_id: ObjectId


class Team(BaseModel):
    id: str
    org_id: str
    name: str
    created_at: datetime


class MembershipIn(Strict):
    """A user's role in one team."""

    team_id: ObjectId
    role: TeamRole


class MembershipRole(Strict):
    role: TeamRole


class Membership(BaseModel):
    team_id: str
    role: str


class UserIn(Strict):
    """``role`` + ``team_ids``: an org role (with ``member`` in the teams), or one team
    role given in every team; ``memberships``: a role per team (``role`` then only an org
    role). Not both ``team_ids`` and ``memberships``."""

    email: Email
    role: Role = "member"
    team_ids: Annotated[list[ObjectId], Field(max_length=100)] = []
    memberships: Annotated[list[MembershipIn], Field(max_length=100)] = []
    org_id: ObjectId | None = None


class UserPatch(Patch):
    """Change a user's role or teams (audited as ``user.role_changed`` / ``user.updated``).

    An org admin's ``role``: an org role sets it; a team role replaces the org role and
    becomes the role in every team. A team admin's ``role`` (team roles only) applies to
    the user's memberships in the caller's own teams. ``team_ids`` replaces the set of
    teams; a new team gets the team role sent along, else the user's single team role,
    else ``member``. Per-team roles: ``PUT /admin/users/{id}/memberships/{team_id}``."""

    role: Role | None = None
    team_ids: Annotated[list[ObjectId], Field(max_length=100)] | None = None


class TokenIn(Strict):
    """An admin token for a user (yourself unless you are an org admin)."""

    user_id: ObjectId
    name: Name
    expires_at: Instant | None = None


class Token(BaseModel):
    id: str
    org_id: str
    user_id: str
    name: str
    token_prefix: str
    status: Literal["active", "expired", "revoked"]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenWithSecret(Token):
    token: str = Field(description="The token itself: shown once, only in this answer")


class User(BaseModel):
    id: str
    org_id: str
    email: str
    role: str = Field(
        description="one word for the user's standing: the org role if any, else the "
        "highest team role"
    )
    org_role: str = Field(description="org_admin | finance | member (no org-wide role)")
    team_ids: list[str]
    memberships: list[Membership] = Field(description="the user's role in each team")
    created_at: datetime


class AgentIn(Strict):
    name: Name
    team_id: ObjectId | None = None
    org_id: ObjectId | None = None


class Agent(BaseModel):
    id: str
    org_id: str
    team_id: str | None
    name: str
    created_at: datetime


class KeyIn(Strict):
    name: Name
    org_id: ObjectId
    team_id: ObjectId | None = None
    user_id: ObjectId | None = None
    agent_id: ObjectId | None = None
    tags: Annotated[list[Tag], Field(max_length=20)] = []
    models: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=200)]], Field(max_length=500)
    ] = []
    allow_request_tags: Flag = False
    expires_at: Instant | None = None


class KeyPatch(Patch):
    """Change when a key stops working: a future instant (naive means UTC), or ``null``
    for never. Audited as ``key.updated``."""

    nullable = frozenset({"expires_at"})

    expires_at: Instant | None = None


class Key(BaseModel):
    id: str
    org_id: str
    team_id: str | None
    user_id: str | None
    agent_id: str | None
    name: str
    key_prefix: str
    tags: list[str]
    models: list[str]
    allow_request_tags: bool
    expires_at: datetime | None
    revoked_at: datetime | None
    status: str
    created_at: datetime


class KeyWithSecret(Key):
    key: str = Field(description="The secret, shown this once; only its hash is stored.")


class UsageRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    #: the part of ``cache_write_tokens`` written to Anthropic's 1-hour cache
    cache_write_1h_tokens: int
    reasoning_tokens: int
    #: web searches a server-side search tool ran, billed per search beside the tokens
    web_searches: int
    cost_usd: str
    unpriced_requests: int
    #: the calls billed on an estimate (the ledger's ``usage_estimated``) and their cost,
    #: part of ``cost_usd``
    estimated_calls: int
    estimated_usd: str


class UsageReport(BaseModel):
    group_by: list[str]
    start: datetime | None
    end: datetime | None
    #: the zone the time grains are drawn in
    timezone: str | None = None
    rows: list[UsageRow]
    total_cost_usd: str
    unpriced_requests: int
    #: the calls billed on an estimate and their cost, part of ``total_cost_usd``
    estimated_calls: int
    total_estimated_usd: str
    #: the web searches of the report's calls (each call once, also grouped by tag)
    web_searches: int


class Event(BaseModel):
    id: str
    type: str
    timestamp: datetime
    org_id: str | None
    data: dict[str, object]


class ErrorDetail(BaseModel):
    message: str
    code: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


#: the error answers every admin route may give, for the OpenAPI document
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422, 429)
}


def iana_zone(name: str) -> str:
    """A time zone field: an IANA name (``Europe/Berlin``, ``UTC``), nothing else."""
    return validate_timezone(name)


#: a time zone given as input: an IANA name (``localtime``, ``Factory``, ``+02:00`` refused)
Zone = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(iana_zone)]


class OrgPatch(Strict):
    reporting_timezone: Zone | None = None
    week_start: (
        Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] | None
    ) = None


class CategoriesIn(Strict):
    providers: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=60)]], Field(max_length=50)
    ] = []
    models: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=200)]], Field(max_length=200)
    ] = []
    kinds: list[Literal["chat", "completion", "embedding", "response", "message"]] = []
    tags: Annotated[list[Tag], Field(max_length=50)] = []


class BudgetIn(Strict):
    name: Name | None = None
    org_id: ObjectId | None = Field(None, description="Required for tag scope; else implied")
    scope_type: Literal["org", "team", "user", "agent", "key", "tag"]
    scope_id: ObjectId | None = None
    tag: Tag | None = None
    period: Literal["daily", "weekly", "monthly"] = "monthly"
    timezone: Zone = "UTC"
    week_start: Literal[
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"
    ] = "monday"
    amount_usd: Money
    alert_percentages: Annotated[list[Percent], Field(max_length=20)] = [
        Decimal(50),
        Decimal(75),
        Decimal(90),
    ]
    soft_limit_percent: Percent = Decimal(75)
    hard_limit: Flag = False
    hard_limit_percent: Percent = Decimal(100)
    categories: CategoriesIn = CategoriesIn()


class BudgetPatch(Patch):
    name: Name | None = None
    period: Literal["daily", "weekly", "monthly"] | None = None
    timezone: Zone | None = None
    week_start: (
        Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"] | None
    ) = None
    amount_usd: Money | None = None
    alert_percentages: Annotated[list[Percent], Field(max_length=20)] | None = None
    soft_limit_percent: Percent | None = None
    hard_limit: Flag | None = None
    hard_limit_percent: Percent | None = None
    categories: CategoriesIn | None = None


class BudgetOut(BaseModel):
    id: str
    org_id: str
    name: str
    scope_type: str
    scope_id: str | None
    tag: str | None
    period: str
    timezone: str
    week_start: str
    amount_usd: str
    alert_percentages: list[str]
    soft_limit_percent: str
    hard_limit: bool
    hard_limit_percent: str
    categories: dict[str, list[str]]
    created_at: datetime
    updated_at: datetime
    warnings: list[str] = Field(
        default_factory=list,
        description="providers or models it names that the config no longer has: it "
        "counts or governs no call of them",
    )


class ForecastOut(BaseModel):
    budget_id: str
    period_key: str
    generated_at: datetime
    method: str = Field(
        description="none | today_rate | trailing_mean | seasonal_naive | ets_damped"
    )
    history_days: int = Field(description="complete days of spend the forecast is based on")
    confidence: Literal["low", "normal"] = Field(
        description="low with under a week of complete days: a rough guess, a wide interval"
    )
    spent_usd: str = Field(
        description="spend so far in the period: as of now if more than when computed"
    )
    p10_usd: str = Field(description="never below spent_usd (a floor for every quantile)")
    p50_usd: str = Field(
        description="expected period-end spend (recorded: never above the hard cap, "
        "never below spent_usd)"
    )
    p90_usd: str
    amount_usd: str = Field(
        description="the budget amount with the exceptions active now (a forecast of "
        "another amount is recomputed when read)"
    )
    percent_of_budget: str = Field(description="P50 as a percentage of amount_usd")
    limit_usd: str = Field(description="the hard cap, or the amount for observing budgets")
    hard_cap_usd: str | None = Field(
        description="the hard cap recorded spend stops at; null: observation only"
    )
    hits_hard_cap_on: date | None = Field(
        description="local date P50 reaches the hard cap, after which calls are refused"
    )
    uncapped_p50_usd: str = Field(description="P50 of what the period would cost without a cap")
    outlook: str = Field(description="where the period is heading, in one sentence")
    crossings: dict[str, date | None] = Field(
        description="threshold name → local date it is (or was) reached; null: not by P50"
    )
    overrun_band: int | None = Field(
        description="highest budget.forecast_overrun band (% of limit) announced this period: "
        "100 (announced once a period), or a higher band of forecast_overrun_escalation; "
        "null: none this period"
    )


class BudgetStatus(BaseModel):
    budget_id: str
    period_key: str
    period_start: datetime
    period_end: datetime
    period_start_local: str
    period_end_local: str
    next_reset: datetime
    amount_usd: str
    effective_amount_usd: str
    spent_usd: str
    reserved_usd: str
    percent_used: str
    hard_limit: bool
    hard_limit_usd: str | None
    remaining_to_soft_usd: str
    remaining_to_hard_usd: str | None
    thresholds_fired: list[str]
    active_exceptions: int
    refusing_since: datetime | None = Field(
        None,
        description="when the hard cap in force now first refused a call this period (a "
        "call whose worst case, prompt estimate + max_tokens, was over what spend left; "
        "not one refused only for the holds of calls in flight); "
        "also a refusal at a higher cap this period (an exception ran out, the amount was "
        "lowered) for a call that fits the cap now: spend never falls, so it is refused "
        "again; null: none (raising the cap clears it)",
    )
    refused_worst_case_usd: str | None = Field(
        None, description="the worst case of that refused call; null with refusing_since"
    )
    state: Literal["ok", "at_risk", "over_soft_limit", "refusing", "blocked"] = Field(
        description="worst first: blocked (spent + reserved reached the hard cap: every call "
        "is refused), refusing (the hard cap in force now refused a call this period, see "
        "refusing_since: calls whose worst case is over remaining_to_hard_usd are refused, "
        "smaller ones pass), over_soft_limit (spent), at_risk (forecast P50 at or above the "
        "amount), ok"
    )
    forecast: ForecastOut | None = Field(
        None,
        description="the latest forecast of this period (refreshed on a schedule; "
        "recomputed when read after the amount, exceptions or levels changed) as of now: "
        "never below spent_usd, its % of the current effective amount",
    )


class ExceptionIn(Strict):
    amount_usd: Money | None = None
    percent: Percent | None = None
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    starts_at: Instant | None = None
    expires_at: Instant


class ExceptionOut(BaseModel):
    id: str
    budget_id: str
    amount_usd: str
    percent: str
    reason: str
    granted_by: str
    starts_at: datetime
    expires_at: datetime
    created_at: datetime


TicketMode = Literal["off", "on", "auto"]
TICKET_MODE_DOC = (
    "cost tickets: off (a call the wallet cannot fund gets 402), on (the 402 opens a "
    "ticket an approver can fund), auto (and a ticket asking less than "
    "tickets_auto_approve_below_usd is approved at once)"
)


class WalletIn(Strict):
    name: Name | None = None
    scope_type: Literal["org", "team", "key"]
    scope_id: ObjectId
    low_balance_usd: MoneyOrZero = Decimal(0)
    initial_topup_usd: Money | None = None
    tickets: TicketMode = Field("off", description=TICKET_MODE_DOC)
    tickets_auto_approve_below_usd: Money | None = None


class WalletPatch(Patch):
    nullable = frozenset({"tickets_auto_approve_below_usd"})

    name: Name | None = None
    low_balance_usd: MoneyOrZero | None = None
    tickets: TicketMode | None = Field(None, description=TICKET_MODE_DOC)
    tickets_auto_approve_below_usd: Money | None = None


class WalletOut(BaseModel):
    id: str
    org_id: str
    name: str
    scope_type: str
    scope_id: str
    low_balance_usd: str
    topped_up_usd: str
    spent_usd: str
    reserved_usd: str
    balance_usd: str
    status: Literal["open", "closed"] = Field(
        description="open: funds (and refuses) its scope's calls; closed: history only"
    )
    notice: str | None = Field(
        None, description="what this wallet does to its scope's calls now, when it refuses them"
    )
    tickets: str = "off"
    tickets_auto_approve_below_usd: str | None = None
    created_at: datetime
    updated_at: datetime | None
    closed_at: datetime | None


class TopupIn(Strict):
    amount_usd: Money
    note: Annotated[str, StringConstraints(max_length=500)] = ""


class TopupOut(BaseModel):
    id: str
    wallet_id: str
    amount_usd: str
    note: str
    created_by: str
    created_at: datetime


class RateLimitIn(Strict):
    scope_type: Literal["key", "team"]
    scope_id: ObjectId
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] = "*"
    rpm: Annotated[Whole, Field(ge=1, le=10_000_000)] | None = None
    tpm: Annotated[Whole, Field(ge=1, le=10_000_000_000)] | None = None
    max_concurrent: Annotated[Whole, Field(ge=1, le=100_000)] | None = None
    max_spend_usd: Money | None = None
    spend_window_seconds: Annotated[Whole, Field(ge=1, le=86_400)] = 600


class RateLimitPatch(Patch):
    nullable = frozenset({"rpm", "tpm", "max_concurrent", "max_spend_usd"})
    rpm: Annotated[Whole, Field(ge=1, le=10_000_000)] | None = None
    tpm: Annotated[Whole, Field(ge=1, le=10_000_000_000)] | None = None
    max_concurrent: Annotated[Whole, Field(ge=1, le=100_000)] | None = None
    max_spend_usd: Money | None = None
    spend_window_seconds: Annotated[Whole, Field(ge=1, le=86_400)] | None = None


class RateLimitOut(BaseModel):
    id: str
    org_id: str
    scope_type: str
    scope_id: str
    model: str
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    max_spend_usd: str | None
    spend_window_seconds: int
    created_at: datetime
    updated_at: datetime
    warnings: list[str] = Field(
        default_factory=list,
        description="why the row limits no call: its model is no longer configured, its "
        "pattern matches no configured model, or a more specific row of its key or team "
        "governs each configured model it matches",
    )
