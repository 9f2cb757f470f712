"""A budget as the console shows it: the admin API's status (``GET
/admin/budgets/{id}/status``, the same function), its levels in nanos, and the sentence
saying where the period will land."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from spendgate.admin.deps import Scope
from spendgate.admin.policies import budget_status
from spendgate.console.charts import Band, Level
from spendgate.core import budget_rules as rules
from spendgate.core.money import format_usd, usd_to_nanos
from spendgate.store.policies import budget_from_row

LEVEL_NAMES = {"alert": "alert", "soft": "soft limit", "hard": "hard limit"}


@dataclass(frozen=True, slots=True)
class BudgetView:
    row: dict[str, Any]
    status: dict[str, Any]
    levels: list[Level]
    band: Band | None
    landing: str | None
    risk: Decimal  # forecast (else spent) as % of the amount: the list's default order

    @property
    def period_days(self) -> list[date]:
        start: datetime = self.status["period_start"]
        end: datetime = self.status["period_end"]
        days, day = [], start.astimezone(UTC).date()
        while datetime.combine(day, datetime.min.time(), tzinfo=UTC) < end:
            days.append(day)
            day += timedelta(days=1)
        return days

    @property
    def state(self) -> str:
        """One word for the list (shown as text, never by colour alone)."""
        used = Decimal(self.status["percent_used"])
        if self.row["hard_limit"] and self.status["remaining_to_hard_usd"] == "0":
            return "blocked"
        if used >= Decimal(self.row["soft_limit_percent"]):
            return "over soft limit"
        if self.band is not None and self.risk >= 100:
            return "at risk"
        return "ok"


def landing_text(forecast: dict[str, Any]) -> str:
    """“We'll land at $Y, +30 % over budget” (or under)."""
    p50 = usd_to_nanos(forecast["p50_usd"])
    amount = usd_to_nanos(forecast["amount_usd"])
    if amount <= 0:
        return f"We'll land at ${format_usd(p50)}."
    delta = (Decimal(p50 - amount) * 100 / amount).quantize(Decimal("1"))
    if delta > 0:
        return f"We'll land at ${format_usd(p50)}, +{delta} % over budget."
    return f"We'll land at ${format_usd(p50)}, {abs(delta)} % under budget."


async def budget_view(scope: Scope, budget_id: str) -> BudgetView:
    """Status, levels and forecast of a budget the caller may read (else its 404)."""
    status = await budget_status(budget_id, scope.svc, scope)
    row = await scope.svc.policies.get_budget(budget_id)
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
        risk = Decimal(forecast["percent_of_budget"])
    return BudgetView(row, status, levels, band, landing, risk)
