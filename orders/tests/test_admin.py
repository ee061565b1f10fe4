"""The operators' order, trade and position pages: read-only, and their two actions go through the services."""

from decimal import Decimal

import pytest
from django.test import Client

from accounts.models import AuditEvent
from orders import services
from orders.models import LegRole, Order, OrderSource, OrderStatus, Position, Trade
from orders.tests.factories import EQUITY

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def console(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def place(user, account, **fields) -> Order:
    spec = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 10,
        "order_type": "MARKET",
        "product": "MIS",
        **fields,
    }
    return services.order_place(user=user, spec=services.OrderSpec(**spec))


@pytest.fixture
def filled(trader, paper, market, eager_tasks) -> Order:
    market(EQUITY, "1500")
    order = place(trader, paper)
    assert order.status == OrderStatus.FILLED
    return order


@pytest.fixture
def resting(trader, paper, market, eager_tasks) -> Order:
    market(EQUITY, "1500")
    order = place(trader, paper, order_type="LIMIT", price=Decimal("1400"))
    assert order.status == OrderStatus.OPEN
    return order


def test_pages_render_for_an_admin(console, filled):
    trade = Trade.objects.get(order=filled)
    position = Position.objects.get(account=filled.account, symbol=EQUITY)
    for url in (
        "/admin/orders/order/",
        f"/admin/orders/order/?q={filled.pk}&status__exact=FILLED&account__broker__exact=paper",
        f"/admin/orders/order/?q={filled.user.email}",
        "/admin/orders/trade/",
        f"/admin/orders/trade/{trade.pk}/change/",
        "/admin/orders/position/",
        f"/admin/orders/position/{position.pk}/change/",
    ):
        response = console.get(url)
        assert response.status_code == 200, url
    changelist = console.get("/admin/orders/order/").content.decode()
    assert filled.pk in changelist and "cancel_orders" in changelist
    assert "square_off_positions" in console.get("/admin/orders/position/").content.decode()
    detail = console.get(f"/admin/orders/order/{filled.pk}/change/")
    assert detail.status_code == 200
    inlines = {inline.formset.prefix: inline.formset for inline in detail.context["inline_admin_formsets"]}
    events = [form.instance.to_status for form in inlines["events"].forms]
    assert events == ["PENDING", "SUBMITTING", "OPEN", "FILLED"]  # the order's history, inline and read-only
    assert [form.instance.pk for form in inlines["trades"].forms] == [trade.pk]
    html = detail.content.decode()
    assert "SUBMITTING -&gt; OPEN (broker)" in html and 'name="_save"' not in html


def test_a_trader_gets_no_access(trader, filled):
    outsider = Client()
    outsider.force_login(trader)
    for url in ("/admin/orders/order/", f"/admin/orders/order/{filled.pk}/change/", "/admin/orders/position/"):
        assert outsider.get(url).status_code == 302, url  # to the admin login
    assert Order.objects.get(pk=filled.pk).status == OrderStatus.FILLED


def test_orders_cannot_be_added_changed_or_deleted(console, filled):
    position = Position.objects.get(account=filled.account, symbol=EQUITY)
    assert console.get("/admin/orders/order/add/").status_code == 403
    assert console.post(f"/admin/orders/order/{filled.pk}/change/", {"status": "CANCELLED"}).status_code == 403
    assert console.post(f"/admin/orders/order/{filled.pk}/delete/", {"post": "yes"}).status_code == 403
    assert console.get("/admin/orders/trade/add/").status_code == 403
    assert console.get("/admin/orders/position/add/").status_code == 403
    assert console.post(f"/admin/orders/position/{position.pk}/delete/", {"post": "yes"}).status_code == 403
    # The bulk delete action is not offered either.
    assert "delete_selected" not in console.get("/admin/orders/order/").content.decode()
    assert Order.objects.get(pk=filled.pk).status == OrderStatus.FILLED


def test_cancel_action_cancels_a_resting_order_and_reports_what_it_could_not(console, admin_user, resting, filled):
    response = console.post(
        "/admin/orders/order/",
        {"action": "cancel_orders", "_selected_action": [resting.pk, filled.pk]},
        follow=True,
    )

    assert response.status_code == 200
    resting.refresh_from_db()
    assert resting.status == OrderStatus.CANCELLED
    assert resting.events.filter(to_status=OrderStatus.CANCELLED).exists()
    assert resting.events.filter(to_status=OrderStatus.PENDING_CANCEL, source=OrderSource.SYSTEM).exists()
    assert Order.objects.get(pk=filled.pk).status == OrderStatus.FILLED
    texts = [str(message) for message in response.context["messages"]]
    assert "1 order(s) cancelled." in texts
    assert any(text.startswith(f"{filled.pk}:") and "cannot be cancelled" in text for text in texts), texts
    audits = AuditEvent.objects.filter(action="admin.order_cancel", actor=admin_user)
    assert {(event.target_id, event.details["outcome"]) for event in audits} == {
        (resting.pk, "done"),
        (filled.pk, "failed"),
    }


def test_square_off_action_closes_a_paper_position(console, admin_user, trader, filled):
    position = Position.objects.get(account=filled.account, symbol=EQUITY)
    assert position.quantity == 10

    response = console.post(
        "/admin/orders/position/", {"action": "square_off_positions", "_selected_action": [position.pk]}, follow=True
    )

    assert response.status_code == 200
    position.refresh_from_db()
    assert position.quantity == 0
    closing = Order.objects.get(role=LegRole.SQUARE_OFF)
    assert (closing.user, closing.side, closing.quantity, closing.status, closing.source) == (
        trader,
        "SELL",
        10,
        OrderStatus.FILLED,
        OrderSource.SYSTEM,
    )
    texts = [str(message) for message in response.context["messages"]]
    assert any("1 closing order(s) placed" in text for text in texts), texts
    event = AuditEvent.objects.get(action="admin.position_square_off", actor=admin_user)
    assert event.target_id == str(position.pk) and event.details["placed"] == [closing.pk]

    # Again: nothing left to close, nothing placed twice.
    response = console.post(
        "/admin/orders/position/", {"action": "square_off_positions", "_selected_action": [position.pk]}, follow=True
    )
    assert Order.objects.filter(role=LegRole.SQUARE_OFF).count() == 1
    assert any("nothing to close" in str(message) for message in response.context["messages"])
