"""Zerodha through the real kiteconnect SDK, over HTTP, against the Kite simulator."""

import time
import urllib.parse
import urllib.request
from decimal import Decimal

import pytest

from algoterm.sandbox.simulators.kite import KITE_STATUS, KiteSimulator
from brokers.adapters import zerodha
from brokers.adapters.zerodha import ZerodhaAdapter
from brokers.protocol import (
    AdapterConfig,
    BrokerOrderStatus,
    BrokerRateLimited,
    BrokerSession,
    BrokerUnavailable,
    InvalidInput,
    ModifyRequest,
    OrderRejected,
    OrderRequest,
    OrderType,
    Product,
    SessionExpired,
    Side,
    Validity,
)
from brokers.tests.conftest import serving

API_KEY, API_SECRET = "test-key", "test-secret"
CALLBACK = "http://127.0.0.1:1/api/brokers/callback/zerodha"
SYMBOL = "NSE:INFY"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def submit_login_form(login_url: str, callback: str = CALLBACK) -> dict[str, str]:
    """What a user does in the browser: open the login page, submit it, land on the redirect."""
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(login_url).query))
    with urllib.request.urlopen(login_url) as page:
        assert b"Login to Kite" in page.read()
    form = urllib.parse.urlencode(
        {
            "api_key": query["api_key"],
            "user_id": "zx9876",
            "password": "x",
            "redirect_params": query.get("redirect_params", ""),
        }
    ).encode()
    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(login_url.split("?")[0], data=form)
    except urllib.error.HTTPError as redirect:
        assert redirect.code == 302
        location = redirect.headers["Location"]
    assert location.startswith(callback), location
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


@pytest.fixture
def kite():
    app = KiteSimulator()
    app.register_app(API_KEY, API_SECRET, CALLBACK)
    with serving(app) as server:
        yield app, server


def adapter_for(server, *, token: str | None = None, secret: str = API_SECRET, timeout: float = 5) -> ZerodhaAdapter:
    return ZerodhaAdapter(
        credentials={"api_key": API_KEY, "api_secret": secret},
        session=BrokerSession(access_token=token) if token else None,
        config=AdapterConfig(base_url=server.url, timeout=timeout, extra={"login_url": f"{server.url}/connect/login"}),
        account_ref="acc_test",
    )


@pytest.fixture
def connected(kite, publish_quote):
    app, server = kite
    publish_quote(SYMBOL, "1500.00")
    return app, server, adapter_for(server, token=app.issue_session(API_KEY, "ZX9876"))


def market(side=Side.BUY, quantity=5, **fields) -> OrderRequest:
    return OrderRequest(
        symbol=SYMBOL, side=side, quantity=quantity, order_type=OrderType.MARKET, product=Product.MIS, **fields
    )


# --- mapping tables ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "inverse"),
    [
        (zerodha.SIDE_TO_KITE, zerodha.SIDE_FROM_KITE),
        (zerodha.PRODUCT_TO_KITE, zerodha.PRODUCT_FROM_KITE),
        (zerodha.ORDER_TYPE_TO_KITE, zerodha.ORDER_TYPE_FROM_KITE),
        (zerodha.VALIDITY_TO_KITE, zerodha.VALIDITY_FROM_KITE),
    ],
)
def test_every_value_maps_to_kite_and_back(table, inverse):
    enum = type(next(iter(table)))
    assert set(table) == set(enum)
    for ours, theirs in table.items():
        assert inverse[theirs] == ours


@pytest.mark.parametrize(
    ("kite_status", "filled", "ours"),
    [
        ("OPEN", 0, BrokerOrderStatus.OPEN),
        ("OPEN", 3, BrokerOrderStatus.PARTIALLY_FILLED),
        ("COMPLETE", 5, BrokerOrderStatus.FILLED),
        ("CANCELLED", 0, BrokerOrderStatus.CANCELLED),
        ("REJECTED", 0, BrokerOrderStatus.REJECTED),
        ("TRIGGER PENDING", 0, BrokerOrderStatus.TRIGGER_PENDING),
        ("PUT ORDER REQ RECEIVED", 0, BrokerOrderStatus.PENDING),
        ("VALIDATION PENDING", 0, BrokerOrderStatus.PENDING),
        ("MODIFY PENDING", 0, BrokerOrderStatus.OPEN),
        ("SOMETHING NEW", 0, BrokerOrderStatus.PENDING),
    ],
)
def test_kite_statuses_map_to_ours(kite_status, filled, ours):
    assert zerodha.status_from_kite(kite_status, filled) == ours


def test_simulator_statuses_are_all_understood():
    for ours, theirs in KITE_STATUS.items():
        mapped = zerodha.status_from_kite(theirs, 1 if ours == BrokerOrderStatus.PARTIALLY_FILLED else 0)
        assert mapped == ours or (ours == BrokerOrderStatus.EXPIRED and mapped == BrokerOrderStatus.CANCELLED)


# --- through the SDK ---------------------------------------------------------------------------------------------

pytestmark = pytest.mark.django_db(transaction=True)


def test_login_through_the_login_page_and_checksum(kite):
    app, server = kite
    adapter = adapter_for(server)
    login_url = adapter.login_url(state="signed-state", redirect_uri=CALLBACK)

    params = submit_login_form(login_url)
    assert params["state"] == "signed-state" and params["status"] == "success"
    session = adapter.complete_login(params=params, redirect_uri=CALLBACK)

    assert session.broker_user_id == "ZX9876" and session.access_token
    assert adapter_for(server, token=session.access_token).funds().opening_balance > 0
    with pytest.raises(SessionExpired):  # a request token works once
        adapter.complete_login(params=params, redirect_uri=CALLBACK)


