"""Budget rules (pure): which budgets apply, where the caps and thresholds lie."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spendgate.core.budget_rules import (
    Budget,
    Categories,
    Raise,
    Subject,
    Threshold,
    applies,
    counts,
    crossed,
    dimensions,
    effective_amount,
    fail_open_cap,
    hard_cap_nanos,
    percent_used,
    reached,
    thresholds,
    validate_levels,
)

D = Decimal
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
T0 = datetime(2026, 3, 1, tzinfo=UTC)
T1 = datetime(2026, 3, 8, tzinfo=UTC)
US = timedelta(microseconds=1)

SUBJECT = Subject(
    org_id="org_a",
    team_id="team_1",
    user_id="user_1",
    agent_id="agent_1",
    key_id="key_1",
    tags=("prod", "search"),
    provider="openai",
    model="gpt-4o-mini",
    kind="chat",
)


def subject(**changes: Any) -> Subject:
    """The reference caller with some fields changed."""
    return msgspec.structs.replace(SUBJECT, **changes)


def budget(**changes: Any) -> Budget:
    """An org-wide monthly $1-ish budget (1000 nanos) with some fields changed."""
    base = Budget(
        id="bud_1",
        org_id="org_a",
        scope_type="org",
        scope_id="org_a",
        tag=None,
        period="monthly",
        timezone="UTC",
        week_start="monday",
        amount_nanos=1000,
    )
    return replace(base, **changes)


def scoped(scope_type: str, scope_id: str | None, **changes: Any) -> Budget:
    """A budget scoped to ``scope_type``/``scope_id``."""
    return budget(scope_type=scope_type, scope_id=scope_id, **changes)


# --- applies / counts --------------------------------------------------------------------

SCOPE_CASES = [
    ("org_match", scoped("org", "org_a"), SUBJECT, True),
    ("org_other", scoped("org", "org_b"), SUBJECT, False),
    ("team_match", scoped("team", "team_1"), SUBJECT, True),
    ("team_other", scoped("team", "team_2"), SUBJECT, False),
    ("team_none_on_subject", scoped("team", "team_1"), subject(team_id=None), False),
    ("team_none_on_both", scoped("team", None), subject(team_id=None), False),
    ("user_match", scoped("user", "user_1"), SUBJECT, True),
    ("user_other", scoped("user", "user_2"), SUBJECT, False),
    ("user_none_on_both", scoped("user", None), subject(user_id=None), False),
    ("agent_match", scoped("agent", "agent_1"), SUBJECT, True),
    ("agent_other", scoped("agent", "agent_2"), SUBJECT, False),
    ("agent_none_on_both", scoped("agent", None), subject(agent_id=None), False),
    ("key_match", scoped("key", "key_1"), SUBJECT, True),
    ("key_other", scoped("key", "key_2"), SUBJECT, False),
    ("tag_match", scoped("tag", None, tag="prod"), SUBJECT, True),
    ("tag_second_of_many", scoped("tag", None, tag="search"), SUBJECT, True),
    ("tag_absent", scoped("tag", None, tag="batch"), SUBJECT, False),
    ("tag_no_tags", scoped("tag", None, tag="prod"), subject(tags=()), False),
    ("tag_in_other_org", scoped("tag", None, tag="prod", org_id="org_b"), SUBJECT, False),
    # Scope and categories combined: both must hold.
    (
        "key_match_provider_mismatch",
        scoped("key", "key_1", categories=Categories(providers=("anthropic",))),
        SUBJECT,
        False,
    ),
    (
        "team_match_model_pattern_match",
        scoped("team", "team_1", categories=Categories(models=("gpt-4o*",))),
        SUBJECT,
        True,
    ),
    (
        "tag_match_kind_mismatch",
        scoped("tag", None, tag="prod", categories=Categories(kinds=("embedding",))),
        SUBJECT,
        False,
    ),
    (
        "user_other_categories_match",
        scoped("user", "user_2", categories=Categories(providers=("openai",))),
        SUBJECT,
        False,
    ),
]


@pytest.mark.parametrize(
    ("the_budget", "the_subject", "expected"),
    [case[1:] for case in SCOPE_CASES],
    ids=[case[0] for case in SCOPE_CASES],
)
def test_applies_by_scope(the_budget: Budget, the_subject: Subject, expected: bool) -> None:
    """A budget applies when its scope names the caller (never via a missing id) and the
    call falls in its categories; a tag budget only inside its own org."""
    assert applies(the_budget, the_subject) is expected


CLAUDE = subject(provider="anthropic", model="claude-3-opus-20240229", kind="chat")

CATEGORY_CASES = [
    ("empty_counts_everything", Categories(), SUBJECT, True),
    ("provider_listed", Categories(providers=("anthropic", "openai")), SUBJECT, True),
    ("provider_not_listed", Categories(providers=("anthropic",)), SUBJECT, False),
    ("model_exact", Categories(models=("gpt-4o-mini",)), SUBJECT, True),
    ("model_exact_is_not_prefix", Categories(models=("gpt-4o",)), SUBJECT, False),
    ("model_star_suffix", Categories(models=("gpt-4o*",)), SUBJECT, True),
    ("model_star_suffix_bare", Categories(models=("gpt-4o*",)), subject(model="gpt-4o"), True),
    ("model_star_suffix_other", Categories(models=("gpt-4o*",)), subject(model="gpt-4.1"), False),
    ("model_is_case_sensitive", Categories(models=("gpt-4o*",)), subject(model="GPT-4o"), False),
    ("model_inner_star", Categories(models=("claude-*-opus*",)), CLAUDE, True),
    (
        "model_inner_star_needs_dash_before_opus",
        Categories(models=("claude-*-opus*",)),
        subject(model="claude-opus-4-1"),
        False,
    ),
    (
        "model_inner_star_other_family",
        Categories(models=("claude-*-opus*",)),
        subject(model="claude-3-5-sonnet"),
        False,
    ),
    ("model_any_pattern", Categories(models=("claude-*", "gpt-4o*")), SUBJECT, True),
    ("kind_listed", Categories(kinds=("chat", "responses")), SUBJECT, True),
    ("kind_not_listed", Categories(kinds=("embedding",)), SUBJECT, False),
    ("tags_overlap", Categories(tags=("batch", "search")), SUBJECT, True),
    ("tags_disjoint", Categories(tags=("batch",)), SUBJECT, False),
    ("tags_subject_untagged", Categories(tags=("prod",)), subject(tags=()), False),
    (
        "all_lists_match",
        Categories(
            providers=("anthropic",), models=("claude-*-opus*",), kinds=("chat",), tags=("prod",)
        ),
        CLAUDE,
        True,
    ),
    (
        "all_lists_but_tags_match",
        Categories(
            providers=("anthropic",), models=("claude-*-opus*",), kinds=("chat",), tags=("dev",)
        ),
        CLAUDE,
        False,
    ),
    (
        "all_lists_but_provider_match",
        Categories(providers=("openai",), models=("claude-*",), kinds=("chat",), tags=("prod",)),
        CLAUDE,
        False,
    ),
    (
        "model_matches_other_provider",
        Categories(providers=("openai",), models=("gpt-4o*",)),
        subject(provider="azure"),
        False,
    ),
]


@pytest.mark.parametrize(
    ("categories", "the_subject", "expected"),
    [case[1:] for case in CATEGORY_CASES],
    ids=[case[0] for case in CATEGORY_CASES],
)
def test_counts_by_category(categories: Categories, the_subject: Subject, expected: bool) -> None:
    """Spend counts only when it matches every non-empty list; models are shell patterns
    matched case-sensitively; tags need any overlap."""
    assert counts(categories, the_subject) is expected
    # applies() is scope AND counts(): with a matching org scope the answer is the same.
    assert applies(budget(categories=categories), the_subject) is expected


#: each report dimension's ``Subject`` field, and values a subject may hold in it
FIELDS = {
    "org": ("org_id", ["org_a", "org_b"]),
    "team": ("team_id", ["team_1", "team_2", None]),
    "user": ("user_id", ["user_1", None]),
    "agent": ("agent_id", ["agent_1", None]),
    "key": ("key_id", ["key_1", "key_2", ""]),
    "tag": ("tags", [(), ("prod",), ("prod", "search"), ("batch",)]),
    "provider": ("provider", ["openai", "azure"]),
    "model": ("model", ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5"]),
    "kind": ("kind", ["chat", "embeddings"]),
}
SCOPES = {
    "org": ["org_a", "org_b"],
    "team": ["team_1", "team_2"],
    "user": ["user_1"],
    "agent": ["agent_1"],
    "key": ["key_1", "key_2"],
    "tag": ["prod", "batch"],
}


@st.composite
def budgets_and_subjects(draw: st.DrawFn) -> tuple[Budget, Subject, Subject]:
    """A budget of any scope and categories, a subject, and the same subject with every
    field *outside* the budget's ``dimensions`` drawn again."""
    scope = draw(st.sampled_from(sorted(SCOPES)))
    target = draw(st.sampled_from(SCOPES[scope]))
    categories = Categories(
        providers=tuple(draw(st.lists(st.sampled_from(["openai", "azure"]), max_size=1))),
        models=tuple(draw(st.lists(st.sampled_from(["gpt-4o*", "claude-*"]), max_size=2))),
        kinds=tuple(draw(st.lists(st.sampled_from(["chat", "embeddings"]), max_size=1))),
        tags=tuple(draw(st.lists(st.sampled_from(["prod", "search"]), max_size=2))),
    )
    if scope == "tag":
        the_budget = scoped("tag", None, tag=target, categories=categories)
    else:
        the_budget = scoped(scope, target, categories=categories)
    values = {dim: draw(st.sampled_from(options)) for dim, (_, options) in FIELDS.items()}
    others = {dim: draw(st.sampled_from(options)) for dim, (_, options) in FIELDS.items()}
    kept = dimensions(the_budget)
    changed = {d: values[d] if d in kept else others[d] for d in FIELDS}
    one, two = ({FIELDS[d][0]: v[d] for d in FIELDS} for v in (values, changed))
    return the_budget, Subject(**one), Subject(**two)


