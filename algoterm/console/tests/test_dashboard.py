"""The operators' dashboard: each figure against rows made by hand, the charts as real PNGs, and the page for admins
only, linked from the admin index."""

from __future__ import annotations

import base64
import html as markup
import io
import re
from datetime import datetime, time, timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from accounts.tests.factories import UserFactory
from algoterm.console import dashboard
from billing.models import Payment, PaymentStatus, Plan, Subscription
from brokers.models import AccountStatus, BrokerAccount
from brokers.protocol import Quote
from marketdata.quotes import quotes_put
from orders.models import Order, OrderStatus, Position
from orders.tests.conftest import instruments, paper  # noqa: F401
from orders.tests.factories import EQUITY, paper_account
from rms.models import RmsEvent, RmsState, TradingState

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/algoterm/platformstate/dashboard/"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def ist(day, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=dashboard.IST)


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def today(now):
    return timezone.localtime(now, dashboard.IST).date()


@pytest.fixture
def platform(now, today, trader, admin_user, paper):  # noqa: F811
    """A small platform made by hand; the expected figures are written next to each row."""
    # Users: admin_user and trader (never logged in), then one seen 2 days ago, one 40 days ago, one deactivated and
    # one more trader. Counted from what was there before them: another test may have left a user committed.
    before = dashboard.users_figures(now=now)
    UserFactory(last_login=now - timedelta(days=2))
    UserFactory(last_login=now - timedelta(days=40))
    UserFactory(is_active=False, last_login=now - timedelta(days=1))
    other = UserFactory()

    # Accounts: trader's paper (connected), other's paper (connected), a Zerodha expired, a Dhan deleted one.
    other_paper = paper_account(other)
    BrokerAccount.objects.create(owner=trader, broker="zerodha", label="Kite", status=AccountStatus.EXPIRED)
    BrokerAccount.objects.create(
        owner=trader, broker="dhan", label="Gone", status=AccountStatus.DISCONNECTED, deleted_at=now
    )

    # Orders: three today at 10:xx (two filled, one rejected), one rejected at 14:05, one rejected yesterday.
    def order(status, at, message=""):
        return Order.objects.create(
            user=trader,
            account=paper,
            symbol=EQUITY,
            side="BUY",
            quantity=1,
            order_type="MARKET",
            product="MIS",
            status=status,
            status_message=message,
            created_at=at,
        )

    order(OrderStatus.FILLED, ist(today, 10, 1))
    order(OrderStatus.FILLED, ist(today, 10, 30))
    order(OrderStatus.REJECTED, ist(today, 10, 45), "Insufficient funds")
    order(OrderStatus.REJECTED, ist(today, 14, 5), "Insufficient funds")
    order(OrderStatus.REJECTED, ist(today - timedelta(days=1), 11), "Outside the trading window")

    # Positions: trader long 10 INFY at 1500 (quoted 1510: +100) and SBIN closed today at -30; other short 5 ITC
    # at 800 (quoted 810: -50). Platform MTM 20; two open positions; one user in loss.
    Position.objects.create(
        user=trader, account=paper, symbol=EQUITY, product="MIS", quantity=10, average_price=1500, trading_day=today
    )
    Position.objects.create(
        user=trader,
        account=paper,
        symbol="NSE:SBIN",
        product="MIS",
        quantity=0,
        day_realized_pnl=-30,
        trading_day=today,
    )
    Position.objects.create(
        user=other,
        account=other_paper,
        symbol="NSE:ITC",
        product="MIS",
        quantity=-5,
        average_price=800,
        trading_day=today,
    )
    quotes_put(
        [
            Quote(symbol=EQUITY, last_price=Decimal("1510"), timestamp=now - timedelta(seconds=3)),
            Quote(symbol="NSE:ITC", last_price=Decimal("810"), timestamp=now - timedelta(seconds=10)),
        ]
    )

    # Risk: two breaches today, one yesterday, a resume today (not a breach); trader halted today.
    RmsEvent.objects.create(user=trader, kind=RmsEvent.Kind.BREACH, reason="MAX_DAILY_LOSS", created_at=now)
    RmsEvent.objects.create(user=other, kind=RmsEvent.Kind.BREACH, reason="OPERATOR_HALT", created_at=now)
    RmsEvent.objects.create(
        user=other, kind=RmsEvent.Kind.BREACH, reason="MAX_DAILY_LOSS", created_at=now - timedelta(days=1)
    )
    RmsEvent.objects.create(user=other, kind=RmsEvent.Kind.RESUME, created_at=now)
    RmsState.objects.create(user=trader, trading_day=today, status=TradingState.HALTED)

    # Revenue: ₹499 and ₹999 captured this month, a failed ₹999 this month, ₹499 captured last month.
    subscription = Subscription.objects.create(user=trader, plan=Plan.objects.get(code="monthly"))
    month_start = ist(today.replace(day=1), 0, 30)

    def payment(number, paise, status, at):
        Payment.objects.create(
            user=trader,
            subscription=subscription,
            razorpay_payment_id=f"pay_test{number}",
            amount_paise=paise,
            status=status,
            paid_at=at,
        )

    payment(1, 49_900, PaymentStatus.CAPTURED, month_start)
    payment(2, 99_900, PaymentStatus.CAPTURED, now)
    payment(3, 99_900, PaymentStatus.FAILED, now)
    payment(4, 49_900, PaymentStatus.CAPTURED, month_start - timedelta(days=1))
    return {"other": other, "users_before": before}


