"""Spend anomalies: is this hour's spend (or the running hour's, so far) out of its usual
band? Pure: hourly spend in, verdicts and episode steps out; ``now`` is passed in.

    hourly spend per key, team and (org, model) ─ baseline for the hour ─ band ─ verdict
                                                   │                           │
          children (keys, models, tags) ───────────┴── contributors     episode step

**Baseline** (chosen on the backtest, ``bench/anomaly_backtest.py``; the alternative,
weekly-seasonal ETS on daily totals from ``core.forecasting`` shared out by hour of day,
was slower to see a runaway and blind to a slow creep): the hour's *pool* is the same
hour of the week in each of the last ``weeks`` weeks and the hour either side of it (up
to 12 values), once there are two full weeks of history; before that the same hour of
each of the last 7 days and its neighbours (``hour_of_day``); under ``min_history_hours``
of history (counted from the first hour that spent) there is no band. Expected spend is
the pool's median; its spread ``s`` the larger of 1.4826 × the median absolute deviation
and 1.2533 × the mean absolute deviation (both estimate a normal sd; the second still
sees a sparse key's occasional spending hours, where the median and MAD are zero).

**Band** of a whole hour: ``upper = m + max(k·s, rel·m)``. For the running hour, a share
``f`` of the hour gone: ``expected = f·m`` and ``upper = f·m + max(k·√f·s, rel·f·m)``: the
noise of a part of an hour shrinks like √f (arrivals), slower than its mean (f), so an
early look needs a relatively bigger jump. **The span**: the last complete hour and the
running part together (``judge_span``), so a runaway that began late in an hour is not
judged from nothing again at the boundary (the backtest's worst time to detect an 8×
loop fell from 75 to 45 minutes). **Out** of band: above ``upper`` *and* at least
``min_excess_nanos`` above expected, the dollar floor that keeps small keys from paging
anyone. Only the upper side counts: spend below its usual band is no cost risk.

**Episodes**: one per run of out-of-band spend. A scope with no open episode opens one
when the running hour or the last complete hour is out; an open one resolves once both
are back in band and the hour it opened in has completed (so an early, still-quiet look
at a new hour never ends an episode whose last hour ran hot).

**Contributors**: for each child of the scope (a team's keys, models and tags; a key's
models and tags; a model's keys and tags), its own spend above its own expected (its
baseline, or zero without history), as a share of the children's summed excess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from spendgate.core.money import NANOS_PER_USD

Floats = NDArray[np.float64]

HOURS_PER_WEEK = 168
#: hours either side of the hour that join its pool
NEIGHBOURS = 1
#: days of the hour-of-day pool used before two full weeks of history
DAY_POOL_DAYS = 7
#: a normal sd from the median absolute deviation, and from the mean absolute deviation
MAD_TO_SD = 1.4826
MEAN_AD_TO_SD = 1.2533

ScopeType = Literal["key", "team", "model"]
SCOPE_TYPES: tuple[str, ...] = ("key", "team", "model")
Step = Literal["open", "continue", "resolve", "quiet"]


@dataclass(frozen=True, slots=True)
class Params:
    """How wide the band is and how much history it needs."""

    #: weeks of hour-of-week history in the pool
    weeks: int = 4
    #: hours of history (from the first hour that spent) before any band
    min_history_hours: int = 72
    #: full weeks of history before the hour-of-week pool replaces the hour-of-day one
    min_weeks: int = 3
    #: robust sds above expected
    k: float = 6.0
    #: and at least this share of expected above it
    rel: float = 1.0
    #: the dollar floor: an hour (or part) must be this many nanos above expected
    min_excess_nanos: int = 10 * NANOS_PER_USD
    #: contributors listed per episode
    top_contributors: int = 5

    @property
    def history_hours(self) -> int:
        """Complete hours a check needs before the running hour."""
        return self.weeks * HOURS_PER_WEEK + NEIGHBOURS


@dataclass(frozen=True, slots=True)
class Baseline:
    """What one whole hour usually costs: median ``expected`` and spread ``spread`` (nanos)."""

    expected: float
    spread: float
    method: str
    samples: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """One look at one (part of an) hour: figures in nanos, ``elapsed`` 0 < f ≤ 1."""

    elapsed: float
    expected: int
    upper: int
    actual: int
    out: bool
    method: str

    @property
    def excess(self) -> int:
        return self.actual - self.expected


# -- the baseline ------------------------------------------------------------------------
def history_start(history: Floats) -> int:
    """Index of the first hour that spent (``len`` when none did)."""
    spent = np.flatnonzero(history > 0)
    return int(spent[0]) if spent.size else int(history.size)


def baseline(history: Floats, params: Params) -> Baseline | None:
    """The baseline of the hour right after ``history`` (complete hours, oldest first);
    ``None`` with too little history since the first hour that spent."""
    n = history.size - history_start(history)
    if n < params.min_history_hours:
        return None
    t = history.size
    if n >= params.min_weeks * HOURS_PER_WEEK:
        lags, method = range(1, min(params.weeks, n // HOURS_PER_WEEK) + 1), "hour_of_week"
        step = HOURS_PER_WEEK
    else:
        lags, method, step = range(1, min(DAY_POOL_DAYS, n // 24) + 1), "hour_of_day", 24
    first = t - n
    idx = [
        t - lag * step + d
        for lag in lags
        for d in range(-NEIGHBOURS, NEIGHBOURS + 1)
        if first <= t - lag * step + d < t
    ]
    pool = history[idx]
    return pool_baseline(pool, method)


def pool_baseline(pool: Floats, method: str) -> Baseline:
    """Median and spread of a pool of hours (see the module docstring)."""
    m = float(np.median(pool))
    deviation = np.abs(pool - m)
    spread = max(MAD_TO_SD * float(np.median(deviation)), MEAN_AD_TO_SD * float(deviation.mean()))
    return Baseline(m, spread, method, int(pool.size))


# -- the band and the verdict -------------------------------------------------------------
def band(base: Baseline, elapsed: float, params: Params) -> tuple[float, float]:
    """(expected, upper) for the first ``elapsed`` share of the hour."""
    f = min(max(elapsed, 1e-6), 1.0)
    expected = f * base.expected
    width = max(params.k * math.sqrt(f) * base.spread, params.rel * expected)
    return expected, expected + width


def judge(base: Baseline, actual: float, elapsed: float, params: Params) -> Verdict:
    """Is ``actual`` (spend in the first ``elapsed`` of the hour) out of band?"""
    expected, upper = band(base, elapsed, params)
    out = actual > upper and actual - expected >= params.min_excess_nanos
    return Verdict(
        min(max(elapsed, 0.0), 1.0),
        round(expected),
        round(upper),
        round(actual),
        bool(out),
        base.method,
    )


def judge_span(
    last_base: Baseline,
    running_base: Baseline,
    last_actual: float,
    running_actual: float,
    elapsed: float,
    params: Params,
) -> Verdict:
    """The last complete hour and the running part of this one *together* (``1 + f``
    hours, its ``elapsed``): a runaway that began late in the last hour is judged on all
    of its spend so far instead of starting again from nothing at the hour boundary (that
    reset cost up to an hour of detection time). Expected is the sum of the two parts',
    the spread adds their variances (the running part's shrinking like ``f``); the same
    ``k``, ``rel`` and dollar floor as a single hour."""
    f = min(max(elapsed, 1e-6), 1.0)
    expected = last_base.expected + f * running_base.expected
    spread = math.sqrt(last_base.spread**2 + f * running_base.spread**2)
    upper = expected + max(params.k * spread, params.rel * expected)
    actual = last_actual + running_actual
    out = actual > upper and actual - expected >= params.min_excess_nanos
    return Verdict(1.0 + f, round(expected), round(upper), round(actual), bool(out), "span")


def look(
    series: Floats, elapsed: float, params: Params
) -> tuple[Verdict | None, Verdict | None, Verdict | None]:
    """Every verdict of one check of a scope whose hourly spend is ``series`` (the last
    element the running hour, ``elapsed`` of it gone): (running hour, last complete hour,
    the two together); None where there is no band. The gateway and the backtest both
    look through here."""
    running_base = baseline(series[:-1], params)
    last_base = baseline(series[:-2], params)
    running = last = span = None
    if running_base is not None:
        running = judge(running_base, float(series[-1]), elapsed, params)
    if last_base is not None:
        last = judge(last_base, float(series[-2]), 1.0, params)
    if running_base is not None and last_base is not None:
        span = judge_span(
            last_base, running_base, float(series[-2]), float(series[-1]), elapsed, params
        )
    return running, last, span


# -- episodes -------------------------------------------------------------------------------
def step(
    episode_hour: int | None,
    running: Verdict | None,
    last: Verdict | None,
    last_hour: int,
    span: Verdict | None = None,
) -> Step:
    """What happens to a scope's episode now. ``episode_hour``: the hour (number) its open
    episode started in, or None; ``running``/``last``/``span``: the running, the last
    complete hour's and the two together's verdicts (None without a band); ``last_hour``:
    the last complete hour's number."""
    out = any(v is not None and v.out for v in (running, last, span))
    if episode_hour is None:
        return "open" if out else "quiet"
    if out or last_hour < episode_hour:
        return "continue"
    return "resolve"


def worst(
    running: Verdict | None, last: Verdict | None, span: Verdict | None = None
) -> Verdict | None:
    """The verdict an event reports: the out one (the larger excess if several are)."""
    found = [v for v in (running, last, span) if v is not None]
    out = [v for v in found if v.out] or found
    return max(out, key=lambda v: v.excess) if out else None


# -- the grid of hourly spend ---------------------------------------------------------------
ScopeKey = tuple[str, str, str]
"""(org_id, scope type, scope id): a key, a team, or a model within an org."""
ChildKey = tuple[str, str]
"""(dimension, id) of a contributor: ``key``, ``team``, ``model`` or ``tag``."""


@dataclass(frozen=True, slots=True)
class SpendCell:
    """Settled spend of one combination in one hour (the store's one query)."""

    org_id: str
    team_id: str | None
    key_id: str
    model: str
    tags: tuple[str, ...]
    hour: int
    nanos: int


@dataclass(slots=True)
class Grid:
    """Spend per hour ``first_hour .. first_hour + hours`` (the last one running) of every
    scope and of each scope's children."""

    first_hour: int
    hours: int
    scopes: dict[ScopeKey, Floats] = field(default_factory=dict)
    children: dict[ScopeKey, dict[ChildKey, Floats]] = field(default_factory=dict)
    #: the team of each key scope (for who may see it)
    teams: dict[ScopeKey, str | None] = field(default_factory=dict)

    def _add(self, scope: ScopeKey, kids: Iterable[ChildKey], i: int, nanos: float) -> None:
        row = self.scopes.get(scope)
        if row is None:
            row = self.scopes[scope] = np.zeros(self.hours + 1)
            self.children[scope] = {}
        row[i] += nanos
        own = self.children[scope]
        for kid in kids:
            series = own.get(kid)
            if series is None:
                series = own[kid] = np.zeros(self.hours + 1)
            series[i] += nanos


def grid(cells: Iterable[SpendCell], first_hour: int, hours: int) -> Grid:
    """The grid of ``cells`` (hours outside the window are dropped)."""
    out = Grid(first_hour, hours)
    for c in cells:
        i = c.hour - first_hour
        if not 0 <= i <= hours:
            continue
        tags = [("tag", t) for t in dict.fromkeys(c.tags)]
        key: ScopeKey = (c.org_id, "key", c.key_id)
        out._add(key, [("model", c.model), *tags], i, c.nanos)
        out.teams[key] = c.team_id
        if c.team_id is not None:
            kids = [("key", c.key_id), ("model", c.model), *tags]
            out._add((c.org_id, "team", c.team_id), kids, i, c.nanos)
            out.teams[(c.org_id, "team", c.team_id)] = c.team_id
        model_kids = [("key", c.key_id), *tags]
        if c.team_id is not None:
            model_kids.append(("team", c.team_id))
        out._add((c.org_id, "model", c.model), model_kids, i, c.nanos)
    return out


# -- contributors ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Contributor:
    dimension: str
    id: str
    actual: int
    expected: int
    #: this child's excess as a share of the children's summed excess, 0..1
    share: float

    @property
    def excess(self) -> int:
        return self.actual - self.expected


def contributors(
    children: Mapping[ChildKey, Floats], elapsed: float, params: Params, *, hour_offset: int = 0
) -> list[Contributor]:
    """The children with spend above their own expected in the checked hour (the last
    element of each series, or ``hour_offset`` before it), largest share first; per
    dimension, at most ``top_contributors``."""
    found: list[tuple[str, str, float, float]] = []
    for (dimension, child_id), series in children.items():
        end = series.size - hour_offset
        actual = float(series[end - 1])
        base = baseline(series[: end - 1], params)
        expected = 0.0 if base is None else band(base, elapsed, params)[0]
        if actual > expected:
            found.append((dimension, child_id, actual, expected))
    out: list[Contributor] = []
    for dimension in ("key", "team", "model", "tag"):
        mine = [f for f in found if f[0] == dimension]
        total = sum(a - e for _, _, a, e in mine)
        mine.sort(key=lambda f: (-(f[2] - f[3]), f[1]))
        for _, child_id, actual, expected in mine[: params.top_contributors]:
            share = (actual - expected) / total if total > 0 else 0.0
            out.append(Contributor(dimension, child_id, round(actual), round(expected), share))
    return out


# -- one check over every scope ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Finding:
    """What one check decided for one scope (``quiet`` scopes are not reported)."""

    scope: ScopeKey
    step: Step
    verdict: Verdict
    team_id: str | None
    contributors: tuple[Contributor, ...] = ()
    #: the verdict is of the last complete hour (else of the running hour)
    last_hour: bool = False


def check_all(
    spend: Grid,
    elapsed: float,
    open_episodes: Mapping[ScopeKey, int],
    params: Params,
) -> list[Finding]:
    """Every scope's step at a moment ``elapsed`` into the running hour (the grid's last
    hour). ``open_episodes``: scope → the hour number its open episode started in; a scope
    with an open episode but no spend in the window counts as back in band."""
    last_hour = spend.first_hour + spend.hours - 1
    out: list[Finding] = []
    for scope in sorted(set(spend.scopes) | set(open_episodes)):
        series = spend.scopes.get(scope)
        running = last = span = None
        if series is not None:
            running, last, span = look(series, elapsed, params)
        what = step(open_episodes.get(scope), running, last, last_hour, span)
        verdict = worst(running, last, span)
        if what == "quiet":
            continue
        if verdict is None:  # an open episode whose scope has no band any more
            verdict = Verdict(elapsed, 0, 0, 0, False, "none")
        kids: tuple[Contributor, ...] = ()
        if what == "open":  # a span's contributors: those of its running part
            offset = 1 if verdict is last else 0
            at = 1.0 if verdict is last else elapsed
            kids = tuple(contributors(spend.children[scope], at, params, hour_offset=offset))
        is_last = verdict is last and verdict is not running
        out.append(Finding(scope, what, verdict, spend.teams.get(scope), kids, is_last))
    return out
