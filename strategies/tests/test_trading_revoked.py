"""A user who cannot trade does not trade: deactivation and demotion to the view-only role stop the user's running
strategies (audited, the owner told), and the order pipeline refuses them new exposure whatever the source, while
the RMS's square-off still closes what they hold."""

from __future__ import annotations

from datetime import datetime, time
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import AuditEvent, Notification, Role, User
from algoterm.testing import assert_error
from brokers.models import SimOrder
from orders.models import LegRole, Order, OrderSource, OrderStatus, Position
from orders.tests.factories import EQUITY
from rms.services import IST, sweep
from rms.tests.conftest import set_limits
from strategies import services
from strategies.models import (
    FireAction,
    FireStatus,
    RunStatus,
    Signal,
    SignalStatus,
    Strategy,
    StrategyFire,
    StrategyStatus,
)
from strategies.tests.factories import option_symbol, straddle_body
from strategies.tests.test_webhook import call, tv, webhook_strategy

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def running_webhook(trader_client, paper, publish_quote) -> dict:
    publish_quote(EQUITY, Decimal(1500))
    created = webhook_strategy(trader_client, paper)
    started = trader_client.post(f"/api/strategies/{created['id']}/start", {"mode": "paper"}, format="json")
    assert started.status_code == 201, started.json()
    return created


def deactivate(admin_client, user) -> None:
    response = admin_client.post(f"/api/admin/users/{user.pk}/deactivate", {"reason": "chargeback"}, format="json")
    assert response.status_code == 200, response.json()


def demote(admin_client, user) -> None:
    response = admin_client.patch(f"/api/users/{user.pk}", {"role": Role.USER}, format="json")
    assert response.status_code == 200, response.json()


def assert_stopped_and_told(strategy_id: str, owner, admin, why: str) -> None:
    strategy = Strategy.objects.get(pk=strategy_id)
    assert strategy.status == StrategyStatus.STOPPED and why in strategy.status_message
    assert not strategy.runs.filter(status=RunStatus.RUNNING).exists()
    [audit] = AuditEvent.objects.filter(action="strategy.stop", target_id=strategy_id)
    assert audit.actor_id == admin.pk and why in audit.details["reason"]
    [notice] = Notification.objects.filter(user=owner, kind="strategy")
    assert notice.data["strategy_id"] == strategy_id and strategy.name in notice.title


# --- deactivation and demotion stop the strategies ---------------------------------------------------------------


def test_deactivation_stops_the_running_webhook_strategy_and_its_webhook_trades_nothing(
    running_webhook, trader, admin_user, admin_client
):
    deactivate(admin_client, trader)

    assert_stopped_and_told(running_webhook["id"], trader, admin_user, "deactivated")
    assert_error(call(running_webhook["id"], tv(running_webhook)), 409, "INVALID_STATE")
    [signal] = Signal.objects.filter(strategy_id=running_webhook["id"])
    assert (signal.status, signal.reason) == (SignalStatus.REJECTED, "NOT_RUNNING")
    assert not Order.objects.exists() and not SimOrder.objects.exists()


def test_demotion_to_view_only_stops_the_strategy_and_its_webhook_trades_nothing(
    running_webhook, trader, admin_user, admin_client
):
    demote(admin_client, trader)

    assert_stopped_and_told(running_webhook["id"], trader, admin_user, "role changed")
    assert_error(call(running_webhook["id"], tv(running_webhook)), 409, "INVALID_STATE")
    assert not Order.objects.exists() and not SimOrder.objects.exists()


def test_demotion_in_the_operators_admin_form_stops_the_strategy(running_webhook, trader, admin_user):
    from django.test import Client

    browser = Client()
    browser.force_login(admin_user)
    form = {"email": trader.email, "name": trader.name, "phone": trader.phone, "role": Role.USER}
    response = browser.post(f"/admin/accounts/user/{trader.pk}/change/", form)

    assert response.status_code == 302, response.content[:2000]
    assert User.objects.get(pk=trader.pk).role == Role.USER
    assert_stopped_and_told(running_webhook["id"], trader, admin_user, "role changed")


def test_a_promotion_or_a_profile_edit_stops_nothing(running_webhook, trader, admin_client):
    assert admin_client.patch(f"/api/users/{trader.pk}", {"role": Role.ADMIN}, format="json").status_code == 200

    assert Strategy.objects.get(pk=running_webhook["id"]).status == StrategyStatus.RUNNING
    assert call(running_webhook["id"], tv(running_webhook)).status_code == 202


