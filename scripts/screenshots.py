"""Screenshots of every console page in light and dark mode, to look at (not committed).

    .venv/bin/python scripts/screenshots.py [--out /tmp/spendgate-screenshots]

Starts a gateway with two weeks of spend made through the proxy (``spendgate.testing.
console_demo``), signs in as the org admin in Debian's Chromium and saves
``<page>-<light|dark>.png`` for each page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spendgate.testing.console_demo import PASSWORD, demo_console, drive_month

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/spendgate-screenshots")
    parser.add_argument("--browser", default="/usr/bin/chromium")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, demo_console(Path(tmp)) as demo:
        demo.user("admin@acme.test", {"role": "org_admin"})
        drive_month(demo)
        budget = demo.budget_ids[0]
        pages = {
            "login": "/login",
            "usage": "/usage?preset=30d&group_by=model",
            "usage-budget": f"/usage?preset=mtd&group_by=team&budget={budget}",
            "budgets": "/usage/budgets",
            "budget": f"/usage/budgets/{budget}",
            "budget-new": "/usage/budgets/new",
            "budget-errors": "/usage/budgets/new",
            "notifications": "/notifications",
            "preferences": "/settings/notification-preferences",
            "keys": "/keys",
            "rate-limits": "/rate-limits",
            "tickets": "/tickets?status=all",
            "statements": "/statements",
        }
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.browser, args=CHROMIUM_ARGS)
            for scheme in ("light", "dark"):
                context = browser.new_context(
                    color_scheme=scheme, viewport={"width": 1280, "height": 900}
                )
                tab = context.new_page()
                tab.goto(demo.url + "/login")
                tab.screenshot(path=str(out / f"login-{scheme}.png"), full_page=True)
                tab.get_by_label("Email").fill("admin@acme.test")
                tab.get_by_label("Password").fill(PASSWORD)
                tab.get_by_role("button", name="Sign in").click()
                tab.wait_for_url("**/usage")
                for name, path in pages.items():
                    if name == "login":
                        continue
                    tab.goto(demo.url + path)
                    if name == "budget-errors":
                        tab.get_by_label("Amount (USD)").fill("-1")
                        tab.get_by_role("button", name="Create budget").click()
                    tab.screenshot(path=str(out / f"{name}-{scheme}.png"), full_page=True)
                context.close()
            browser.close()
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
