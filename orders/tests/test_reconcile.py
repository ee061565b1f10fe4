"""Reconciliation through the paper broker: a process that died between saving and submitting, answers that were
lost (UNKNOWN), filled entries whose exits were never placed, and the reconcile task run by a real Celery worker."""

import os
import time
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone

from algoterm.celery import app as celery_app
from algoterm.health import HEARTBEAT_CACHE_KEY
from algoterm.tasks import heartbeat
from algoterm.testing import celery_worker_process
from brokers.gateway import adapter_for
from brokers.models import SimOrder
from brokers.protocol import BrokerUnavailable, OrderRequest, OrderType, Product, Side, Validity
from orders import services
from orders.models import LegRole, Order, OrderEvent, OrderSource, OrderStatus, Position, Trade
from orders.services.placement import _order_create, _order_mark_unknown
from orders.services.reconcile import _order_resubmit_protective
from orders.tasks import reconcile_account
from orders.tests.factories import EQUITY

pytestmark = pytest.mark.django_db


def spec(account, **fields) -> services.OrderSpec:
    values = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": Side.BUY,
        "quantity": 10,
        "order_type": OrderType.MARKET,
        "product": Product.MIS,
        **fields,
    }
    return services.OrderSpec(**values)


def saved_not_submitted(user, account, *, role=LegRole.ENTRY, parent=None, source=OrderSource.API, **fields) -> Order:
    """What a process leaves behind when it dies after committing the order and before calling the broker."""
    validated = services.order_validate(user=user, spec=spec(account, **fields))
    order = _order_create(user=user, validated=validated, source=source, role=role, parent=parent, strategy_ref="")
    assert order.status == OrderStatus.SUBMITTING and not order.broker_order_id
    return order


def send_ourselves(order: Order) -> str:
    """The broker received `order` (carrying our tag) but we never heard back: a crash right after sending."""
    return adapter_for(order.account).place_order(
        OrderRequest(
            symbol=order.symbol,
            side=Side(order.side),
            quantity=order.quantity,
            order_type=OrderType(order.order_type),
            product=Product(order.product),
            price=order.price,
            trigger_price=order.trigger_price,
            validity=Validity(order.validity),
            tag=order.broker_tag,
        )
    )


def at_broker(order: Order) -> list[SimOrder]:
    return list(SimOrder.objects.filter(tag=order.broker_tag))


def after_grace() -> datetime:
    return timezone.now() + timedelta(seconds=settings.ORDER_RECONCILE_GRACE_SECONDS + 1)


def history(order: Order) -> list[tuple[str, str, str]]:
    return list(OrderEvent.objects.filter(order=order).values_list("from_status", "to_status", "source"))


@pytest.fixture
def quoted(publish_quote):
    publish_quote(EQUITY, "1500")


# --- died between saving and submitting --------------------------------------------------------------------------


def test_an_entry_the_broker_never_got_is_rejected_after_the_grace_period_and_never_sent(trader, paper, quoted):
    order = saved_not_submitted(trader, paper)

    counts = services.orders_reconcile(account_id=paper.pk)
    order.refresh_from_db()
    assert order.status == OrderStatus.SUBMITTING, "still within the grace period: the call may be in flight"
    assert counts["rejected"] == 0

    counts = services.orders_reconcile(account_id=paper.pk, now=after_grace())

    order.refresh_from_db()
    assert counts["rejected"] == 1
    assert order.status == OrderStatus.REJECTED
    assert order.status_message == "The broker has no record of this order; it was not placed."
    assert history(order)[-1] == (OrderStatus.SUBMITTING, OrderStatus.REJECTED, OrderSource.RECONCILE)
    assert at_broker(order) == []
    assert not Position.objects.filter(account=paper).exists()
    assert trader.notifications.filter(kind="order_rejected", data__order_id=order.pk).count() == 1

    services.orders_reconcile(account_id=paper.pk, now=after_grace())
    assert at_broker(order) == [] and len(history(order)) == 3


