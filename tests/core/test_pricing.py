"""PriceTable prices exactly like genai-prices (to the nano), only faster."""

from __future__ import annotations

import gc
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from genai_prices import Usage, calc_price, data_snapshot, extract_usage
from genai_prices.types import ModelPrice
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.core.money import usd_to_nanos
from spendgate.core.pricing import (
    Priced,
    PriceOverride,
    PriceRef,
    PriceTable,
    _compile_plan,
    clamp_usage,
    price_context,
)
from spendgate.core.usage import TokenUsage, from_anthropic, from_openai

AT = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable()


def genai_nanos(usage: TokenUsage, model: str, provider: str, at: datetime = AT) -> int:
    """The reference: genai-prices' full calculation, converted to nanos once."""
    counts = dict(
        zip(
            (
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "output_reasoning_tokens",
                "cache_write_1h_tokens",
                "input_audio_tokens",
                "output_audio_tokens",
                "web_searches",
            ),
            clamp_usage(usage),
            strict=True,
        )
    )
    counts["cache_audio_read_tokens"] = 0  # audio is kept out of the cache's part
    result = calc_price(Usage(**counts), model, provider_id=provider, genai_request_timestamp=at)
    return usd_to_nanos(result.total_price)


def openai_chat(
    prompt: int, cached: int, completion: int, reasoning: int, written: int = 0
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": cached,
            "audio_tokens": 0,
            "cache_write_tokens": written,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def openai_responses(
    inp: int, cached: int, out: int, reasoning: int, written: int = 0
) -> dict[str, Any]:
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }


def anthropic(uncached: int, read: int, write: int, out: int, one_hour: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": uncached,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": write - one_hour,
            "ephemeral_1h_input_tokens": one_hour,
        },
        "output_tokens": out,
        "service_tier": "standard",
    }


# (model, genai provider id, api flavor, raw usage payload as the provider returns it)
CROSS_CHECK = [
    ("gpt-4o", "openai", "chat", openai_chat(12_345, 8_192, 777, 0)),
    ("gpt-4o-mini", "openai", "chat", openai_chat(3_003, 1_024, 151, 0)),
    ("gpt-4.1", "openai", "responses", openai_responses(45_678, 40_960, 2_345, 0)),
    ("o4-mini", "openai", "chat", openai_chat(1_999, 0, 5_432, 4_096)),
    ("o3-mini", "openai", "responses", openai_responses(7_777, 3_333, 9_999, 8_000)),
    ("gpt-5", "openai", "chat", openai_chat(20_011, 19_968, 3_141, 2_718)),
    ("gpt-5-mini", "openai", "chat", openai_chat(101, 0, 33, 17)),
    ("claude-sonnet-4-5", "anthropic", "default", anthropic(1_201, 40_000, 3_017, 811)),
    ("claude-sonnet-4-5", "anthropic", "default", anthropic(2_000, 190_000, 9_000, 4_000)),
    ("claude-haiku-4-5", "anthropic", "default", anthropic(17, 12_000, 0, 90)),
    ("claude-3-5-haiku", "anthropic", "default", anthropic(5_003, 0, 2_048, 333)),
    ("claude-opus-4-1", "anthropic", "default", anthropic(999, 25_000, 1_111, 1_234)),
    # 1-hour cache writes, part of the writes and priced above the 5-minute ones
    ("claude-opus-4-5", "anthropic", "default", anthropic(1_000, 5_000, 3_000, 700, 2_000)),
    ("claude-sonnet-4-5", "anthropic", "default", anthropic(9, 0, 4_096, 12, 4_096)),
    ("claude-sonnet-4-5", "anthropic", "default", anthropic(3_000, 180_000, 30_000, 99, 7_777)),
    ("claude-haiku-4-5", "anthropic", "default", anthropic(50, 1_000, 2_500, 60, 1_200)),
    ("gemini-2.5-flash", "google", "chat", openai_chat(8_123, 4_096, 1_500, 1_100)),
    ("gemini-2.5-pro", "google", "chat", openai_chat(54_321, 32_768, 6_000, 4_500)),
    ("gemini-2.5-pro", "google", "chat", openai_chat(250_001, 131_072, 8_001, 7_000)),
    ("gemini-2.0-flash", "google", "chat", openai_chat(1_234_567, 1_000_000, 8_192, 0)),
    # OpenAI models priced for cache writes (1.25x input) report them in the details
    ("gpt-6-luna", "openai", "chat", openai_chat(100_000, 20_000, 1_000, 0, written=50_000)),
    ("gpt-6-luna", "openai", "responses", openai_responses(300_000, 0, 900, 0, written=1)),
    ("gpt-5.6-cyber", "openai", "chat", openai_chat(4_444, 0, 1, 0, written=4_444)),
    # and OpenRouter's Anthropic models through its OpenAI-compatible API
    (
        "anthropic/claude-sonnet-4.5",
        "openrouter",
        "chat",
        openai_chat(90_000, 30_000, 2_000, 0, written=45_000),
    ),
]


