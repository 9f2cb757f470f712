"""``/admin/usage`` writes its JSON with orjson, bypassing pydantic: the document must be
the one the ``UsageReport`` schema would have written."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson

from spendgate.admin.schemas import UsageReport
from spendgate.admin.usage import usage_json


def test_usage_json_is_what_the_schema_writes() -> None:
    """Same values, same time format (``Z``), absent dimensions as null, an "other" row
    and cumulative columns carried as extras; and the document validates."""
    figures = {
        "requests": 3, "errors": 1, "input_tokens": 10, "output_tokens": 4,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 2,
        "unpriced_requests": 1,
    }  # fmt: skip
    body = {
        "group_by": ["day", "team", "model"],
        "start": datetime(2026, 2, 28, 18, 15, tzinfo=UTC),
        "end": datetime(2026, 3, 31, 18, 15, tzinfo=UTC),
        "timezone": "Asia/Kathmandu",
        "rows": [
            {"day": "2026-03-01", "team": None, "model": "m1", **figures,
             "cost_usd": "0.000000005", "cumulative_cost_usd": "0.000000005"},
            {"day": "2026-03-01", "team": "other", "model": "other", **figures,
             "cost_usd": "12.50", "other": True, "cumulative_cost_usd": "12.500000005"},
        ],
        "total_cost_usd": "12.500000005",
        "unpriced_requests": 2,
    }  # fmt: skip
    ours = usage_json(body)
    theirs = UsageReport.model_validate(body).model_dump_json()
    assert orjson.loads(ours) == json.loads(theirs)
    assert orjson.loads(ours)["start"] == "2026-02-28T18:15:00Z"
    assert UsageReport.model_validate_json(ours).rows[0].cost_usd == "0.000000005"