@PROPERTY
@given(budgets_and_subjects())
def test_applies_compares_only_the_budgets_dimensions(
    drawn: tuple[Budget, Subject, Subject],
) -> None:
    """A reader may sum stored spend by a budget's ``dimensions`` alone (an org or team
    budget naming no tag: the narrow rollups, without user, agent, key or tags) and ask
    ``applies`` of each sum: no field outside them changes its answer."""
    the_budget, one, two = drawn
    assert applies(the_budget, one) is applies(the_budget, two)


@pytest.mark.parametrize(
    ("the_budget", "expected"),
    [
        (scoped("org", "org_a"), {"org"}),
        (scoped("team", "team_1", categories=Categories(models=("gpt-4o*",))), {"team", "model"}),
        (scoped("key", "key_1", categories=Categories(kinds=("chat",))), {"key", "kind"}),
        (scoped("tag", None, tag="prod"), {"tag", "org"}),
        (
            scoped("org", "org_a", categories=Categories(("openai",), ("o*",), ("chat",), ("x",))),
            {"org", "provider", "model", "kind", "tag"},
        ),
    ],
)
def test_dimensions_are_the_scope_and_each_kind_of_category(
    the_budget: Budget, expected: set[str]
) -> None:
    assert dimensions(the_budget) == expected