@pytest.mark.parametrize(("model", "provider", "flavor", "raw"), CROSS_CHECK)
def test_matches_genai_extract_and_calc(
    table: PriceTable, model: str, provider: str, flavor: str, raw: dict[str, Any]
) -> None:
    """Provider payload → our normaliser → PriceTable equals genai's own extract+calc, to the nano.

    This cross-checks ``spendgate.core.usage`` (total-prompt convention, cache fields) as well
    as the pricing rules, including tiers above 200k prompt tokens.
    """
    expected_usd = (
        extract_usage({"model": model, "usage": raw}, provider_id=provider, api_flavor=flavor)
        .calc_price(genai_request_timestamp=AT)
        .total_price
    )
    ours = from_anthropic(raw) if provider == "anthropic" else from_openai(raw)
    assert ours is not None

    priced = table.price(PriceRef(model, provider), ours, AT)

    assert expected_usd > 0
    assert priced == Priced(usd_to_nanos(expected_usd), "genai-prices")


PROPERTY_MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("gpt-audio", "openai"),  # audio input and output at their own rates
    ("gpt-4.1", "openai"),
    ("o4-mini", "openai"),
    ("gpt-5", "openai"),
    ("claude-sonnet-4-5", "anthropic"),  # tiered above 200k
    ("claude-sonnet-4", "anthropic"),
    ("claude-haiku-4-5", "anthropic"),
    ("claude-opus-4-1", "anthropic"),
    ("claude-opus-4-5", "anthropic"),
    ("gemini-2.5-pro", "google"),  # tiered above 200k
    ("gemini-1.5-pro", "google"),  # tiered above 128k
    ("gemini-2.5-flash", "google"),
    ("gemini-2.0-flash", "google"),
    ("sonar", "perplexity"),  # per-request price
    ("sonar-deep-research", "perplexity"),  # reasoning priced separately
    ("deepseek-chat", "deepseek"),
]

TIER_EDGES = [0, 1, 128_000, 128_001, 200_000, 200_001, 2_000_000]


@st.composite
def valid_usages(draw: st.DrawFn) -> TokenUsage:
    inp = draw(st.integers(0, 2_000_000) | st.sampled_from(TIER_EDGES))
    read = draw(st.integers(0, inp))
    write = draw(st.integers(0, inp - read))
    out = draw(st.integers(0, 2_000_000))
    return TokenUsage(inp, out, read, write, draw(st.integers(0, out)), draw(st.integers(0, write)))


@settings(max_examples=300, deadline=None)
@given(model=st.sampled_from(PROPERTY_MODELS), usage=valid_usages())
def test_property_equals_genai_calc_price(model: tuple[str, str], usage: TokenUsage) -> None:
    """For any consistent usage, the fast path equals genai's calc_price to the nano (the
    reference takes the usage as it is: consistent usage needs no clamping)."""
    name, provider = model
    priced = PriceTable().price(PriceRef(name, provider), usage, AT)
    reported = Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        output_reasoning_tokens=usage.reasoning_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
    )
    result = calc_price(reported, name, provider_id=provider, genai_request_timestamp=AT)
    assert priced == Priced(usd_to_nanos(result.total_price), "genai-prices")


