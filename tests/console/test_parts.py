"""The console's pure pieces: buckets, top N, chart geometry, form errors, redirects."""

from __future__ import annotations

from datetime import date

import pytest
from pydantic import ValidationError

from spendgate.admin import schemas as s
from spendgate.console.auth import safe_next
from spendgate.console.budget_view import landing_text
from spendgate.console.charts import Band, Level, _spread, budget_chart, stacked_bars
from spendgate.console.forms import ONE_SCOPE, budget_body, field_errors, refill, scope_fields
from spendgate.console.usage import OTHER, parse_view, top_n
from spendgate.console.usage_source import UsageSeries, bucket_of, buckets_between
from spendgate.errors import ValidationFailed


@pytest.mark.parametrize(
    ("day", "grain", "first"),
    [
        (date(2026, 3, 11), "day", date(2026, 3, 11)),
        (date(2026, 3, 11), "week", date(2026, 3, 9)),  # a Wednesday → its Monday
        (date(2026, 3, 9), "week", date(2026, 3, 9)),
        (date(2026, 3, 31), "month", date(2026, 3, 1)),
    ],
)
def test_bucket_of(day: date, grain: str, first: date) -> None:
    assert bucket_of(day, grain) == first


def test_buckets_between_cover_the_range_once_each() -> None:
    weeks = buckets_between(date(2026, 2, 25), date(2026, 3, 12), "week")
    assert weeks == [date(2026, 2, 23), date(2026, 3, 2), date(2026, 3, 9)]
    assert buckets_between(date(2026, 1, 30), date(2026, 3, 2), "month") == [
        date(2026, 1, 1),
        date(2026, 2, 1),
        date(2026, 3, 1),
    ]


def test_top_n_folds_the_rest_into_other_exactly() -> None:
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    cells = {(d1, "a"): 5, (d2, "a"): 5, (d1, "b"): 7, (d1, "c"): 1, (d2, "d"): 3}
    totals = {"a": 10, "b": 7, "c": 1, "d": 3}
    series = UsageSeries("UTC", [d1, d2], cells, totals, dict.fromkeys(totals, 1))
    rows = top_n(series, 2)
    assert [r[0] for r in rows] == ["a", "b", OTHER]
    assert rows[2][1] == {d1: 1, d2: 3} and rows[2][2] == 4
    assert sum(r[2] for r in rows) == series.total == 21
    assert [r[0] for r in top_n(series, 10)] == ["a", "b", "d", "c"]


def test_level_labels_never_overlap() -> None:
    ys = [100.0, 100.0, 105.0, 200.0]
    placed = _spread(ys, gap=13)
    assert all(abs(a - b) >= 13 for i, a in enumerate(placed) for b in placed[i + 1 :])
    assert placed[3] == 200.0


def test_budget_chart_draws_levels_and_the_band() -> None:
    days = [date(2026, 3, d) for d in range(1, 32)]
    levels = [Level("budget", 10**9, "budget"), Level("alert 50%", 5 * 10**8, "alert")]
    svg = str(
        budget_chart(days, [10**8, 3 * 10**8], levels, Band(8, 9, 10**10), title="t", zone="UTC")
    )
    assert svg.count('class="level') == 2 and 'class="band"' in svg
    assert "alert 50% $0.50" in svg and "<title" in svg
    assert 'class="band"' not in str(budget_chart(days, [1], levels, None, title="t", zone="UTC"))
    bars = str(stacked_bars([days[0]], [("<b>", {days[0]: 5})], title="x", zone="UTC"))
    assert "<b>" not in bars and "&lt;b&gt;" in bars  # labels are escaped


def test_landing_text() -> None:
    assert landing_text({"p50_usd": "130", "amount_usd": "100"}) == (
        "We'll land at $130.00, +30 % over budget."
    )
    assert landing_text({"p50_usd": "80", "amount_usd": "100"}).endswith("20 % under budget.")
    # rounded towards the risk: a landing near $0 is not "100 % under", a sliver over is
    # not "+0 % over"
    assert landing_text({"p50_usd": "0.0006257", "amount_usd": "6.5"}).endswith(
        "$0.0006257, 99 % under budget."
    )
    assert landing_text({"p50_usd": "100.2", "amount_usd": "100"}).endswith("+1 % over budget.")


def test_form_errors_name_the_field() -> None:
    body = budget_body(
        {
            "scope_type": "team",
            "scope_id": "t",
            "amount_usd": "x",
            "alert_percentages": "50 abc",
            "categories.kinds": "chat, video",
        },
        ("scope_type", "scope_id", "amount_usd", "alert_percentages", "categories.kinds"),
    )
    with pytest.raises(ValidationError) as caught:
        s.BudgetIn.model_validate(body)
    errors = field_errors(caught.value)
    assert set(errors) == {"amount_usd", "alert_percentages", "categories.kinds"}
    assert field_errors(ValidationFailed("timezone: no such zone", param="timezone")) == {
        "timezone": "no such zone"
    }


@pytest.mark.parametrize(
    ("param", "moved", "form", "beside"),
    [
        ("scope_id", ONE_SCOPE, "", "scope"),
        ("scope_type", ONE_SCOPE, "", "scope"),
        ("team_ids.0", {"team_ids": "team_id"}, "user", "user.team_id"),
        ("config.routing_key", {"config": "routing_key"}, "", "routing_key"),
        ("configs", {"config": "routing_key"}, "", "configs"),  # another field, not inside
        ("reason", {}, "deny", "deny.reason"),
        ("name", None, "", "name"),
    ],
)
def test_a_refused_form_puts_each_error_beside_its_input(
    param: str, moved: dict[str, str] | None, form: str, beside: str
) -> None:
    """The API names its field; the page shows the error by the input that sets it, in
    the form that was sent, with what was typed keyed the same way."""
    sent_back = refill(
        ValidationFailed(f"{param}: refused", param=param),
        {"typed": "x"},
        form=form,
        moved=moved,
    )
    assert sent_back.errors == {beside: "refused"}
    assert sent_back.values == {f"{form}.typed" if form else "typed": "x"}


def test_a_scope_picked_in_one_select_is_the_apis_two_fields() -> None:
    """``team:t1`` → ``scope_type`` ``team``, ``scope_id`` ``t1`` (the id keeps any colon)."""
    assert scope_fields("key:k:1", {"rpm": "5"}) == {
        "scope_type": "key",
        "scope_id": "k:1",
        "rpm": "5",
    }
    assert scope_fields("", {}) == {"scope_type": "", "scope_id": ""}


@pytest.mark.parametrize(
    ("asked", "goes"),
    [
        ("/usage/budgets", "/usage/budgets"),
        ("//evil.test/x", "/usage"),
        ("https://evil.test/", "/usage"),
        ("/\\evil.test", "/usage"),
        (None, "/usage"),
    ],
)
def test_after_sign_in_only_this_site(asked: str | None, goes: str) -> None:
    assert safe_next(asked) == goes


def test_usage_parameters_are_checked() -> None:
    today = date(2026, 3, 10)
    view = parse_view({"preset": "7d"}, today)
    assert (view.start, view.end) == (date(2026, 3, 4), date(2026, 3, 11))
    assert "group_by=model" in view.url()
    for params, param in (
        ({"preset": "1y"}, "preset"),
        ({"top": "0"}, "top"),
        ({"preset": "custom", "start": "2026-03-05", "end": "2026-03-01"}, "end"),
        ({"group_by": "colour"}, "group_by"),
    ):
        with pytest.raises(ValidationFailed) as caught:
            parse_view(params, today)
        assert caught.value.param == param
