"""Operator ceilings and the next-trading-day rule: limits an operator set (platform-wide or for one user) bound what a
user sets themselves, and a user's loosening made after trading started waits for the next trading day, as a
broker's own kill switch does. Through the API a user calls and the admin pages an operator uses."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from django.test import Client

from accounts.models import AuditEvent
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth, client_for
from orders.models import Position
from orders.tests.factories import EQUITY
from rms import services
from rms.models import UserRiskCeiling
from rms.services import IST, Reason
from rms.tests.conftest import placed, refused

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_tick_evaluation")]

CONFIG = "/api/rms/config"
SBIN = "NSE:SBIN"
# The shared test clock's trading day (a Tuesday) and the trading day after it.
NEXT_TRADING_DAY = datetime(2026, 12, 9, 10, 0, tzinfo=IST)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def account(paper, market):
    market(EQUITY, "1500")
    market(SBIN, "800")
    return paper


@pytest.fixture
def console(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def configure(client, **data):
    return client.post(CONFIG, data, format="json")


def configured(client, **data) -> dict:
    response = configure(client, **data)
    assert response.status_code == 200, response.json()
    return response.json()


def losing_long(client, account, market) -> None:
    """10 INFY bought at 1500, now at 1440: today's MTM about -600."""
    assert placed(client, account, quantity=10)["status"] == "FILLED"
    average = Position.objects.get(account=account, symbol=EQUITY, product="MIS").average_price
    market(EQUITY, str(average - 60))


def ceiling_form(**values) -> dict:
    """A ceiling's admin form as the page posts it: empty boxes as empty strings, the kill switch unticked."""
    data = {name: "" for name in services.CEILING_FIELDS if name != "kill_switch"}
    data.update(allowed_products="[]", allowed_segments="[]", note="")
    data.update({name: value for name, value in values.items() if value is not False})
    return data


# --- the next trading day ----------------------------------------------------------------------------------------


def test_a_loss_limit_cleared_mid_session_waits_for_the_next_trading_day(
    market_open, trader, trader_client, account, market, time_machine
):
    assert configured(trader_client, max_daily_loss=500)["effective"]["max_daily_loss"] == 500  # tightening
    losing_long(trader_client, account, market)
    refused(trader_client, account, Reason.DAILY_LOSS_LIMIT_HIT, symbol=SBIN, quantity=1, product="CNC")

    body = configured(trader_client, max_daily_loss=None)
    assert body["trading_started"] is True
    assert body["effective"]["max_daily_loss"] == 500
    assert body["profile"]["max_daily_loss"] == 500  # what is in force
    assert body["pending"]["changes"] == {"max_daily_loss": None}
    assert body["pending"]["effective_from"] == "2026-12-09"
    assert "2026-12-09" in body["pending"]["message"]
    assert trader_client.get(CONFIG).json()["pending"] == body["pending"]
    # Still refused by the daily-loss rule today, and the RMS sweep still sees the limit.
    refused(trader_client, account, Reason.DAILY_LOSS_LIMIT_HIT, symbol=SBIN, quantity=1, product="CNC")
    assert [breach.reason for breach in services.sweep(act=False).breaches] == [Reason.DAILY_LOSS_LIMIT_HIT]

    time_machine.move_to(NEXT_TRADING_DAY, tick=True)
    trader_client = client_for(trader)  # a token of the new day
    market(SBIN, "800")
    body = trader_client.get(CONFIG).json()
    assert body["pending"] is None and body["profile"]["pending"] is None
    assert body["effective"]["max_daily_loss"] is None and body["profile"]["max_daily_loss"] is None
    assert placed(trader_client, account, symbol=SBIN, quantity=1, product="CNC")["status"] == "FILLED"
    assert AuditEvent.objects.filter(action="rms.config.pending_applied", target_id=trader.pk).count() == 1


def test_the_kill_switch_switched_off_mid_session_waits_for_the_next_trading_day(
    market_open, trader, trader_client, account, market, time_machine
):
    assert configured(trader_client, kill_switch=True)["effective"]["kill_switch"] is True
    refused(trader_client, account, Reason.TRADING_HALTED)

    body = configured(trader_client, kill_switch=False)
    assert body["effective"]["kill_switch"] is True
    assert body["pending"]["changes"] == {"kill_switch": False}
    assert body["pending"]["effective_from"] == "2026-12-09"
    refused(trader_client, account, Reason.TRADING_HALTED)

    time_machine.move_to(NEXT_TRADING_DAY, tick=True)
    trader_client = client_for(trader)  # a token of the new day
    market(EQUITY, "1500")
    assert placed(trader_client, account)["status"] == "FILLED"
    assert trader_client.get(CONFIG).json()["effective"]["kill_switch"] is False