def test_a_stalled_process_that_wakes_after_reconciliation_rejected_its_order_does_not_send_it(trader, paper, quoted):
    order = saved_not_submitted(trader, paper)
    services.orders_reconcile(account_id=paper.pk, now=after_grace())

    late = services.order_submit(order=order)

    assert late.status == OrderStatus.REJECTED and not late.broker_order_id
    assert at_broker(order) == []


def test_an_entry_the_broker_did_receive_is_found_by_tag_and_filled(trader, paper, quoted):
    order = saved_not_submitted(trader, paper)
    broker_order_id = send_ourselves(order)

    counts = services.orders_reconcile(account_id=paper.pk)

    order.refresh_from_db()
    assert counts["updated"] == 1
    assert order.broker_order_id == broker_order_id
    assert (order.status, order.filled_quantity) == (OrderStatus.FILLED, 10)
    assert history(order)[-1] == (OrderStatus.SUBMITTING, OrderStatus.FILLED, OrderSource.RECONCILE)
    (sim,) = at_broker(order)
    assert sim.order_id == broker_order_id
    trade = Trade.objects.get(order=order)
    assert (trade.quantity, trade.price) == (10, sim.average_price)
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 10

    services.orders_reconcile(account_id=paper.pk, now=after_grace())
    assert len(at_broker(order)) == 1 and Trade.objects.filter(order=order).count() == 1


def test_a_resting_entry_the_broker_received_is_tracked_then_fills(trader, paper, quoted, publish_quote):
    order = saved_not_submitted(trader, paper, order_type=OrderType.LIMIT, price=Decimal("1490"))
    send_ourselves(order)

    services.orders_reconcile(account_id=paper.pk, now=after_grace())  # past the grace: found, not rejected
    order.refresh_from_db()
    assert order.status == OrderStatus.OPEN and order.broker_order_id

    publish_quote(EQUITY, "1485")
    services.orders_reconcile(account_id=paper.pk)
    order.refresh_from_db()
    assert (order.status, order.filled_quantity, order.average_price) == (OrderStatus.FILLED, 10, Decimal("1485.05"))
    assert len(at_broker(order)) == 1


@pytest.fixture
def long_position(trader, paper, quoted):
    entry = services.order_place(user=trader, spec=spec(paper))
    assert entry.status == OrderStatus.FILLED
    return entry


@pytest.mark.parametrize(
    ("role", "fields"),
    [
        (LegRole.STOP_LOSS, {"order_type": OrderType.SL_M, "trigger_price": Decimal("1450")}),
        (LegRole.TARGET, {"order_type": OrderType.LIMIT, "price": Decimal("1550")}),
    ],
)
def test_a_protective_exit_that_never_reached_the_broker_is_submitted_once(trader, paper, long_position, role, fields):
    leg = saved_not_submitted(
        trader, paper, role=role, parent=long_position, source=OrderSource.SYSTEM, side=Side.SELL, **fields
    )

    services.orders_reconcile(account_id=paper.pk)
    assert at_broker(leg) == [], "within the grace period the first call may still be in flight"

    counts = services.orders_reconcile(account_id=paper.pk, now=after_grace())

    leg.refresh_from_db()
    assert counts["submitted"] == 1
    assert leg.status == OrderStatus.OPEN
    (sim,) = at_broker(leg)
    assert leg.broker_order_id == sim.order_id
    assert OrderEvent.objects.filter(order=leg, source=OrderSource.RECONCILE).exists()

    for _ in range(2):
        counts = services.orders_reconcile(account_id=paper.pk, now=after_grace() + timedelta(minutes=5))
        assert counts["submitted"] == 0
    assert len(at_broker(leg)) == 1
    leg.refresh_from_db()
    assert leg.status == OrderStatus.OPEN


def test_two_reconciliations_that_both_saw_a_stuck_exit_send_it_once(trader, paper, long_position):
    leg = saved_not_submitted(
        trader,
        paper,
        role=LegRole.STOP_LOSS,
        parent=long_position,
        source=OrderSource.SYSTEM,
        side=Side.SELL,
        order_type=OrderType.SL_M,
        trigger_price=Decimal("1450"),
    )
    seen_by_second = Order.objects.get(pk=leg.pk)  # the second reconciliation read it while it was stale...
    services.orders_reconcile(account_id=paper.pk, now=after_grace())  # ...and the first one sent it
    assert len(at_broker(leg)) == 1

    _order_resubmit_protective(order=seen_by_second)

    assert len(at_broker(leg)) == 1