@pytest.mark.parametrize(("model", "provider"), PROPERTY_MODELS)
def test_popular_models_take_the_fast_path(model: str, provider: str) -> None:
    """The hot-path models compile to a plan (no per-call genai fallback)."""
    _, info = data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    assert _compile_plan(info.get_prices(AT)) is not None


def test_every_price_version_in_the_data_matches_genai() -> None:
    """Every price version in the bundled data either falls back or prices like genai,
    web searches (``web_searches_kcount``) included."""
    rng = random.Random(20251101)
    checked = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            versions = (
                [model.prices]
                if isinstance(model.prices, ModelPrice)
                else [conditional.prices for conditional in model.prices]
            )
            for version in versions:
                plan = _compile_plan(version)
                if plan is None:
                    continue
                inp = rng.choice([rng.randint(0, 5_000), rng.randint(0, 2_000_000)])
                read = rng.randint(0, inp)
                write = rng.randint(0, inp - read)
                out = rng.randint(0, 200_000)
                reasoning = rng.randint(0, out)
                counts = (
                    inp, out, read, write, reasoning, rng.randint(0, write),
                    rng.randint(0, inp - read - write), rng.randint(0, out - reasoning),
                    rng.choice([0, rng.randint(1, 50)]),
                )  # fmt: skip
                usage = Usage(
                    input_tokens=inp,
                    output_tokens=out,
                    cache_read_tokens=read,
                    cache_write_tokens=write,
                    output_reasoning_tokens=counts[4],
                    cache_write_1h_tokens=counts[5],
                    input_audio_tokens=counts[6],
                    output_audio_tokens=counts[7],
                    cache_audio_read_tokens=0,
                    web_searches=counts[8],
                )
                assert plan.nanos(counts) == usd_to_nanos(version.calc_price(usage)["total_price"])
                checked += 1
    assert checked > 1000


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(PROPERTY_MODELS),
    counts=st.tuples(*[st.integers(-1_000, 3_000_000)] * 8, st.integers(-5, 500)),
)
def test_weird_usage_never_raises_and_is_priced_clamped(
    model: tuple[str, str], counts: tuple[int, ...]
) -> None:
    """Negative counts, cache > input, reasoning > output, 1-hour writes > writes, audio
    beyond what the cache and reasoning leave, negative searches: clamped, priced, never
    raised."""
    usage = TokenUsage(
        *counts[:6],
        input_audio_tokens=counts[6],
        output_audio_tokens=counts[7],
        web_searches=counts[8],
    )
    priced = PriceTable().price(PriceRef(*model), usage, AT)
    assert priced.cost_nanos == genai_nanos(usage, *model)  # genai would raise unclamped
    assert priced.cost_nanos >= 0


