"""The pure rate-limit rules: which row governs, allow/deny, checks and headers."""

from __future__ import annotations

import pytest

from spendgate.core import rate_rules as rules
from spendgate.core.rate_checks import Check, CheckResult, Denial, Granted
from spendgate.core.rate_rules import (
    CheckTemplate,
    RateLimit,
    actuals_for,
    checks_for,
    denial_headers,
    describe,
    format_reset,
    granted_headers,
    matching,
    model_allowed,
    scope_rows,
    specificity,
)


def row(model: str, rid: str | None = None, scope: str = "key", scope_id: str = "k1") -> RateLimit:
    return RateLimit(rid or f"{scope}:{model}", scope, scope_id, model, rpm=10)  # type: ignore[arg-type]


KEY_ROWS = [
    row("*"),
    row("gpt-*"),
    row("gpt-5*-mini"),
    row("gpt-5-mini"),
    row("claude-*-opus*"),
    row("claude-?-opus*"),
    row("o[34]-mini"),
]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-5-mini", "gpt-5-mini"),  # exact beats every pattern
        ("gpt-5.1-mini", "gpt-5*-mini"),  # 10 literals beat gpt-* (4)
        ("gpt-4o", "gpt-*"),
        ("claude-3-opus-latest", "claude-?-opus*"),  # ? matches one character: longer
        ("claude-opus-4-opus", "claude-*-opus*"),
        ("o3-mini", "o[34]-mini"),
        ("o5-mini", "*"),
        ("llama-local", "*"),
        ("GPT-5-MINI", "*"),  # case-sensitive
    ],
)
def test_most_specific_key_row_governs(model: str, expected: str) -> None:
    """Exact name, then most literal characters, then fewest wildcards, then ``*``."""
    [governing] = matching(KEY_ROWS, "k1", None, model)
    assert governing.model == expected


@pytest.mark.parametrize(
    ("pattern", "rank"),
    [
        ("gpt-5-mini", (1, 10, 0, 10)),
        ("gpt-5*-mini", (0, 10, -1, 10)),
        ("claude-?-opus*", (0, 13, -1, 12)),
        ("claude-*-opus*", (0, 12, -2, 12)),
        ("o[34]-mini", (0, 7, 0, 6)),
        ("?", (0, 1, 0, 0)),
        ("*", (0, 0, -1, 0)),
    ],
)
def test_specificity(pattern: str, rank: tuple[int, int, int, int]) -> None:
    """Specificity: one-for-one characters (a ``?`` or a ``[…]`` set counts as one),
    then fewest ``*``, then literals."""
    assert specificity(pattern) == rank


def test_key_and_team_each_get_their_own_governing_row() -> None:
    """Key and team are decided separately; other keys' and teams' rows never apply."""
    limits = [
        row("*", "key-any"),
        row("gpt-4o", "team-4o", scope="team", scope_id="t1"),
        row("*", "team-any", scope="team", scope_id="t1"),
        row("gpt-4o", "other-key", scope_id="k2"),
        row("gpt-4o", "other-team", scope="team", scope_id="t2"),
    ]
    assert [r.id for r in matching(limits, "k1", "t1", "gpt-4o")] == ["key-any", "team-4o"]
    assert [r.id for r in matching(limits, "k1", "t1", "o3")] == ["key-any", "team-any"]
    assert [r.id for r in matching(limits, "k1", None, "gpt-4o")] == ["key-any"]
    assert matching(limits, "k9", None, "gpt-4o") == []
    assert {r.id for r in scope_rows(limits, "k1", "t1")} == {"key-any", "team-4o", "team-any"}


def test_ties_are_deterministic() -> None:
    """Two patterns of equal specificity: the smaller text wins, whatever the order."""
    a, b = row("gpt-4*", "a"), row("gpt-*4", "b")
    assert matching([a, b], "k1", None, "gpt-44") == matching([b, a], "k1", None, "gpt-44") == [b]


@pytest.mark.parametrize(
    ("rows", "model", "unlisted", "allowed"),
    [
        ([], "gpt-4o", "deny", True),  # no rows: nothing restricted
        ([row("gpt-*")], "gpt-4o", "deny", True),
        ([row("gpt-*")], "claude-opus-4", "deny", False),
        ([row("gpt-*")], "claude-opus-4", "allow", True),
        ([row("*")], "anything", "deny", True),
        # the team lists only gpt-4o: the key's * does not lift the team's restriction
        ([row("*"), row("gpt-4o", scope="team", scope_id="t1")], "o3", "deny", False),
        ([row("*"), row("gpt-4o", scope="team", scope_id="t1")], "gpt-4o", "deny", True),
        # a team without rows restricts nothing; the key's list decides
        ([row("o3")], "o3", "deny", True),
    ],
)
def test_model_allowed(rows: list[RateLimit], model: str, unlisted: str, allowed: bool) -> None:
    """In deny mode every scope with rows must govern the model; allow mode allows all."""
    assert model_allowed(rows, model, unlisted) is allowed  # type: ignore[arg-type]


