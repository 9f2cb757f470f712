"""The forecaster (pure): method by history length, spike caps, intervals of the period sum,
threshold crossing dates, overrun bands."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.core import forecast_overrun as fo
from spendgate.core import forecasting as fc
from spendgate.core.budget_rules import Budget
from spendgate.core.budget_windows import window_at

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
TODAY = date(2026, 3, 10)
USD = 1_000_000_000
WEEK = (1.1, 1.2, 1.2, 1.1, 1.0, 0.3, 0.2)


def weekly(
    days: int,
    seed: int = 0,
    level: float = 40.0,
    end: date = TODAY,
    noise: float = 0.1,
    week: tuple[float, ...] = WEEK,
) -> list[int]:
    """Spend for the ``days`` complete days before ``end``: weekly pattern and lognormal
    noise (sd ``noise`` of the log)."""
    rng = np.random.default_rng(seed)
    first = end - timedelta(days=days)
    return [
        int(level * USD * week[(first + timedelta(days=i)).weekday()] * rng.lognormal(0, noise))
        for i in range(days)
    ]


def march(
    daily: list[int],
    *,
    today_spent: int = 0,
    elapsed: float = 0.0,
    thresholds: tuple[tuple[str, int], ...] = (),
    cap: int | None = None,
) -> tuple[fc.SpendHistory, fc.PeriodOutlook]:
    """History ending yesterday (9 March) and the rest of March 2026 from today."""
    history = fc.SpendHistory(
        TODAY - timedelta(days=len(daily)), tuple(daily), today_spent, elapsed
    )
    remaining = tuple(TODAY + timedelta(days=i) for i in range(22))
    return history, fc.PeriodOutlook(
        "2026-03", date(2026, 3, 1), remaining, 1000 * USD, thresholds, cap
    )


@pytest.mark.parametrize(
    ("days", "method"),
    [
        (0, "none"),
        (1, "trailing_mean"),
        (6, "trailing_mean"),
        (7, "seasonal_naive"),
        (20, "seasonal_naive"),
        (21, "ets_damped"),
        (84, "ets_damped"),
        (200, "ets_damped"),
    ],
)
def test_method_follows_history_length(days: int, method: str) -> None:
    """Trailing mean under a week, seasonal naive up to three weeks, then ETS(A,Ad,A)."""
    f = fc.forecast(*march(weekly(days)), NOW)
    assert f.method == method
    assert f.history_days == min(days, 200)


def test_leading_zero_days_are_not_history() -> None:
    """A team whose spend began five days ago has five days of history, not ninety."""
    f = fc.forecast(*march([0] * 85 + weekly(5)), NOW)
    assert (f.method, f.history_days) == ("trailing_mean", 5)


def test_no_history_lands_on_what_is_spent() -> None:
    f = fc.forecast(*march([], today_spent=3 * USD), NOW)
    assert f.p10_nanos == f.p50_nanos == f.p90_nanos == f.spent_nanos == 3 * USD
    early = fc.forecast(*march([], today_spent=3 * USD, elapsed=0.2), NOW)
    assert (early.method, early.p90_nanos) == ("none", 3 * USD)


def test_a_first_day_is_scaled_to_the_whole_day_once_a_quarter_has_passed() -> None:
    """$3 by noon on the budget's first day: $6 a day for the half day and 21 days left,
    with an interval as wide as one day's evidence makes it (P10 no lower than spent)."""
    f = fc.forecast(*march([], today_spent=3 * USD, elapsed=0.5), NOW)
    assert (f.method, f.history_days) == ("today_rate", 0)
    assert f.p50_nanos == 3 * USD + 3 * USD + 21 * 6 * USD
    assert f.spent_nanos <= f.p10_nanos < f.p50_nanos < f.p90_nanos
    assert f.p90_nanos - f.p50_nanos > 21 * 6 * USD // 2


