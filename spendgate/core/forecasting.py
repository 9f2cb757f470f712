"""Where a budget period will land: damped, weekly-seasonal spend forecasts (pure).

    complete local days ─ clean outliers ─ method by history length ─┬─ mean of each day left
                          │                                          └─ sd of their sum
                          └─ what cleaning took out, as jumps at the rate it was needed
    + spend so far in the period (today's partial day counted, never fitted)
    = P10 / P50 / P90 of period-end spend, % of budget, the day each threshold is crossed

Methods, by the number of complete days since spend began (leading zero days dropped):

    0       today_rate      today's spend so far / the share of today passed, as a trailing
                            mean of that one day (once a quarter of today has passed)
            none            before that, or nothing spent: what is spent so far, no spread
    1–6     trailing_mean   every day left at the mean of the days seen
    7–20    seasonal_naive  the last one or two weeks, averaged, repeated
    21+     ets_damped      ETS(A,Ad,A): additive errors, damped additive trend, additive
                            weekly seasonality (statsforecast), fitted on the last 10 weeks

Additive on spend: zero days are normal and need no log. Before fitting (the spend still
counts in full as spent), outlier days are cleaned, so one runaway day does not become a
level or a trend and one holiday does not become noise:

- *spikes*: each day is capped at ``CAP_MULTIPLE`` × the median of the recent non-zero days
  (or of the same weekday, when that is higher).
- *dips*: a day below its usual spend / ``CAP_MULTIPLE`` and more than ``OUTLIER_SCALES``
  robust sds below it — a holiday or an outage on a working weekday — is replaced by its
  usual spend once spend has come back (a later day spent more than its usual spend /
  ``CAP_MULTIPLE``); a drop still going on is real and kept. A day's usual spend is the
  median of the same weekday one to three weeks either side (so it follows a trend or a
  step); the sd is relative to the level, from week-on-week changes of the same weekday, so
  in noisy low-volume spend (a call or two a day, zero days common) no zero is a dip.

A weekday with no spend at all on each of its (three or more) occurrences in the last four
weeks, e.g. the weekend of weekday-only spend, is forecast at zero with no spread: the
additive model would otherwise spread the level's uncertainty over days that never spend.

Today is the first day left, weighted by the part of it still to come
(``1 - today_elapsed``); what today has already cost is added to the actual.

The interval is of the period *sum*, never a sum of daily quantiles (that would treat the
days as perfectly correlated). For ETS(A,Ad,A) the h-step error is
``ε[n+h] + Σ_{j<h} c_j ε[n+h-j]`` with ``c_j = α + β(φ + … + φ^j) + γ·[j mod 7 = 0]``
(Hyndman et al., *Forecasting with Exponential Smoothing*, 2008, ch. 6), so the weighted
sum over the days left loads innovation ``k`` with ``w_k + Σ_{h>k} w_h c_{h-k}``; its
variance is ``σ²`` times the sum of the squared loadings, and the sum is Gaussian. The
fallbacks use the same idea with their own loadings.

That formula treats the fitted parameters and start states as known, and the backtest
showed it (P10–P90 covered 57–72 % of outcomes, nominal 80 %). So the ETS sum also carries
the error of *estimating* its level, damped trend and weekday effects from the ``n`` days
fitted: as in a regression forecast, ``σ² x_f'(X'X)⁻¹x_f`` with ``X`` = [1, t, weekday
contrasts] over the fitted days and ``x_f`` the weighted sum of the same terms over the
days left (trend extended by ``φ + φ² + …``). It is no tuning constant, grows with the
horizon and shrinks with more history; it replaces the old level-only ``(Σw)²σ²/n``.
Measured and dropped: rescaling by the in-sample error of the model's own h-step sums
(almost exactly 1 — in sample the model fits its states), weekday-specific σ (no gain).

Outlier days: what cleaning took out is evidence that such days happen. The sum is the
Gaussian above plus K outlier days, K ~ Poisson(rate of cleaned days in the history × days
left), each adding what cleaning took out of a cleaned day drawn at random (+ for a capped
spike, − for a dip); P10 and P90 are quantiles of ``DRAWS`` fixed (so deterministic) draws
of that sum. With no cleaned day they are the plain Gaussian ones. P50 stays the mean of
the cleaned forecast (clamped into the interval). A runaway the history never showed cannot
widen the interval, so origins before a first spike are honestly missed.

Measured and dropped (numbers in bench/FORECASTS.md): a residual bootstrap of the ETS
innovations instead of the Gaussian (sums of 1–30 days are close to Gaussian already; lower
coverage), a robust σ with large residuals as jumps (far too narrow), a negative binomial
count of outlier days (no gain), and replacing a spike spend has come back from instead of
capping it (better runaway APE, same coverage, worse on spend of a call or two a day).

Pure: no I/O, no clock (``generated_at`` is passed in); numpy and statsforecast only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from functools import cache
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray

from spendgate.core import budget_rules as rules
from spendgate.core.budget_windows import Window, days_in_window, elapsed_fraction, window_at

Floats = NDArray[np.float64]

SEASON = 7
#: complete days needed before each method is used
MIN_SEASONAL_DAYS = 7
MIN_ETS_DAYS = 21
#: the ETS model sees at most this many recent days (10 weeks)
FIT_DAYS = 70
#: a day above this multiple of the recent non-zero median is capped before fitting
CAP_MULTIPLE = 2.5
CAP_WINDOW_DAYS = 28
#: a dip is also this many robust (relative) sds below its usual spend
OUTLIER_SCALES = 5.0
#: with no complete day yet, today's rate is used once this share of today has passed
TODAY_RATE_AFTER = 0.25
#: draws of the period sum when the history had outlier days
DRAWS = 2000
#: at most this many outlier days are drawn into one sum
MAX_JUMPS = 64
#: P10 and P90 of a standard normal
Z_90 = 1.2815515655446004

METHODS = ("none", "today_rate", "trailing_mean", "seasonal_naive", "ets_damped")
#: methods of under a week of history: their interval is wide, their P50 a rough guess
LOW_CONFIDENCE = ("none", "today_rate", "trailing_mean")


@dataclass(frozen=True, slots=True)
class SpendHistory:
    """Spend per local day: complete days from ``first_day`` to yesterday, then today so far."""

    first_day: date
    daily: tuple[int, ...]
    today_spent: int = 0
    #: how much of today has passed, 0.0 .. 1.0
    today_elapsed: float = 0.0

    @property
    def today(self) -> date:
        return self.first_day + timedelta(days=len(self.daily))


@dataclass(frozen=True, slots=True)
class PeriodOutlook:
    """The period being forecast: its first local date and the local dates still to come."""

    key: str
    start: date
    #: today first, then every later local date of the period
    remaining: tuple[date, ...]
    amount_nanos: int
    #: (threshold name, level in nanos), e.g. ("alert:50", 50_000_000_000)
    thresholds: tuple[tuple[str, int], ...] = ()
    #: the hard cap recorded spend cannot pass (None: the budget only observes)
    cap_nanos: int | None = None


@dataclass(frozen=True, slots=True)
class Forecast:
    """Where the period is expected to land, with an 80 % interval."""

    period_key: str
    spent_nanos: int
    p10_nanos: int
    p50_nanos: int
    p90_nanos: int
    amount_nanos: int
    #: P50 as a percentage of the amount, two places
    percent_of_budget: Decimal
    #: (threshold name, the local date its level is reached, or None if P50 never does)
    crossings: tuple[tuple[str, date | None], ...]
    method: str
    history_days: int
    generated_at: datetime
    #: the hard cap P10–P90 are bounded by (None: observation only)
    cap_nanos: int | None = None
    #: P50 of what the period would cost without the cap (= P50 without a cap)
    uncapped_p50_nanos: int = 0
    #: the local date P50 reaches the hard cap, after which calls are refused (None: it
    #: does not this period, or there is no cap)
    hits_cap_on: date | None = None

    @property
    def confidence(self) -> str:
        """``low`` with under a week of complete days (no weekly pattern seen yet)."""
        return "low" if self.method in LOW_CONFIDENCE else "normal"


@dataclass(frozen=True, slots=True)
class Projection:
    """A method's answer: the mean of each day left and the sd of their weighted sum."""

    method: str
    daily_mean: Floats
    sd_sum: float


