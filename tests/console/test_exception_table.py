"""A budget's exception table shows what each exception raises: an amount raise its
extra USD, a percent raise its extra % — not "0.00" / "0" in the field that does not
apply (the stored zero of the other kind)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.console.conftest import Console, sign_in

SHOTS = Path("/tmp/names")


def test_exception_rows_show_only_the_field_that_applies(console: Console, page: Page) -> None:
    gw = console.gw
    budget = gw.create_budget(
        name="research cap", scope_type="team", scope_id=console.team_id, amount_usd="100"
    )
    expires = (gw.clock.now() + timedelta(days=3)).isoformat()
    for reason, raised in (("by amount", {"amount_usd": "5"}), ("by percent", {"percent": "10"})):
        gw.post(
            f"/admin/budgets/{budget['id']}/exceptions",
            {**raised, "reason": reason, "expires_at": expires},
        )
    sign_in(page, console.url, "finance@acme.test")
    page.goto(f"{console.url}/usage/budgets/{budget['id']}")
    rows = page.locator("#exceptions-table tbody tr")
    expect(rows).to_have_count(2)
    cells = [[c.strip() for c in rows.nth(i).locator("td").all_inner_texts()] for i in range(2)]
    assert [row[:3] for row in cells] == [["by amount", "5.00", ""], ["by percent", "", "10"]]
    SHOTS.mkdir(exist_ok=True)
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        page.locator("#exceptions-table").screenshot(path=str(SHOTS / f"exceptions-{scheme}.png"))