# --- effective_amount --------------------------------------------------------------------


def raise_(amount: int = 0, percent: str = "0", start: datetime = T0, end: datetime = T1) -> Raise:
    """A temporary exception over ``[start, end)``."""
    return Raise(amount_nanos=amount, percent=D(percent), starts_at=start, expires_at=end)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (T0 - US, 1000),
        (T0, 1500),
        (T0 + timedelta(days=3), 1500),
        (T1 - US, 1500),
        (T1, 1000),
        (T1 + timedelta(days=30), 1000),
    ],
    ids=["before_start", "at_start", "inside", "last_instant", "at_expiry", "long_after"],
)
def test_raise_counts_only_inside_its_half_open_interval(at: datetime, expected: int) -> None:
    """A raise is active from ``starts_at`` (inclusive) to ``expires_at`` (exclusive)."""
    assert effective_amount(budget(amount_nanos=1000), [raise_(amount=500)], at) == expected


@pytest.mark.parametrize(
    ("amount", "raises", "expected"),
    [
        (1000, [], 1000),
        (1000, [raise_(amount=5), raise_(percent="10")], 1105),
        (1000, [raise_(amount=5, percent="10")], 1105),
        (1000, [raise_(amount=5), raise_(amount=7), raise_(percent="50")], 1512),
        (1000, [raise_(amount=5), raise_(amount=900, start=T1, end=T1 + timedelta(days=1))], 1005),
        (1000, [raise_(percent="50", start=T0 - timedelta(days=9), end=T0)], 1000),
        (1005, [raise_(percent="10")], 1105),  # 100.5 -> 100
        (1000, [raise_(percent="33.333")], 1333),  # 333.33 -> 333
        (3, [raise_(percent="0.5")], 3),  # 0.015 -> 0
        (1005, [raise_(percent="10"), raise_(percent="10")], 1205),  # floored per raise
        (999, [raise_(percent="100")], 1998),
    ],
    ids=[
        "no_raises",
        "amount_plus_percent_raises",
        "amount_and_percent_in_one_raise",
        "three_raises_add_up",
        "future_raise_ignored",
        "expired_raise_ignored",
        "percent_floored",
        "fractional_percent_floored",
        "tiny_percent_floors_to_zero",
        "each_raise_floored_separately",
        "doubling",
    ],
)
def test_effective_amount_adds_active_raises(
    amount: int, raises: list[Raise], expected: int
) -> None:
    """Amount and percent raises add up; a percent is of the base amount, floored to nanos."""
    assert effective_amount(budget(amount_nanos=amount), raises, T0 + timedelta(days=1)) == expected