# -- inputs from budgets and windows -------------------------------------------------------
def outlook_for(
    budget: rules.Budget,
    amount_nanos: int,
    window: Window,
    today: date,
    period_days: Sequence[date] | None = None,
) -> PeriodOutlook:
    """The rest of ``window`` from local date ``today``, with the budget's threshold levels
    (``period_days``: the window's local dates, when the caller already has them)."""
    levels = tuple(
        (t.name, rules.percent_of(amount_nanos, t.percent)) for t in rules.thresholds(budget)
    )
    if period_days is None:
        period_days = days_in_window(window, budget.timezone)
    remaining = tuple(d for d in period_days if d >= today)
    return PeriodOutlook(
        window.key,
        window.local_start.date(),
        remaining or (today,),
        amount_nanos,
        levels,
        rules.hard_cap_nanos(budget, amount_nanos),
    )


def local_today(now: datetime, tz: str) -> tuple[date, float]:
    """The local date at ``now`` in ``tz`` and how much of that day has passed."""
    day = window_at(now, "daily", tz)
    return day.local_start.date(), elapsed_fraction(day, now)


# -- the forecast --------------------------------------------------------------------------
def forecast(history: SpendHistory, outlook: PeriodOutlook, generated_at: datetime) -> Forecast:
    """P10/P50/P90 of the period-end spend, from the days seen and the days left."""
    if not outlook.remaining or outlook.remaining[0] != history.today:
        raise ValueError("the period's remaining dates must start with the history's today")
    y = trim_leading_zeros(np.asarray(history.daily, dtype=np.float64))
    weights = np.ones(len(outlook.remaining))
    weights[0] = 1.0 - min(max(history.today_elapsed, 0.0), 1.0)
    weights *= live_days(y, weights.size)
    cleaned = clean_days(y)
    projection = project(cleaned, weights)
    if projection.method == "none":
        projection = today_rate(history, weights) or projection
    expected = np.maximum(projection.daily_mean, 0.0) * weights
    spent = spent_in_period(history, outlook.start)
    mean_sum = float(expected.sum())
    low, high = interval_of_sum(mean_sum, projection.sd_sum, y - cleaned, float(weights.sum()))
    p50 = spent + round(mean_sum)
    # recorded spend stops at the hard cap (or where it already is, past a lowered cap)
    bound = None if outlook.cap_nanos is None else max(outlook.cap_nanos, spent)

    def capped(value: int) -> int:
        return value if bound is None else min(value, bound)

    dates = crossings(history, outlook, expected)
    return Forecast(
        period_key=outlook.key,
        spent_nanos=spent,
        p10_nanos=capped(spent + round(min(max(0.0, low), mean_sum))),
        p50_nanos=capped(p50),
        p90_nanos=capped(spent + round(max(high, mean_sum))),
        amount_nanos=outlook.amount_nanos,
        percent_of_budget=rules.percent_used(capped(p50), outlook.amount_nanos),
        crossings=tuple(
            (name, day if bound is None or level <= bound else None)
            for (name, day), (_, level) in zip(dates, outlook.thresholds, strict=True)
        ),
        method=projection.method,
        history_days=len(y),
        generated_at=generated_at,
        cap_nanos=outlook.cap_nanos,
        uncapped_p50_nanos=p50,
        hits_cap_on=None
        if outlook.cap_nanos is None
        else reached_on(history, outlook, expected, outlook.cap_nanos),
    )


