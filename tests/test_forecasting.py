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

from spendgate import forecasting as fc
from spendgate.budget_rules import Budget
from spendgate.budget_windows import window_at

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
TODAY = date(2026, 3, 10)
USD = 1_000_000_000
WEEK = (1.1, 1.2, 1.2, 1.1, 1.0, 0.3, 0.2)


def weekly(days: int, seed: int = 0, level: float = 40.0, end: date = TODAY) -> list[int]:
    """Spend for the ``days`` complete days before ``end``: weekly pattern and mild noise."""
    rng = np.random.default_rng(seed)
    first = end - timedelta(days=days)
    return [int(level * USD * WEEK[(first + timedelta(days=i)).weekday()]
                * rng.lognormal(0, 0.1)) for i in range(days)]


def march(daily: list[int], *, today_spent: int = 0, elapsed: float = 0.0,
          thresholds: tuple[tuple[str, int], ...] = ()) -> tuple[fc.SpendHistory,
                                                                 fc.PeriodOutlook]:
    """History ending yesterday (9 March) and the rest of March 2026 from today."""
    history = fc.SpendHistory(TODAY - timedelta(days=len(daily)), tuple(daily), today_spent,
                              elapsed)
    remaining = tuple(TODAY + timedelta(days=i) for i in range(22))
    return history, fc.PeriodOutlook("2026-03", date(2026, 3, 1), remaining, 1000 * USD,
                                     thresholds)


@pytest.mark.parametrize(("days", "method"), [
    (0, "none"), (1, "trailing_mean"), (6, "trailing_mean"), (7, "seasonal_naive"),
    (20, "seasonal_naive"), (21, "ets_damped"), (84, "ets_damped"), (200, "ets_damped"),
])
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


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 500 * USD), max_size=40),
       st.floats(0.0, 1.0), st.integers(0, 50 * USD))
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
    predicted = sigma * np.sqrt((loadings ** 2).sum())
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
    daily_sd = sigma * np.sqrt(1 + np.concatenate([[0.0], np.cumsum(steps ** 2)]))
    # adding each day's spread (as summing daily quantiles does) overstates the sum's
    assert predicted < float((weights * daily_sd).sum())


@pytest.mark.parametrize(("p50", "limit", "band"), [
    (100, 100, None), (101, 100, 100), (110, 100, 100), (111, 100, 110), (150, 100, 125),
    (151, 100, 150), (201, 100, 200), (10_000, 100, 200), (1, 0, 200), (0, 0, None),
])
def test_overrun_band(p50: int, limit: int, band: int | None) -> None:
    """Strictly above the limit: the highest of 100/110/125/150/200 % passed."""
    assert fc.overrun_band(p50, limit) == band


@pytest.mark.parametrize(("band", "fired", "announce"), [
    (None, [], None), (100, [], 100), (100, [100], None), (110, [100], 110),
    (100, [110], None), (200, [100, 110], 200),
])
def test_band_announced_once_and_again_only_higher(band: int | None, fired: list[int],
                                                   announce: int | None) -> None:
    assert fc.band_to_announce(band, fired) == announce


def test_overrun_limit_is_hard_cap_or_amount() -> None:
    observing = Budget("b", "o", "org", "o", None, "monthly", "UTC", "monday", 100 * USD)
    capped = Budget("b", "o", "org", "o", None, "monthly", "UTC", "monday", 100 * USD,
                    hard_limit=True, hard_limit_percent=Decimal(120))
    assert fc.overrun_limit(observing, 100 * USD) == 100 * USD
    assert fc.overrun_limit(capped, 100 * USD) == 120 * USD


def test_outlook_for_a_budget_in_its_zone() -> None:
    """Remaining local dates from today; threshold levels of the effective amount."""
    budget = Budget("b", "o", "org", "o", None, "monthly", "Pacific/Auckland", "monday",
                    100 * USD, hard_limit=True)
    at = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)  # already 1 April in Auckland
    today, elapsed = fc.local_today(at, budget.timezone)
    outlook = fc.outlook_for(budget, 200 * USD, window_at(at, "monthly", budget.timezone), today)
    assert (today, outlook.key, outlook.start) == (date(2026, 4, 1), "2026-04", date(2026, 4, 1))
    assert len(outlook.remaining) == 30 and 0 < elapsed < 1
    assert dict(outlook.thresholds) == {"alert:50": 100 * USD, "alert:75": 150 * USD,
                                        "alert:90": 180 * USD, "soft:75": 150 * USD,
                                        "hard:100": 200 * USD}


def test_core_imports_no_database_or_network_client() -> None:
    code = ("import sys, spendgate.forecasting; "
            "print(sorted(m for m in ('sqlalchemy', 'asyncpg', 'aiosqlite', 'redis', 'httpx', "
            "'aiohttp', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_parameter_term_is_the_regression_forecast_variance() -> None:
    """Estimating level, trend and weekdays adds more for a longer horizon, less with more
    history; for one day with no trend it is at least the level's 1/n."""
    short, long = np.ones(5), np.ones(25)
    assert fc.parameter_term(70, long, 0.9) > fc.parameter_term(70, short, 0.9)
    assert fc.parameter_term(70, long, 0.9) < fc.parameter_term(28, long, 0.9)
    assert fc.parameter_term(70, np.ones(1), 0.0) >= 1 / 70


def test_runaway_days_seen_widen_only_the_upper_tail() -> None:
    """No capped day: the plain Gaussian P90. A runaway day in the history: P90 allows for
    another at the rate seen, P10 and P50 do not move."""
    plain = fc.upper_with_runaways(100.0, 10.0, np.zeros(60), 20.0)
    assert plain == pytest.approx(100.0 + fc.Z_90 * 10.0)
    excess = np.zeros(60)
    excess[30] = 300.0  # one runaway in 60 days, 20 days left: P(another) ≈ 28 %
    assert fc.upper_with_runaways(100.0, 10.0, excess, 20.0) > 300.0
    calm, spiked = weekly(60, seed=4), weekly(60, seed=4)
    spiked[20] *= 8
    base, hit = fc.forecast(*march(calm), NOW), fc.forecast(*march(spiked), NOW)
    assert hit.p90_nanos - hit.spent_nanos > base.p90_nanos - base.spent_nanos
    assert hit.p50_nanos - hit.spent_nanos == pytest.approx(base.p50_nanos - base.spent_nanos,
                                                            rel=0.1)
