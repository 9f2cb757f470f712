"""The events a budget fires once per period, found by their dedup keys.

A budget's once-per-period events (its thresholds, its cap refusing calls) are stored
under ``budget:<budget id>:<window span>:<name>``: the span names the window by its UTC
bounds (``Window.span``), so a threshold fires once per real window. A budget moved to
another zone mid-period gets a window of other hours under the same local date (its
thresholds fire in it too) or keeps its hours under another date (nothing fires twice).

Events stored before (``budget:<budget id>:<period key>:<name>``, the local date) count
for the window whose bounds their data names (``period_start``, ``period_end``), so the
thresholds a period fired before an upgrade do not fire again after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sqlalchemy.ext.asyncio import AsyncEngine

from spendgate.core.budget_windows import Window
from spendgate.store.events import Fired, fired_many


def period_prefix(budget_id: str, window: Window) -> str:
    """What the dedup key of each of the budget's events in ``window`` starts with."""
    return f"budget:{budget_id}:{window.span}:"


def _dated_prefix(budget_id: str, window: Window) -> str:
    return f"budget:{budget_id}:{window.key}:"


def _of_window(fired: Fired, window: Window) -> bool:
    return (
        fired.data.get("period_start") == window.start.isoformat()
        and fired.data.get("period_end") == window.end.isoformat()
    )


async def fired_in_periods(
    engine: AsyncEngine, periods: Sequence[tuple[str, Window]]
) -> list[list[Fired]]:
    """For each (budget id, window) of ``periods``, the events it fired in that window,
    oldest first, each ``key`` given as its name after the period's prefix (``alert:50``,
    ``refused:<cap>:<rule>``): one query for all of them."""
    current = [period_prefix(b, w) for b, w in periods]
    dated = [_dated_prefix(b, w) for b, w in periods]
    found = await fired_many(engine, [*current, *dated])
    out = []
    for (_, window), prefix, old in zip(periods, current, dated, strict=True):
        mine = [*found[prefix], *(f for f in found[old] if _of_window(f, window))]
        mine.sort(key=lambda f: f.at)
        out.append(
            [
                replace(f, key=f.key[len(prefix if f.key.startswith(prefix) else old) :])
                for f in mine
            ]
        )
    return out
