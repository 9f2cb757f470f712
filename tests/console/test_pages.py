"""The pages' behaviour: usage totals and CSV, budget forms and their errors, deletion,
exceptions, notifications and preferences; axe-core on every page."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal
from typing import Any

import openai
import pytest
from playwright.sync_api import Browser, Page, expect

from spendgate.console.usage_source import CLOSED_DAY_SECONDS
from tests.console.conftest import Console, axe_violations, refused_filters, session, sign_in

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1", "o3-mini")


def _spend(console: Console) -> None:
    """Calls on four models by two teams' keys, today and a week ago."""
    gw = console.gw
    for team in (console.team_id, console.other_team_id):
        key = gw.post("/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": team})
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
        for n, model in enumerate(MODELS):
            for _ in range(n + 1):
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}]
                )
        gw.clock.advance(-7 * 86400)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        gw.clock.advance(7 * 86400)


def test_usage_totals_and_csv_equal_the_api(console: Console) -> None:
    """Grouped by model with top 2: two models and Other; the page's total, the CSV's
    total row and the admin API's total are the same exact figure."""
    _spend(console)
    api = console.gw.get("/admin/usage", group_by="model", start="2026-02-09", end="2026-03-11")
    with session(console.url, "org_admin@acme.test") as client:
        view = "preset=30d&grain=week&group_by=model&top=2"
        page = client.get(f"/usage?{view}")
        assert page.status_code == 200
        assert f'id="usage-total">${api["total_cost_usd"]}<' in page.text
        assert ">Other<" in page.text
        exported = client.get(f"/usage?{view}&format=csv")
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(exported.text)))
        assert [r[0] for r in rows[1:]] == [*[r[0] for r in rows[1:3]], "Other", "total"]
        total = rows[0].index("total_usd")
        assert rows[-1][total] == api["total_cost_usd"]
        exports = console.gw.get("/admin/audit", action="usage.exported")["entries"]
        assert [e["actor_type"] for e in exports] == ["console"]
        costs = sorted((Decimal(r["cost_usd"]) for r in api["rows"]), reverse=True)
        assert [Decimal(r[total]) for r in rows[1:3]] == costs[:2]
        assert Decimal(rows[3][total]) == sum(costs[2:])
        # a filter in the URL narrows both
        team_view = client.get(f"/usage?{view}&team={console.team_id}&format=csv").text
        team_api = console.gw.get("/admin/usage", group_by="team", start="2026-02-09")
        by_team = {r["team"]: r["cost_usd"] for r in team_api["rows"]}
        team_rows = list(csv.reader(io.StringIO(team_view)))
        assert team_rows[-1][total] == by_team[console.team_id]
        bad = client.get("/usage?grain=hour")
        assert bad.status_code == 422 and "grain" in bad.text
        # the API's group_by (dimensions and a time grain) given to the page: it says where
        # the grain goes
        bad = client.get("/usage?group_by=model,day")
        assert bad.status_code == 422 and "the time grain is grain" in bad.text
        # custom dates the calendar cannot shift into UTC (year 1) or past what the API
        # takes: the page's own 422 beside the date (year 1 was a 500, connection reset)
        for start, end, field in (("0001-01-01", "0001-01-02", "start"),
                                  ("8999-12-30", "9999-01-01", "end")):  # fmt: skip
            bad = client.get(f"/usage?preset=custom&start={start}&end={end}")
            assert bad.status_code == 422, (start, bad.status_code)
            assert f'id="{field}-error"' in bad.text and "between 1970 and 9000" in bad.text


def test_a_refused_usage_filter_comes_back_as_typed(console: Console, page: Page) -> None:
    """Custom dates ending before they start: the usage page again, the filters as typed
    (dates, grouping, a team filter) and the message beside the end date; it was a bare
    error page ("Invalid input", "Back to usage") with all of it gone."""
    sign_in(page, console.url, "org_admin@acme.test")
    fields = {
        "Dates": "custom",
        "From": "2026-03-05",
        "To (exclusive)": "2026-03-01",
        "Group by": "team",
        "Team filter": console.team_id,
    }
    wrong = ("To (exclusive)", "end", "must be after start")
    refused_filters(page, console.url, "/usage", fields, wrong)
    expect(page.get_by_role("heading", name="Usage", exact=True)).to_be_visible()
    expect(page.locator("#usage-total")).to_have_count(0)


