"""Fixtures of the risk tests: the order pipeline's (instruments, a connected paper account, a market to publish
quotes on, eager tasks) and helpers that set limits and trade through the API, the way a user does."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from orders.tests.conftest import eager_tasks, instruments, market, paper, publish_quote  # noqa: F401
from orders.tests.factories import EQUITY

MONEY_LIMITS = {
    "max_daily_loss",
    "daily_profit_target",
    "profit_lock_at",
    "profit_lock_amount",
    "trailing_profit_every",
    "trailing_profit_step",
    "max_order_value",
}


@pytest.fixture
def no_tick_evaluation(settings):
    """Quotes move prices without evaluating their holders at once: the test decides when the RMS looks."""
    settings.RMS_TICK_EVALUATION = False


@pytest.fixture
def before_the_open(time_machine) -> datetime:
    """The shared test clock's trading day at 08:00 IST, before trading starts: a user's loosening applies at once
    (once trading has started it waits for the next trading day). Ask for it before any client fixture, so their
    tokens are minted on this clock."""
    from conftest import MARKET_OPEN_AT

    moment = MARKET_OPEN_AT.replace(hour=8, minute=0)
    time_machine.move_to(moment, tick=True)
    return moment


def set_limits(user, account=None, **data):
    """Set the user's limits (or one account's overrides) through the service, validated as a user's are."""
    from rms.services import profile_update

    data = {
        name: Decimal(str(value)) if name in MONEY_LIMITS and value is not None else value
        for name, value in data.items()
    }
    return profile_update(actor=user, user=user, data=data, account=account)


def order_body(account, **fields) -> dict:
    """A MARKET buy of 10 INFY (MIS) unless told otherwise."""
    body = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 10,
        "order_type": "MARKET",
        "product": "MIS",
    }
    body.update(fields)
    return body


def place(client, account, **fields):
    return client.post("/api/orders", order_body(account, **fields), format="json")


def placed(client, account, **fields) -> dict:
    response = place(client, account, **fields)
    assert response.status_code == 201, response.json()
    return response.json()


def refused(client, account, reason: str, **fields) -> dict:
    """The order is answered 422 RISK_REJECTED naming `reason`, and nothing reached the broker."""
    from algoterm.testing import assert_error
    from brokers.models import SimOrder

    before = SimOrder.objects.count()
    body = assert_error(place(client, account, **fields), 422, "RISK_REJECTED")
    assert body["reason"] == reason, body
    assert SimOrder.objects.count() == before
    return body