def test_clamp_rules() -> None:
    """Cache reads are capped by input, writes by what reads left, reasoning by output,
    1-hour writes by the writes."""
    assert clamp_usage(TokenUsage(100, 10, 80, 50, 20, 30)) == (100, 10, 80, 20, 10, 20, 0, 0, 0)
    assert clamp_usage(TokenUsage(-5, -1, 3, -2, -4, -6)) == (0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert clamp_usage(TokenUsage(100, 10, 30, 20, 5, 15)) == (100, 10, 30, 20, 5, 15, 0, 0, 0)
    assert clamp_usage(TokenUsage(web_searches=-3))[8] == 0
    audio = TokenUsage(100, 10, 30, 20, 4, 0, input_audio_tokens=90, output_audio_tokens=9)
    assert clamp_usage(audio)[6:8] == (50, 6)  # what the cache and the reasoning leave


def test_override_wins_and_bills_cache_at_its_own_rates(table: PriceTable) -> None:
    """An override replaces the table price; uncached input = input − reads − writes."""
    override = PriceOverride(Decimal("0.50"), Decimal(2), Decimal("0.05"), Decimal("0.625"))
    usage = TokenUsage(
        input_tokens=1_000_000,
        output_tokens=10_000,
        cache_read_tokens=200_000,
        cache_write_tokens=100_000,
    )
    priced = table.price(PriceRef("gpt-4o", "openai", override), usage, AT)
    # 700k × $0.50 + 200k × $0.05 + 100k × $0.625 + 10k × $2, per million
    assert priced == Priced(442_500_000, "override")


def test_override_without_cache_prices_bills_cache_as_input(table: PriceTable) -> None:
    """A missing cache price means those tokens pay the input price, not zero."""
    override = PriceOverride(Decimal("0.50"), Decimal(2))
    usage = TokenUsage(
        input_tokens=1_000_000,
        output_tokens=10_000,
        reasoning_tokens=4_000,
        cache_read_tokens=200_000,
        cache_write_tokens=100_000,
    )
    priced = table.price(PriceRef("my-llama", None, override), usage, AT)
    assert priced == Priced(500_000_000 + 20_000_000, "override")
    assert table.is_known(PriceRef("my-llama", None, override), AT)


def test_one_hour_writes_pay_their_own_rate(table: PriceTable) -> None:
    """claude-opus-4-5: a 1-hour write costs $10/MTok, a 5-minute one $6.25, uncached
    input $5 (the figures the Anthropic price page gives)."""
    ref = PriceRef("claude-opus-4-5", "anthropic")
    usage = TokenUsage(
        input_tokens=4_000_000, cache_write_tokens=3_000_000, cache_write_1h_tokens=2_000_000
    )
    assert table.price(ref, usage, AT) == Priced(
        1 * 5_000_000_000 + 1 * 6_250_000_000 + 2 * 10_000_000_000, "genai-prices"
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # its own rate: 700k x $0.50 + 100k x $0.625 + 200k x $1 + 10k x $2, per million
        (
            PriceOverride(Decimal("0.50"), Decimal(2), None, Decimal("0.625"), Decimal(1)),
            632_500_000,
        ),
        # none given: the 1-hour writes pay the cache-write rate
        (PriceOverride(Decimal("0.50"), Decimal(2), None, Decimal("0.625")), 557_500_000),
        # neither cache-write rate: the input rate
        (PriceOverride(Decimal("0.50"), Decimal(2)), 520_000_000),
        # a 1-hour rate alone: the 5-minute writes pay the input rate
        (
            PriceOverride(Decimal("0.50"), Decimal(2), cache_write_1h_per_mtok=Decimal(1)),
            420_000_000 + 200_000_000,
        ),
    ],
)
def test_override_prices_one_hour_writes(
    table: PriceTable, override: PriceOverride, expected: int
) -> None:
    """``cache_write_1h_per_mtok`` prices the 1-hour writes; left out, they pay
    ``cache_write_per_mtok`` (else the input rate), genai-prices' rule for a unit it has
    no price for."""
    usage = TokenUsage(
        input_tokens=1_000_000,
        output_tokens=10_000,
        cache_write_tokens=300_000,
        cache_write_1h_tokens=200_000,
    )
    assert table.price(PriceRef("my-llama", None, override), usage, AT) == Priced(
        expected, "override"
    )


def test_one_half_even_rounding_at_the_end(table: PriceTable) -> None:
    """$0.0005/MTok: 1 token is 0.5 nano → 0, 3 tokens 1.5 → 2, 5 tokens 2.5 → 2."""
    ref = PriceRef("tiny", None, PriceOverride(Decimal("0.0005"), Decimal(0)))
    assert [table.price(ref, TokenUsage(input_tokens=n), AT).cost_nanos for n in (1, 3, 5)] == [
        0,
        2,
        2,
    ]


def test_override_rejects_negative_prices() -> None:
    """A negative or non-finite rate is a configuration error, not a discount."""
    with pytest.raises(ValueError, match="non-negative"):
        PriceOverride(Decimal(-1), Decimal(1))
    with pytest.raises(ValueError, match="non-negative"):
        PriceOverride(Decimal(1), Decimal(1), cache_read_per_mtok=Decimal("NaN"))


@pytest.mark.parametrize(
    "ref",
    [
        PriceRef("definitely-not-a-model-7b", "openai"),
        PriceRef("gpt-4o", "no-such-provider"),
        PriceRef("definitely-not-a-model-7b", None),
    ],
)
def test_unknown_model_is_unknown_not_free(table: PriceTable, ref: PriceRef) -> None:
    """An unknown model or provider prices as None ("unknown"), never $0."""
    assert table.price(ref, TokenUsage(1_000, 1_000), AT) == Priced(None, "unknown")
    assert not table.is_known(ref, AT)