def test_an_accounts_override_loosened_mid_session_waits_too(market_open, trader_client, account):
    configured(trader_client, max_lots_per_order=5)
    body = configured(trader_client, account_id=account.pk, kill_switch=True, max_lots_per_order=2)
    assert body["overrides"][0]["pending"] is None
    refused(trader_client, account, Reason.TRADING_HALTED)

    body = configured(trader_client, account_id=account.pk, kill_switch=False, max_lots_per_order=None)
    (override,) = body["overrides"]
    assert (override["kill_switch"], override["max_lots_per_order"]) == (True, 2)
    assert override["pending"]["changes"] == {"kill_switch": False, "max_lots_per_order": None}
    assert body["pending"] is None  # the profile itself has nothing waiting
    refused(trader_client, account, Reason.TRADING_HALTED)


def test_tightening_applies_at_once_and_drops_a_pending_loosening(market_open, trader_client, account):
    configured(trader_client, max_daily_loss=5000, max_lots_per_order=10)
    waiting = configured(trader_client, max_daily_loss=9000)
    assert waiting["effective"]["max_daily_loss"] == 5000
    assert waiting["pending"]["changes"] == {"max_daily_loss": 9000}

    body = configured(trader_client, max_daily_loss=2000, max_lots_per_order=1)
    assert (body["effective"]["max_daily_loss"], body["effective"]["max_lots_per_order"]) == (2000, 1)
    assert body["pending"] is None
    refused(trader_client, account, Reason.MAX_LOTS_EXCEEDED, quantity=2)


def test_a_wider_window_mid_session_waits_whole(market_open, trader_client, account):
    """The window and the square-off inside it change together: what is in force stays consistent."""
    window = {"trading_window_start": "09:30", "trading_window_end": "15:00", "auto_square_off_time": "14:50"}
    assert configured(trader_client, **window)["pending"] is None  # a window where there was none: tighter
    body = configured(trader_client, trading_window_start="10:00", trading_window_end="15:20")
    assert {name: body["effective"][name] for name in window} == window
    assert body["pending"]["changes"] == {
        "trading_window_start": "10:00",
        "trading_window_end": "15:20",
        "auto_square_off_time": "14:50",
    }
    # Only narrower applies at once.
    body = configured(trader_client, trading_window_start="10:00", trading_window_end="14:55")
    assert (body["effective"]["trading_window_start"], body["effective"]["trading_window_end"]) == ("10:00", "14:55")
    assert body["pending"] is None


def test_before_the_open_loosening_within_the_ceilings_applies_at_once(
    before_the_open, trader, trader_client, admin_user
):
    services.user_ceiling_update(actor=admin_user, user=trader, data={"max_daily_loss": Decimal("3000")})
    configured(trader_client, max_daily_loss=500, kill_switch=True)

    body = configured(trader_client, max_daily_loss=2500, kill_switch=False)
    assert body["trading_started"] is False
    assert body["pending"] is None
    assert (body["effective"]["max_daily_loss"], body["effective"]["kill_switch"]) == (2500, False)
    # Beyond the ceiling is refused even before the open.
    errors = assert_error(configure(trader_client, max_daily_loss=3500), 400, "VALIDATION_ERROR")["errors"]
    assert "3000" in errors["max_daily_loss"][0]


def test_an_order_placed_before_the_open_starts_the_trading_day(
    before_the_open, trader_client, account, settings, market
):
    settings.MARKET_ALWAYS_OPEN = True  # the simulated exchange takes the order before the session
    configured(trader_client, max_lots_per_order=5)
    market(EQUITY, "1500")
    placed(trader_client, account, quantity=1)

    body = configured(trader_client, max_lots_per_order=50)
    assert body["trading_started"] is True
    assert body["effective"]["max_lots_per_order"] == 5
    assert body["pending"]["changes"] == {"max_lots_per_order": 50}


# --- ceilings ----------------------------------------------------------------------------------------------------


