"""When a forecast warns: the ``budget.forecast_overrun`` bands, and the words that say
where a period is heading (pure).

A band is a percentage of the *limit*: the hard cap, or the amount of a budget that only
observes. An observing budget is announced at each band P50 lands strictly above (100,
110, 125, 150, 200 %), once per period, higher bands later. Two exceptions stop at the
first band:

- a hard-capped budget: recorded spend cannot pass the cap, so "P50 above the cap" means
  "will hit the hard cap" (on ``hits_cap_on``) and there is no further band to reach;
- a forecast from less than one complete day (``today_rate``): one partial day says that
  the period may overrun, not by how much.
"""

from __future__ import annotations

from collections.abc import Iterable

from spendgate.core import budget_rules as rules
from spendgate.core.forecasting import Forecast
from spendgate.core.money import format_usd

#: ``budget.forecast_overrun`` bands: % of the hard cap (or of the amount, without one)
OVERRUN_BANDS = (100, 110, 125, 150, 200)


def overrun_limit(budget: rules.Budget, amount_nanos: int) -> int:
    """What a P50 above means overrun: the hard cap, or the amount for an observing budget."""
    cap = rules.hard_cap_nanos(budget, amount_nanos)
    return amount_nanos if cap is None else cap


def overrun_band(p50_nanos: int, limit_nanos: int, *, first_only: bool = False) -> int | None:
    """The highest band (% of ``limit_nanos``) that P50 lands strictly above, if any
    (``first_only``: at most the first band)."""
    above = [b for b in OVERRUN_BANDS if p50_nanos * 100 > limit_nanos * b]
    if first_only:
        above = above[:1]
    return above[-1] if above else None


def band_of(forecast: Forecast, limit_nanos: int) -> int | None:
    """The band a forecast has reached: the uncapped P50 against the limit; hard-capped
    and day-one (``today_rate``) forecasts reach the first band at most."""
    return overrun_band(
        forecast.uncapped_p50_nanos,
        limit_nanos,
        first_only=forecast.cap_nanos is not None or forecast.method == "today_rate",
    )


def band_to_announce(band: int | None, fired: Iterable[int]) -> int | None:
    """``band`` if it is higher than every band already announced this period."""
    if band is None or band <= max(fired, default=0):
        return None
    return band


def outlook_text(forecast: Forecast) -> str:
    """One sentence: where the period lands, or the day the hard cap stops calls, with
    the interval, and how much to trust it."""
    interval = f"P10–P90 ${format_usd(forecast.p10_nanos)}–${format_usd(forecast.p90_nanos)}"
    if forecast.hits_cap_on is not None and forecast.cap_nanos is not None:
        hit = "hit" if forecast.spent_nanos >= forecast.cap_nanos else "will hit"
        text = (
            f"{hit} the hard cap (${format_usd(forecast.cap_nanos)}) on "
            f"{forecast.hits_cap_on.isoformat()}: calls are refused from then until the period "
            f"resets (without the cap P50 would be ${format_usd(forecast.uncapped_p50_nanos)})"
        )
    else:
        text = (
            f"lands at ${format_usd(forecast.p50_nanos)} (P50, "
            f"{forecast.percent_of_budget} % of ${format_usd(forecast.amount_nanos)}), {interval}"
        )
    if forecast.confidence == "low":
        text += (
            f"; low confidence: {forecast.history_days} complete day(s) of history "
            f"({forecast.method}), so the interval is wide"
        )
    return text