def as_of(
    f: Forecast, spent_nanos: int, levels: Sequence[tuple[str, int]], today: date
) -> Forecast:
    """A stored forecast read later in its period, with ``spent_nanos`` spent by now: spend
    to date is a floor for every quantile (and for the hard cap's bound, as when computed),
    and a level (``levels``: the outlook's thresholds) already reached was reached by
    ``today`` at the latest. The caller recomputes a forecast whose amount or levels are no
    longer the budget's: this rule cannot move a crossing day to a level it never saw."""
    spent = max(f.spent_nanos, spent_nanos)
    if spent == f.spent_nanos:
        return f
    level_of = dict(levels)

    def by_today(name: str, day: date | None) -> date | None:
        level = level_of.get(name)
        if level is None or level > spent or (day is not None and day <= today):
            return day
        return today

    p50 = max(f.p50_nanos, spent)
    cap_reached = f.cap_nanos is not None and spent >= f.cap_nanos
    return replace(
        f,
        spent_nanos=spent,
        p10_nanos=max(f.p10_nanos, spent),
        p50_nanos=p50,
        p90_nanos=max(f.p90_nanos, spent),
        percent_of_budget=rules.percent_used(p50, f.amount_nanos),
        crossings=tuple((name, by_today(name, day)) for name, day in f.crossings),
        uncapped_p50_nanos=max(f.uncapped_p50_nanos, spent),
        hits_cap_on=today
        if cap_reached and (f.hits_cap_on is None or f.hits_cap_on > today)
        else f.hits_cap_on,
    )