def test_an_operators_ceiling_for_the_user_cannot_be_exceeded(
    market_open, trader, trader_client, account, console, admin_user
):
    response = console.post(
        "/admin/rms/userriskceiling/add/",
        {"user": trader.pk, **ceiling_form(max_lots_per_order=5, max_daily_loss="1000", note="Margin call")},
    )
    assert response.status_code == 302, response.content[:2000]
    ceiling = UserRiskCeiling.objects.get(user=trader)
    assert (ceiling.max_lots_per_order, ceiling.updated_by) == (5, admin_user)
    audit = AuditEvent.objects.get(action="rms.ceiling", target_id=trader.pk)
    assert audit.actor == admin_user and audit.details["changes"]["max_lots_per_order"] == {"from": None, "to": 5}

    body = assert_error(configure(trader_client, max_lots_per_order=10, max_daily_loss=5000), 400, "VALIDATION_ERROR")
    assert "at most 5" in body["errors"]["max_lots_per_order"][0]
    assert "at most 1000" in body["errors"]["max_daily_loss"][0]
    refused(trader_client, account, Reason.MAX_LOTS_EXCEEDED, quantity=6)

    body = configured(trader_client, max_lots_per_order=3, max_daily_loss=None)
    assert (body["effective"]["max_lots_per_order"], body["effective"]["max_daily_loss"]) == (3, 1000)
    assert (body["ceilings"]["max_lots_per_order"], body["ceilings"]["notes"]) == (5, ["Margin call"])
    refused(trader_client, account, Reason.MAX_LOTS_EXCEEDED, quantity=4)

    # The operator lowers the ceiling mid-session: it binds at once, and the change is audited.
    page = f"/admin/rms/userriskceiling/{ceiling.pk}/change/"
    assert console.get(page).status_code == 200
    response = console.post(page, ceiling_form(max_lots_per_order=2, max_daily_loss="1000", note="Margin call"))
    assert response.status_code == 302, response.content[:2000]
    assert trader_client.get(CONFIG).json()["effective"]["max_lots_per_order"] == 2
    change = AuditEvent.objects.filter(action="rms.ceiling", target_id=trader.pk).latest("occurred_at")
    assert change.details["changes"] == {"max_lots_per_order": {"from": 5, "to": 2}}
    assert (
        console.get(f"/admin/rms/riskprofile/{services.profile_get_or_create(user=trader).pk}/change/").status_code
        == 200
    )


def test_a_platform_ceiling_applies_to_a_user_without_their_own_setting(
    market_open, trader, trader_client, account, market, admin_user
):
    services.platform_ceiling_update(actor=admin_user, data={"max_daily_loss": Decimal("400")})
    body = trader_client.get(CONFIG).json()
    assert body["profile"]["max_daily_loss"] is None
    assert body["effective"]["max_daily_loss"] == 400 and body["ceilings"]["max_daily_loss"] == 400
    assert AuditEvent.objects.filter(action="rms.ceiling", target_id="platform").exists()

    losing_long(trader_client, account, market)
    refused(trader_client, account, Reason.DAILY_LOSS_LIMIT_HIT, symbol=SBIN, quantity=1, product="CNC")
    assert [breach.user_id for breach in services.sweep(act=False).breaches] == [trader.pk]
    assert_error(configure(trader_client, max_daily_loss=401), 400, "VALIDATION_ERROR")


def test_the_user_cannot_lift_an_operators_kill_switch(before_the_open, trader, trader_client, account, admin_user):
    services.user_ceiling_update(actor=admin_user, user=trader, data={"kill_switch": True, "note": "KYC"})
    body = trader_client.get(CONFIG).json()
    assert body["effective"]["kill_switch"] is True and body["ceilings"]["kill_switch"] is True

    configured(trader_client, kill_switch=True)
    body = assert_error(configure(trader_client, kill_switch=False), 400, "VALIDATION_ERROR")
    assert "operator" in body["errors"]["kill_switch"][0]
    assert configured(trader_client, max_lots_per_order=2)["effective"]["kill_switch"] is True


def test_products_and_segments_narrow_to_what_every_level_allows(market_open, trader, trader_client, admin_user):
    services.platform_ceiling_update(actor=admin_user, data={"allowed_segments": ["NSE", "NFO"]})
    services.user_ceiling_update(actor=admin_user, user=trader, data={"allowed_products": ["MIS", "CNC"]})
    body = configured(trader_client, allowed_segments=["NSE"])
    assert body["effective"]["allowed_segments"] == ["NSE"]
    assert body["effective"]["allowed_products"] == ["MIS", "CNC"]
    errors = assert_error(configure(trader_client, allowed_products=["NRML"]), 400, "VALIDATION_ERROR")["errors"]
    assert "allowed_products" in errors


def test_an_operators_edit_of_a_ceiling_is_refused_when_inconsistent(trader, console):
    response = console.post(
        "/admin/rms/userriskceiling/add/",
        {"user": trader.pk, **ceiling_form(trading_window_start="15:00", trading_window_end="10:00")},
    )
    assert response.status_code == 200
    assert "trading_window_end" in response.context["adminform"].form.errors
    assert not UserRiskCeiling.objects.exists()
    assert console.get("/admin/rms/platformriskceiling/").status_code == 200
    assert console.get("/admin/rms/userriskceiling/").status_code == 200


# --- the route's edges -------------------------------------------------------------------------------------------


def test_invalid_input_is_400_and_nothing_changes(market_open, trader_client):
    before = trader_client.get(CONFIG).json()
    for body in ({"max_daily_loss": -5}, {"kill_switch": "maybe"}, {"max_lots_per_order": 0}):
        assert_error(configure(trader_client, **body), 400, "VALIDATION_ERROR")
    assert trader_client.get(CONFIG).json() == before


def test_unauthenticated_and_another_users_account(paper):
    assert_requires_auth("GET", CONFIG)
    assert_requires_auth("POST", CONFIG, {"max_daily_loss": 100})
    assert_other_user_gets_404("POST", CONFIG, {"account_id": paper.pk, "kill_switch": False})