def test_checks_and_actuals_per_row() -> None:
    """One check per limit set on each row; actuals only for tokens and spend."""
    full = RateLimit(
        "r1",
        "key",
        "k1",
        "*",
        rpm=5,
        tpm=1000,
        max_concurrent=2,
        max_spend_nanos=5_000_000_000,
        spend_window_seconds=600,
    )
    tpm_only = RateLimit("r2", "team", "t1", "*", tpm=50_000)
    allow_only = RateLimit("r3", "team", "t2", "gpt-4o")
    assert checks_for([full, tpm_only, allow_only], tokens=700, spend_nanos=9_000) == [
        Check("r1:requests", "requests", 5, 60.0, 1),
        Check("r1:tokens", "tokens", 1000, 60.0, 700),
        Check("r1:spend", "spend", 5_000_000_000, 600.0, 9_000),
        Check("r1:concurrency", "concurrency", 2, 0, 1),
        Check("r2:tokens", "tokens", 50_000, 60.0, 700),
    ]
    assert actuals_for([full, tpm_only, allow_only], tokens=321, spend_nanos=4_000) == {
        "r1:tokens": 321,
        "r1:spend": 4_000,
        "r2:tokens": 321,
    }


def test_check_template_is_checks_for_and_actuals_for_worked_out_once() -> None:
    """The gate's per-snapshot template gives the same checks and actuals, in order."""
    rows = [
        RateLimit(
            "r1",
            "key",
            "k1",
            "*",
            rpm=5,
            tpm=1000,
            max_concurrent=2,
            max_spend_nanos=5_000_000_000,
            spend_window_seconds=600,
        ),
        RateLimit("r2", "team", "t1", "*", tpm=50_000, max_spend_nanos=7),
        RateLimit("r3", "team", "t2", "gpt-4o"),
    ]
    template = CheckTemplate(rows)
    for tokens, spend in ((700, 9_000), (0, 0), (321, 4_000)):
        assert template.checks(tokens, spend) == checks_for(rows, tokens, spend)
        assert template.actuals(tokens, spend) == actuals_for(rows, tokens, spend)
    assert not template.empty and CheckTemplate(rows[2:]).empty and CheckTemplate([]).empty


def test_format_reset_remembers_a_bounded_number_of_texts() -> None:
    """Resets are looked up by whole milliseconds; the table never outgrows its bound."""
    for ms in range(rules._RESET_TEXT_MAX + 50):
        assert format_reset(ms / 1000) == format_reset(ms / 1000)
    assert len(rules._RESET_TEXT) <= rules._RESET_TEXT_MAX
    assert format_reset(3723.5) == "1h2m3.5s" and format_reset(0.0001) == "1ms"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (-3.0, "0s"),
        (0.12, "120ms"),
        (0.0001, "1ms"),  # rounded up: never tell a client to come back early
        (0.10000000000000142, "100ms"),  # float noise is not a millisecond
        (1.0, "1s"),
        (8.64, "8.64s"),
        (59.9, "59.9s"),
        (60.0, "1m0s"),
        (360.0, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (7200.0, "2h0m0s"),
    ],
)
def test_format_reset_like_openai(seconds: float, text: str) -> None:
    """Go-style durations, as OpenAI sends in ``x-ratelimit-reset-*``."""
    assert format_reset(seconds) == text