def test_a_wrong_api_secret_fails_the_checksum(kite):
    app, server = kite
    params = submit_login_form(adapter_for(server).login_url(state="s", redirect_uri=CALLBACK))
    with pytest.raises(SessionExpired, match="checksum"):
        adapter_for(server, secret="wrong").complete_login(params=params, redirect_uri=CALLBACK)


def test_place_market_order_fills_and_carries_tag_and_protection(connected):
    app, server, adapter = connected
    order_id = adapter.place_order(market(tag="ord0abc123", algo_id="ALGO1"))

    order = adapter.order(order_id)
    assert order.status == BrokerOrderStatus.FILLED and order.filled_quantity == 5
    assert order.tag == "ord0abc123" and order.symbol == SYMBOL and order.side == Side.BUY
    assert order.average_price > Decimal("1500") and order.placed_at.tzinfo is not None
    assert [o.broker_order_id for o in adapter.orders_by_tag("ord0abc123")] == [order_id]
    (trade,) = adapter.trades()
    assert trade.broker_order_id == order_id and trade.quantity == 5
    (position,) = adapter.positions()
    assert position.quantity == 5 and position.product == Product.MIS


def test_limit_order_rests_modify_then_cancel(connected, publish_quote):
    app, server, adapter = connected
    order_id = adapter.place_order(
        OrderRequest(SYMBOL, Side.BUY, 2, OrderType.LIMIT, Product.CNC, price=Decimal("1400.00"), validity=Validity.DAY)
    )
    assert adapter.order(order_id).status == BrokerOrderStatus.OPEN

    adapter.modify_order(order_id, ModifyRequest(quantity=3, price=Decimal("1410.00")))
    modified = adapter.order(order_id)
    assert modified.quantity == 3 and modified.price == Decimal("1410.00")
    adapter.cancel_order(order_id)
    assert adapter.order(order_id).status == BrokerOrderStatus.CANCELLED
    with pytest.raises(OrderRejected, match="cannot be cancelled"):
        adapter.cancel_order(order_id)


def test_resting_limit_fills_when_the_market_comes_to_it(connected, publish_quote):
    app, server, adapter = connected
    order_id = adapter.place_order(
        OrderRequest(SYMBOL, Side.BUY, 2, OrderType.LIMIT, Product.MIS, price=Decimal("1490.00"))
    )
    publish_quote(SYMBOL, "1489.00")
    assert adapter.order(order_id).status == BrokerOrderStatus.FILLED


def test_funds_holdings_and_quotes(connected):
    app, server, adapter = connected
    funds = adapter.funds()
    assert funds.available_cash == funds.opening_balance and funds.used_margin == 0
    assert adapter.holdings() == []
    quotes = adapter.quotes([SYMBOL])
    assert quotes[SYMBOL].last_price == Decimal("1500.00")
    assert quotes[SYMBOL].bid == Decimal("1499.95") and quotes[SYMBOL].ask_quantity == 1000


def test_exchange_rejection_is_visible_with_the_reason(connected):
    app, server, adapter = connected
    order_id = adapter.place_order(market(quantity=100_000))
    order = adapter.order(order_id)
    assert order.status == BrokerOrderStatus.REJECTED and "Insufficient funds" in order.status_message


def test_bad_input_is_invalid_input(connected):
    app, server, adapter = connected
    with pytest.raises(InvalidInput, match="Tag"):
        adapter.place_order(market(tag="has spaces and is far too long"))


def test_an_expired_session_is_session_expired(connected):
    app, server, adapter = connected
    app.expire_sessions()
    with pytest.raises(SessionExpired):
        adapter.orders()


def test_bursts_beyond_the_rate_limit_are_rate_limited(connected):
    app, server, adapter = connected
    with pytest.raises(BrokerRateLimited) as raised:
        for _ in range(3):
            adapter.quotes([SYMBOL])  # Kite allows one quote call a second
    assert raised.value.headers["Retry-After"] == "1"


@pytest.mark.parametrize(
    "fault",
    [
        {"mode": "error", "status": 502},
        {"mode": "error", "status": 503},
        {"mode": "garbage"},
    ],
)
def test_broker_failures_are_unavailable(connected, fault):
    app, server, adapter = connected
    app.inject_fault(fault["mode"], status=fault.get("status", 500))
    with pytest.raises(BrokerUnavailable) as raised:
        adapter.orders()
    assert "<html>" not in raised.value.detail


def test_a_slow_broker_times_out(kite):
    app, server = kite
    adapter = adapter_for(server, token=app.issue_session(API_KEY, "ZX9876"), timeout=0.3)
    app.inject_fault("delay", seconds=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="in time"):
        adapter.orders()
    assert time.monotonic() - started < 0.9


def test_secrets_never_show_in_repr_or_errors(kite):
    app, server = kite
    token = app.issue_session(API_KEY, "ZX9876")
    adapter = adapter_for(server, token=token)
    assert API_SECRET not in repr(adapter) and token not in repr(adapter)
    app.expire_sessions()
    with pytest.raises(SessionExpired) as raised:
        adapter.funds()
    assert token not in str(raised.value.detail) and API_SECRET not in str(raised.value.detail)