def interval_of_sum(
    mean_sum: float, sd: float, excess: Floats, days_left: float
) -> tuple[float, float]:
    """P10 and P90 of Normal(mean_sum, sd²) plus K outlier days, K ~ Poisson(the rate of
    cleaned days in the history × ``days_left``), each adding the excess (``excess``: spend
    minus the cleaned value, per day of history) of a cleaned day drawn at random."""
    jumps = excess[excess != 0]
    if jumps.size == 0 or days_left <= 0:
        return mean_sum - Z_90 * sd, mean_sum + Z_90 * sd
    rate = jumps.size / excess.size * days_left
    normal, count_u, size_u = _draws()
    ks = np.arange(1, MAX_JUMPS + 1)
    cdf = np.cumsum(math.exp(-rate) * np.concatenate([[1.0], np.cumprod(rate / ks)]))
    counts = np.minimum(np.searchsorted(cdf, count_u * cdf[-1]), MAX_JUMPS)
    widest = int(counts.max())
    sizes = jumps[(size_u[:, :widest] * jumps.size).astype(np.intp)]
    taken = np.arange(widest) < counts[:, None]
    total = mean_sum + sd * normal + (sizes * taken).sum(axis=1)
    low, high = np.quantile(total, [0.1, 0.9])
    return float(low), float(high)


@cache
def _draws() -> tuple[Floats, Floats, Floats]:
    """Fixed draws (so forecasts are deterministic): standard normals at ``DRAWS`` evenly
    spaced quantiles in a fixed order, uniforms for the count and for each outlier day."""
    rng = np.random.default_rng(20260101)
    unit = NormalDist()
    normal = np.array([unit.inv_cdf((i + 0.5) / DRAWS) for i in range(DRAWS)])
    return (
        np.asarray(rng.permutation(normal), dtype=np.float64),
        rng.random(DRAWS),
        rng.random((DRAWS, MAX_JUMPS)),
    )


def forecast_many(
    jobs: Sequence[tuple[SpendHistory, PeriodOutlook]], generated_at: datetime
) -> list[Forecast]:
    """Every forecast of a batch (a top-level function, so a process pool can run it)."""
    return [forecast(h, o, generated_at) for h, o in jobs]


def trim_leading_zeros(y: Floats) -> Floats:
    nonzero = np.flatnonzero(y)
    return y[nonzero[0] :] if nonzero.size else y[:0]


