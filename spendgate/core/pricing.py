"""Price a call exactly as ``genai-prices`` does, in a few microseconds (pure, no I/O).

``genai_prices.calc_price`` costs 50-200 µs a call (it validates the prices and
decomposes usage into priced units every time); here that is done once per price version:

* A model reference is resolved to its ``ModelInfo`` once (``find_provider_model``).
* On every call ``ModelInfo.get_prices(at)`` picks the price version in force at ``at``
  (start-date and time-of-day constraints are honoured that way; it is cheap).
* Each price version is compiled once into a *plan*: integer coefficients, one set per
  input-size tier interval, such that ``cost = const + Σ coef·tokens`` exactly. The
  plan reproduces genai-prices' rules:

  - leaf decomposition: a priced unit is billed for its tokens minus those billed by
    its more specific priced units. So uncached input = input − cache reads − cache
    writes *only when* ``cache_read_mtok`` / ``cache_write_mtok`` are priced; an unpriced
    cache read or write is billed at the input price (part of ``input_tokens``). The
    same way, 1-hour cache writes (``cache_write_1h_tokens``, part of the writes) pay
    ``cache_write_1h_mtok`` where the model has it (Anthropic: 2× input, against 1.25×
    for 5-minute writes) and ``cache_write_mtok`` where it has not;
  - reasoning tokens are part of output and billed at the output price, unless the
    model prices ``output_reasoning_mtok`` (e.g. Perplexity's deep research);
  - tiers are cliffs: once the *total* prompt exceeds a tier's start, every token of
    that unit pays the tier price (``TieredPrices``); a per-request price
    (``requests_kcount``) is a constant term;
  - the USD amount is converted to nanos with one half-even rounding at the end, which
    equals ``usd_to_nanos(calc_price(...).total_price)``.

  Versions a plan cannot express (unknown price key, invalid value) use genai's calc.

Audio input and output (``input_audio_tokens``, ``output_audio_tokens``) are priced at a
model's audio rates where it has them; cached audio is not told apart from the audio (it
is billed as audio, a cache read of it as a text cache read). Not modelled, because
``TokenUsage`` does not carry them: a separate 5-minute cache-write price
(``cache_write_5m_mtok``; no model has one, so 5-minute writes pay
``cache_write_mtok``), image modalities, other per-use tool fees (file search, code
execution).

A request's **price context** (``price_context``: OpenAI's ``service_tier``, Anthropic's
``speed``) selects genai-prices' request-context variants where the model has them
(priority at about twice the standard rates, flex at half, Anthropic's fast mode at two
to six times): a call asking for one is held at its prices. The call is billed at the
tier the provider **reports** it ran at (``reported``, read by ``price_context`` from the
answer: OpenAI's ``service_tier``, Anthropic's ``usage.service_tier`` and ``usage.speed``),
field by field over the request's: a reported value that a variant of the model in force
names selects it (``"auto"``, which an OpenAI project may set to priority, is reported as
``"priority"``); one the providers say for their standard prices (``_STANDARD``:
``"default"``, ``"standard"``) drops the request's value; any other (``"scale"``,
Anthropic's ``"priority"`` and ``"batch"``, which the data prices under no
``service_tier``, junk) leaves the request's. ``Priced.context`` says which variant priced
the call (``"service_tier=priority"``; ``None``: the standard prices), from the data only.

Web searches (``web_searches``) are priced per search at the model's
``web_searches_kcount`` (USD per thousand searches; $10 on OpenAI's and Anthropic's
models), a term of its own like the tokens'.

Weird usage never raises; it is clamped first (and priced as clamped): negative counts
become 0, ``cache_read <= input``, ``cache_write <= input - cache_read``,
``cache_write_1h <= cache_write`` and ``reasoning <= output``. An unknown model is
priced ``None`` ("unknown"), never $0.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from math import gcd, lcm
from typing import Any

from genai_prices import Usage
from genai_prices.data_snapshot import DataSnapshot, get_snapshot
from genai_prices.data_units import unit_data
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices
from genai_prices.units import UnitDef, UnitRegistry
from genai_prices.validation import validate_priced_units

from spendgate.core.money import NANOS_PER_USD, usd_to_nanos
from spendgate.core.usage import TokenUsage
from spendgate.core.value import Value

__all__ = [
    "PriceContextKey",
    "PriceOverride",
    "PriceRef",
    "PriceTable",
    "Priced",
    "price_context",
    "unpriced_key",
    "unpriced_refusal",
]

#: genai-prices usage keys we can report, in the order of the ``_Counts`` tuple.
_REPORTED = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_reasoning_tokens",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "web_searches",
)
_REGISTRY = UnitRegistry(unit_data)
_REQUESTS = "requests"
#: Lookup caches are cleared past this size so arbitrary model names cannot grow them.
_MAX_CACHED = 4096
#: the request fields that select a price variant, as genai-prices names their context
_CONTEXT_FIELDS = ("service_tier", "speed")

#: what the providers report for a call they ran at their standard prices (OpenAI's
#: ``service_tier: "default"``, Anthropic's ``usage.service_tier`` and ``usage.speed``
#: ``"standard"``): the request's own value of that field then selects nothing
_STANDARD = {"service_tier": ("default", "standard"), "speed": ("standard",)}

#: a request's price context: (field, value) pairs, in ``_CONTEXT_FIELDS`` order
PriceContextKey = tuple[tuple[str, str], ...]

_Counts = tuple[int, int, int, int, int, int, int, int, int]
_Price = Decimal | TieredPrices


@dataclass(frozen=True, slots=True)
class PriceOverride:
    """Negotiated or self-hosted prices in USD per million tokens.

    A missing cache price bills those tokens at the input price (genai-prices' rule for
    an unpriced cache unit), and a missing 1-hour cache-write price bills the 1-hour
    writes as any cache write (``cache_write_per_mtok``, else the input price). Reasoning
    tokens are billed as output; without audio prices, audio is billed as text. Web
    searches cost ``web_search_per_thousand`` USD per thousand (none given: nothing).
    """

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    input_audio_per_mtok: Decimal | None = None
    output_audio_per_mtok: Decimal | None = None
    web_search_per_thousand: Decimal | None = None

    def __post_init__(self) -> None:
        for price in (
            self.input_per_mtok,
            self.output_per_mtok,
            self.cache_read_per_mtok,
            self.cache_write_per_mtok,
            self.cache_write_1h_per_mtok,
            self.input_audio_per_mtok,
            self.output_audio_per_mtok,
            self.web_search_per_thousand,
        ):
            if price is not None and not (price.is_finite() and price >= 0):
                raise ValueError(f"price must be a finite non-negative Decimal, got {price!r}")


@dataclass(frozen=True, slots=True)
class PriceRef:
    """What a route is priced as: a genai-prices model (and provider id), or an override."""

    model: str
    provider: str | None
    override: PriceOverride | None = None


def price_context(payload: Mapping[str, Any]) -> PriceContextKey:
    """The fields that select a price variant (the module docstring), of a request or of
    what a provider reports (an OpenAI answer or chunk, a Responses object, an Anthropic
    ``usage``); () for most requests, which name none: two lookups."""
    if payload.get("service_tier") is None and payload.get("speed") is None:
        return ()
    return tuple(
        (field, value)
        for field in _CONTEXT_FIELDS
        if (value := payload.get(field)).__class__ is str
    )


class Priced(Value, frozen=True):
    """A call's cost in nanos; ``None`` means the price is unknown (never read it as $0)."""

    cost_nanos: int | None
    source: str  # "genai-prices" | "override" | "unknown"
    #: the variant that priced it, as its data names it (``"service_tier=priority"``;
    #: ``"speed=fast"``; pairs joined by ``,``): None for the standard prices
    context: str | None = None


