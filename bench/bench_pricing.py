"""Microseconds per priced call: genai-prices ``calc_price`` vs ``PriceTable``.

Run: ``.venv/bin/python bench/bench_pricing.py``. "fast path" is ``PriceTable.price``
(compiled plan); "fallback" is the table's genai-prices path, which it takes only for
price versions it cannot compile; "override" prices a configured ``PriceOverride``.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import Usage, calc_price
from genai_prices.types import ModelInfo, Provider

from spendgate.core.pricing import PriceOverride, PriceRef, PriceTable, clamp_usage
from spendgate.core.usage import TokenUsage

AT = datetime(2025, 11, 1, 12, tzinfo=UTC)
USAGE = TokenUsage(
    input_tokens=12_000,
    output_tokens=900,
    cache_read_tokens=8_000,
    cache_write_tokens=1_000,
    reasoning_tokens=300,
)
MODELS = [
    ("gpt-4o-mini", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("gemini-2.5-pro", "google"),
    ("deepseek-chat", "deepseek"),
]


def per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    table = PriceTable()
    genai_usage = Usage(
        input_tokens=12_000,
        output_tokens=900,
        cache_read_tokens=8_000,
        cache_write_tokens=1_000,
        output_reasoning_tokens=300,
    )
    counts = clamp_usage(USAGE)
    print(f"{'model':<22}{'genai calc_price':>18}{'fast path':>12}{'fallback':>12}")
    for model, provider in MODELS:
        ref = PriceRef(model, provider)
        table.price(ref, USAGE, AT)  # warm the caches
        found = table._lookup(ref)  # private: benchmarking the slow path on its own
        assert found is not None

        def genai(model: str = model, provider: str = provider) -> object:
            return calc_price(genai_usage, model, provider_id=provider, genai_request_timestamp=AT)

        def fast(ref: PriceRef = ref) -> object:
            return table.price(ref, USAGE, AT)

        def slow(found: tuple[Provider, ModelInfo] = found) -> object:
            return table._price_with_genai(found, counts, AT)

        print(
            f"{model:<22}{per_call_us(genai, 2_000):>15.1f} µs"
            f"{per_call_us(fast, 100_000):>9.2f} µs{per_call_us(slow, 2_000):>9.1f} µs"
        )
    override = PriceRef("self-hosted", None, PriceOverride(Decimal("0.2"), Decimal("0.8")))
    print(
        f"{'override':<22}{'':>18}"
        f"{per_call_us(lambda: table.price(override, USAGE, AT), 100_000):>9.2f} µs"
    )


if __name__ == "__main__":
    main()
