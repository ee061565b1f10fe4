"""An operator at the console, in a real browser: Debian's headless Chromium, driven by Playwright, logs in to
/admin on a live server, opens the dashboard from the index, reads its figures and sees its charts load, then
deactivates a trader from the users page; the database shows the trader deactivated and the action audited.

Playwright's sync API runs an event loop of its own; it runs in a worker thread so it never meets the one
pytest-asyncio keeps for this thread."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone

from accounts.models import AuditEvent, User
from accounts.tests.factories import DEFAULT_PASSWORD
from brokers.protocol import Quote
from marketdata.quotes import quotes_put
from orders.models import Order, OrderStatus
from orders.tests.factories import EQUITY, paper_account

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.django_db(transaction=True)


def operate(*, base_url: str, email: str, trader_id: str, screenshot: Path) -> dict:
    """What the operator does and sees, step by step; returns what the page showed."""
    from playwright.sync_api import expect, sync_playwright

    seen: dict = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)

            page.goto(f"{base_url}/admin/")
            expect(page).to_have_url(f"{base_url}/admin/login/?next=/admin/")
            page.fill("#id_username", email)
            page.fill("#id_password", DEFAULT_PASSWORD)
            page.click("input[type=submit]")
            expect(page.locator("#operators-dashboard-link")).to_be_visible()

            page.click("#operators-dashboard-link a")
            expect(page.locator("h1")).to_have_text("Operators' dashboard")
            for name in ("users", "accounts", "orders", "rejections", "mtm", "feed"):
                seen[name] = page.locator(f"#figure-{name} .value").inner_text().strip()
            for chart in ("orders", "accounts", "revenue"):
                image = page.locator(f"#chart-{chart}")
                expect(image).to_be_visible()
                seen[f"chart-{chart}"] = image.evaluate("img => img.complete ? img.naturalWidth : 0")
            page.screenshot(path=str(screenshot), full_page=True)

            page.goto(f"{base_url}/admin/accounts/user/")
            page.check(f"input.action-select[value='{trader_id}']")
            page.select_option("select[name=action]", "deactivate_users")
            page.click("button[name=index]")
            expect(page.locator("ul.messagelist")).to_contain_text("1 user(s) deactivated.")
            seen["message"] = page.locator("ul.messagelist").inner_text().strip()
        finally:
            browser.close()
    return seen


def test_an_operator_logs_in_reads_the_dashboard_and_deactivates_a_trader(live_server, admin_user, trader, tmp_path):
    account = paper_account(trader)
    Order.objects.create(
        user=trader,
        account=account,
        symbol=EQUITY,
        side="BUY",
        quantity=1,
        order_type="MARKET",
        product="MIS",
        status=OrderStatus.REJECTED,
        status_message="Insufficient funds",
    )
    quotes_put([Quote(symbol=EQUITY, last_price=Decimal("1500"), timestamp=timezone.now() - timedelta(seconds=1))])
    screenshot = tmp_path / "dashboard.png"

    with ThreadPoolExecutor(max_workers=1) as pool:
        seen = pool.submit(
            operate, base_url=live_server.url, email=admin_user.email, trader_id=trader.pk, screenshot=screenshot
        ).result(timeout=120)

    assert (seen["users"], seen["accounts"], seen["orders"], seen["rejections"], seen["mtm"]) == (
        str(User.objects.filter(is_active=True).count() + 1),  # the trader counted before being deactivated
        "1",
        "1",
        "1",
        "₹0.00",
    )
    assert seen["feed"].endswith(" s")
    assert (seen["chart-orders"], seen["chart-accounts"], seen["chart-revenue"]) == (640, 640, 640)
    assert screenshot.stat().st_size > 50_000
    trader.refresh_from_db()
    assert not trader.is_active and trader.deactivated_at is not None
    audit = AuditEvent.objects.get(action="admin.user_deactivate", target_id=trader.pk)
    assert audit.actor == admin_user and audit.details["reason"] == "admin action"