def test_budget_form_shows_the_api_errors_beside_the_field(console: Console, page: Page) -> None:
    """Alerts out of order and a bad time zone: the API's messages, next to their fields,
    the typed values kept; nothing is created."""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(f"{console.url}/usage/budgets/new")
    page.get_by_label("Scope", exact=True).select_option("team")
    page.get_by_label("Target").select_option(console.team_id)
    page.get_by_label("Amount (USD)").fill("-5")
    page.get_by_role("button", name="Create budget").click()
    expect(page.locator("#amount_usd-error")).to_contain_text("an amount in USD")
    expect(page.get_by_label("Amount (USD)")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Amount (USD)").fill("100")
    page.get_by_label("Time zone (IANA)").fill("Mars/Olympus")
    page.get_by_role("button", name="Create budget").click()
    expect(page.locator("#timezone-error")).to_be_visible()
    page.get_by_label("Time zone (IANA)").fill("Europe/Paris")
    page.get_by_label("Soft limit (%)").fill("150")
    page.get_by_label("Hard limit: refuse calls past it").check()
    page.get_by_label("Hard limit (%)").fill("120")
    page.get_by_role("button", name="Create budget").click()
    expect(page.locator(".error").first).to_be_visible()
    assert console.gw.get("/admin/budgets") == []
    expect(page.get_by_label("Amount (USD)")).to_have_value("100")


def test_budget_form_refuses_a_target_of_another_scope(console: Console, page: Page) -> None:
    """A team picked as Target with Scope left at org, or at tag, and a tag typed for a
    team budget: the form says so beside the field and creates nothing. (They were
    dropped: an org-wide budget — a hard cap on every team — made for one team.)"""
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(f"{console.url}/usage/budgets/new")
    page.get_by_label("Target").select_option(console.team_id)
    page.get_by_label("Amount (USD)").fill("7")
    page.get_by_role("button", name="Create budget").click()
    expect(page.locator("#scope_id-error")).to_contain_text("research is a team, not an org")
    expect(page.get_by_label("Target")).to_have_value(console.team_id)
    expect(page.get_by_label("Amount (USD)")).to_have_value("7")
    page.get_by_label("Scope", exact=True).select_option("tag")
    page.get_by_label("Tag (tag scope)").fill("search")
    page.get_by_role("button", name="Create budget").click()
    expect(page.locator("#scope_id-error")).to_contain_text("a tag budget has no Target")
    page.get_by_label("Scope", exact=True).select_option("team")
    page.get_by_role("button", name="Create budget").click()
    expect(page.locator("#tag-error")).to_contain_text("only a tag budget has one")
    assert console.gw.get("/admin/budgets") == []
    # the API's own rule: neither is dropped without a word
    body = {"scope_type": "team", "scope_id": console.team_id, "amount_usd": "7", "tag": "x"}
    refused = console.gw.admin.post("/admin/budgets", json=body)
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "tag"
    body = {"scope_type": "tag", "tag": "x", "org_id": console.org_id, "amount_usd": "7"}
    refused = console.gw.admin.post("/admin/budgets", json={**body, "scope_id": console.team_id})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "scope_id"
    assert console.gw.admin.post("/admin/budgets", json=body).status_code == 201


def test_delete_asks_first_and_exceptions_are_granted(console: Console, page: Page) -> None:
    budget = console.gw.post(
        "/admin/budgets",
        {"name": "ops", "scope_type": "team", "scope_id": console.team_id, "amount_usd": "10"},
    )
    sign_in(page, console.url, "finance@acme.test")
    page.goto(f"{console.url}/usage/budgets/{budget['id']}")
    page.get_by_label("Extra amount (USD)").fill("5")
    page.get_by_label("Reason").fill("launch week")
    expires = console.gw.clock.now() + timedelta(days=3)
    page.get_by_label("Expires (UTC)").fill(expires.strftime("%Y-%m-%dT%H:%M"))
    page.get_by_role("button", name="Grant exception").click()
    expect(page.locator("#exceptions-table")).to_contain_text("launch week")
    expect(page.locator("#exceptions-table caption")).to_contain_text("1 active")
    expect(page.locator("#status-table")).to_contain_text("$15.00")
    page.get_by_label("Reason").fill("")
    page.get_by_label("Expires (UTC)").fill("")
    page.get_by_role("button", name="Grant exception").click()
    # what is missing is called missing (it read "String should have at least 1
    # character" and "not an ISO 8601 date-time …: None")
    expect(page.locator("#x-reason-error")).to_have_text("Error: required")
    expect(page.locator("#x-expires_at-error")).to_have_text(
        "Error: required: a date-time such as 2026-05-01T00:00:00Z"
    )
    page.goto(f"{console.url}/usage/budgets/{budget['id']}")
    page.get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading", name="Delete budget ops?")).to_be_visible()
    page.get_by_role("link", name="No, keep it").click()
    assert len(console.gw.get("/admin/budgets")) == 1
    page.get_by_role("link", name="Delete").click()
    page.get_by_role("button", name="Yes, delete it").click()
    assert page.url.endswith("/usage/budgets")
    assert console.gw.get("/admin/budgets") == []


def test_notifications_unread_first_mark_read_and_preferences(
    console: Console, page: Page, browser: Browser
) -> None:
    """Notifications of a key and of budget levels already past; unread first, the header count
    follows marking read (axe-core finds nothing serious with unread ones listed: each
    *Mark read* button's name starts with the words it shows); preferences are saved per
    user."""
    gw = console.gw
    key = gw.post(
        "/admin/keys", {"name": "k", "org_id": console.org_id, "team_id": console.team_id}
    )
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    gw.post(
        "/admin/budgets",
        {
            "name": "tiny",
            "scope_type": "team",
            "scope_id": console.team_id,
            "amount_usd": "0.000001",
            "alert_percentages": ["50"],
            "soft_limit_percent": "75",
        },
    )
    sign_in(page, console.url, "team_admin@acme.test")
    rows = page.locator("#notifications-table tbody tr")
    for _ in range(50):
        page.goto(f"{console.url}/notifications")
        if rows.count() >= 3:
            break
        page.wait_for_timeout(200)
    # the key's creation, the alert at 50 % and the soft limit at 75 %
    expect(rows).to_have_count(3)
    expect(page.locator("#unread-count")).to_have_text("3")
    expect(rows.filter(has_text="alert 50%")).to_have_count(1)
    expect(rows.filter(has_text="soft limit 75%")).to_have_count(1)
    violations = axe_violations(browser, console.url, "team_admin@acme.test", "/notifications")
    assert violations == [], [(v["id"], v["nodes"][0]["html"]) for v in violations]
    with page.expect_request("**/read") as sent:  # htmx (hx-boost) swaps the page in place
        rows.first.get_by_role("button").click()
    assert sent.value.headers.get("hx-request") == "true"
    assert sent.value.headers.get("x-csrf-token")
    expect(page.locator("#unread-count")).to_have_text("2")
    expect(rows.nth(0)).to_contain_text("unread")
    expect(rows.nth(1)).to_contain_text("unread")
    expect(rows.nth(2)).not_to_contain_text("unread")
    page.get_by_role("button", name="Mark all as read").click()
    expect(page.locator("#unread-count")).to_have_text("0")

    page.goto(f"{console.url}/settings/notification-preferences")
    page.get_by_label("Every event type").uncheck()
    page.get_by_label("budget.soft_limit_reached").check()
    page.get_by_label("Daily digest").check()
    page.get_by_label("Only events about these").fill(f"team:{console.team_id}")
    page.get_by_role("button", name="Save preferences").click()
    expect(page.get_by_role("status")).to_have_text("Saved.")
    user_id = console.users["team_admin"]["id"]
    saved = gw.get(f"/admin/users/{user_id}/notification-preferences")
    assert saved["event_types"] == ["budget.soft_limit_reached"] and saved["digest"] is True
    assert saved["scopes"] == [{"scope_type": "team", "scope_id": console.team_id}]
    page.get_by_label("Only events about these").fill("planet:mars")
    page.get_by_role("button", name="Save preferences").click()
    expect(page.locator("#scopes-error")).to_be_visible()


@pytest.mark.parametrize(
    "path",
    [
        "/login",
        "/usage",
        "/usage/budgets",
        "/usage/budgets/new",
        "/notifications",
        "/settings/notification-preferences",
    ],
)
def test_pages_have_no_serious_axe_violations(
    console: Console, browser: Browser, path: str
) -> None:
    """axe-core (shipped in tests/console/assets) finds nothing serious or critical."""
    console.gw.post(
        "/admin/budgets",
        {"name": "ops", "scope_type": "team", "scope_id": console.team_id, "amount_usd": "10"},
    )
    violations = axe_violations(browser, console.url, "org_admin@acme.test", path)
    assert violations == [], [(v["id"], v["help"], v["nodes"][0]["html"]) for v in violations]


def test_forms_work_with_the_keyboard_alone(console: Console, page: Page) -> None:
    """Sign in by typing and Enter; the skip link and the nav are reachable with Tab."""
    page.goto(f"{console.url}/login")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.get_by_label("Email").focus()
    page.keyboard.type("viewer@acme.test")
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery staple")
    page.keyboard.press("Enter")
    page.wait_for_url("**/usage")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Usage", exact=True)).to_be_focused()


def test_selected_budget_shows_forecast_band_and_landing(console: Console) -> None:
    """With a forecast for the period, /usage draws the P10–P90 band to the period end and
    says where the period lands — the figures of GET /admin/forecasts/{id}."""
    gw = console.gw
    budget = gw.post(
        "/admin/budgets",
        {"name": "fc", "scope_type": "team", "scope_id": console.team_id, "amount_usd": "0.001"},
    )
    _spend(console)
    forecast = gw.get(f"/admin/forecasts/{budget['id']}", refresh="true")
    with session(console.url, "finance@acme.test") as client:
        page = client.get(f"/usage?budget={budget['id']}").text
    assert 'class="band"' in page
    assert f"We&#39;ll land at ${forecast['p50_usd']}" in page
    assert f"P90 ${forecast['p90_usd']}" in page


def test_selected_budget_chart_counts_only_the_budgets_categories(console: Console) -> None:
    """A budget that counts one model of its team (categories): the chart's spend line ends
    at the budget's own spent figure, not at everything the team spent (which drew a
    budget at 20 % as far over all its levels)."""
    gw = console.gw
    _spend(console)
    budget = gw.post(
        "/admin/budgets",
        {
            "name": "4o only",
            "scope_type": "team",
            "scope_id": console.team_id,
            "amount_usd": "1",
            "timezone": "Asia/Kolkata",
            "categories": {"models": ["gpt-4o"], "kinds": ["chat"]},
        },
    )
    spent = gw.get(f"/admin/budgets/{budget['id']}/status")["spent_usd"]
    team = gw.get("/admin/usage", team_id=console.team_id, start="2026-03-01")
    assert Decimal(spent) > 0 and Decimal(spent) < Decimal(team["total_cost_usd"])
    with session(console.url, "finance@acme.test") as client:
        page = client.get(f"/usage?budget={budget['id']}").text
    assert f"<title>spend so far: ${spent}</title>" in page
    # its page names the team (not its id) and says what the budget counts
    with session(console.url, "finance@acme.test") as client:
        detail = client.get(f"/usage/budgets/{budget['id']}").text
    assert f'team <span title="{console.team_id}">research</span>' in detail
    assert '<p id="categories">Counts only: kinds chat; models gpt-4o</p>' in detail
    # the budget row of the levels table says whether the amount is reached, as the
    # threshold rows do (it always said no, at 100 % and past it)
    gw.admin.patch(f"/admin/budgets/{budget['id']}", json={"amount_usd": spent})
    with session(console.url, "finance@acme.test") as client:
        page = client.get(f"/usage?budget={budget['id']}").text
    assert (
        '<th scope="row">budget</th><td class="num">' + spent + "</td>\n      <td>yes</td>" in page
    )


def test_a_budget_spent_past_its_forecast_is_listed_first(console: Console) -> None:
    """Most at risk first: a budget whose stored forecast was made before it was cut to
    a sliver of its spend is over 100 % used, so it leads a budget at about 50 % with no
    forecast (it was ranked by the stale forecast's few percent alone). The forecast is
    read against the amount now (recomputed: it said a few percent of the old amount)."""
    gw = console.gw
    _spend(console)
    stale = gw.post(
        "/admin/budgets",
        {"name": "stale", "scope_type": "team", "scope_id": console.team_id, "amount_usd": "1000"},
    )
    gw.get(f"/admin/forecasts/{stale['id']}", refresh="true")
    gw.admin.patch(f"/admin/budgets/{stale['id']}", json={"amount_usd": "0.000001"})
    other = gw.get("/admin/usage", team_id=console.other_team_id, start="2026-03-01")
    half = str(Decimal(other["total_cost_usd"]) * 2)
    gw.post(
        "/admin/budgets",
        {
            "name": "half",
            "scope_type": "team",
            "scope_id": console.other_team_id,
            "amount_usd": half,
        },
    )
    status = gw.get(f"/admin/budgets/{stale['id']}/status")
    assert status["forecast"]["amount_usd"] == status["effective_amount_usd"]
    percent = Decimal(status["forecast"]["percent_of_budget"])
    assert percent >= Decimal(status["percent_used"]) > 50
    with session(console.url, "finance@acme.test") as client:
        listed = client.get("/usage/budgets").text
    assert listed.index(">stale<") < listed.index(">half<")


def test_usage_in_the_orgs_reporting_zone_and_by_tag(console: Console) -> None:
    """The org's reporting zone names the axis and the days; grouping by tag works (the
    rollups' tag view) and its figures are the API's."""
    gw = console.gw
    changed = gw.admin.patch(
        f"/admin/orgs/{console.org_id}", json={"reporting_timezone": "America/New_York"}
    )
    assert changed.status_code == 200, changed.text
    key = gw.post("/admin/keys", {"name": "k", "org_id": console.org_id, "tags": ["search"]})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    api = gw.get("/admin/usage", group_by="tag", org_id=console.org_id)
    with session(console.url, "org_admin@acme.test") as web:
        page = web.get("/usage?group_by=tag&preset=7d").text
    assert "days in America/New_York" in page
    assert ">search<" in page
    assert f'id="usage-total">${api["total_cost_usd"]}<' in page


def test_tags_overlap_and_the_chart_and_table_say_so(console: Console, page: Page) -> None:
    """A call with two tags is in both tags' bars and columns, but the page's total, the
    line across each bar, the table's Total column and the CSV's total row count it once:
    the API's total."""
    gw = console.gw
    both = gw.post(
        "/admin/keys", {"name": "b", "org_id": console.org_id, "tags": ["beta", "search"]}
    )
    one = gw.post("/admin/keys", {"name": "s", "org_id": console.org_id, "tags": ["search"]})
    for key, model in ((both, "gpt-4o"), (one, "gpt-4o-mini")):
        client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    api = gw.get("/admin/usage", group_by="tag", org_id=console.org_id)
    by_tag = {r["tag"]: Decimal(r["cost_usd"]) for r in api["rows"]}
    total = Decimal(api["total_cost_usd"])
    assert by_tag["search"] == total and by_tag["beta"] > 0  # the tags overlap
    today = gw.clock.now().date().isoformat()
    sign_in(page, console.url, "org_admin@acme.test")
    page.goto(f"{console.url}/usage?group_by=tag&preset=7d")
    expect(page.locator("#usage-total")).to_have_text(f"${api['total_cost_usd']}")
    expect(page.locator("#table-total")).to_have_text(api["total_cost_usd"])
    expect(page.locator("#overlap-note")).to_contain_text("Tags overlap")
    columns = page.locator("#usage-table tfoot tr").first.locator("td").all_inner_texts()
    assert sum(Decimal(c) for c in columns[:-1]) == by_tag["search"] + by_tag["beta"] > total
    today_row = page.locator("#usage-table tbody tr", has=page.get_by_role("rowheader", name=today))
    assert today_row.locator("td").last.inner_text() == api["total_cost_usd"]
    line = page.locator("svg.chart line.total title", has_text=today)
    expect(line).to_have_text(f"{today} total, each call once: ${api['total_cost_usd']}")
    assert "overlapping groups" in (page.locator("svg.chart desc").text_content() or "")
    with session(console.url, "org_admin@acme.test") as web:
        exported = web.get("/usage?group_by=tag&preset=7d&format=csv").text
    table = list(csv.reader(io.StringIO(exported)))
    assert table[-1][table[0].index("total_usd")] == api["total_cost_usd"]


def test_closed_days_are_reused_for_a_minute_and_today_is_always_read(console: Console) -> None:
    """/usage keeps the figures of days that are over for CLOSED_DAY_SECONDS: a call
    written late into one of them shows once that has passed; a call of today shows at
    once. The total is the API's whenever the kept figures are fresh."""
    gw = console.gw
    key = gw.post("/admin/keys", {"name": "k", "org_id": console.org_id})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)

    def call_days_ago(days: int) -> None:
        gw.clock.advance(-days * 86400)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        gw.clock.advance(days * 86400)

    def api_total() -> str:
        return str(gw.get("/admin/usage", org_id=console.org_id)["total_cost_usd"])

    def page_total(web: Any) -> str:
        text = web.get("/usage?preset=7d").text
        return text.split('id="usage-total">$', 1)[1].split("<", 1)[0]

    call_days_ago(2)
    with session(console.url, "org_admin@acme.test") as web:
        first = page_total(web)
        assert first == api_total()
        call_days_ago(0)  # today: read at once
        assert page_total(web) == api_total() != first
        before_late = api_total()
        call_days_ago(2)  # late into a closed day: the kept figure stands for a while
        assert page_total(web) == before_late != api_total()
        gw.clock.advance(CLOSED_DAY_SECONDS + 1)
        assert page_total(web) == api_total()