def test_known_model_with_zero_usage_costs_zero(table: PriceTable) -> None:
    """Zero tokens on a per-token model is a known $0, distinct from unknown."""
    assert table.price(PriceRef("gpt-4o", "openai"), TokenUsage(), AT) == Priced(0, "genai-prices")
    assert table.is_known(PriceRef("gpt-4o", "openai"), AT)


def test_per_request_price_applies_even_without_tokens(table: PriceTable) -> None:
    """Perplexity sonar charges $12 per 1,000 requests on top of tokens."""
    priced = table.price(PriceRef("sonar", "perplexity"), TokenUsage(), AT)
    assert priced == Priced(12_000_000, "genai-prices")


def test_price_follows_start_date_changes(table: PriceTable) -> None:
    """OpenAI o3's price dropped on 2025-06-10; the same table honours both versions."""
    ref, usage = PriceRef("o3", "openai"), TokenUsage(input_tokens=1_000_000, output_tokens=100_000)
    before = datetime(2025, 6, 9, 23, 59, tzinfo=UTC)
    after = datetime(2025, 6, 10, 0, 0, tzinfo=UTC)
    assert table.price(ref, usage, before).cost_nanos == 14_000_000_000
    assert table.price(ref, usage, after).cost_nanos == 2_800_000_000
    assert table.price(ref, usage, before).cost_nanos == genai_nanos(usage, "o3", "openai", before)


def test_price_follows_time_of_day_windows(table: PriceTable) -> None:
    """deepseek-chat is cheaper off-peak (16:30–00:30 UTC); the cached plan must not leak."""
    ref, usage = PriceRef("deepseek-chat", "deepseek"), TokenUsage(1_000_000, 1_000_000, 500_000)
    peak = datetime(2025, 11, 1, 12, 0, tzinfo=UTC)
    off_peak = datetime(2025, 11, 1, 20, 0, tzinfo=UTC)
    peak_cost = table.price(ref, usage, peak).cost_nanos
    off_cost = table.price(ref, usage, off_peak).cost_nanos
    assert off_cost is not None and peak_cost is not None and off_cost < peak_cost
    assert peak_cost == genai_nanos(usage, "deepseek-chat", "deepseek", peak)
    assert off_cost == genai_nanos(usage, "deepseek-chat", "deepseek", off_peak)


def test_the_context_window_comes_from_the_price_data_and_is_unknown_for_an_override() -> None:
    """It bounds a prompt the provider expands (``core.worst_case``): the price data's
    figure for a known model; nothing for an override or a model it does not know."""
    table = PriceTable()
    assert table.context_window(PriceRef("gpt-4o-mini", "openai")) == 128_000
    assert table.context_window(PriceRef("claude-sonnet-4-5", "anthropic")) == 200_000
    assert table.context_window(PriceRef("no-such-model-anywhere", "openai")) is None
    override = PriceOverride(input_per_mtok=Decimal("1"), output_per_mtok=Decimal("2"))
    assert table.context_window(PriceRef("gpt-4o-mini", None, override)) is None


def test_audio_tokens_are_priced_at_the_models_audio_rates(table: PriceTable) -> None:
    """gpt-audio: text $2.50/$10, audio $32/$64 per million. The audio parts of a call's
    input and output (OpenAI's ``audio_tokens`` details) are billed at the audio rates;
    before, they were billed as text, at a twelfth of the input's price."""
    usage = from_openai(
        {
            "prompt_tokens": 1_000_000,
            "completion_tokens": 1_000_000,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 400_000},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 250_000},
        }
    )
    assert usage is not None
    assert (usage.input_audio_tokens, usage.output_audio_tokens) == (400_000, 250_000)
    priced = table.price(PriceRef("gpt-audio", "openai"), usage, AT)
    text = Decimal("0.6") * Decimal("2.5") + Decimal("0.75") * Decimal(10)
    audio = Decimal("0.4") * Decimal(32) + Decimal("0.25") * Decimal(64)
    assert priced.cost_nanos == usd_to_nanos(text + audio)
    assert priced.cost_nanos == genai_nanos(usage, "gpt-audio", "openai")