@pytest.mark.parametrize(("days", "most"), [(5, 1.6), (14, 1.15), (60, 1.15)])
def test_one_day_runaway_does_not_become_the_trend(days: int, most: float) -> None:
    """An 8x day yesterday counts in full as spent but barely moves what is still to come
    (uncapped, it would triple a five-day mean)."""
    calm = weekly(days, seed=3)
    spiked = [*calm[:-1], calm[-1] * 8]
    base, hit = fc.forecast(*march(calm), NOW), fc.forecast(*march(spiked), NOW)
    assert hit.spent_nanos - base.spent_nanos == calm[-1] * 7
    ahead_base = base.p50_nanos - base.spent_nanos
    ahead_hit = hit.p50_nanos - hit.spent_nanos
    assert ahead_hit < ahead_base * most


def test_today_so_far_is_actual_and_only_the_rest_is_forecast() -> None:
    """At 18:00 a quarter of today is left; at the end of the day none of it is."""
    daily = [10 * USD] * 5
    half = fc.forecast(*march(daily, today_spent=4 * USD, elapsed=0.75), NOW)
    whole = fc.forecast(*march(daily, today_spent=4 * USD, elapsed=1.0), NOW)
    spent = 9 * 10 * USD + 4 * USD  # 1-9 March: five days of history fall in March
    assert whole.spent_nanos == half.spent_nanos == 5 * 10 * USD + 4 * USD
    assert whole.p50_nanos == whole.spent_nanos + 21 * 10 * USD
    assert half.p50_nanos == half.spent_nanos + round(2.5 * USD) + 21 * 10 * USD
    assert spent > 0


def test_crossing_dates_actual_then_expected() -> None:
    """Levels already passed date from the days seen; later ones from the P50 path."""
    daily = [10 * USD] * 9  # 1-9 March
    levels = (("alert:5", 25 * USD), ("alert:50", 200 * USD), ("hard:100", 400 * USD))
    f = fc.forecast(*march(daily, thresholds=levels), NOW)
    found = dict(f.crossings)
    assert found["alert:5"] == date(2026, 3, 3)
    assert found["alert:50"] == date(2026, 3, 20)
    assert found["hard:100"] is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 500 * USD), max_size=80), st.floats(0.0, 1.0), st.integers(0, 50 * USD)
)
def test_interval_is_ordered(daily: list[int], elapsed: float, today: int) -> None:
    f = fc.forecast(*march(daily, today_spent=today, elapsed=elapsed), NOW)
    assert f.spent_nanos <= f.p10_nanos <= f.p50_nanos <= f.p90_nanos


def test_deterministic() -> None:
    args = march(weekly(70, seed=9))
    assert fc.forecast(*args, NOW) == fc.forecast(*args, NOW)


def test_variance_of_the_sum_matches_simulated_ets_paths() -> None:
    """The loadings give the variance of the period sum of an ETS(A,Ad,A) process."""
    alpha, beta, gamma, phi, sigma, horizon = 0.3, 0.05, 0.1, 0.9, 1.0, 24
    weights = np.ones(horizon)
    weights[0] = 0.4
    model = {"components": "AAAD", "par": np.array([alpha, beta, gamma, phi])}
    loadings = fc.innovation_loadings(weights, fc._step_weights(model, horizon))
    predicted = sigma * np.sqrt((loadings**2).sum())
    rng = np.random.default_rng(1)
    paths = 20_000
    level, trend = np.zeros(paths), np.zeros(paths)
    season = np.zeros((paths, 7))
    total = np.zeros(paths)
    for h in range(horizon):
        eps = rng.normal(0, sigma, paths)
        total += weights[h] * (level + phi * trend + season[:, h % 7] + eps)
        level, trend = level + phi * trend + alpha * eps, phi * trend + beta * eps
        season[:, h % 7] += gamma * eps
    assert float(total.std()) == pytest.approx(predicted, rel=0.03)
    steps = fc._step_weights(model, horizon)
    daily_sd = sigma * np.sqrt(1 + np.concatenate([[0.0], np.cumsum(steps**2)]))
    # adding each day's spread (as summing daily quantiles does) overstates the sum's
    assert predicted < float((weights * daily_sd).sum())


ESCALATION = (110, 125, 150, 200)