def test_the_figures_equal_the_rows_made_by_hand(platform, now, today):
    board = dashboard.dashboard_get(now=now)

    assert board.day == today
    before = platform["users_before"]
    assert before.active >= 2 and before.active_by_role["admin"] >= 1  # admin_user and trader
    assert board.users == dashboard.UserFigures(
        total=before.total + 4,
        active=before.active + 3,
        seen_recently=before.seen_recently + 1,
        deactivated=before.deactivated + 1,
        active_by_role={**before.active_by_role, "trader": before.active_by_role["trader"] + 3},
    )

    assert board.accounts.total == 3 and board.accounts.connected == 2
    assert board.accounts.count("paper", "connected") == 2
    assert board.accounts.count("zerodha", "expired") == 1
    assert board.accounts.count("dhan", "disconnected") == 0  # deleted accounts are not counted
    assert ("paper", [2, 0, 0, 0, 0], 2) in board.accounts.rows()

    assert board.positions == dashboard.PositionFigures(
        open_positions=2, users_with_open_positions=2, platform_mtm=Decimal("20.00"), users_in_loss=1
    )

    assert (board.orders.placed, board.orders.rejected, board.orders.filled) == (4, 2, 2)
    assert board.orders.placed_by_hour == {10: 3, 14: 1}
    assert board.orders.rejected_by_hour == {10: 1, 14: 1}
    assert board.orders.top_rejections == [("Insufficient funds", 2)]
    assert board.orders.rejection_rate == 50.0
    assert board.orders.hours == list(range(9, 16))

    assert board.risk == dashboard.RiskFigures(
        breaches=2, breaches_by_reason={"MAX_DAILY_LOSS": 1, "OPERATOR_HALT": 1}, users_restricted=1
    )

    assert board.revenue.total == Decimal("1498.00") and board.revenue.payments == 2
    assert board.revenue.month == today.replace(day=1)
    assert sum(board.revenue.by_day.values()) == Decimal("1498.00")
    assert board.revenue.by_day[today] >= Decimal("999.00")

    assert board.feed.newest_symbol == EQUITY and board.feed.lag_seconds == 3.0
    assert board.feed.symbols_quoted == 2 and board.feed.state == "live"


def test_an_empty_platform_has_zero_figures_and_no_feed(db, now):
    board = dashboard.dashboard_get(now=now)
    assert board.positions.platform_mtm == Decimal("0.00") and board.positions.open_positions == 0
    assert board.orders.placed == 0 and board.revenue.total == Decimal(0)
    assert board.feed.lag_seconds is None and board.feed.state == "no quotes"
    assert all(png.startswith(PNG_MAGIC) for png in map(base64.b64decode, dashboard.charts_get(board).values()))


def test_a_stale_feed_is_called_stale(db, now):
    quotes_put([Quote(symbol="NSE:NIFTY 50", last_price=Decimal("24000"), timestamp=now - timedelta(minutes=5))])
    feed = dashboard.feed_figures(now=now)
    assert feed.lag_seconds == 300.0 and feed.state == "stale" and feed.newest_symbol == "NSE:NIFTY 50"


def test_the_charts_are_pngs_of_the_figures(platform, now):
    from matplotlib.image import imread

    board = dashboard.dashboard_get(now=now)
    for name, png in (
        ("orders", dashboard.orders_chart_png(board.orders)),
        ("accounts", dashboard.accounts_chart_png(board.accounts)),
        ("revenue", dashboard.revenue_chart_png(board.revenue)),
    ):
        assert png.startswith(PNG_MAGIC), name
        pixels = imread(io.BytesIO(png))
        assert pixels.shape[:2] == (320, 640), name
        assert len({tuple(pixel) for pixel in pixels.reshape(-1, pixels.shape[-1])[::97]}) > 3, name  # not blank


def test_the_page_shows_the_figures_and_charts_to_an_admin(platform, admin_user):
    console = Client()
    console.force_login(admin_user)
    index = console.get("/admin/").content.decode()
    assert f'href="{DASHBOARD}"' in index

    response = console.get(DASHBOARD)
    assert response.status_code == 200
    html = response.content.decode()

    def figure(name: str) -> str:
        found = re.search(rf'id="figure-{name}">.*?<div class="value">(.*?)</div>', html, re.S)
        assert found, name
        return found.group(1).strip()

    assert figure("users") == str(platform["users_before"].active + 3)
    assert figure("accounts") == "2"
    assert figure("positions") == "2"
    assert figure("mtm") == "₹20.00"
    assert figure("orders") == "4"
    assert figure("rejections") == "2"
    assert figure("breaches") == "2"
    assert figure("revenue") == "₹1,498.00"
    assert figure("feed").endswith(" s")
    images = re.findall(r'<img id="chart-(\w+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert [name for name, _ in images] == ["orders", "accounts", "revenue", "alerts"]
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for _, data in images)
    assert "Insufficient funds" in html and "MAX_DAILY_LOSS" in html
    for link, listed_count in (
        ("/admin/orders/order/?status__exact=REJECTED", "2 orders"),
        ("/admin/rms/rmsevent/?kind__exact=breach", "2 rms events"),
    ):
        assert link in html
        url = markup.unescape(re.search(rf'href="({re.escape(link)}[^"]*)"', html).group(1))
        listed = console.get(url)
        assert listed.status_code == 200, url
        assert listed_count in listed.content.decode(), url


def test_traders_and_strangers_cannot_open_the_dashboard(trader):
    stranger = Client()
    assert stranger.get(DASHBOARD).status_code == 302
    outsider = Client()
    outsider.force_login(trader)
    response = outsider.get(DASHBOARD)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