def clean_days(y: Floats) -> Floats:
    """``y`` with every day capped at ``CAP_MULTIPLE`` × the larger of the median of the recent
    non-zero days and, with three weeks or more, the median of the same weekday in them (so
    a big day every week is not a spike), and each dip that spend has come back from
    replaced by its usual spend (``weekday_median``); see the module docstring."""
    recent = y[-CAP_WINDOW_DAYS:]
    nonzero = recent[recent > 0]
    if nonzero.size == 0:
        return y
    overall = float(np.median(nonzero))
    slots = (np.arange(y.size) - y.size) % SEASON
    by_slot = np.nan_to_num(_column_medians(_recent_weeks(y), 3))
    out = np.minimum(y, CAP_MULTIPLE * np.maximum(by_slot[slots], overall))
    usual = weekday_median(y)
    with np.errstate(invalid="ignore"):  # NaN (no usual spend known): neither dip nor back
        dip = (y * CAP_MULTIPLE < usual) & (usual - y > OUTLIER_SCALES * relative_spread(y) * usual)
        back = (y > 0) & (y * CAP_MULTIPLE >= usual)
    dip = _before_last(dip, back)
    out[dip] = usual[dip]
    return np.asarray(out, dtype=np.float64)


def weekday_median(y: Floats) -> Floats:
    """For each day, the median of the same weekday one to three weeks before and after (those
    inside ``y``; NaN with fewer than three, so that one outlier among them does not count):
    what that day usually is, even in a trend."""
    n = y.size
    pad = 3 * SEASON
    padded = np.full(n + 2 * pad, np.nan)
    padded[pad : pad + n] = y
    around = np.stack(
        [padded[pad + k * SEASON : pad + k * SEASON + n] for k in (-3, -2, -1, 1, 2, 3)]
    )
    return _column_medians(around, 3)


