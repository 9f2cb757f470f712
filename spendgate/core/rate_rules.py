"""Which rate limits govern a call, what to check, and the headers to answer with.

Pure: plain values in, plain values out; no I/O, no clock.

Rows belong to a virtual key or a team (``scope_type``/``scope_id``) and name a model
or an fnmatch pattern (``gpt-5*-mini``, ``claude-*-opus*``, ``*``). For each scope,
the key's and the team's separately, **one** row governs a call, the most specific
that matches its model:

=====================================  ==========================================
rank                                   e.g. for ``gpt-5-mini``
=====================================  ==========================================
1. the exact model name                ``gpt-5-mini``
2. the longest pattern: most           ``gpt-5*-mini`` (10 fixed characters)
   characters that match exactly one   before ``gpt-*`` (4), before ``*`` (0);
   (literals, ``?``, ``[…]``), then    ``claude-?-opus*`` (13) before
   fewest ``*``, then most literals    ``claude-*-opus*`` (12)
3. ties: the smaller model text, id    (deterministic, not meaningful)
=====================================  ==========================================

A row's counters are shared by every model it governs (``claude-*-opus*`` at 10 rpm
is 10 rpm across all Opus models), and a governing row replaces the wider ones of its
scope entirely, so give a specific row its own spend breaker if it needs one. A row
with no limits at all still governs: in ``deny`` mode that is how a model is allowed.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from spendgate.core.money import format_usd
from spendgate.core.rate_checks import Check, CheckResult, Denial, Granted, validate

Scope = Literal["key", "team"]
Unlisted = Literal["allow", "deny"]
MINUTE = 60.0
#: Retry-After for a concurrency refusal: a slot frees when some call finishes.
CONCURRENCY_RETRY_SECONDS = 1
_WILDCARD = re.compile(r"\[[^\]]*\]|[*?]")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One limits row. None means "no limit of that kind"; spend is in nano-dollars
    per ``spend_window_seconds`` (e.g. 5_000_000_000 per 600 s: $5 per 10 minutes)."""

    id: str
    scope_type: Scope
    scope_id: str
    model: str
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    max_spend_nanos: int | None = None
    spend_window_seconds: int = 600


def is_pattern(model: str) -> bool:
    return _WILDCARD.search(model) is not None


def specificity(pattern: str) -> tuple[int, int, int, int]:
    """Larger is more specific: (exact name?, characters matched one for one, -stars,
    literal characters). A ``?`` or a ``[…]`` set matches one character; ``*`` any run."""
    stars = pattern.count("*")
    singles = len(_WILDCARD.findall(pattern)) - stars
    if stars == singles == 0:
        return (1, len(pattern), 0, len(pattern))
    literals = len(_WILDCARD.sub("", pattern))
    return (0, literals + singles, -stars, literals)


@lru_cache(maxsize=4096)
def _parsed(pattern: str) -> tuple[Callable[[str], object] | None, tuple[int, ...]]:
    """A pattern's matcher (None for an exact name) and its rank (smaller: more specific).
    Cached: the same few patterns are looked at on every call."""
    matcher = re.compile(fnmatch.translate(pattern)).match if is_pattern(pattern) else None
    return matcher, tuple(-part for part in specificity(pattern))


def governs(row: RateLimit, model: str) -> bool:
    """True if ``row``'s model is ``model`` or a pattern matching it (case-sensitive)."""
    if row.model == model:
        return True
    matcher = _parsed(row.model)[0]
    return matcher is not None and matcher(model) is not None


def _rank(row: RateLimit) -> tuple[tuple[int, ...], str, str]:
    return (_parsed(row.model)[1], row.model, row.id)


def scope_rows(limits: Iterable[RateLimit], key_id: str, team_id: str | None) -> list[RateLimit]:
    """The rows of this key and of its team (if any)."""
    return [
        row
        for row in limits
        if (row.scope_type == "key" and row.scope_id == key_id)
        or (team_id is not None and row.scope_type == "team" and row.scope_id == team_id)
    ]


def matching(
    limits: Iterable[RateLimit], key_id: str, team_id: str | None, model: str
) -> list[RateLimit]:
    """The governing row of the key, then of the team: zero, one or two rows."""
    rows = [row for row in scope_rows(limits, key_id, team_id) if governs(row, model)]
    out: list[RateLimit] = []
    for scope in ("key", "team"):
        candidates = [row for row in rows if row.scope_type == scope]
        if candidates:
            out.append(min(candidates, key=_rank))
    return out


#: why a row governs no call (:func:`idle_rows`)
MATCHES_NO_MODEL = "matches no configured model"
SHADOWED = "a more specific row governs each configured model it matches"
#: why a row governs none of the calls one key may make (its ``models``: :func:`idle_for`)
NOT_THE_KEYS = "governs no model this key may use"