def test_a_stuck_exit_claimed_by_another_reconciliation_is_left_to_it(trader, paper, long_position):
    leg = saved_not_submitted(
        trader,
        paper,
        role=LegRole.TARGET,
        parent=long_position,
        source=OrderSource.SYSTEM,
        side=Side.SELL,
        order_type=OrderType.LIMIT,
        price=Decimal("1550"),
    )
    seen = Order.objects.get(pk=leg.pk)
    # Another reconciliation has just claimed it (its claim touches the row) and is calling the broker now.
    Order.objects.filter(pk=leg.pk).update(updated_at=timezone.now())

    _order_resubmit_protective(order=seen)

    assert at_broker(leg) == []
    leg.refresh_from_db()
    assert leg.status == OrderStatus.SUBMITTING


# --- UNKNOWN -----------------------------------------------------------------------------------------------------


def test_an_unknown_order_the_broker_has_is_settled_from_its_book(trader, paper, quoted):
    order = saved_not_submitted(trader, paper)
    broker_order_id = send_ourselves(order)
    _order_mark_unknown(order_id=order.pk, error=BrokerUnavailable("timed out"))
    order.refresh_from_db()
    assert order.status == OrderStatus.UNKNOWN

    services.orders_reconcile(account_id=paper.pk)

    order.refresh_from_db()
    assert (order.status, order.filled_quantity, order.broker_order_id) == (
        OrderStatus.FILLED,
        10,
        broker_order_id,
    )
    assert [h[1] for h in history(order)] == ["PENDING", "SUBMITTING", "UNKNOWN", "FILLED"]
    assert history(order)[-1][2] == OrderSource.RECONCILE
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 10
    assert len(at_broker(order)) == 1


def test_an_unknown_order_the_broker_never_got_is_rejected_after_the_grace_period_not_resent(trader, paper, quoted):
    order = saved_not_submitted(trader, paper)
    _order_mark_unknown(order_id=order.pk, error=BrokerUnavailable("timed out"))

    services.orders_reconcile(account_id=paper.pk)
    order.refresh_from_db()
    assert order.status == OrderStatus.UNKNOWN

    services.orders_reconcile(account_id=paper.pk, now=after_grace())
    order.refresh_from_db()
    assert order.status == OrderStatus.REJECTED
    assert at_broker(order) == []


# --- a filled entry whose exits were never placed ----------------------------------------------------------------


def test_exits_lost_with_a_dead_worker_are_placed_by_reconciliation_exactly_once(
    trader, paper, quoted, publish_quote, django_capture_on_commit_callbacks
):
    entry = services.order_place(
        user=trader,
        spec=spec(
            paper, order_type=OrderType.LIMIT, price=Decimal("1490"), target=Decimal("1550"), stop_loss=Decimal("1450")
        ),
    )
    assert entry.status == OrderStatus.OPEN
    publish_quote(EQUITY, "1488")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        entry = services.order_refresh(order=entry)  # the fill; the place_exits it schedules dies with the worker
    assert entry.status == OrderStatus.FILLED and callbacks
    assert not entry.exits.exists() and entry.exits_placed_at is None

    assert services.accounts_needing_reconcile() == [paper.pk]

    first = services.orders_reconcile(account_id=paper.pk)
    second = services.orders_reconcile(account_id=paper.pk, now=after_grace())

    assert (first["exits"], second["exits"]) == (1, 0)
    entry.refresh_from_db()
    assert entry.exits_placed_at is not None
    exits = {leg.role: leg for leg in entry.exits.all()}
    assert set(exits) == {LegRole.TARGET, LegRole.STOP_LOSS}
    target, stop = exits[LegRole.TARGET], exits[LegRole.STOP_LOSS]
    assert (target.side, target.order_type, target.price, target.quantity) == ("SELL", "LIMIT", Decimal("1550"), 10)
    assert (stop.side, stop.order_type, stop.trigger_price, stop.quantity) == ("SELL", "SL-M", Decimal("1450"), 10)
    assert target.status == stop.status == OrderStatus.OPEN
    assert len(at_broker(target)) == len(at_broker(stop)) == 1
    assert SimOrder.objects.filter(account__client_id=paper.pk).count() == 3