def _column_medians(a: Floats, least: int) -> Floats:
    """The median of each column's finite values; NaN with fewer than ``least`` of them
    (``np.nanmedian`` without its cost: NaN sorts last)."""
    count = np.isfinite(a).sum(axis=0)
    ordered = np.sort(a, axis=0)
    cols = np.arange(a.shape[1])
    low = ordered[np.maximum(count - 1, 0) // 2, cols]
    high = ordered[np.minimum(count // 2, a.shape[0] - 1), cols]
    return np.where(count >= least, (low + high) / 2, np.nan)


def relative_spread(y: Floats) -> float:
    """A robust sd of one day's spend relative to its level: 1.4826 × the median of the
    week-on-week changes of the same weekday relative to their mean, / √2 (a change is the
    difference of two days); a zero day next to a spending one is a change of 2. Infinite
    with no such change (under eight days)."""
    before, after = y[:-SEASON], y[SEASON:]
    mean = (before + after) / 2
    spends = mean > 0
    if not spends.any():
        return math.inf
    change = np.abs(after[spends] - before[spends]) / mean[spends]
    return 1.4826 * float(np.median(change)) / math.sqrt(2)


def _before_last(flagged: NDArray[np.bool_], back: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The ``flagged`` days that spend has come back from: some later day is ``back``."""
    seen = np.flatnonzero(back)
    return flagged & (np.arange(flagged.size) < (seen[-1] if seen.size else 0))


def live_days(y: Floats, horizon: int) -> Floats:
    """1.0 for each of the ``horizon`` days from today, 0.0 for a day whose weekday had no
    spend on any of its (three or more) occurrences in the last ``CAP_WINDOW_DAYS``."""
    weeks = _recent_weeks(y)
    seen = np.isfinite(weeks)
    dead = (seen.sum(axis=0) >= 3) & ~(seen & (weeks != 0)).any(axis=0)
    return np.asarray(~dead[np.arange(horizon) % SEASON], dtype=np.float64)


def _recent_weeks(y: Floats) -> Floats:
    """The last ``CAP_WINDOW_DAYS`` of ``y`` as rows of weeks, a column per weekday (today's
    weekday first), NaN before ``y`` begins."""
    recent = y[-CAP_WINDOW_DAYS:]
    weeks = np.full(CAP_WINDOW_DAYS, np.nan)
    weeks[CAP_WINDOW_DAYS - recent.size :] = recent
    return weeks.reshape(-1, SEASON)


def spent_in_period(history: SpendHistory, start: date) -> int:
    skip = max(0, (start - history.first_day).days)
    return sum(history.daily[skip:]) + history.today_spent


def _path(
    history: SpendHistory, outlook: PeriodOutlook, expected: Floats
) -> tuple[Floats, list[date]]:
    """Cumulative spend by local date: actual for the days seen, P50 for the days left."""
    skip = max(0, (outlook.start - history.first_day).days)
    seen = [float(v) for v in history.daily[skip:]]
    days = [history.first_day + timedelta(days=skip + i) for i in range(len(seen))]
    path = [*seen, history.today_spent + float(expected[0]), *map(float, expected[1:])]
    return np.cumsum(path), [*days, *outlook.remaining]


def crossings(
    history: SpendHistory, outlook: PeriodOutlook, expected: Floats
) -> tuple[tuple[str, date | None], ...]:
    """The local date each level is reached: actual for the days seen, P50 for the days left."""
    cumulative, dates = _path(history, outlook, expected)
    out: list[tuple[str, date | None]] = []
    for name, level in outlook.thresholds:
        reached = np.flatnonzero(cumulative >= level)
        out.append((name, dates[reached[0]] if reached.size else None))
    return tuple(out)


def reached_on(
    history: SpendHistory, outlook: PeriodOutlook, expected: Floats, level: int
) -> date | None:
    """The local date spend (actual, then P50) reaches ``level``, if it does this period."""
    cumulative, dates = _path(history, outlook, expected)
    reached = np.flatnonzero(cumulative >= level)
    return dates[reached[0]] if reached.size else None


# -- methods -------------------------------------------------------------------------------
def project(y: Floats, weights: Floats) -> Projection:
    """The method that fits the length of history: ETS, else the fallback chain."""
    if y.size >= MIN_ETS_DAYS:
        fitted = ets_damped(y[-FIT_DAYS:], weights)
        if fitted is not None:
            return fitted
    if y.size >= MIN_SEASONAL_DAYS:
        return seasonal_naive(y, weights)
    if y.size:
        return trailing_mean(y, weights)
    return Projection("none", np.zeros(weights.size), 0.0)


def trailing_mean(y: Floats, weights: Floats) -> Projection:
    """Every day at the mean; the sum's variance adds the mean's own error, (Σw)²σ²/n."""
    mean = float(y.mean())
    var = float(y.var(ddof=1)) if y.size > 1 else mean * mean
    total = float(weights.sum())
    var_sum = var * float((weights**2).sum()) + total * total * var / y.size
    return Projection("trailing_mean", np.full(weights.size, mean), math.sqrt(var_sum))


def today_rate(history: SpendHistory, weights: Floats) -> Projection | None:
    """A new budget's first day: what today has cost so far, scaled to a whole day, as the
    trailing mean of that one day (so the sd of a day is the rate itself). None before
    ``TODAY_RATE_AFTER`` of today has passed or with nothing spent: an hour's spend says
    too little about a day."""
    elapsed = min(history.today_elapsed, 1.0)
    if elapsed < TODAY_RATE_AFTER or history.today_spent <= 0:
        return None
    mean = trailing_mean(np.array([history.today_spent / elapsed]), weights)
    return Projection("today_rate", mean.daily_mean, mean.sd_sum)


def seasonal_naive(y: Floats, weights: Floats) -> Projection:
    """The average of the full weeks seen (one or two), repeated; each day left and the
    base day it copies both carry noise."""
    weeks = min(y.size // SEASON, 2)
    base = y[-SEASON * weeks :].reshape(weeks, SEASON).mean(axis=0)
    slots = np.arange(weights.size) % SEASON
    diffs = y[SEASON:] - y[:-SEASON]
    var = float((diffs**2).mean()) / 2 if diffs.size >= 2 else float(y.var(ddof=1))
    per_base = np.bincount(slots, weights=weights, minlength=SEASON)
    var_sum = var * (float((weights**2).sum()) + float((per_base**2).sum()) / weeks)
    return Projection("seasonal_naive", base[slots], math.sqrt(var_sum))


def _statsforecast_ets() -> Any:
    """statsforecast's ETS, imported on first use: it costs ~150 MB and ~2 s, and only the
    process that fits (the forecast worker) needs it, not the proxy."""
    from statsforecast import ets

    return ets


def ets_damped(y: Floats, weights: Floats) -> Projection | None:
    """ETS(A,Ad,A) fitted by statsforecast; None when the fit fails or is not finite."""
    scale = float(np.abs(y).mean()) or 1.0
    model = _fit_ets(y / scale)
    if model is None:
        return None
    path = _statsforecast_ets().forecast_ets(model, weights.size)["mean"]
    mean = np.asarray(path, dtype=np.float64) * scale
    sigma = math.sqrt(max(float(model["sigma2"]), 0.0)) * scale
    loadings = innovation_loadings(weights, _step_weights(model, weights.size))
    # the model's own variance, plus the error of the level it starts from
    own = float((loadings**2).sum())
    var_sum = own + parameter_term(y.size, weights, _phi(model))
    sd = sigma * math.sqrt(var_sum)
    if not (np.isfinite(mean).all() and math.isfinite(sd)):
        return None
    return Projection("ets_damped", mean, sd)


def _phi(model: dict[str, Any]) -> float:
    return float(model["par"][3]) if model["components"][3] == "D" else 1.0


def parameter_term(n: int, weights: Floats, phi: float) -> float:
    """``x_f' (X'X)⁻¹ x_f``: the variance (in units of σ²) that estimating the level, the
    (damped) trend and the weekday effects from ``n`` days adds to the weighted sum."""
    t = np.arange(n, dtype=np.float64)
    t -= t.mean()
    design = np.zeros((n, 2 + SEASON - 1))
    design[:, 0] = 1.0
    design[:, 1] = t
    slots = np.arange(n) % SEASON
    for k in range(1, SEASON):
        design[:, 1 + k] = (slots == k).astype(float) - (slots == 0)
    h = np.arange(1, weights.size + 1)
    future = np.zeros((weights.size, design.shape[1]))
    future[:, 0] = 1.0
    future[:, 1] = t[-1] + np.cumsum(phi**h)
    fslots = (n - 1 + h) % SEASON
    for k in range(1, SEASON):
        future[:, 1 + k] = (fslots == k).astype(float) - (fslots == 0)
    x_f = weights @ future
    return float(x_f @ np.linalg.solve(design.T @ design, x_f))


def _fit_ets(y: Floats) -> dict[str, Any] | None:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            model: dict[str, Any] = _statsforecast_ets().ets_f(
                y, SEASON, model="AAA", damped=True, nmse=1
            )
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            return None
    return model


def _step_weights(model: dict[str, Any], horizon: int) -> Floats:
    """``c_j`` for j = 1 .. horizon-1: how innovation t moves the forecast of t + j."""
    components: str = model["components"]
    alpha, beta, gamma, phi = (float(p) for p in model["par"][:4])
    beta = beta if components[1] != "N" else 0.0
    gamma = gamma if components[2] != "N" else 0.0
    phi = phi if components[3] == "D" else 1.0
    j = np.arange(1, max(horizon, 1))
    damped_sum = np.cumsum(phi**j)
    return np.asarray(alpha + beta * damped_sum + gamma * (j % SEASON == 0), dtype=np.float64)


def innovation_loadings(weights: Floats, steps: Floats) -> Floats:
    """How much each future innovation moves the weighted sum: ``w_k + Σ_{h>k} w_h c_{h-k}``."""
    n = weights.size
    return np.array(
        [weights[k] + float(np.dot(weights[k + 1 :], steps[: n - k - 1])) for k in range(n)],
        dtype=np.float64,
    )