def idle_rows(
    limits: Iterable[RateLimit], key_id: str, team_id: str | None, models: Iterable[str]
) -> dict[str, str]:
    """The rows of this key and of its team that govern no call to any of ``models`` (the
    configured ones), by id, with why: a pattern (or a name) that matches none of them,
    or one each of whose models has a more specific row of its scope (:func:`matching`).
    Such a row never limits a call, so it never runs out first."""
    rows = scope_rows(limits, key_id, team_id)
    models = list(models)
    governing = {row.id for model in models for row in matching(rows, key_id, team_id, model)}
    return {
        row.id: SHADOWED if any(governs(row, model) for model in models) else MATCHES_NO_MODEL
        for row in rows
        if row.id not in governing
    }


def why_idle(limits: Iterable[RateLimit], row: RateLimit, models: Iterable[str]) -> str | None:
    """Why ``row`` governs no call to any of ``models`` (:func:`idle_rows`, ranked
    against the rows of its own key or team in ``limits``); ``None`` if it governs some."""
    key_id, team_id = (row.scope_id, None) if row.scope_type == "key" else ("", row.scope_id)
    rows = [r for r in limits if r.id != row.id]
    return idle_rows([*rows, row], key_id, team_id, models).get(row.id)


def idle_for(
    limits: Iterable[RateLimit],
    key_id: str,
    team_id: str | None,
    models: Iterable[str],
    allowed: Iterable[str],
) -> dict[str, str]:
    """:func:`idle_rows` for one key's calls: also, with ``NOT_THE_KEYS``, each row that
    governs only configured models outside the key's ``allowed`` ones (empty: any)."""
    rows = list(limits)
    models = list(models)
    idle = idle_rows(rows, key_id, team_id, models)
    allowed = set(allowed)
    if allowed:
        usable = [model for model in models if model in allowed]
        for row_id in idle_rows(rows, key_id, team_id, usable).keys() - idle.keys():
            idle[row_id] = NOT_THE_KEYS
    return idle


def model_allowed(
    limits_for_key_and_team: Iterable[RateLimit], model: str, unlisted: Unlisted
) -> bool:
    """``allow``: always. ``deny``: each scope (key, team) that has any rows at all must
    have one governing ``model``; a scope without rows restricts nothing."""
    if unlisted == "allow":
        return True
    listed: dict[tuple[str, str], bool] = {}
    for row in limits_for_key_and_team:
        scope = (row.scope_type, row.scope_id)
        listed[scope] = listed.get(scope, False) or governs(row, model)
    return all(listed.values())


def checks_for(rows: Sequence[RateLimit], tokens: int, spend_nanos: int) -> list[Check]:
    """The checks for one call: ``tokens`` is the estimate (input + max output) and
    ``spend_nanos`` the worst-case cost, both corrected later by ``actuals_for``."""
    checks: list[Check] = []
    for row in rows:
        if row.rpm is not None:
            checks.append(Check(f"{row.id}:requests", "requests", row.rpm, MINUTE, 1))
        if row.tpm is not None:
            checks.append(Check(f"{row.id}:tokens", "tokens", row.tpm, MINUTE, tokens))
        if row.max_spend_nanos is not None:
            window = float(row.spend_window_seconds)
            checks.append(
                Check(f"{row.id}:spend", "spend", row.max_spend_nanos, window, spend_nanos)
            )
        if row.max_concurrent is not None:
            checks.append(Check(f"{row.id}:concurrency", "concurrency", row.max_concurrent, 0, 1))
    return checks


class CheckTemplate:
    """``checks_for`` and ``actuals_for`` of one set of governing rows, worked out once
    per policy snapshot instead of on every call: the requests and concurrency checks
    never change, so one ``Check`` of each is shared; tokens and spend get the call's
    amounts. Same results as the two functions, in the same order."""

    __slots__ = ("_actual", "_parts", "empty")

    def __init__(self, rows: Sequence[RateLimit]) -> None:
        #: (check, what its amount is: 0 its own, 1 the call's tokens, 2 its spend)
        checks = checks_for(rows, 0, 0)
        validate("template", checks)  # once here: the in-process limiter trusts ``checks``
        self._parts = tuple((check, _AMOUNT_SOURCE.get(check.kind, 0)) for check in checks)
        self._actual = tuple((check.bucket, source) for check, source in self._parts if source)
        self.empty = not self._parts

    def checks(self, tokens: int, spend_nanos: int) -> list[Check]:
        out: list[Check] = []
        for check, source in self._parts:
            if source:
                check = Check(
                    check.bucket,
                    check.kind,
                    check.limit,
                    check.window_seconds,
                    tokens if source == 1 else spend_nanos,
                )
            out.append(check)
        return out

    def actuals(self, tokens: int, spend_nanos: int) -> dict[str, int]:
        return {bucket: tokens if source == 1 else spend_nanos for bucket, source in self._actual}


_AMOUNT_SOURCE = {"tokens": 1, "spend": 2}


def actuals_for(rows: Sequence[RateLimit], tokens: int, spend_nanos: int) -> dict[str, int]:
    """What ``settle`` needs once usage is known: actual tokens and cost per bucket."""
    actual: dict[str, int] = {}
    for row in rows:
        if row.tpm is not None:
            actual[f"{row.id}:tokens"] = tokens
        if row.max_spend_nanos is not None:
            actual[f"{row.id}:spend"] = spend_nanos
    return actual