@pytest.mark.parametrize(
    ("p50", "limit", "band", "escalated"),
    [
        (100, 100, None, None),
        (101, 100, 100, 100),
        (110, 100, 100, 100),
        (111, 100, 100, 110),
        (150, 100, 100, 125),
        (151, 100, 100, 150),
        (201, 100, 100, 200),
        (10_000, 100, 100, 200),
        (1, 0, 100, 200),
        (0, 0, None, None),
    ],
)
def test_overrun_band(p50: int, limit: int, band: int | None, escalated: int | None) -> None:
    """Strictly above the limit: band 100 however far above (one warning a period); with
    escalation bands, the highest of 100 and those passed."""
    assert fo.overrun_band(p50, limit) == band
    assert fo.overrun_band(p50, limit, ESCALATION) == escalated


@pytest.mark.parametrize(
    ("band", "fired", "announce"),
    [
        (None, [], None),
        (100, [], 100),
        (100, [100], None),
        (110, [100], 110),
        (100, [110], None),
        (200, [100, 110], 200),
    ],
)
def test_band_announced_once_and_again_only_higher(
    band: int | None, fired: list[int], announce: int | None
) -> None:
    assert fo.band_to_announce(band, fired) == announce


def test_overrun_limit_is_hard_cap_or_amount() -> None:
    observing = Budget("b", "o", "org", "o", None, "monthly", "UTC", "monday", 100 * USD)
    capped = Budget(
        "b",
        "o",
        "org",
        "o",
        None,
        "monthly",
        "UTC",
        "monday",
        100 * USD,
        hard_limit=True,
        hard_limit_percent=Decimal(120),
    )
    assert fo.overrun_limit(observing, 100 * USD) == 100 * USD
    assert fo.overrun_limit(capped, 100 * USD) == 120 * USD


def test_outlook_for_a_budget_in_its_zone() -> None:
    """Remaining local dates from today; threshold levels of the effective amount."""
    budget = Budget(
        "b",
        "o",
        "org",
        "o",
        None,
        "monthly",
        "Pacific/Auckland",
        "monday",
        100 * USD,
        hard_limit=True,
    )
    at = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)  # already 1 April in Auckland
    today, elapsed = fc.local_today(at, budget.timezone)
    outlook = fc.outlook_for(budget, 200 * USD, window_at(at, "monthly", budget.timezone), today)
    assert (today, outlook.key, outlook.start) == (date(2026, 4, 1), "2026-04", date(2026, 4, 1))
    assert len(outlook.remaining) == 30 and 0 < elapsed < 1
    assert dict(outlook.thresholds) == {
        "alert:50": 100 * USD,
        "alert:75": 150 * USD,
        "alert:90": 180 * USD,
        "soft:75": 150 * USD,
        "hard:100": 200 * USD,
    }
    assert outlook.cap_nanos == 200 * USD


def test_a_hard_cap_bounds_the_forecast_of_recorded_spend() -> None:
    """$40 a day against a $1,000 budget capped at $500 (and an alert at 120 %, past the
    cap): $360 spent by the 9th; recorded spend stops at the cap, so P10–P90 and the percent
    are bounded by it, P50 reaches it on the 13th, the alert past the cap is never crossed,
    and what demand would have been is kept apart."""
    levels = (("alert:50", 500 * USD), ("alert:120", 1200 * USD), ("hard:50", 500 * USD))
    f = fc.forecast(*march([40 * USD] * 9, thresholds=levels, cap=500 * USD), NOW)
    assert f.uncapped_p50_nanos == 360 * USD + 22 * 40 * USD
    assert f.spent_nanos == 360 * USD <= f.p10_nanos <= f.p50_nanos == f.p90_nanos == 500 * USD
    assert f.percent_of_budget == Decimal("50.00")
    assert f.hits_cap_on == date(2026, 3, 13) == dict(f.crossings)["hard:50"]
    assert dict(f.crossings)["alert:120"] is None
    spent_past_cap = fc.forecast(*march([60 * USD] * 9, cap=500 * USD), NOW)
    assert spent_past_cap.p90_nanos == spent_past_cap.spent_nanos == 540 * USD  # a lowered cap
    assert fo.outlook_text(spent_past_cap).startswith("hit the hard cap ($500.00) on 2026-03-09")