@PROPERTY
@given(
    amount=st.integers(0, 10**15),
    hundredths=st.integers(0, 100_000),
)
def test_percent_raise_is_floored_to_whole_nanos(amount: int, hundredths: int) -> None:
    """A percent raise adds the largest whole nano count not above amount·percent/100."""
    percent = D(hundredths).scaleb(-2)
    extra = (
        effective_amount(budget(amount_nanos=amount), [raise_(percent=str(percent))], T0) - amount
    )
    # extra <= amount * percent / 100 < extra + 1, in exact integers (percent has 2 places)
    assert extra * 10_000 <= amount * hundredths < (extra + 1) * 10_000


# --- hard_cap_nanos ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hard_limit", "percent", "amount", "expected"),
    [
        (False, "100", 1000, None),
        (False, "130", 1000, None),
        (True, "100", 1000, 1000),
        (True, "110", 1000, 1100),
        (True, "130", 1000, 1300),
        (True, "110", 1005, 1105),  # 1105.5 -> 1105
        (True, "130", 7, 9),  # 9.1 -> 9
        (True, "100", 2000, 2000),  # of the amount passed in (the effective one)
        (True, "100", 0, 0),
    ],
    ids=[
        "off",
        "off_with_buffer",
        "exact",
        "buffer_10",
        "buffer_30",
        "floored",
        "tiny_floored",
        "uses_effective_amount",
        "zero_amount",
    ],
)
def test_hard_cap(hard_limit: bool, percent: str, amount: int, expected: int | None) -> None:
    """The hard cap is ``hard_limit_percent`` of the effective amount, floored; None when off."""
    the_budget = budget(amount_nanos=1000, hard_limit=hard_limit, hard_limit_percent=D(percent))
    assert hard_cap_nanos(the_budget, amount) == expected


