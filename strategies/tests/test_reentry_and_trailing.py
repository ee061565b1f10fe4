"""A leg's stop-loss, its re-entry in the same contract (up to the count), and the trailing stop handed to the
order pipeline: through the paper exchange, with the exits' follow-up tasks running as a worker would."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
from django.utils import timezone

from orders.models import LegRole, Order, OrderStatus, Position
from strategies import services
from strategies.models import FireAction, StrategyFire
from strategies.tests.factories import option_symbol, straddle_body

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _always_open(settings):
    # The monitor runs on the real clock; the simulated market lets any day and hour trade.
    settings.MARKET_ALWAYS_OPEN = True


def started(trader_client, paper, **fields) -> tuple[str, str]:
    body = straddle_body(paper, entry_time="00:01", exit_time="23:59", **fields)
    body["legs"] = body["legs"][:1]  # the CE alone
    strategy = trader_client.post("/api/strategies", body, format="json").json()
    run = trader_client.post(f"/api/strategies/{strategy['id']}/start", {"mode": "paper"}, format="json").json()
    return strategy["id"], run["run"]["id"]


def test_a_stopped_out_leg_is_entered_again_in_the_same_contract_up_to_the_count(
    trader_client, paper, nifty, publish_quote, eager_tasks
):
    strategy_id, run_id = started(trader_client, paper, reentries=1)
    now = timezone.now()
    services.strategy_fire(strategy_id=strategy_id, run_id=run_id, action="entry", now=now)
    ce = option_symbol(nifty["weekly"][0], Decimal(24500), "CE")
    stop = Order.objects.get(strategy_ref=strategy_id, role=LegRole.STOP_LOSS)
    assert stop.trigger_price == Decimal("112.50")  # 25 % above the 90 it was sold at

    publish_quote(ce, Decimal(113))  # the short's stop triggers and fills
    assert Order.objects.get(pk=stop.pk).status == OrderStatus.FILLED
    assert Position.objects.get(account=paper, symbol=ce).quantity == 0

    # The nearest strike is now another one; a re-entry still trades the contract the leg was stopped out of.
    publish_quote("NSE:NIFTY 50", Decimal(24700))
    assert services.strategies_monitor(now=timezone.now())["reentries"] == 1
    reentry = Order.objects.filter(strategy_ref=strategy_id, role=LegRole.ENTRY).order_by("-created_at").first()
    assert (reentry.symbol, reentry.side, reentry.quantity) == (ce, "SELL", 75)
    assert Position.objects.get(account=paper, symbol=ce).quantity == -75
    assert StrategyFire.objects.get(strategy_id=strategy_id, action=FireAction.REENTRY).attempt == 1

    # Stopped out again: the one re-entry is used up, so nothing more is placed, however often the monitor runs.
    second_stop = Order.objects.get(parent=reentry, role=LegRole.STOP_LOSS)
    publish_quote(ce, Decimal(200))
    assert Order.objects.get(pk=second_stop.pk).status == OrderStatus.FILLED
    assert services.strategies_monitor(now=timezone.now())["reentries"] == 0
    assert services.strategies_monitor(now=timezone.now())["reentries"] == 0
    assert Order.objects.filter(strategy_ref=strategy_id, role=LegRole.ENTRY).count() == 2


def test_the_strategys_trailing_stop_reaches_each_legs_stop_loss(trader_client, paper, nifty, eager_tasks):
    strategy_id, run_id = started(trader_client, paper, trailing_stop="5")
    services.strategy_fire(strategy_id=strategy_id, run_id=run_id, action="entry", now=timezone.now())
    entry = Order.objects.get(strategy_ref=strategy_id, role=LegRole.ENTRY)
    assert entry.trailing_stop == Decimal("5.00")
    stop = Order.objects.get(parent=entry, role=LegRole.STOP_LOSS)
    assert stop.status == OrderStatus.OPEN


def test_the_monitor_ignores_a_strategy_past_its_exit_time(trader_client, paper, nifty, publish_quote, eager_tasks):
    from zoneinfo import ZoneInfo

    strategy_id, run_id = started(trader_client, paper, reentries=1)
    services.strategy_fire(strategy_id=strategy_id, run_id=run_id, action="entry", now=timezone.now())
    publish_quote(option_symbol(nifty["weekly"][0], Decimal(24500), "CE"), Decimal(113))
    today = timezone.localdate(timezone=ZoneInfo("Asia/Kolkata"))
    after_exit = datetime(today.year, today.month, today.day, 23, 59, 30, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert services.strategies_monitor(now=after_exit)["reentries"] == 0