_UNKNOWN = Priced(None, "unknown")


def unpriced_key(org_id: str, model: str, at: datetime, *, refused: bool = False) -> str:
    """The dedup key of a ``price.unknown`` event: one a day per org and model, for calls
    served at an unknown price and, apart, for calls refused for it."""
    key = f"price.unknown:{org_id}:{model}:{at.date().isoformat()}"
    return key + ":refused" if refused else key


def unpriced_refusal(model: str, limit: str) -> str:
    """Why a call of ``model``, whose price is unknown, is refused by ``limit`` (a hard
    cap, a wallet or a spend limit, said in words), and the config key that fixes it."""
    return (
        f"the price of model {model!r} is unknown, so {limit} cannot hold its cost and the "
        "call was not forwarded; set its price in the gateway's config file: "
        f'[models."{model}"] price = {{ input_per_mtok = "...", output_per_mtok = "..." }} '
        "(USD per million tokens), or price = { model = ..., provider = ... } naming a "
        "genai-prices model (README: Configuration), then restart the gateway"
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """Exact integer form of one price version.

    For a prompt of ``n`` input tokens, ``i = bisect_left(starts, n)`` (how many tier
    starts ``n`` exceeds) selects ``consts[i]`` and ``coefs[i]``; then
    ``nanos = round_half_even((const + Σ coef·count) · mult / div)``.
    """

    starts: tuple[int, ...]
    consts: tuple[int, ...]
    coefs: tuple[_Counts, ...]
    mult: int
    div: int

    def nanos(self, counts: _Counts) -> int:
        i = bisect_left(self.starts, counts[0]) if self.starts else 0
        c = self.coefs[i]
        total = (
            self.consts[i]
            + c[0] * counts[0]
            + c[1] * counts[1]
            + c[2] * counts[2]
            + c[3] * counts[3]
            + c[4] * counts[4]
            + c[5] * counts[5]
            + c[6] * counts[6]
            + c[7] * counts[7]
            + c[8] * counts[8]
        ) * self.mult
        if self.div == 1:
            return total
        q, r = divmod(total, self.div)
        if 2 * r > self.div or (2 * r == self.div and q & 1):
            q += 1
        return q


def _valid_price(value: object) -> bool:
    """genai-prices' own check: finite non-negative Decimals, integer tier starts."""
    if isinstance(value, TieredPrices):
        return _valid_price(value.base) and all(
            type(t.start) is int and t.start >= 0 and _valid_price(t.price) for t in value.tiers
        )
    return isinstance(value, Decimal) and value.is_finite() and value >= 0


def _price_in_force(price: _Price, total_input: int) -> Decimal:
    """genai-prices' cliff rule: the highest tier whose start the total prompt exceeds."""
    if isinstance(price, Decimal):
        return price
    for tier in reversed(price.tiers):
        if total_input > tier.start:
            return tier.price
    return price.base


def _leaf_vectors(units: list[UnitDef]) -> dict[str, list[int]]:
    """Per priced reported unit, its billed count as a combination of reported counts."""
    ordered = sorted(units, key=lambda u: (-len(u.dimensions), u.usage_key))
    leaves: dict[str, list[int]] = {}
    for unit in ordered:
        vector = [int(key == unit.usage_key) for key in _REPORTED]
        for other in ordered:
            if other is not unit and unit.dimensions.items() <= other.dimensions.items():
                vector = [a - b for a, b in zip(vector, leaves[other.usage_key], strict=True)]
        leaves[unit.usage_key] = vector
    return leaves


def _compile_plan(model_price: ModelPrice) -> _Plan | None:
    """Compile a price version, or ``None`` when only genai-prices' own calc can price it."""
    priced: list[tuple[UnitDef, _Price]] = []
    for key, value in vars(model_price).items():
        if key.startswith("_") or value is None:
            continue
        try:
            unit = _REGISTRY.unit_for_price_key(key)
        except KeyError:
            return None
        if not _valid_price(value):
            return None
        priced.append((unit, value))
    try:
        validate_priced_units([unit for unit, _ in priced], _REGISTRY)
    except ValueError:
        return None
    used: list[tuple[UnitDef, _Price]] = []
    for unit, price in priced:
        if unit.usage_key in _REPORTED or unit.usage_key == _REQUESTS:
            used.append((unit, price))
        elif any(
            unit.dimensions.items() <= _REGISTRY.units[k].dimensions.items() for k in _REPORTED
        ):
            return None  # genai would demand this (unreported) ancestor count explicitly
    leaves = _leaf_vectors([unit for unit, _ in used if unit.usage_key != _REQUESTS])
    starts = sorted({t.start for _, p in used if isinstance(p, TieredPrices) for t in p.tiers})
    scale = max([0, *(_decimal_places(p) for _, p in used)])
    per_lcm = lcm(*[unit.per for unit, _ in used]) if used else 1
    consts: list[int] = []
    coefs: list[_Counts] = []
    for interval in range(len(starts) + 1):
        total_input = starts[interval - 1] + 1 if interval else 0
        const, vector = 0, [0] * len(_REPORTED)
        for unit, price in used:
            scaled = int(_price_in_force(price, total_input).scaleb(scale)) * (per_lcm // unit.per)
            if unit.usage_key == _REQUESTS:
                const += scaled
            else:
                vector = [
                    v + scaled * leaf
                    for v, leaf in zip(vector, leaves[unit.usage_key], strict=True)
                ]
        consts.append(const)
        coefs.append((
            vector[0], vector[1], vector[2], vector[3], vector[4], vector[5], vector[6],
            vector[7], vector[8],
        ))  # fmt: skip
    denominator = 10**scale * per_lcm
    common = gcd(NANOS_PER_USD, denominator)
    return _Plan(
        tuple(starts), tuple(consts), tuple(coefs), NANOS_PER_USD // common, denominator // common
    )


def _decimal_places(p: _Price) -> int:
    values = [p] if isinstance(p, Decimal) else [p.base, *(tier.price for tier in p.tiers)]
    return max(0, *(-int(v.as_tuple().exponent) for v in values))  # finite: validated


def _override_model_price(override: PriceOverride) -> ModelPrice:
    """The override as a genai-prices ``ModelPrice`` (so it follows the same rules)."""
    prices: dict[str, Decimal] = {
        "input_mtok": override.input_per_mtok,
        "output_mtok": override.output_per_mtok,
    }
    if override.cache_read_per_mtok is not None:
        prices["cache_read_mtok"] = override.cache_read_per_mtok
    if override.cache_write_per_mtok is not None:
        prices["cache_write_mtok"] = override.cache_write_per_mtok
    if override.cache_write_1h_per_mtok is not None:
        # genai-prices prices a 1-hour write only under a cache-write price; none given
        # means the 5-minute writes pay the input price, which is what this says
        prices.setdefault("cache_write_mtok", override.input_per_mtok)
        prices["cache_write_1h_mtok"] = override.cache_write_1h_per_mtok
    if override.input_audio_per_mtok is not None:
        prices["input_audio_mtok"] = override.input_audio_per_mtok
    if override.output_audio_per_mtok is not None:
        prices["output_audio_mtok"] = override.output_audio_per_mtok
    if override.web_search_per_thousand is not None:
        prices["web_searches_kcount"] = override.web_search_per_thousand
    return ModelPrice(**prices)


def clamp_usage(usage: TokenUsage) -> _Counts:
    """Counts in ``_REPORTED`` order, clamped so that no priced leaf is negative."""
    # Conditionals rather than min()/max(): this runs on every request.
    inp = usage.input_tokens if usage.input_tokens > 0 else 0
    out = usage.output_tokens if usage.output_tokens > 0 else 0
    read = usage.cache_read_tokens
    read = 0 if read < 0 else inp if read > inp else read
    write = usage.cache_write_tokens
    write = 0 if write < 0 else inp - read if write > inp - read else write
    reasoning = usage.reasoning_tokens
    reasoning = 0 if reasoning < 0 else out if reasoning > out else reasoning
    one_hour = usage.cache_write_1h_tokens
    one_hour = 0 if one_hour < 0 else write if one_hour > write else one_hour
    # audio is billed apart from the text; what the cache holds is counted there
    heard = usage.input_audio_tokens
    rest = inp - read - write
    heard = 0 if heard < 0 else rest if heard > rest else heard
    spoken = usage.output_audio_tokens
    rest = out - reasoning
    spoken = 0 if spoken < 0 else rest if spoken > rest else spoken
    searches = usage.web_searches if usage.web_searches > 0 else 0
    return inp, out, read, write, reasoning, one_hour, heard, spoken, searches


def _settled(
    model: ModelInfo, context: PriceContextKey, reported: PriceContextKey, at: datetime
) -> PriceContextKey:
    """The context a call is billed in: the request's ``context`` with each field the
    provider ``reported`` in its place where the report is understood, a value a variant
    of ``model`` in force at ``at`` names (it selects it) or one of the field's standard
    names (``_STANDARD``: the request's value goes); any other report leaves the request's
    value (a string from the provider is not trusted to name a price)."""
    wanted = dict(context)
    for field, value in reported:
        if value in _STANDARD[field]:
            wanted.pop(field, None)
        elif value != wanted.get(field):
            for variant in model.price_variants or ():
                if variant.when.get(field) == value and (
                    variant.constraint is None or variant.constraint.active(at)
                ):
                    wanted[field] = value
                    break
    return tuple(wanted.items())


def _label(model: ModelInfo, selected: tuple[int, ...]) -> str | None:
    """``Priced.context`` of the variants ``selected``: their conditions, as the data
    names them, of those that price something (an empty one, OpenAI's ``default``, is
    the standard prices)."""
    variants = model.price_variants or ()
    pairs = {
        f"{field}={value}"
        for i in selected
        if any(p is not None for p in vars(variants[i].prices).values())
        for field, value in variants[i].when.items()
    }
    return ",".join(sorted(pairs)) or None


class PriceTable:
    """Prices calls against one genai-prices data snapshot (the bundled one by default).

    The snapshot is pinned at construction; build a new table to pick up new prices.
    """

    def __init__(self, snapshot: DataSnapshot | None = None) -> None:
        self._snapshot = snapshot if snapshot is not None else get_snapshot()
        self._models: dict[tuple[str, str | None], tuple[Provider, ModelInfo] | None] = {}
        self._plans: dict[int, tuple[ModelPrice, _Plan | None]] = {}
        self._overrides: dict[PriceOverride, _Plan] = {}
        self._variants: dict[
            tuple[int, int, tuple[int, ...]], tuple[ModelPrice, ModelPrice, str | None]
        ] = {}

    def price(
        self,
        ref: PriceRef,
        usage: TokenUsage,
        at: datetime,
        context: PriceContextKey = (),
        reported: PriceContextKey = (),
    ) -> Priced:
        """Cost of ``usage`` for ``ref`` at time ``at`` (naive means UTC), at the prices
        its request's ``context`` selects, or what its provider ``reported`` it ran at
        in its place (``price_context``, ``_settled``; an override has none)."""
        counts = clamp_usage(usage)
        if ref.override is not None:
            plan = self._overrides.get(ref.override)
            if plan is None:
                plan = self._override_plan(ref.override)
            return Priced(plan.nanos(counts), "override")
        found = self._lookup(ref)
        if found is None:
            return _UNKNOWN
        model_price = found[1].get_prices(at)
        label = None
        if (context or reported) and found[1].price_variants:
            if reported:
                context = _settled(found[1], context, reported, at)
            if context:
                model_price, label = self._variant(found[1], model_price, context, at)
        cached = self._plans.get(id(model_price))
        if cached is None or cached[0] is not model_price:
            cached = (model_price, _compile_plan(model_price))
            if len(self._plans) >= _MAX_CACHED:
                self._plans.clear()
            self._plans[id(model_price)] = cached
        if cached[1] is None:
            return self._price_with_genai(found, counts, at, context, label)
        return Priced(cached[1].nanos(counts), "genai-prices", label)

    def _variant(
        self, model: ModelInfo, standard: ModelPrice, context: PriceContextKey, at: datetime
    ) -> tuple[ModelPrice, str | None]:
        """The prices ``context`` selects over ``standard`` at ``at``, and the variants'
        label (``Priced.context``): ``standard`` itself where no variant in force names
        it (a tier is any string a client sends: one naming none keeps nothing), else
        built once per price version and set of variants it selects (``get_prices``
        builds a new object each time, which the plans are cached by). The snapshot the
        table pins keeps ``model`` alive."""
        wanted = dict(context)
        selected = tuple(
            i
            for i, v in enumerate(model.price_variants or ())
            if (v.constraint is None or v.constraint.active(at))
            and all(wanted.get(field) == value for field, value in v.when.items())
        )
        if not selected:
            return standard, None
        key = (id(model), id(standard), selected)
        found = self._variants.get(key)
        if found is None or found[0] is not standard:
            found = (standard, model.get_prices(at, wanted), _label(model, selected))
            if len(self._variants) >= _MAX_CACHED:
                self._variants.clear()
            self._variants[key] = found
        return found[1], found[2]

    def context_window(self, ref: PriceRef) -> int | None:
        """The most tokens the priced model reads and writes in one call, from the price
        data (None: not known, or an override price)."""
        found = None if ref.override is not None else self._lookup(ref)
        return None if found is None else found[1].context_window

    def bills_cache_writes(self, ref: PriceRef) -> bool:
        """Whether a price of ``ref`` (any of its versions) has a cache-write rate: without
        one, genai-prices bills a prompt written to the cache at the input rate, so a
        worst case with every prompt token a cache write costs what it does as input."""
        override = ref.override
        if override is not None:
            return (
                override.cache_write_per_mtok is not None
                or override.cache_write_1h_per_mtok is not None
            )
        found = self._lookup(ref)
        if found is None:
            return False
        prices = found[1].prices
        versions = [prices] if isinstance(prices, ModelPrice) else [c.prices for c in prices]
        return any(v.cache_write_mtok is not None for v in versions)

    def is_known(self, ref: PriceRef, at: datetime) -> bool:
        """Whether ``price`` would return a cost (not ``None``) for ``ref`` at ``at``."""
        return self.price(ref, TokenUsage(), at).cost_nanos is not None

    def _lookup(self, ref: PriceRef) -> tuple[Provider, ModelInfo] | None:
        key = (ref.model, ref.provider)
        if key in self._models:
            return self._models[key]
        try:
            found: tuple[Provider, ModelInfo] | None = self._snapshot.find_provider_model(
                ref.model, None, ref.provider, None
            )
        except LookupError:
            found = None
        if len(self._models) >= _MAX_CACHED:
            self._models.clear()
        self._models[key] = found
        return found

    def _override_plan(self, override: PriceOverride) -> _Plan:
        plan = _compile_plan(_override_model_price(override))
        assert plan is not None, "validated decimals always compile"
        if len(self._overrides) >= _MAX_CACHED:
            self._overrides.clear()
        self._overrides[override] = plan
        return plan

    def _price_with_genai(
        self,
        found: tuple[Provider, ModelInfo],
        counts: _Counts,
        at: datetime,
        context: PriceContextKey = (),
        label: str | None = None,
    ) -> Priced:
        """The slow path: genai-prices' own calculation; its data errors mean unknown."""
        provider, model = found
        # no cached audio is reported apart (``clamp_usage`` keeps audio out of the
        # cache's part), which genai needs said once both overlapping keys are
        usage = Usage(**dict(zip(_REPORTED, counts, strict=True)), cache_audio_read_tokens=0)
        try:
            total = model.calc_price(
                usage, provider, genai_request_timestamp=at, price_context=dict(context) or None
            ).total_price
            return Priced(usd_to_nanos(total), "genai-prices", label)
        except ValueError:
            return _UNKNOWN