# --- thresholds / crossed / reached ------------------------------------------------------


def test_thresholds_are_alerts_then_soft_then_hard() -> None:
    """Each alert, then soft, then hard only when the hard limit is on."""
    off = budget(alert_percentages=(D(50), D(90)), soft_limit_percent=D(80), hard_limit=False)
    on = replace(off, hard_limit=True, hard_limit_percent=D(110))
    assert thresholds(off) == [
        Threshold("alert", D(50)),
        Threshold("alert", D(90)),
        Threshold("soft", D(80)),
    ]
    assert thresholds(on) == [*thresholds(off), Threshold("hard", D(110))]


@pytest.mark.parametrize(
    ("threshold", "name"),
    [
        (Threshold("alert", D("50")), "alert:50"),
        (Threshold("alert", D("50.0")), "alert:50"),
        (Threshold("soft", D("75.50")), "soft:75.5"),
        (Threshold("hard", D("100")), "hard:100"),
        (Threshold("hard", D("1E+2")), "hard:100"),
    ],
)
def test_threshold_name_is_plain_and_normalized(threshold: Threshold, name: str) -> None:
    """Names are stable keys: no trailing zeros, no exponent."""
    assert threshold.name == name


LEVELS = budget(
    amount_nanos=1000,
    alert_percentages=(D(50), D(75), D(90)),
    soft_limit_percent=D(80),
    hard_limit=True,
    hard_limit_percent=D(100),
)


@pytest.mark.parametrize(
    ("before", "after", "names"),
    [
        (0, 499, []),
        (0, 500, ["alert:50"]),
        (499, 500, ["alert:50"]),
        (500, 501, []),
        (500, 800, ["alert:75", "soft:80"]),
        (0, 1000, ["alert:50", "alert:75", "alert:90", "soft:80", "hard:100"]),
        (999, 5000, ["hard:100"]),
        (1000, 5000, []),
        (800, 800, []),
        (900, 100, []),
    ],
    ids=[
        "short_of_first",
        "exactly_at_level",
        "last_nano",
        "just_past_level",
        "two_at_once",
        "all",
        "hard_only",
        "already_past_everything",
        "no_change_on_a_level",
        "refund",
    ],
)
def test_crossed_table(before: int, after: int, names: list[str]) -> None:
    """A threshold fires when its level lies in ``(before, after]``."""
    assert [t.name for t in crossed(LEVELS, 1000, before, after)] == names


def _level(amount: int, percent: Decimal) -> int:
    """floor(amount · percent / 100), for percents with at most two places."""
    return amount * int(percent.scaleb(2)) // 10_000


def _percents(low: int, high: int) -> st.SearchStrategy[Decimal]:
    """Percentages with two decimal places in ``[low/100, high/100]``."""
    return st.integers(low, high).map(lambda n: D(n).scaleb(-2))


@st.composite
def budgets(draw: st.DrawFn) -> Budget:
    """Alerts strictly increasing in (0, 100]; soft anywhere; hard on or off."""
    alerts = sorted(draw(st.lists(_percents(1, 10_000), unique=True, max_size=6)))
    return budget(
        amount_nanos=draw(st.one_of(st.integers(0, 50), st.integers(0, 10**13))),
        alert_percentages=tuple(alerts),
        soft_limit_percent=draw(_percents(1, 20_000)),
        hard_limit=draw(st.booleans()),
        hard_limit_percent=draw(_percents(1, 100_000)),
    )


@st.composite
def spend_paths(draw: st.DrawFn) -> tuple[Budget, list[int]]:
    """A budget and a strictly increasing spend path from 0, often landing on, just before
    or just after a threshold's level."""
    the_budget = draw(budgets())
    amount = the_budget.amount_nanos
    levels = [_level(amount, t.percent) for t in thresholds(the_budget)]
    near = sorted({n for lv in levels for n in (lv - 1, lv, lv + 1) if n > 0})
    anywhere = st.integers(1, max(1, amount * 11))
    point = st.one_of(st.sampled_from(near), anywhere) if near else anywhere
    points = sorted(set(draw(st.lists(point, max_size=25))))
    return the_budget, [0, *points]