def test_granted_headers_show_the_tightest_limit_per_kind() -> None:
    """Fewest remaining wins (then lowest limit); spend and concurrency add no headers."""
    checks = [
        Check("a:requests", "requests", 100, 60.0, 1),
        Check("b:requests", "requests", 10, 60.0, 1),
        Check("a:tokens", "tokens", 10_000, 60.0, 500),
        Check("a:spend", "spend", 5, 600.0, 1),
        Check("a:concurrency", "concurrency", 2, 0, 1),
    ]
    granted = Granted(
        (
            CheckResult(100, 3, 12.5),
            CheckResult(10, 7, 1.0),
            CheckResult(10_000, 9_500, 60.0),
            CheckResult(5, 0, 600.0),
            CheckResult(2, 0, 0.0),
        )
    )
    assert granted_headers(checks, granted) == {
        "x-ratelimit-limit-requests": "100",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "12.5s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "9500",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    assert granted_headers([], Granted(())) == {}


@pytest.mark.parametrize(
    ("denial", "headers"),
    [
        (
            Denial(0, Check("r:requests", "requests", 5, 60.0, 1), 5, 56.0),
            {
                "retry-after": "56",
                "retry-after-ms": "56000",
                "x-ratelimit-limit-requests": "5",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "56s",
            },
        ),
        (
            Denial(1, Check("r:tokens", "tokens", 1000, 60.0, 300), 800, 0.10000000000000142),
            {
                "retry-after": "1",
                "retry-after-ms": "100",
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-remaining-tokens": "200",
                "x-ratelimit-reset-tokens": "100ms",
            },
        ),
        (  # never fits: no retry-after at all, and the SDKs are told not to retry
            Denial(0, Check("r:tokens", "tokens", 1000, 60.0, 5000), 0, None),
            {
                "x-should-retry": "false",
                "x-ratelimit-limit-tokens": "1000",
                "x-ratelimit-remaining-tokens": "1000",
                "x-ratelimit-reset-tokens": "0s",
            },
        ),
        (
            Denial(0, Check("r:concurrency", "concurrency", 2, 0, 1), 2, None),
            {"retry-after": "1"},
        ),
        (
            Denial(0, Check("r:spend", "spend", 5_000_000_000, 600.0, 10), 5_000_000_000, 120.25),
            {"retry-after": "121", "retry-after-ms": "120250"},
        ),
    ],
)
def test_denial_headers(denial: Denial, headers: dict[str, str]) -> None:
    """A 429 carries Retry-After (whole seconds, rounded up) when waiting helps."""
    assert denial_headers(denial) == headers


def test_describe_denials() -> None:
    """The error message names the kind, the limit and the wait."""
    rpm = Denial(0, Check("r:requests", "requests", 5, 60.0, 1), 5, 56.0)
    assert describe(rpm) == (
        "Rate limit reached for requests: limit 5 requests per 1m0s, used 5, requested up to 1. "
        "Retry in 56s."
    )
    huge = Denial(0, Check("r:tokens", "tokens", 1000, 60.0, 5000), 0, None)
    assert describe(huge) == (
        "Rate limit reached for tokens: limit 1000 tokens per 1m0s; "
        "this request alone needs up to 5000."
    )
    spend = Denial(0, Check("r:spend", "spend", 5 * 10**9, 600.0, 1_234_500), 4_999_000_000, 30.0)
    assert describe(spend) == (
        "Rate limit reached for spend: limit $5.00 per 10m0s, used $4.999, "
        "requested up to $0.0012345. Retry in 30s."
    )
    assert "nano" not in describe(spend)
    busy = Denial(0, Check("r:concurrency", "concurrency", 2, 0, 1), 2, None)
    assert describe(busy) == "Too many concurrent requests: limit 2, in flight 2."


def test_idle_rows_govern_no_configured_model() -> None:
    """A row that the proxy would never choose for a configured model limits no call: a
    pattern matching none of them, or one whose every model has a more specific row of
    its scope (a team row is not shadowed by a key row: each scope governs apart)."""
    rows = [
        row("claude-*-opus*"),
        row("gpt-*"),
        row("gpt-4o"),
        row("gpt-4o-mini"),
        row("*"),
        row("gpt-4o", scope="team", scope_id="t1"),
        row("gpt-4o-mini", scope="key", scope_id="other-key"),
    ]
    models = ["gpt-4o", "gpt-4o-mini", "claude-opus-4-1"]
    assert rules.idle_rows(rows, "k1", "t1", models) == {
        "key:claude-*-opus*": rules.MATCHES_NO_MODEL,
        "key:gpt-*": rules.SHADOWED,
    }
    assert rules.idle_rows(rows, "k1", "t1", [*models, "gpt-4.1"]) == {
        "key:claude-*-opus*": rules.MATCHES_NO_MODEL
    }
    assert rules.idle_rows([row("claude-*-opus*")], "k1", None, ["claude-3-opus"]) == {}


def test_idle_for_a_key_also_leaves_out_the_models_it_may_not_use() -> None:
    """A key whose ``models`` leave out gpt-4o is never limited by a row governing only
    gpt-4o (its team's, say); with no ``models`` every configured model counts."""
    rows = [row("gpt-4o", scope="team", scope_id="t1"), row("gpt-*"), row("claude-*-opus*")]
    models = ["gpt-4o", "gpt-4o-mini"]
    assert rules.idle_for(rows, "k1", "t1", models, ["gpt-4o-mini"]) == {
        "team:gpt-4o": rules.NOT_THE_KEYS,
        "key:claude-*-opus*": rules.MATCHES_NO_MODEL,
    }
    assert rules.idle_for(rows, "k1", "t1", models, []) == rules.idle_rows(rows, "k1", "t1", models)
