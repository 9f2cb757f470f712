"""``/admin/usage`` writes its JSON with orjson, bypassing pydantic: the document must be
the one the ``UsageReport`` schema would have written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson

from spendgate.admin.schemas import UsageReport
from spendgate.admin.usage import usage_json


def _row(day: str, team: str | None, nanos: int, **extra: Any) -> dict[str, Any]:
    return {
        "day": day, "team": team, "requests": 3, "errors": 1, "input_tokens": 10,
        "output_tokens": 4, "cache_read_tokens": 0, "cache_write_tokens": 7,
        "cache_write_1h_tokens": 5, "reasoning_tokens": 2, "web_searches": 3, "cost_nanos": nanos,
        "unpriced_requests": 1, "estimated_calls": 1, "estimated_nanos": nanos // 5, **extra,
    }  # fmt: skip


def test_usage_json_is_what_the_schema_writes() -> None:
    """Same values, same time format (``Z``), money as decimal strings, absent
    dimensions as null, an "other" row and cumulative columns carried as extras; the
    totals over every row; and the document validates."""
    start, end = (
        datetime(2026, 2, 28, 18, 15, tzinfo=UTC),
        datetime(2026, 3, 31, 18, 15, tzinfo=UTC),
    )
    rows = [
        _row("2026-03-01", None, 5, cumulative_cost_nanos=5),
        _row("2026-03-01", "other", 12_500_000_000, other=True,
             cumulative_cost_nanos=12_500_000_005),
    ]  # fmt: skip
    ours = orjson.loads(usage_json(["day", "team"], start, end, "Asia/Kathmandu", rows, rows))
    money = [("0.000000005", "0.000000005", "0.000000001"), ("12.50", "12.500000005", "2.50")]
    expected = {
        "group_by": ["day", "team"], "start": start, "end": end, "timezone": "Asia/Kathmandu",
        "rows": [
            {**{k: v for k, v in _row(r["day"], r["team"], 0).items() if not k.endswith("_nanos")},
             **({"other": True} if r.get("other") else {}),
             "cost_usd": usd, "estimated_usd": estimated, "cumulative_cost_usd": cumulative}
            for r, (usd, cumulative, estimated) in zip(ours["rows"], money, strict=True)
        ],
        "total_cost_usd": "12.500000005", "unpriced_requests": 2, "estimated_calls": 2,
        "total_estimated_usd": "2.500000001", "web_searches": 6,
    }  # fmt: skip
    theirs = json.loads(UsageReport.model_validate(expected).model_dump_json())
    assert ours == theirs
    assert ours["start"] == "2026-02-28T18:15:00Z"
    assert UsageReport.model_validate(ours).rows[1].cost_usd == "12.50"
