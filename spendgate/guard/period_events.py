"""The events a budget fires once per period, found by their dedup keys.

A budget's once-per-period events (its thresholds, its cap refusing calls) are stored
under ``budget:<budget id>:<window span>:<name>``: the span names the window by its UTC
bounds (``Window.span``), so a threshold fires once per real window. A budget moved to
another zone mid-period gets a window of other hours under the same local date (its
thresholds fire in it too) or keeps its hours under another date (nothing fires twice).

Events stored before (``budget:<budget id>:<period key>:<name>``, the local date) count
for the window whose bounds their data names (``period_start``, ``period_end``), so the
thresholds a period fired before an upgrade do not fire again after it: one rule,
``store.events.dated_name``, for what is read here and what recording an event finds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.budget_windows import Window
from spendgate.store.events import Fired, dated_name, fired_many


def period_prefix(budget_id: str, window: Window) -> str:
    """What the dedup key of each of the budget's events in ``window`` starts with."""
    return f"budget:{budget_id}:{window.span}:"


async def fired_in_periods(
    engine: AsyncEngine, periods: Sequence[tuple[str, Window]]
) -> list[list[Fired]]:
    """For each (budget id, window) of ``periods``, the events it fired in that window,
    oldest first, each ``key`` given as its name after the period's prefix (``alert:50``,
    ``refused:<cap>:<rule>``): one query for all of them."""
    current = [period_prefix(b, w) for b, w in periods]
    # stored before: under the window's local date now (a date that named these hours
    # in another zone is not looked up here; recording the event again finds it)
    dated = [f"budget:{b}:{w.key}:" for b, w in periods]
    found = await fired_many(engine, [*current, *dated])
    out = []
    for (budget_id, window), prefix, old in zip(periods, current, dated, strict=True):
        bounds = (window.start.isoformat(), window.end.isoformat())
        mine = [replace(f, key=f.key[len(prefix) :]) for f in found[prefix]]
        for f in found[old]:
            name = dated_name(f.key, f"budget:{budget_id}:", f.data, bounds)
            if name is not None:
                mine.append(replace(f, key=name))
        mine.sort(key=lambda f: f.at)
        out.append(mine)
    return out