# --- the gate refuses them whatever the path ---------------------------------------------------------------------
# The row changed, the strategies not (yet): a webhook or a beat entry already on its way acts for the user as stored.


def revoke_in_the_row(user, how: str) -> None:
    if how == "deactivated":
        User.objects.filter(pk=user.pk).update(is_active=False, deactivated_at=timezone.now())
    else:
        User.objects.filter(pk=user.pk).update(role=Role.USER)


@pytest.mark.parametrize(("how", "reason"), [("deactivated", "deactivated"), ("view_only", "view-only")])
def test_the_gate_refuses_a_webhook_of_an_owner_who_cannot_trade(running_webhook, trader, how, reason):
    revoke_in_the_row(trader, how)

    body = assert_error(call(running_webhook["id"], tv(running_webhook)), 422, "ORDER_REJECTED")

    assert body["reason"] == "RISK_REJECTED" and reason in body["detail"]
    [signal] = Signal.objects.filter(strategy_id=running_webhook["id"])
    assert signal.status == SignalStatus.REJECTED
    assert not Order.objects.exists() and not SimOrder.objects.exists()


def test_the_gate_refuses_a_scheduled_fire_of_a_deactivated_owner(trader, trader_client, paper, nifty, day):
    strategy = trader_client.post("/api/strategies", straddle_body(paper), format="json").json()
    run = trader_client.post(f"/api/strategies/{strategy['id']}/start", {"mode": "paper"}, format="json").json()
    revoke_in_the_row(trader, "deactivated")

    at_entry = datetime.combine(day, time(9, 20), tzinfo=IST)
    fires = services.strategy_fire(strategy_id=strategy["id"], run_id=run["run"]["id"], action="entry", now=at_entry)

    assert [fire.status for fire in fires] == [FireStatus.FAILED, FireStatus.FAILED]
    assert all("RISK_REJECTED" in fire.detail and "deactivated" in fire.detail for fire in fires)
    assert not Order.objects.exists() and not SimOrder.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_gate_refuses_a_reentry_of_a_view_only_owner(
    trader, trader_client, paper, nifty, publish_quote, eager_tasks, settings
):
    settings.MARKET_ALWAYS_OPEN = True
    body = straddle_body(paper, entry_time="00:01", exit_time="23:59", reentries=1)
    body["legs"] = body["legs"][:1]
    strategy = trader_client.post("/api/strategies", body, format="json").json()
    run = trader_client.post(f"/api/strategies/{strategy['id']}/start", {"mode": "paper"}, format="json").json()
    services.strategy_fire(strategy_id=strategy["id"], run_id=run["run"]["id"], action="entry", now=timezone.now())
    ce = option_symbol(nifty["weekly"][0], Decimal(24500), "CE")
    publish_quote(ce, Decimal(113))  # the short's stop-loss fills: the leg would be entered again
    assert Position.objects.get(account=paper, symbol=ce).quantity == 0
    revoke_in_the_row(trader, "view_only")

    services.strategies_monitor(now=timezone.now())

    [reentry] = StrategyFire.objects.filter(strategy_id=strategy["id"], action=FireAction.REENTRY)
    assert reentry.status == FireStatus.FAILED and "view-only" in reentry.detail
    assert Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.ENTRY).count() == 1
    assert Position.objects.get(account=paper, symbol=ce).quantity == 0


# --- the RMS still closes what they hold -------------------------------------------------------------------------


def test_the_rms_square_off_still_goes_out_for_a_deactivated_user(
    trader, trader_client, admin_client, paper, publish_quote, settings
):
    settings.RMS_TICK_EVALUATION = False
    publish_quote(EQUITY, Decimal(1500))
    set_limits(trader, max_daily_loss=500)
    bought = trader_client.post(
        "/api/orders",
        {
            "account_id": paper.pk,
            "symbol": EQUITY,
            "side": "BUY",
            "quantity": 10,
            "order_type": "MARKET",
            "product": "MIS",
        },
        format="json",
    )
    assert bought.status_code == 201, bought.json()
    deactivate(admin_client, trader)
    publish_quote(EQUITY, Decimal(1400))  # 1,000 down: past the loss limit

    sweep()

    [square_off] = Order.objects.filter(role=LegRole.SQUARE_OFF)
    assert (square_off.source, square_off.side, square_off.quantity, square_off.status) == (
        OrderSource.RMS,
        "SELL",
        10,
        OrderStatus.FILLED,
    )
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 0