@PROPERTY
@given(spend_paths())
@example((budget(amount_nanos=1000, hard_limit=True), [0, 500, 750, 900, 1000]))
@example((budget(amount_nanos=1, alert_percentages=(D(50), D(100))), [0, 1, 2]))
def test_every_threshold_fires_exactly_once_on_the_way_up(
    case: tuple[Budget, list[int]],
) -> None:
    """Over any rising spend path from 0, the thresholds crossed step by step are exactly
    those reached at the end, each once."""
    the_budget, path = case
    amount = the_budget.amount_nanos
    fired = [
        t for before, after in pairwise(path) for t in crossed(the_budget, amount, before, after)
    ]
    final = reached(the_budget, amount, path[-1])
    assert len(fired) == len(set(fired))
    assert Counter(fired) == Counter(final)


@PROPERTY
@given(the_budget=budgets(), before=st.integers(-(10**14), 10**14), drop=st.integers(0, 10**14))
def test_nothing_crosses_without_a_rise(the_budget: Budget, before: int, drop: int) -> None:
    """``crossed`` is empty when spend stayed the same or fell."""
    assert crossed(the_budget, the_budget.amount_nanos, before, before - drop) == []


# --- validate_levels ---------------------------------------------------------------------

BAD_LEVELS = [
    ("alerts_decreasing", ([75, 50], 75, False, 100), "alert_percentages"),
    ("alerts_duplicate", ([50, 50, 90], 75, False, 100), "alert_percentages"),
    ("alerts_duplicate_by_value", ([D("50"), D("50.0")], 75, False, 100), "alert_percentages"),
    ("alerts_zero", ([0, 50], 75, False, 100), "alert_percentages"),
    ("alerts_negative", ([-10, 50], 75, False, 100), "alert_percentages"),
    ("alert_above_hard", ([50, 90, 120], 75, True, 100), "alert_percentages"),
    ("alert_above_buffered_hard", ([50, D("110.01")], 75, True, 110), "alert_percentages"),
    ("soft_zero", ([50], 0, False, 100), "soft_limit_percent"),
    ("soft_negative", ([50], -1, False, 100), "soft_limit_percent"),
    ("soft_above_hard", ([50], 120, True, 100), "soft_limit_percent"),
    ("hard_zero", ([50], 75, True, 0), "hard_limit_percent"),
    ("hard_negative", ([50], 75, True, -100), "hard_limit_percent"),
    ("hard_above_1000", ([50], 75, True, D("1000.01")), "hard_limit_percent"),
    ("hard_above_1000_while_off", ([50], 75, False, 1001), "hard_limit_percent"),
]


@pytest.mark.parametrize(
    ("args", "field"),
    [case[1:] for case in BAD_LEVELS],
    ids=[case[0] for case in BAD_LEVELS],
)
def test_validate_levels_names_the_bad_field(
    args: tuple[list[int | Decimal], int | Decimal, bool, int | Decimal], field: str
) -> None:
    """Each inconsistency is reported against the field that is wrong, with a message."""
    alerts, soft, hard_on, hard = args
    problem = validate_levels([D(a) for a in alerts], D(soft), hard_on, D(hard))
    assert problem is not None
    assert problem[0] == field
    assert problem[1]


GOOD_LEVELS = [
    ("defaults_hard_off", ([50, 75, 90], 75, False, 100)),
    ("defaults_hard_on", ([50, 75, 90], 75, True, 100)),
    ("no_alerts", ([], 75, True, 100)),
    ("fractional_alerts", ([D("0.01"), D("12.5")], D("0.5"), True, 100)),
    ("alerts_above_100_hard_off", ([50, 100, 150, 200], 75, False, 100)),
    ("alerts_above_hard_percent_hard_off", ([50, 500], 75, False, 110)),
    ("soft_above_100_hard_off", ([50], 150, False, 100)),
    ("alert_equal_to_hard", ([50, 100], 75, True, 100)),
    ("soft_equal_to_hard", ([50], 100, True, 100)),
    ("buffered_hard", ([50, 120], 110, True, 130)),
    ("hard_exactly_1000", ([50, 999], 500, True, 1000)),
]


