"""Every label of a chart is drawn inside it: the money axis and the budget levels of a
budget of a million dollars, with alert, soft and hard levels whose figures are not
round, are read whole in the browser (the SVG clips what falls outside its box)."""

from __future__ import annotations

from playwright.sync_api import Browser

from tests.console.conftest import Console, sign_in

#: each text of each chart on the page, with how far it reaches outside its SVG's
#: viewBox (user units; 0 when inside)
_OUTSIDE = """() => [...document.querySelectorAll('svg.chart')].flatMap(svg => {
    const box = svg.viewBox.baseVal;
    return [...svg.querySelectorAll('text')].map(t => {
        const b = t.getBBox();
        return {text: t.textContent,
                out: Math.max(0, box.x - b.x, b.x + b.width - (box.x + box.width))};
    });
})"""


def test_budget_chart_labels_fit_a_large_budget(console: Console, browser: Browser) -> None:
    gw = console.gw
    budget = gw.post(
        "/admin/budgets",
        {
            "name": "enterprise monthly",
            "scope_type": "org",
            "scope_id": console.org_id,
            "amount_usd": "1234567.891",
            "alert_percentages": [50, 75, 90],
            "soft_limit_percent": 85,
            "hard_limit": True,
            "hard_limit_percent": 110,
        },
    )
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        sign_in(page, console.url, "org_admin@acme.test")
        page.goto(f"{console.url}/usage?budget={budget['id']}")
        texts = page.evaluate(_OUTSIDE)
    finally:
        context.close()
    assert any(t["text"].startswith("soft limit") for t in texts)
    outside = [t for t in texts if t["out"] > 0.5]
    assert outside == [], outside