def test_the_cap_day_is_the_day_p50_reaches_it() -> None:
    """$10 a day so far, $400 cap: $90 spent by the 9th, $310 to go at $10 a day → the 10th
    plus 31 days is past March, so never; a $150 cap is reached on the 15th."""
    late = fc.forecast(*march([10 * USD] * 9, cap=400 * USD), NOW)
    assert late.hits_cap_on is None and late.p50_nanos == late.uncapped_p50_nanos
    soon = fc.forecast(*march([10 * USD] * 9, cap=150 * USD), NOW)
    assert soon.hits_cap_on == date(2026, 3, 15) and soon.p50_nanos == 150 * USD
    assert fo.outlook_text(soon).startswith("will hit the hard cap ($150.00) on 2026-03-15")


def test_overrun_of_a_capped_or_day_one_forecast_stops_at_the_first_band() -> None:
    """A capped budget's P50 cannot pass its cap: demand above it is band 100 ("will hit the
    hard cap"), never 200, even with escalation bands; a day-one forecast says an overrun
    may come, not how far. An observing budget at 310 % is band 100 by default, 200 with
    escalation."""
    capped = fc.forecast(*march([100 * USD] * 9, cap=150 * USD), NOW)
    assert fo.band_of(capped, 150 * USD) == fo.band_of(capped, 150 * USD, ESCALATION) == 100
    observing = fc.forecast(*march([100 * USD] * 9), NOW)
    assert fo.band_of(observing, 1000 * USD) == 100
    assert fo.band_of(observing, 1000 * USD, ESCALATION) == 200
    day_one = fc.forecast(*march([], today_spent=300 * USD, elapsed=0.5), NOW)
    assert day_one.method == "today_rate" and day_one.percent_of_budget > 1000
    assert fo.band_of(day_one, 1000 * USD, ESCALATION) == 100


def test_a_day_one_forecast_says_it_is_a_rough_guess() -> None:
    """One partial day: confidence low, P10 no higher than what is spent, P90 more than
    twice P50, and the sentence says the interval is wide."""
    f = fc.forecast(*march([], today_spent=3 * USD, elapsed=0.5), NOW)
    assert f.confidence == "low" and f.p10_nanos == f.spent_nanos
    assert f.p90_nanos - f.spent_nanos > 2 * (f.p50_nanos - f.spent_nanos)
    assert "low confidence: 0 complete day(s) of history (today_rate)" in fo.outlook_text(f)
    seasoned = fc.forecast(*march(weekly(60)), NOW)
    assert seasoned.confidence == "normal" and "low confidence" not in fo.outlook_text(seasoned)