def test_exits_owed_while_the_session_is_expired_wait_for_the_next_login(
    trader, paper, quoted, publish_quote, django_capture_on_commit_callbacks
):
    from brokers.services import broker_account_refresh, broker_session_mark_expired

    entry = services.order_place(
        user=trader,
        spec=spec(
            paper, order_type=OrderType.LIMIT, price=Decimal("1490"), target=Decimal("1550"), stop_loss=Decimal("1450")
        ),
    )
    publish_quote(EQUITY, "1488")
    with django_capture_on_commit_callbacks(execute=False):
        entry = services.order_refresh(order=entry)  # filled; its place_exits task is lost
    assert entry.status == OrderStatus.FILLED
    broker_session_mark_expired(account=paper, reason="daily expiry")

    services.orders_reconcile(account_id=paper.pk)

    entry.refresh_from_db()
    assert not entry.exits.exists(), "nothing can reach the broker without a session; the exits stay owed"
    assert entry.exits_placed_at is None
    assert services.accounts_needing_reconcile() == [paper.pk]

    broker_account_refresh(user=trader, account=paper)
    services.orders_reconcile(account_id=paper.pk)
    services.orders_reconcile(account_id=paper.pk)

    exits = list(entry.exits.all())
    assert sorted(leg.role for leg in exits) == [LegRole.STOP_LOSS, LegRole.TARGET]
    assert all(leg.status == OrderStatus.OPEN and len(at_broker(leg)) == 1 for leg in exits)


# --- a real worker -------------------------------------------------------------------------------------------------


def _test_database_url() -> str:
    """The URL of the test database this run created, for a worker subprocess to share."""
    parts = urlsplit(os.environ["DATABASE_URL"])
    return parts._replace(path=f"/{connection.settings_dict['NAME']}").geturl()


def _wait_for(condition, *, timeout: float = 20, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_settles_an_unknown_order_and_a_second_delivery_changes_nothing(
    wall_clock, trader, paper, publish_quote, monkeypatch
):
    monkeypatch.setenv("DATABASE_URL", _test_database_url())
    monkeypatch.setattr(settings, "ORDER_RECONCILE_DELAY_SECONDS", 0.5)
    celery_app.control.purge()  # this run's queue only (its keys carry the run's prefix)
    publish_quote(EQUITY, "1500")
    order = saved_not_submitted(trader, paper)
    broker_order_id = send_ourselves(order)

    with celery_worker_process():
        # The lost answer schedules reconcile_account (through Redis, after ORDER_RECONCILE_DELAY_SECONDS).
        _order_mark_unknown(order_id=order.pk, error=BrokerUnavailable("timed out"))
        _wait_for(
            lambda: Order.objects.get(pk=order.pk).status != OrderStatus.UNKNOWN,
            what="the worker never reconciled the UNKNOWN order",
        )
        order.refresh_from_db()
        assert (order.status, order.filled_quantity, order.broker_order_id) == (
            OrderStatus.FILLED,
            10,
            broker_order_id,
        )
        events, trades = history(order), list(Trade.objects.values_list("pk", "quantity"))
        position = Position.objects.get(account=paper, symbol=EQUITY)

        cache.delete(HEARTBEAT_CACHE_KEY)
        reconcile_account.delay(paper.pk)  # delivered again
        heartbeat.delay()  # one solo worker runs its queue in order: once this ran, so did the reconcile
        _wait_for(lambda: cache.get(HEARTBEAT_CACHE_KEY) is not None, what="the worker never ran the sentinel")

    order.refresh_from_db()
    assert order.status == OrderStatus.FILLED and history(order) == events
    assert list(Trade.objects.values_list("pk", "quantity")) == trades
    assert len(at_broker(order)) == 1
    again = Position.objects.get(pk=position.pk)
    assert (again.quantity, again.average_price, again.updated_at) == (
        position.quantity,
        position.average_price,
        position.updated_at,
    )