def test_an_override_can_price_audio(table: PriceTable) -> None:
    """gpt-4o-audio-preview has no audio prices in the data (OpenAI bills its audio at
    $40 / $80 per million): an override says them; without, audio is billed as text."""
    usage = TokenUsage(
        input_tokens=1_000_000, output_tokens=1_000_000,
        input_audio_tokens=500_000, output_audio_tokens=1_000_000,
    )  # fmt: skip
    audio = PriceOverride(
        Decimal("2.5"), Decimal(10),
        input_audio_per_mtok=Decimal(40), output_audio_per_mtok=Decimal(80),
    )  # fmt: skip
    priced = table.price(PriceRef("gpt-4o-audio-preview", None, audio), usage, AT)
    assert priced.cost_nanos == usd_to_nanos(Decimal("1.25") + Decimal(20) + Decimal(80))
    text = PriceOverride(Decimal("2.5"), Decimal(10))
    assert table.price(PriceRef("m", None, text), usage, AT).cost_nanos == usd_to_nanos(
        Decimal("12.5")
    )


@pytest.mark.parametrize(
    ("ref", "billed"),
    [
        (PriceRef("gpt-4o-mini", "openai"), False),  # writes billed as input
        (PriceRef("claude-sonnet-4-5", "anthropic"), True),
        (PriceRef("no-such-model", "openai"), False),
        (PriceRef("x", None, PriceOverride(Decimal(1), Decimal(1))), False),
        (PriceRef("x", None, PriceOverride(Decimal(1), Decimal(1), None, Decimal(2))), True),
    ],
)
def test_which_prices_bill_cache_writes(table: PriceTable, ref: PriceRef, billed: bool) -> None:
    """Only a model (or override) with a cache-write rate bills a prompt written to the
    cache other than as input: the proxy holds OpenAI-style calls at their writes there."""
    assert table.bills_cache_writes(ref) is billed


@pytest.mark.parametrize(
    ("model", "provider", "context"),
    [
        ("gpt-5", "openai", (("service_tier", "priority"),)),
        ("gpt-5", "openai", (("service_tier", "flex"),)),
        ("gpt-5", "openai", (("service_tier", "auto"),)),
        ("claude-opus-4-8", "anthropic", (("speed", "fast"),)),
    ],
)
def test_a_price_context_selects_its_variant_as_genai_does(
    table: PriceTable, model: str, provider: str, context: tuple[tuple[str, str], ...]
) -> None:
    """A service tier or speed is priced as genai-prices prices it in that context (the
    same figure from the cache the second time); no context is the standard price."""
    at = datetime(2026, 11, 10, tzinfo=UTC)
    usage = TokenUsage(input_tokens=1000, output_tokens=500, cache_read_tokens=200)
    ref = PriceRef(model, provider)
    genai = calc_price(
        Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=200),
        model,
        provider_id=provider,
        genai_request_timestamp=at,
        price_context=dict(context),
    ).total_price
    for _ in range(2):
        assert table.price(ref, usage, at, context).cost_nanos == usd_to_nanos(genai)
    assert table.price(ref, usage, at).cost_nanos == genai_nanos(usage, model, provider, at)


def test_price_context_reads_the_tier_fields_only() -> None:
    """``service_tier`` and ``speed`` when they are strings; nothing else."""
    assert price_context({"model": "m", "messages": []}) == ()
    assert price_context({"service_tier": "priority", "speed": 3}) == (
        ("service_tier", "priority"),
    )
    assert price_context({"speed": "fast"}) == (("speed", "fast"),)


def test_tiers_no_variant_names_keep_nothing() -> None:
    """A request's ``service_tier`` is any string its client sends: one no variant of the
    model names is priced at the standard rates and keeps nothing, so a client sending a
    new one each call cannot grow the table's caches (each kept a copy of the model's
    prices and its compiled plan, the plans without bound)."""
    at = datetime(2026, 11, 10, tzinfo=UTC)
    table = PriceTable()
    ref = PriceRef("gpt-5", "openai")
    usage = TokenUsage(input_tokens=1000, output_tokens=500)
    standard = table.price(ref, usage, at).cost_nanos
    priority = table.price(ref, usage, at, (("service_tier", "priority"),)).cost_nanos
    gc.collect()
    before = sum(1 for o in gc.get_objects() if isinstance(o, ModelPrice))
    for n in range(2000):
        junk = (("service_tier", f"tier-{n}"), ("speed", "x" * n))
        assert table.price(ref, usage, at, junk).cost_nanos == standard
    assert table.price(ref, usage, at, (("service_tier", "priority"),)).cost_nanos == priority
    gc.collect()
    assert sum(1 for o in gc.get_objects() if isinstance(o, ModelPrice)) <= before


