"""At 1280 × 800 (a laptop) no list page scrolls sideways: a table wider than the page
scrolls inside its own container, with real names in it (long team, key, wallet, budget
and user names, a long webhook URL), and no number wraps inside its cell. Screenshots
of each page go to SHOTS for a person to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from tests.console.conftest import Console, sign_in

SHOTS = Path("/tmp/spendgate-console-wide-shots")
PAGES = [
    "/usage",
    "/usage/budgets",
    "/wallets",
    "/keys",
    "/rate-limits",
    "/webhooks",
    "/audit",
    "/people",
]
LONG = "platform-engineering-inference-evaluation-and-batch-scoring"


def _seed(console: Console) -> None:
    gw = console.gw
    team = gw.post("/admin/teams", {"name": f"{LONG}-europe-west", "org_id": console.org_id})
    key = gw.post(
        "/admin/keys",
        {"name": f"{LONG}-nightly-ci-runner", "org_id": console.org_id, "team_id": team["id"]},
    )
    for scope_type, scope_id in (("team", team["id"]), ("key", key["id"])):
        gw.post(
            "/admin/budgets",
            {
                # as long as a name may be (200): /usage lists it in a <select>
                "name": f"{LONG} monthly cap for {scope_type} {LONG} {LONG}"[:200],
                "scope_type": scope_type,
                "scope_id": scope_id,
                "amount_usd": "1234567.89",
                "hard_limit": True,
            },
        )
        gw.post(
            "/admin/rate-limits",
            {
                "scope_type": scope_type,
                "scope_id": scope_id,
                "model": "claude-3-5-sonnet-20241022-long-context-preview*",
                "rpm": 1_000_000,
                "tpm": 9_000_000_000,
                "max_concurrent": 100_000,
                "max_spend_usd": "9999999.99",
                "spend_window_seconds": 86_400,
            },
        )
    gw.post(
        "/admin/wallets",
        {
            "name": f"{LONG} prepaid wallet",
            "scope_type": "key",
            "scope_id": key["id"],
            "initial_topup_usd": "1234567.89",
            "low_balance_usd": "100000",
        },
    )
    gw.post(
        "/admin/webhooks",
        {
            "url": "http://127.0.0.1:9/hooks/"
            + "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0/ingest",
            "description": f"{LONG} on-call alerts for the finance operations channel",
        },
    )
    console.add_user(
        f"{LONG}.administrator@subsidiary-holdings.example.com",
        {"role": "team_admin", "team_ids": [team["id"], console.team_id, console.other_team_id]},
    )


def _measure(page: Page) -> dict[str, Any]:
    return page.evaluate(
        """() => ({
            page: document.documentElement.scrollWidth,
            viewport: window.innerWidth,
            tables: [...document.querySelectorAll('main table')].map(t => {
                const wrap = t.closest('.table-wrap');
                return {
                    id: t.id,
                    named: !!(t.caption || t.getAttribute('aria-labelledby')
                              || t.getAttribute('aria-label')),
                    wrapped: !!wrap,
                    table: t.scrollWidth,
                    wrap: wrap ? wrap.clientWidth : 0,
                    region: wrap ? wrap.getAttribute('role') : null,
                    tabindex: wrap ? wrap.getAttribute('tabindex') : null,
                };
            }),
            // cells of one value ("37.88 %", "$1234567.89") whose text runs over more
            // than one line ("37.88" above "%"); phrases ("no recent spend") may wrap
            wrapped_numbers: [...document.querySelectorAll('main td.num')].filter(td => {
                if (!/^\\S+(\\s%)?$/.test(td.textContent.trim())) return false;
                const range = document.createRange();
                range.selectNodeContents(td);
                const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                return tops.size > 1;
            }).map(td => td.textContent.trim()),
        })"""
    )


@pytest.mark.parametrize("path", PAGES)
def test_list_pages_fit_1280_pixels(console: Console, browser: Browser, path: str) -> None:
    """At 1280 px the document is no wider than the viewport and every table fits its
    ``.table-wrap`` whole (long names wrap: no column is cut off). At 700 px the page
    still does not scroll sideways: the table scrolls in its wrap, which is then a named
    region a keyboard can reach. Still real ``<table>``s with a caption or a label."""
    _seed(console)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    try:
        sign_in(page, console.url, "org_admin@acme.test")
        page.goto(console.url + path)
        SHOTS.mkdir(parents=True, exist_ok=True)
        name = path.strip("/").replace("/", "-")
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
        seen = _measure(page)
        assert seen["page"] <= seen["viewport"] == 1280, (path, seen)
        assert seen["tables"], path
        for table in seen["tables"]:
            assert table["wrapped"] and table["named"], (path, table)
            assert table["table"] <= table["wrap"], (path, table)
            assert table["tabindex"] is None, (path, table)
        assert not seen["wrapped_numbers"], (path, seen["wrapped_numbers"])
        page.set_viewport_size({"width": 700, "height": 800})
        wide = page.evaluate(
            """() => [...document.querySelectorAll('body *')]
                .filter(e => e.getBoundingClientRect().right > 701 && !e.closest('.table-wrap'))
                .map(e => e.tagName + '.' + e.className + '#' + e.id + ' '
                          + Math.round(e.getBoundingClientRect().right))"""
        )
        assert not wide, wide[:8]
        page.screenshot(path=str(SHOTS / f"{name}-700.png"))
        narrow = _measure(page)
        assert narrow["page"] <= narrow["viewport"] == 700, (path, narrow)
        for table in narrow["tables"]:
            if table["table"] > table["wrap"]:
                assert (table["region"], table["tabindex"]) == ("region", "0"), (path, table)
    finally:
        context.close()


#: a name as scripts make them: an identifier with no space or hyphen to break at
SNAKE = ("research_inference_gpt_4o_batch_scoring_nightly_eu_west_1_" * 4)[:200]


def test_pages_of_one_snake_case_name_fit_1280_pixels(console: Console, browser: Browser) -> None:
    """A budget and a key named like identifiers (200 characters, no space or hyphen, as
    the API allows): the budget's page, its edit form, its chart on /usage and the key's
    page do not scroll sideways (the name in a heading ran 2,300–3,100 px wide). The
    lists' tables may scroll inside their own wraps, as they do on a narrow screen."""
    gw = console.gw
    key = gw.post("/admin/keys", {"name": SNAKE, "org_id": console.org_id})
    budget = gw.post(
        "/admin/budgets",
        {"name": SNAKE, "scope_type": "key", "scope_id": key["id"], "amount_usd": "10"},
    )
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    seen: dict[str, Any] = {}
    try:
        sign_in(page, console.url, "org_admin@acme.test")
        for path in (
            f"/usage/budgets/{budget['id']}",
            f"/usage/budgets/{budget['id']}/edit",
            f"/usage?budget={budget['id']}",
            f"/keys/{key['id']}",
            "/usage/budgets",
            "/keys",
        ):
            page.goto(console.url + path)
            seen[path] = _measure(page)
    finally:
        context.close()
    wide = {p: s["page"] for p, s in seen.items() if s["page"] > s["viewport"]}
    assert wide == {}