def test_usage_csv_shows_formula_like_names_as_text(console: Console) -> None:
    """A team named ``+cmd`` and a tag ``=1+2`` reach the console's usage CSV behind a
    ``'`` (a spreadsheet shows them, runs nothing); the figures are the API's."""
    gw = console.gw
    team = gw.post("/admin/teams", {"org_id": console.org_id, "name": "+cmd"})
    key = gw.post(
        "/admin/keys",
        {"name": "f", "org_id": console.org_id, "team_id": team["id"], "tags": ["=1+2"]},
    )
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    api = gw.get("/admin/usage", group_by="tag", org_id=console.org_id, tag="=1+2")
    with session(console.url, "org_admin@acme.test") as web:
        by_tag = list(
            csv.reader(io.StringIO(web.get("/usage?group_by=tag&preset=7d&format=csv").text))
        )
        by_team = list(
            csv.reader(io.StringIO(web.get("/usage?group_by=team&preset=7d&format=csv").text))
        )
    [tag_row] = [r for r in by_tag if r[0] == "'=1+2"]
    assert tag_row[by_tag[0].index("total_usd")] == api["total_cost_usd"]
    assert [team["id"], "'+cmd"] in [r[:2] for r in by_team]
    assert not any(c.startswith(("=", "+", "@")) for r in by_tag + by_team for c in r)


def test_selected_tag_budget_chart_counts_the_tags_calls_only(console: Console) -> None:
    """A tag budget (no categories) keeps its tag in ``tag``, not ``scope_id``: its chart's
    spend line ends at the budget's own spent figure, the tagged calls, not at the whole
    org's spend (the filter was the empty scope_id, so no filter at all)."""
    gw = console.gw
    _spend(console)  # untagged calls of both teams
    key = gw.post("/admin/keys", {"name": "t", "org_id": console.org_id, "tags": ["batch"]})
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key["key"], max_retries=0)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    budget = gw.post(
        "/admin/budgets",
        {"name": "batch", "scope_type": "tag", "tag": "batch", "org_id": console.org_id,
         "amount_usd": "1"},
    )  # fmt: skip
    spent = gw.get(f"/admin/budgets/{budget['id']}/status")["spent_usd"]
    org = gw.get("/admin/usage", start="2026-03-01")
    assert 0 < Decimal(spent) < Decimal(org["total_cost_usd"])
    with session(console.url, "finance@acme.test") as client:
        page = client.get(f"/usage?budget={budget['id']}").text
    assert f"<title>spend so far: ${spent}</title>" in page