@pytest.mark.parametrize(
    ("model", "provider", "context", "reported", "billed", "label"),
    [
        # OpenAI's "auto" (or none) ran at priority / flex: billed there
        ("gpt-5", "openai", (), (("service_tier", "priority"),), {"service_tier": "priority"},
         "service_tier=priority"),
        ("gpt-5", "openai", (("service_tier", "auto"),), (("service_tier", "flex"),),
         {"service_tier": "flex"}, "service_tier=flex"),
        # asked for priority, ran at default: the standard prices
        ("gpt-5", "openai", (("service_tier", "priority"),), (("service_tier", "default"),),
         None, None),
        # a tier no variant names leaves the request's
        ("gpt-5", "openai", (("service_tier", "priority"),), (("service_tier", "scale"),),
         {"service_tier": "priority"}, "service_tier=priority"),
        ("gpt-5-nano", "openai", (), (("service_tier", "priority"),), None, None),
        # Anthropic: fast reported is fast; standard speed drops the request's fast;
        # its service_tier ("priority", "batch") selects nothing in the data
        ("claude-opus-4-8", "anthropic", (), (("service_tier", "priority"), ("speed", "fast")),
         {"speed": "fast"}, "speed=fast"),
        ("claude-opus-4-8", "anthropic", (("speed", "fast"),),
         (("service_tier", "standard"), ("speed", "standard")), None, None),
        ("claude-opus-4-8", "anthropic", (), (("service_tier", "batch"),), None, None),
    ],
)  # fmt: skip
def test_the_reported_tier_prices_the_call_in_place_of_the_requests(
    table: PriceTable,
    model: str,
    provider: str,
    context: tuple[tuple[str, str], ...],
    reported: tuple[tuple[str, str], ...],
    billed: dict[str, str] | None,
    label: str | None,
) -> None:
    """What the provider reports it ran a call at is priced as genai-prices prices that
    context, field by field over the request's, where the data names it (or it is a
    provider's standard); the variant that priced it is told, as the data names it."""
    at = datetime(2026, 11, 10, tzinfo=UTC)
    usage = TokenUsage(input_tokens=1000, output_tokens=500, cache_read_tokens=200)
    genai = calc_price(
        Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=200),
        model,
        provider_id=provider,
        genai_request_timestamp=at,
        price_context=billed,
    ).total_price
    for _ in range(2):
        priced = table.price(PriceRef(model, provider), usage, at, context, reported)
        assert priced == Priced(usd_to_nanos(genai), "genai-prices", label)


def test_reported_tiers_no_variant_names_keep_nothing() -> None:
    """A provider's report is any string its answer (or a server posing as it) sends: one
    no variant names bills the request's tier and keeps nothing in the caches."""
    at = datetime(2026, 11, 10, tzinfo=UTC)
    table = PriceTable()
    ref = PriceRef("gpt-5", "openai")
    usage = TokenUsage(input_tokens=1000, output_tokens=500)
    asked = (("service_tier", "priority"),)
    priority = table.price(ref, usage, at, asked)
    standard = table.price(ref, usage, at, (), (("service_tier", "default"),))
    gc.collect()
    before = sum(1 for o in gc.get_objects() if isinstance(o, ModelPrice))
    for n in range(2000):
        junk = (("service_tier", f"tier-{n}"), ("speed", "x" * n))
        assert table.price(ref, usage, at, asked, junk) == priority
        assert table.price(ref, usage, at, (), junk) == standard
    gc.collect()
    assert sum(1 for o in gc.get_objects() if isinstance(o, ModelPrice)) <= before
    assert priority.context == "service_tier=priority" and standard.context is None
