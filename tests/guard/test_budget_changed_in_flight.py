"""A call in flight when its budget changes what it counts (its zone, its categories:
a new counter, ``bucket_name``) counts in the budget's new counter when it settles,
not in the old one the edit left behind — on SQLite+memory and PostgreSQL+Redis."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import openai

from spendgate.testing.fake_upstream import FakeUpstream
from tests.admin.test_budget_edits import patch, status
from tests.conftest import RunningGateway
from tests.guard.test_budget_created_in_flight import CALL, _streams_in_flight


def test_a_call_in_flight_when_its_budget_moves_zone_counts_in_the_moved_day(
    gateway: RunningGateway, fake: FakeUpstream
) -> None:
    """A daily UTC budget; at 15:30Z one call spent and one streaming. The zone becomes
    America/Los_Angeles (its day began at 07:00Z: both calls are in it), and the moved
    day counts the spent call. Once the stream settles it counts both (the stream's cost
    went to the UTC day's counter, which the budget no longer reads: the moved day
    missed it until the reconciliation, and the hard cap let that much more past)."""
    gateway.clock.set(datetime(2026, 3, 10, 15, 30, tzinfo=UTC))
    key = gateway.create_key()
    made = gateway.create_budget(
        scope_type="key", scope_id=key["id"], amount_usd="1", period="daily", hard_limit=True
    )
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    cost = Decimal(
        client.chat.completions.with_raw_response.create(**CALL).headers["x-spendgate-cost-usd"]
    )
    with _streams_in_flight(client, fake, 1):
        patch(gateway, made, timezone="America/Los_Angeles")
        moved = status(gateway, made)
        assert moved["period_start"] == "2026-03-10T07:00:00Z"
        assert Decimal(moved["spent_usd"]) == cost
    assert Decimal(status(gateway, made)["spent_usd"]) == cost * 2