def test_core_imports_no_database_or_network_client() -> None:
    code = (
        "import sys, spendgate.core.forecasting; "
        "print(sorted(m for m in ('sqlalchemy', 'asyncpg', 'aiosqlite', 'redis', 'httpx', "
        "'aiohttp', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parameter_term_is_the_regression_forecast_variance() -> None:
    """Estimating level, trend and weekdays adds more for a longer horizon, less with more
    history; for one day with no trend it is at least the level's 1/n."""
    short, long = np.ones(5), np.ones(25)
    assert fc.parameter_term(70, long, 0.9) > fc.parameter_term(70, short, 0.9)
    assert fc.parameter_term(70, long, 0.9) < fc.parameter_term(28, long, 0.9)
    assert fc.parameter_term(70, np.ones(1), 0.0) >= 1 / 70


def ahead(f: fc.Forecast) -> tuple[int, int, int]:
    """P10, P50 and P90 of what is still to come (the spend so far taken off)."""
    return f.p10_nanos - f.spent_nanos, f.p50_nanos - f.spent_nanos, f.p90_nanos - f.spent_nanos


@pytest.mark.parametrize(("days", "factor"), [(5, 1.4), (14, 5.0), (70, 5.0)])
def test_interval_widens_with_noise(days: int, factor: float) -> None:
    """Noisier days, wider P10–P90: the trailing mean, seasonal naive and ETS alike (under a
    week, the weekday pattern itself is much of the trailing mean's spread)."""
    widths = []
    for noise in (0.05, 0.2, 0.4):
        p10, _, p90 = ahead(fc.forecast(*march(weekly(days, seed=2, noise=noise)), NOW))
        widths.append(p90 - p10)
    assert widths[0] < widths[1] < widths[2]
    assert widths[2] > factor * widths[0]


def test_interval_covers_a_known_process() -> None:
    """60 months of a known process (weekly pattern, 20 % lognormal noise, ETS on 10 weeks):
    P10–P90 of the rest of the month holds the actual total about 80 % of the time, below P10
    and above P90 about equally often, and P10 <= P50 <= P90 every time."""
    inside = below = above = 0
    for seed in range(60):
        days = weekly(70 + 22, seed=100 + seed, noise=0.2, end=TODAY + timedelta(days=22))
        f = fc.forecast(*march(days[:70]), NOW)
        p10, p50, p90 = ahead(f)
        actual = sum(days[70:])
        assert p10 <= p50 <= p90
        inside += p10 <= actual <= p90
        below += actual < p10
        above += actual > p90
    assert 0.7 <= inside / 60 <= 0.9
    assert below >= 2 and above >= 2


def test_a_runaway_seen_widens_the_upper_tail() -> None:
    """An 8x day a month ago, capped: P50 barely moves, but another such day may come, so the
    interval widens, and mostly upwards."""
    calm, spiked = weekly(60, seed=4), weekly(60, seed=4)
    spiked[31] *= 8  # a Monday
    base, hit = ahead(fc.forecast(*march(calm), NOW)), ahead(fc.forecast(*march(spiked), NOW))
    assert hit[1] == pytest.approx(base[1], rel=0.05)
    assert hit[2] > base[2] + 2 * (base[2] - base[1])
    assert hit[2] - hit[1] > 3 * (hit[1] - hit[0])


def test_spikes_are_capped_and_only_dips_replaced() -> None:
    """A spike, old or new, is capped at ``CAP_MULTIPLE`` × the recent median (it might be
    real); a dip is replaced by its weekday's usual spend, here the flat 10."""
    y = np.full(42, 10.0)
    for day in (-1, -20):
        spiked = y.copy()
        spiked[day] = 80.0
        assert fc.clean_days(spiked)[day] == fc.CAP_MULTIPLE * 10.0
    dipped = y.copy()
    dipped[-20] = 0.0
    assert fc.clean_days(dipped)[-20] == 10.0


def test_a_holiday_dip_is_cleaned_and_widens_the_lower_tail() -> None:
    """A working weekday at zero that spend came back from: fitted as its weekday's median
    (P50 as without it), but P10 allows for another; a drop still going on is kept."""
    calm = weekly(70, seed=5)
    holiday = list(calm)
    holiday[41] = 0  # a Monday
    assert (TODAY - timedelta(days=70 - 41)).weekday() == 0
    base, hit = ahead(fc.forecast(*march(calm), NOW)), ahead(fc.forecast(*march(holiday), NOW))
    assert hit[1] == pytest.approx(base[1], rel=0.03)
    assert hit[0] < base[0] - 0.5 * (base[1] - base[0])
    cleaned = fc.clean_days(np.asarray(holiday, dtype=np.float64))
    assert cleaned[41] > 0.5 * calm[41]
    stopped = np.asarray([*calm[:-3], 0, 0, 0], dtype=np.float64)
    assert (fc.clean_days(stopped)[-3:] == 0).all()


def test_intermittent_zero_days_are_not_dips() -> None:
    """Spend on about half the days at random: its zero days are normal, none is cleaned."""
    rng = np.random.default_rng(8)
    y = np.where(rng.random(70) < 0.5, 0.0, rng.uniform(5, 15, 70))
    assert (fc.clean_days(y)[y == 0] == 0).all()


def test_a_weekday_that_never_spends_is_forecast_at_zero() -> None:
    """Weekday-only spend: a weekend left is zero with no spread; a week left is narrower
    than the same spend with weekends at a cent a day."""
    week = (1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0)
    friday_end = date(2026, 3, 14)  # history up to Friday 13 March, today Saturday
    daily = weekly(70, seed=6, end=friday_end, week=week)
    history = fc.SpendHistory(friday_end - timedelta(days=70), tuple(daily))
    weekend = fc.PeriodOutlook(
        "w", date(2026, 3, 9), (friday_end, friday_end + timedelta(1)), 1000 * USD
    )
    f = fc.forecast(history, weekend, NOW)
    assert f.p10_nanos == f.p50_nanos == f.p90_nanos == f.spent_nanos
    nine = tuple(friday_end + timedelta(days=i) for i in range(9))
    cent = fc.SpendHistory(history.first_day, tuple(v or USD // 100 for v in daily))
    dead, alive = (
        ahead(fc.forecast(h, fc.PeriodOutlook("m", date(2026, 3, 1), nine, USD), NOW))
        for h in (history, cent)
    )
    assert dead[2] - dead[0] < 0.9 * (alive[2] - alive[0])


def test_interval_of_sum_with_outlier_days() -> None:
    """No outlier day: the plain Gaussian P10/P90. Spikes seen raise P90 (P10 no lower), dips
    lower P10 (P90 no higher); the draws are fixed, so the answer is deterministic."""
    plain = fc.interval_of_sum(100.0, 10.0, np.zeros(60), 20.0)
    assert plain == pytest.approx((100.0 - fc.Z_90 * 10.0, 100.0 + fc.Z_90 * 10.0))
    excess = np.zeros(60)
    excess[30] = 300.0  # one runaway in 60 days, 20 days left: P(another) ≈ 28 %
    low, high = fc.interval_of_sum(100.0, 10.0, excess, 20.0)
    assert high > 300.0 and low >= plain[0] - 0.5
    assert fc.interval_of_sum(100.0, 10.0, excess, 20.0) == (low, high)
    low, high = fc.interval_of_sum(100.0, 10.0, -excess / 5, 20.0)
    assert low < plain[0] - 40.0 and high <= plain[1] + 0.5
    assert fc.interval_of_sum(100.0, 10.0, excess, 0.0) == pytest.approx(plain)


def test_a_forecast_read_later_never_lands_below_what_is_spent() -> None:
    """Stored at about $180 spent, read at $900: every quantile is at least $900, the % is of
    P50 so floored, a level passed meanwhile is reached today at the latest (a later day
    or none was stored), and a hard cap reached meanwhile is hit today; read with no new
    spend, the forecast is the one stored."""
    levels = (("alert:50", 500 * USD), ("alert:90", 900 * USD), ("hard:100", 1000 * USD))
    history, outlook = march(weekly(9, level=20.0), thresholds=levels, cap=1000 * USD)
    stored = fc.forecast(history, outlook, NOW)
    assert stored.p90_nanos < 900 * USD and stored.crossings[1][1] != TODAY
    now = fc.as_of(stored, 900 * USD, levels, TODAY)
    assert now.spent_nanos == 900 * USD
    assert min(now.p10_nanos, now.p50_nanos, now.p90_nanos) >= 900 * USD
    assert now.uncapped_p50_nanos >= 900 * USD
    assert now.percent_of_budget == Decimal(now.p50_nanos * 100 / (1000 * USD)).quantize(
        Decimal("0.01")
    )
    crossed = dict(now.crossings)
    assert crossed["alert:50"] is not None and crossed["alert:50"] <= TODAY
    assert crossed["alert:90"] == TODAY
    assert crossed["hard:100"] == dict(stored.crossings)["hard:100"]  # not reached yet
    assert fc.as_of(stored, 1000 * USD, levels, TODAY).hits_cap_on == TODAY
    assert fc.as_of(stored, 10 * USD, levels, TODAY) is stored
