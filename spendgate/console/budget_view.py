"""A budget as the console shows it: the admin API's status (``GET
/admin/budgets/{id}/status``, the same function), its levels in nanos, and the sentence
saying where the period will land."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo

from spendgate.admin.deps import Scope
from spendgate.admin.policies import budget_statuses, warned
from spendgate.console.charts import Band, Level
from spendgate.core import budget_rules as rules
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.services import Services
from spendgate.store.policies import budget_from_row

LEVEL_NAMES = {"alert": "alert", "soft": "soft limit", "hard": "hard limit"}
#: the status API's ``state`` in words (shown as text, never by colour alone)
STATES = {
    "blocked": "blocked: hard limit reached",
    # with the figure: what is left (``BudgetView.state``)
    "refusing": "refusing calls whose worst case exceeds ${remaining} remaining",
    "over_soft_limit": "over soft limit",
    "at_risk": "at risk",
    "ok": "ok",
}


@dataclass(frozen=True, slots=True)
class BudgetView:
    row: dict[str, Any]
    status: dict[str, Any]
    levels: list[Level]
    band: Band | None
    landing: str | None
    risk: Decimal  # forecast (else spent) as % of the amount: the list's default order
    #: the providers or models it names that the config no longer has (the API's warnings)
    warnings: list[str]

    @property
    def period_days(self) -> list[date]:
        start: datetime = self.status["period_start"]
        end: datetime = self.status["period_end"]
        zone = ZoneInfo(self.row["timezone"])
        days, day = [], start.astimezone(zone).date()
        while datetime.combine(day, datetime.min.time(), tzinfo=zone) < end:
            days.append(day)
            day += timedelta(days=1)
        return days

    @property
    def counts_some_calls(self) -> bool:
        """Whether the budget's categories narrow what of its scope it counts."""
        return any((self.row.get("categories") or {}).values())

    @property
    def state(self) -> str:
        """The status API's ``state`` in words."""
        return STATES[self.status["state"]].format(remaining=self.status["remaining_to_hard_usd"])

    @property
    def refusal_note(self) -> str | None:
        """What the hard cap refused this period (at the cap in force now), if anything."""
        st = self.status
        if st.get("refusing_since") is None:
            return None
        refused = (
            f"A call that could cost up to ${st['refused_worst_case_usd']} (its prompt "
            "estimate + max_tokens) was refused"
        )
        until = "until the period resets, the amount is raised or an exception is granted."
        if st["state"] == "blocked":
            return (
                f"{refused}, and the ${st['hard_limit_usd']} hard limit is used up (spent "
                f"and in flight): every call is refused {until}"
            )
        return (
            f"{refused}: ${st['remaining_to_hard_usd']} is left of the "
            f"${st['hard_limit_usd']} hard limit, and every call whose worst case exceeds "
            f"that is refused (smaller ones still pass) {until}"
        )

    @property
    def exception_note(self) -> str | None:
        """How the amount shown (with the exceptions active now) is made up, if it is not
        the budget's own: "$100.00 + $20.00 from 1 active exception"."""
        own = usd_to_nanos(self.status["amount_usd"])
        extra = usd_to_nanos(self.status["effective_amount_usd"]) - own
        count = self.status["active_exceptions"]
        if not count and not extra:
            return None
        sign = "+" if extra >= 0 else "−"
        plural = "s" if count != 1 else ""
        return (
            f"${format_usd(own)} {sign} ${format_usd(abs(extra))} "
            f"from {count} active exception{plural}"
        )


def landing_text(forecast: dict[str, Any]) -> str:
    """“We'll land at $Y, +30 % over budget” (or under)."""
    p50 = usd_to_nanos(forecast["p50_usd"])
    amount = usd_to_nanos(forecast["amount_usd"])
    if amount <= 0:
        return f"We'll land at ${format_usd(p50)}."
    # whole percents rounded towards the risk: a sliver over is "+1 % over", not "+0 %",
    # and a landing of $0.0006 on $6.50 is "99 % under", not "100 %" (which reads as $0)
    delta = Decimal(p50 - amount) * 100 / amount
    if delta > 0:
        over = delta.quantize(Decimal("1"), rounding=ROUND_UP)
        return f"We'll land at ${format_usd(p50)}, +{over} % over budget."
    under = abs(delta).quantize(Decimal("1"), rounding=ROUND_DOWN)
    return f"We'll land at ${format_usd(p50)}, {under} % under budget."


async def budget_view(scope: Scope, budget_id: str) -> BudgetView:
    """Status, levels and forecast of a budget the caller may read (else its 404)."""
    row, _ = await scope.budget(budget_id)
    return (await budget_views(scope.svc, [row]))[0]


async def budget_views(svc: Services, rows: Sequence[dict[str, Any]]) -> list[BudgetView]:
    """:func:`budget_view` of stored budgets the caller may read (checked before: a list
    filtered by the admin API's rule), all statuses read together."""
    statuses = await budget_statuses(svc, rows)
    return [
        _view(row, status, warned(svc, row)["warnings"])
        for row, status in zip(rows, statuses, strict=True)
    ]


def _view(row: dict[str, Any], status: dict[str, Any], warnings: list[str]) -> BudgetView:
    budget = budget_from_row(row)
    amount = usd_to_nanos(status["effective_amount_usd"])
    levels = [Level("budget", amount, "budget")]
    for threshold, nanos in rules.levels(budget, amount):
        name = f"{LEVEL_NAMES[threshold.kind]} {threshold.percent.normalize():f}%"
        levels.append(Level(name, nanos, threshold.kind))
    forecast = status.get("forecast")
    band = None
    landing = None
    risk = Decimal(status["percent_used"])
    if forecast is not None:
        band = Band(*(usd_to_nanos(forecast[f"{p}_usd"]) for p in ("p10", "p50", "p90")))
        landing = landing_text(forecast)
        # as of now: never below what is spent (admin.forecasts.forecasts_now)
        risk = Decimal(forecast["percent_of_budget"])
    return BudgetView(row, status, levels, band, landing, risk, warnings)