@pytest.mark.parametrize(
    "args", [case[1] for case in GOOD_LEVELS], ids=[case[0] for case in GOOD_LEVELS]
)
def test_validate_levels_accepts_consistent_levels(
    args: tuple[list[int | Decimal], int | Decimal, bool, int | Decimal],
) -> None:
    """Consistent levels pass; above-100 alerts and soft limits are fine without a hard cap."""
    alerts, soft, hard_on, hard = args
    assert validate_levels([D(a) for a in alerts], D(soft), hard_on, D(hard)) is None


# --- percent_used ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spent", "amount", "expected"),
    [
        (0, 1000, "0.00"),
        (1, 3, "33.33"),
        (2, 3, "66.67"),
        (1, 8, "12.50"),
        (1, 800, "0.12"),  # 0.125: half to even
        (3, 800, "0.38"),  # 0.375: half to even
        (1000, 1000, "100.00"),
        (2500, 1000, "250.00"),
        (123_456_789, 10**9, "12.35"),
        (10**15, 1, "100000000000000000.00"),
    ],
)
def test_percent_used_has_exactly_two_places(spent: int, amount: int, expected: str) -> None:
    """Spent as a percentage of the amount, quantized to exactly two decimal places."""
    result = percent_used(spent, amount)
    assert str(result) == expected
    assert result.as_tuple().exponent == -2


@pytest.mark.parametrize(("spent", "amount"), [(0, 0), (5, 0), (5, -10)])
def test_percent_used_of_nothing_is_zero(spent: int, amount: int) -> None:
    """A zero (or negative) amount is reported as 0 %, never a division error."""
    assert percent_used(spent, amount) == 0


@PROPERTY
@given(spent=st.integers(0, 10**15), amount=st.integers(1, 10**15))
def test_percent_used_is_within_half_a_hundredth(spent: int, amount: int) -> None:
    """The two-place result is the exact percentage rounded to the nearest hundredth."""
    result = percent_used(spent, amount)
    assert result.as_tuple().exponent == -2
    # |result - 100·spent/amount| <= 0.005, in exact integers
    assert abs(int(result.scaleb(2)) * amount - 10_000 * spent) * 2 <= amount


@pytest.mark.parametrize(
    ("cap", "start", "replicas", "expected"),
    [
        (1000, 400, 1, 1000),  # alone: the whole cap
        (1000, 400, 3, 600),  # a third of the 600 left
        (1000, 999, 3, 999),  # less than one nano each: nothing
        (1000, 1000, 2, 1000),  # at the cap: nothing
        (1000, 1500, 2, 1500),  # past it (a lowered cap): nothing, not a negative share
    ],
)
def test_fail_open_cap_is_a_share_of_the_headroom(
    cap: int, start: int, replicas: int, expected: int
) -> None:
    """Each replica may take 1/replicas of what the ledger showed was left."""
    assert fail_open_cap(cap, start, replicas) == expected


@given(
    cap=st.integers(0, 10**15),
    seeds=st.lists(st.integers(0, 10**15), min_size=1, max_size=8),
)
def test_replicas_taking_their_shares_never_pass_the_cap(cap: int, seeds: list[int]) -> None:
    """However much spend each replica's ledger read showed (each at least the first
    read, ``min(seeds)``), what all of them admit on their own adds up to no more than
    the headroom of that first read: the cap holds."""
    first = min(seeds)
    taken = sum(fail_open_cap(cap, s, len(seeds)) - s for s in seeds)
    assert first + taken <= max(cap, first)
