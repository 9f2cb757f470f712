"""Budgets and rate limits stored while the config had a provider or model it no longer
has: checked when written (422), they outlive the config change and count or govern no
call of that name (a hard cap that never binds). A gateway started on such rows logs a
line per row naming it and the missing name, and the admin API shows them as the row's
``warnings``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from spendgate.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningGateway, start_gateway

#: served by the first gateway only: the second starts without them
RETIRED = """
[providers.legacy]
kind = "openai_compatible"
base_url = "http://127.0.0.1:9/v1"
[models."retired-model"]
provider = "legacy"
price = { input_per_mtok = "1", output_per_mtok = "1" }
"""


@pytest.fixture
def gateway_options() -> dict[str, Any]:
    return {"extra_config": RETIRED}


def test_rows_naming_what_the_config_dropped_are_warned_at_start_and_on_read(
    gateway: RunningGateway,
    upstream: tuple[FakeUpstream, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Written while ``legacy`` and ``retired-model`` were configured, a budget counting
    them and a rate limit on the model pass; restarted without them, the gateway logs
    one warning per row and answers each row (list and read of one) with a warning per
    missing name. A pattern and names still configured are no warning."""
    key = gateway.create_key()
    stale = gateway.create_budget(
        scope_type="key",
        scope_id=key["id"],
        amount_usd="10",
        hard_limit=True,
        categories={"providers": ["legacy"], "models": ["retired-model", "gpt-4o*"]},
    )
    fine = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="10", categories={"models": ["gpt-4o"]}
    )
    limit = gateway.post(
        "/admin/rate-limits",
        {"scope_type": "key", "scope_id": key["id"], "model": "retired-model", "rpm": 5},
    )
    assert stale["warnings"] == [] and gateway.get("/admin/rate-limits")[0]["warnings"] == []

    with caplog.at_level(logging.WARNING, logger="spendgate"):
        second = start_gateway(gateway.settings.database_url, upstream[1].url, tmp_path)
    try:
        lines = [r.getMessage() for r in caplog.records if "the config no longer has" in r.message]
        assert len(lines) == 2, lines
        budget_line, limit_line = sorted(lines)
        assert budget_line.startswith(f"budget {stale['id']} counts no spend of a name ")
        assert "categories.providers: 'legacy' is not a configured provider" in budget_line
        assert "categories.models: 'retired-model' is not a configured model" in budget_line
        assert limit_line.startswith(f"rate limit {limit['id']} governs no call of a name ")
        assert "model: 'retired-model' is not a configured model" in limit_line

        budget_warnings = [
            "categories.providers: 'legacy' is not a configured provider (configured: "
            "anthropic, azure, google, local, openai)",
            "categories.models: 'retired-model' is not a configured model",
        ]
        assert second.get(f"/admin/budgets/{stale['id']}")["warnings"] == budget_warnings
        listed = {b["id"]: b["warnings"] for b in second.get("/admin/budgets")}
        assert listed == {stale["id"]: budget_warnings, fine["id"]: []}
        limit_warnings = ["model: 'retired-model' is not a configured model"]
        assert second.get(f"/admin/rate-limits/{limit['id']}")["warnings"] == limit_warnings
        assert [r["warnings"] for r in second.get("/admin/rate-limits")] == [limit_warnings]
    finally:
        second.admin.close()
        second.handle.stop()