def _millis(seconds: float) -> int:
    """Whole milliseconds, rounded up, after shaving float noise (0.1000000000001 s)."""
    return max(0, math.ceil(seconds * 1000 - 1e-6))


#: ``format_reset`` by whole milliseconds. Under load a busy window's oldest entry is
#: about a window old, so resets repeat (a few ms): a lookup instead of formatting.
_RESET_TEXT: dict[int, str] = {}
_RESET_TEXT_MAX = 4096


def format_reset(seconds: float) -> str:
    """OpenAI's (Go's) duration format, to the millisecond, rounded up:
    ``0s``, ``120ms``, ``1s``, ``59.9s``, ``6m0s``, ``1h2m3.5s``."""
    ms = math.ceil(seconds * 1000 - 1e-6)  # _millis, inlined: this runs on every call
    if ms < 0:
        ms = 0
    text = _RESET_TEXT.get(ms)
    if text is None:
        if len(_RESET_TEXT) >= _RESET_TEXT_MAX:
            _RESET_TEXT.clear()
        text = _RESET_TEXT[ms] = _format_millis(ms)
    return text


def _format_millis(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, ms = divmod(ms, 60_000)
    secs = f"{ms / 1000:g}s"  # at most 5 significant digits: %g is exact here
    if not minutes:
        return secs
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{secs}" if hours else f"{minutes}m{secs}"


def _header_names(kind: str) -> tuple[str, str, str]:
    return (
        f"x-ratelimit-limit-{kind}",
        f"x-ratelimit-remaining-{kind}",
        f"x-ratelimit-reset-{kind}",
    )


_REQUEST_HEADERS = _header_names("requests")
_TOKEN_HEADERS = _header_names("tokens")


def _tighter(result: CheckResult, best: CheckResult | None) -> bool:
    """Fewer remaining, then the lower limit (the header a client should heed)."""
    return best is None or (result.remaining, result.limit) < (best.remaining, best.limit)


def granted_headers(checks: Sequence[Check], granted: Granted) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the tightest check
    of each kind (fewest remaining, then lowest limit); nothing for a kind not checked.
    On every granted call, so written for speed: two slots, no intermediate dict."""
    requests: CheckResult | None = None
    tokens: CheckResult | None = None
    for check, result in zip(checks, granted.results, strict=True):
        kind = check.kind
        if kind == "requests":
            if requests is None or _tighter(result, requests):
                requests = result
        elif kind == "tokens" and (tokens is None or _tighter(result, tokens)):
            tokens = result
    headers: dict[str, str] = {}
    for found, (limit, remaining, reset) in (
        (requests, _REQUEST_HEADERS),
        (tokens, _TOKEN_HEADERS),
    ):
        if found is not None:
            headers[limit] = str(found.limit)
            headers[remaining] = str(found.remaining)
            headers[reset] = format_reset(found.reset_seconds)
    return headers


def denial_headers(denial: Denial) -> dict[str, str]:
    """``retry-after`` (whole seconds, at least 1) and ``retry-after-ms`` when a wait
    helps, ``x-should-retry: false`` when no wait can (the call alone is over the limit:
    the SDKs retry every 429 otherwise), and the refused kind's ``x-ratelimit-*`` for
    requests and tokens."""
    check = denial.check
    headers: dict[str, str] = {}
    if not denial.can_ever_fit:
        headers["x-should-retry"] = "false"
    elif denial.retry_after is not None:
        ms = _millis(denial.retry_after)
        headers["retry-after"] = str(max(1, math.ceil(ms / 1000)))
        headers["retry-after-ms"] = str(ms)
    elif check.kind == "concurrency":
        headers["retry-after"] = str(CONCURRENCY_RETRY_SECONDS)
    if check.kind in ("requests", "tokens"):
        limit, remaining, reset = _header_names(check.kind)
        headers[limit] = str(check.limit)
        headers[remaining] = str(max(0, check.limit - denial.used))
        headers[reset] = format_reset(denial.retry_after or 0.0)
    return headers


def describe(denial: Denial) -> str:
    """A one-line reason for the error body."""
    check = denial.check
    if check.kind == "concurrency":
        return f"Too many concurrent requests: limit {check.limit}, in flight {denial.used}."
    window = format_reset(check.window_seconds)

    def amount(value: int) -> str:
        """Spend is counted in nano-dollars and said in dollars."""
        return f"${format_usd(value)}" if check.kind == "spend" else str(value)

    unit = "" if check.kind == "spend" else f" {check.kind}"
    head = f"Rate limit reached for {check.kind}: limit {amount(check.limit)}{unit} per {window}"
    if not denial.can_ever_fit:
        return f"{head}; this request alone needs up to {amount(check.amount)}."
    retry = "" if denial.retry_after is None else f" Retry in {format_reset(denial.retry_after)}."
    return f"{head}, used {amount(denial.used)}, requested up to {amount(check.amount)}.{retry}"
