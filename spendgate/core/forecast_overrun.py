"""When a forecast warns: the ``budget.forecast_overrun`` bands, and the words that say
where a period is heading (pure).

A band is a percentage of the *limit*: the hard cap, or the amount of a budget that only
observes. The first band is 100: P50 strictly above the limit. By default it is the only
one, so a budget's period is announced once, the first time P50 lands above its limit
(SPEC §5). ``[gateway] forecast_overrun_escalation`` (``escalation`` here: ascending whole
percentages above 100, e.g. 110, 125, 150, 200) adds higher bands, each announced once a
period when P50 first lands above it. Two exceptions stop at the first band whatever is
configured:

- a hard-capped budget: recorded spend cannot pass the cap, so "P50 above the cap" means
  "will hit the hard cap" (on ``hits_cap_on``) and there is no further band to reach;
- a forecast from less than one complete day (``today_rate``): one partial day says that
  the period may overrun, not by how much.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from spendgate.core import budget_rules as rules
from spendgate.core.forecasting import Forecast
from spendgate.core.money import format_usd

#: the first ``budget.forecast_overrun`` band, % of the limit (the hard cap, or the amount
#: without one): the only one unless ``forecast_overrun_escalation`` adds higher ones
FIRST_BAND = 100


def overrun_limit(budget: rules.Budget, amount_nanos: int) -> int:
    """What a P50 above means overrun: the hard cap, or the amount for an observing budget."""
    cap = rules.hard_cap_nanos(budget, amount_nanos)
    return amount_nanos if cap is None else cap


def overrun_band(p50_nanos: int, limit_nanos: int, escalation: Sequence[int] = ()) -> int | None:
    """The highest band (% of ``limit_nanos``) that P50 lands strictly above, if any: the
    first band, or a higher one of ``escalation`` (ascending, each above 100)."""
    above = [b for b in (FIRST_BAND, *escalation) if p50_nanos * 100 > limit_nanos * b]
    return above[-1] if above else None


def band_of(forecast: Forecast, limit_nanos: int, escalation: Sequence[int] = ()) -> int | None:
    """The band a forecast has reached: the uncapped P50 against the limit, with the
    ``escalation`` bands; hard-capped and day-one (``today_rate``) forecasts reach the
    first band at most."""
    first_only = forecast.cap_nanos is not None or forecast.method == "today_rate"
    return overrun_band(forecast.uncapped_p50_nanos, limit_nanos, () if first_only else escalation)


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
