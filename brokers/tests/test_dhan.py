"""The Dhan adapter: its mappings as tables, then the real `dhanhq` SDK against the Dhan simulator over HTTP."""

from __future__ import annotations

import logging
import socket
import time
from decimal import Decimal

import pytest
import requests
from dhanhq import DhanHTTP

from algoterm.sandbox.simulators.dhan import DhanSimulator
from brokers import exchange
from brokers.adapters.dhan import (
    DHAN_ORDER_STATUSES,
    DHAN_ORDER_TYPES,
    DHAN_PRODUCTS,
    DHAN_SIDES,
    DHAN_VALIDITIES,
    ERROR_CODES,
    EXCHANGE_SEGMENTS,
    ORDER_STATUSES,
    ORDER_TYPES,
    PRODUCTS,
    SEGMENT_EXCHANGES,
    SIDES,
    VALIDITIES,
    DhanAdapter,
    dhan_instrument,
    error_for,
    order_status,
    symbol_from_dhan,
)
from brokers.protocol import (
    AdapterConfig,
    BrokerError,
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

CLIENT_ID = "1100000001"
TOKEN = "dhan-access-token-7f3a9c1e5b"
RELAXED_LIMITS = {"orders": [(1000, 1.0)], "quotes": [(1000, 1.0)], "data": [(1000, 1.0)]}

sdk_test = pytest.mark.django_db(transaction=True)


# --- mappings, both ways -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exchange_code", "segment"),
    [("NSE", "NSE_EQ"), ("BSE", "BSE_EQ"), ("NFO", "NSE_FNO"), ("BFO", "BSE_FNO"), ("MCX", "MCX_COMM")],
)
def test_exchange_segments_map_both_ways(exchange_code, segment):
    assert EXCHANGE_SEGMENTS[exchange_code] == segment
    assert SEGMENT_EXCHANGES[segment] == exchange_code


@pytest.mark.parametrize(
    ("product", "dhan"), [(Product.MIS, "INTRADAY"), (Product.CNC, "CNC"), (Product.NRML, "MARGIN")]
)
def test_products_map_both_ways(product, dhan):
    assert PRODUCTS[product] == dhan
    assert DHAN_PRODUCTS[dhan] == product


@pytest.mark.parametrize(("dhan", "product"), [("CO", Product.MIS), ("BO", Product.MIS), ("MTF", Product.CNC)])
def test_products_only_dhan_has_read_as_their_nearest_kind(dhan, product):
    assert DHAN_PRODUCTS[dhan] == product


@pytest.mark.parametrize(
    ("order_type", "dhan"),
    [
        (OrderType.MARKET, "MARKET"),
        (OrderType.LIMIT, "LIMIT"),
        (OrderType.SL, "STOP_LOSS"),
        (OrderType.SL_M, "STOP_LOSS_MARKET"),
    ],
)
def test_order_types_map_both_ways(order_type, dhan):
    assert ORDER_TYPES[order_type] == dhan
    assert DHAN_ORDER_TYPES[dhan] == order_type


@pytest.mark.parametrize(("validity", "dhan"), [(Validity.DAY, "DAY"), (Validity.IOC, "IOC")])
def test_validities_map_both_ways(validity, dhan):
    assert VALIDITIES[validity] == dhan
    assert DHAN_VALIDITIES[dhan] == validity


@pytest.mark.parametrize(("side", "dhan"), [(Side.BUY, "BUY"), (Side.SELL, "SELL")])
def test_sides_map_both_ways(side, dhan):
    assert SIDES[side] == dhan
    assert DHAN_SIDES[dhan] == side


@pytest.mark.parametrize(
    ("dhan", "ours"),
    [
        ("TRANSIT", BrokerOrderStatus.PENDING),
        ("PENDING", BrokerOrderStatus.OPEN),
        ("TRIGGERED", BrokerOrderStatus.OPEN),
        ("PART_TRADED", BrokerOrderStatus.PARTIALLY_FILLED),
        ("TRADED", BrokerOrderStatus.FILLED),
        ("REJECTED", BrokerOrderStatus.REJECTED),
        ("CANCELLED", BrokerOrderStatus.CANCELLED),
        ("EXPIRED", BrokerOrderStatus.EXPIRED),
    ],
)
def test_dhan_statuses_read_as_ours(dhan, ours):
    assert DHAN_ORDER_STATUSES[dhan] == ours
    assert order_status(dhan, "LIMIT") == ours


@pytest.mark.parametrize(
    ("ours", "dhan"),
    [
        (BrokerOrderStatus.PENDING, "TRANSIT"),
        (BrokerOrderStatus.OPEN, "PENDING"),
        (BrokerOrderStatus.TRIGGER_PENDING, "PENDING"),
        (BrokerOrderStatus.PARTIALLY_FILLED, "PART_TRADED"),
        (BrokerOrderStatus.FILLED, "TRADED"),
        (BrokerOrderStatus.REJECTED, "REJECTED"),
        (BrokerOrderStatus.CANCELLED, "CANCELLED"),
        (BrokerOrderStatus.EXPIRED, "EXPIRED"),
    ],
)
def test_our_statuses_written_as_dhan(ours, dhan):
    assert ORDER_STATUSES[ours] == dhan


def test_every_status_round_trips_through_dhan():
    for ours, dhan in ORDER_STATUSES.items():
        order_type = "STOP_LOSS" if ours == BrokerOrderStatus.TRIGGER_PENDING else "LIMIT"
        assert order_status(dhan, order_type) == ours


def test_an_unfilled_pending_stop_order_waits_for_its_trigger():
    assert order_status("PENDING", "STOP_LOSS_MARKET", 0) == BrokerOrderStatus.TRIGGER_PENDING
    assert order_status("PENDING", "STOP_LOSS", 5) == BrokerOrderStatus.OPEN


def test_an_unknown_status_is_a_broker_error():
    with pytest.raises(BrokerError, match="unknown order status"):
        order_status("HALF_BAKED")


@pytest.mark.parametrize(
    ("code", "error_class"),
    [
        ("DH-901", SessionExpired),
        ("DH-902", BrokerError),
        ("DH-903", BrokerError),
        ("DH-904", BrokerRateLimited),
        ("DH-905", InvalidInput),
        ("DH-906", OrderRejected),
        ("DH-907", BrokerError),
        ("DH-908", BrokerUnavailable),
        ("DH-909", BrokerUnavailable),
        ("DH-910", BrokerError),
        ("805", BrokerRateLimited),
        ("807", SessionExpired),
        ("DH-999", BrokerError),
    ],
)
def test_error_codes_map_to_our_errors(code, error_class):
    error = error_for({"error_code": code, "error_type": "X", "error_message": "broker says no"}, operation="call")
    assert type(error) is error_class
    assert "broker says no" in error.detail
    assert ERROR_CODES.get(code, BrokerError) is error_class


@pytest.mark.parametrize(
    ("symbol", "wire"),
    [
        ("NSE:TCS", ("NSE_EQ", "11536")),
        ("NSE:INFY", ("NSE_EQ", "1594")),
        ("BSE:RELIANCE", ("BSE_EQ", "500325")),
        ("NSE:NIFTY 50", ("IDX_I", "13")),
    ],
)
def test_symbols_map_to_security_ids_both_ways(symbol, wire):
    assert dhan_instrument(symbol) == wire
    assert symbol_from_dhan(*wire) == symbol


@pytest.mark.django_db
def test_symbols_outside_the_instrument_table():
    with pytest.raises(InvalidInput):
        dhan_instrument("NSE:NOSUCHCO")
    with pytest.raises(InvalidInput):
        dhan_instrument("TCS")
    assert symbol_from_dhan("NSE_FNO", "99999", "NIFTY25JUNFUT") == "NFO:NIFTY25JUNFUT"
    with pytest.raises(BrokerError):
        symbol_from_dhan("NSE_EQ", "99999")


# --- through the SDK ---------------------------------------------------------------------------------------------


def make_adapter(server, *, token: str | None = TOKEN, timeout: float = 5.0, base_url: str | None = None):
    session = BrokerSession(access_token=token, broker_user_id=CLIENT_ID) if token else None
    return DhanAdapter(
        credentials={"client_id": CLIENT_ID},
        session=session,
        config=AdapterConfig(base_url=base_url or f"{server.url}/v2", timeout=timeout),
        account_ref="acc_dhan_test",
    )


@pytest.fixture
def simulator():
    app = DhanSimulator(rate_limits=RELAXED_LIMITS)
    app.register_client(CLIENT_ID, TOKEN)
    with serving(app) as server:
        yield app, server


@pytest.fixture
def adapter(simulator):
    return make_adapter(simulator[1])


def buy(symbol="NSE:INFY", quantity=10, order_type=OrderType.MARKET, **fields) -> OrderRequest:
    return OrderRequest(
        symbol=symbol, side=Side.BUY, quantity=quantity, order_type=order_type, product=Product.MIS, **fields
    )


@sdk_test
def test_complete_login_checks_the_token_and_returns_a_session(simulator):
    adapter = make_adapter(simulator[1], token=None)
    session = adapter.complete_login(params={"access_token": TOKEN}, redirect_uri="")
    assert session == BrokerSession(access_token=TOKEN, broker_user_id=CLIENT_ID)
    assert adapter.funds().opening_balance == Decimal("1000000.00")


@sdk_test
def test_complete_login_with_a_bad_token_is_session_expired(simulator):
    adapter = make_adapter(simulator[1], token=None)
    with pytest.raises(SessionExpired) as raised:
        adapter.complete_login(params={"access_token": "not-a-real-token"}, redirect_uri="")
    assert "DH-901" in raised.value.detail


@sdk_test
def test_market_order_fills(adapter, publish_quote):
    publish_quote("NSE:INFY", "1500")
    order_id = adapter.place_order(buy(tag="ord001"))
    order = adapter.order(order_id)
    assert order.status == BrokerOrderStatus.FILLED
    assert (order.symbol, order.side, order.quantity, order.filled_quantity) == ("NSE:INFY", Side.BUY, 10, 10)
    assert (order.product, order.order_type, order.tag) == (Product.MIS, OrderType.MARKET, "ord001")
    assert Decimal("1500.05") <= order.average_price <= Decimal("1501.00")
    assert order.price is None and order.placed_at is not None

    [trade] = adapter.trades()
    assert (trade.broker_order_id, trade.symbol, trade.quantity, trade.price) == (
        order_id,
        "NSE:INFY",
        10,
        order.average_price,
    )
    [position] = adapter.positions()
    assert (position.symbol, position.product, position.quantity) == ("NSE:INFY", Product.MIS, 10)
    assert position.average_price == order.average_price
    assert position.last_price == Decimal("1500.00")
    funds = adapter.funds()
    assert funds.used_margin == (10 * order.average_price * Decimal("0.20")).quantize(Decimal("0.01"))
    assert funds.available_cash == funds.opening_balance - funds.used_margin


@sdk_test
def test_limit_order_rests_then_fills_when_the_market_crosses_it(adapter, publish_quote):
    publish_quote("NSE:INFY", "1500")
    order_id = adapter.place_order(buy(order_type=OrderType.LIMIT, price=Decimal("1490.00")))
    resting = adapter.order(order_id)
    assert (resting.status, resting.price, resting.filled_quantity) == (BrokerOrderStatus.OPEN, Decimal("1490.00"), 0)
    assert resting.pending_quantity == 10

    publish_quote("NSE:INFY", "1489")
    filled = adapter.order(order_id)
    assert filled.status == BrokerOrderStatus.FILLED
    assert filled.average_price == Decimal("1489.05")


@sdk_test
def test_modify_then_cancel(adapter, publish_quote):
    publish_quote("NSE:TCS", "4200")
    order_id = adapter.place_order(buy("NSE:TCS", 5, OrderType.LIMIT, price=Decimal("4100.00")))
    adapter.modify_order(order_id, ModifyRequest(quantity=8, price=Decimal("4150.50")))
    modified = adapter.order(order_id)
    assert (modified.quantity, modified.price, modified.status) == (8, Decimal("4150.50"), BrokerOrderStatus.OPEN)

    adapter.cancel_order(order_id)
    assert adapter.order(order_id).status == BrokerOrderStatus.CANCELLED
    with pytest.raises(OrderRejected, match="cannot be cancelled"):
        adapter.cancel_order(order_id)
    with pytest.raises(OrderRejected, match="cannot be modified"):
        adapter.modify_order(order_id, ModifyRequest(price=Decimal("4000.00")))


@sdk_test
def test_a_stop_order_waits_for_its_trigger(adapter, publish_quote):
    publish_quote("NSE:SBIN", "820")
    order_id = adapter.place_order(buy("NSE:SBIN", 1, OrderType.SL_M, trigger_price=Decimal("830.00")))
    order = adapter.order(order_id)
    assert (order.status, order.trigger_price, order.price) == (
        BrokerOrderStatus.TRIGGER_PENDING,
        Decimal("830.00"),
        None,
    )
    publish_quote("NSE:SBIN", "831")
    assert adapter.order(order_id).status == BrokerOrderStatus.FILLED


@sdk_test
def test_order_book_and_lookup_by_correlation_id(adapter, publish_quote):
    publish_quote("NSE:ITC", "470")
    first = adapter.place_order(buy("NSE:ITC", 1, tag="alpha-1"))
    second = adapter.place_order(buy("NSE:ITC", 2, OrderType.LIMIT, price=Decimal("400.00"), tag="beta_2"))
    assert [order.broker_order_id for order in adapter.orders()] == [first, second]

    [tagged] = adapter.orders_by_tag("beta_2")
    assert (tagged.broker_order_id, tagged.quantity, tagged.status) == (second, 2, BrokerOrderStatus.OPEN)
    assert adapter.orders_by_tag("never-sent") == []
    assert adapter.orders_by_tag("") == []


@sdk_test
def test_unknown_order_is_invalid_input(adapter):
    with pytest.raises(InvalidInput):
        adapter.order("250000000999999")
    with pytest.raises(InvalidInput):
        adapter.cancel_order("250000000999999")


@sdk_test
def test_holdings(adapter, simulator):
    assert adapter.holdings() == []  # Dhan answers an empty demat with DH-1111
    account = exchange.exchange_account(venue="dhan", client_id=CLIENT_ID)
    exchange.holding_add(account=account, symbol="NSE:TCS", quantity=5, average_price=Decimal("3900.50"))
    [holding] = adapter.holdings()
    assert (holding.symbol, holding.quantity, holding.average_price) == ("NSE:TCS", 5, Decimal("3900.50"))
    assert holding.last_price is not None


@sdk_test
def test_funds_of_a_fresh_account(adapter):
    funds = adapter.funds()
    assert funds.available_cash == funds.opening_balance == Decimal("1000000.00")
    assert funds.used_margin == Decimal("0.00")


@sdk_test
def test_quotes(adapter, publish_quote):
    publish_quote("NSE:TCS", "4200", depth=700)
    quotes = adapter.quotes(["NSE:TCS", "NSE:NIFTY 50"])
    tcs = quotes["NSE:TCS"]
    assert (tcs.last_price, tcs.bid, tcs.ask) == (Decimal("4200.00"), Decimal("4199.95"), Decimal("4200.05"))
    assert (tcs.bid_quantity, tcs.ask_quantity) == (700, 700)
    assert tcs.timestamp is not None
    assert quotes["NSE:NIFTY 50"].last_price > 0
    assert adapter.quotes([]) == {}


@sdk_test
def test_insufficient_funds_comes_back_as_a_rejected_order(adapter, publish_quote):
    publish_quote("NSE:RELIANCE", "1290")
    request = OrderRequest(
        symbol="NSE:RELIANCE",
        side=Side.BUY,
        quantity=1000,
        order_type=OrderType.LIMIT,
        product=Product.CNC,
        price=Decimal("1290.00"),
    )
    order_id = adapter.place_order(request)
    order = adapter.order(order_id)
    assert order.status == BrokerOrderStatus.REJECTED
    assert order.status_message.startswith("Insufficient funds")


@sdk_test
def test_malformed_orders_are_invalid_input(adapter):
    with pytest.raises(InvalidInput, match="tick size"):
        adapter.place_order(buy(order_type=OrderType.LIMIT, price=Decimal("1500.03")))
    with pytest.raises(InvalidInput, match="index"):
        adapter.place_order(buy("NSE:NIFTY 50"))
    with pytest.raises(InvalidInput, match="correlation"):
        adapter.place_order(buy(tag="x" * 31))
    with pytest.raises(InvalidInput, match="instrument table"):
        adapter.place_order(buy("NSE:NOSUCHCO"))


# --- failures ----------------------------------------------------------------------------------------------------


@sdk_test
def test_expired_sessions_raise_session_expired(adapter, simulator):
    adapter.funds()
    requests.post(f"{simulator[1].url}/__sim__/expire-sessions", timeout=5)
    with pytest.raises(SessionExpired):
        adapter.funds()
    with pytest.raises(SessionExpired):
        adapter.place_order(buy())


@sdk_test
def test_bursts_are_rate_limited():
    app = DhanSimulator()  # Dhan's own limits
    app.register_client(CLIENT_ID, TOKEN)
    with serving(app) as server:
        adapter = make_adapter(server)
        adapter.quotes(["NSE:TCS"])
        with pytest.raises(BrokerRateLimited) as raised:
            adapter.quotes(["NSE:TCS"])
        assert raised.value.extra == {"retry_after": 1}
        assert "DH-904" in raised.value.detail

        placed, limited = 0, False
        for _ in range(25):
            try:
                adapter.place_order(buy("NSE:ITC", 1, OrderType.LIMIT, price=Decimal("100.00")))
                placed += 1
            except BrokerRateLimited:
                limited = True
                break
        assert limited and placed >= 10


@pytest.mark.parametrize("status", [500, 503])
@sdk_test
def test_server_errors_are_unavailable(adapter, simulator, status):
    simulator[0].inject_fault("error", status=status)
    with pytest.raises(BrokerUnavailable, match="DH-908"):
        adapter.funds()
    assert adapter.funds().opening_balance == Decimal("1000000.00")  # the fault was one request long


@sdk_test
def test_a_garbage_body_is_unavailable(adapter, simulator):
    simulator[0].inject_fault("garbage")
    with pytest.raises(BrokerUnavailable):
        adapter.orders()


@sdk_test
def test_a_slow_broker_times_out_as_unavailable(simulator):
    app, server = simulator
    adapter = make_adapter(server, timeout=0.3)
    app.inject_fault("delay", seconds=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="timed out"):
        adapter.funds()
    assert time.monotonic() - started < 0.9
    time.sleep(1.0)  # let the delayed request finish before the test database is flushed


def test_an_unreachable_broker_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = DhanAdapter(
        credentials={"client_id": CLIENT_ID},
        session=BrokerSession(access_token=TOKEN, broker_user_id=CLIENT_ID),
        config=AdapterConfig(base_url=f"http://127.0.0.1:{port}/v2", timeout=2.0),
        account_ref="acc_dhan_test",
    )
    with pytest.raises(BrokerUnavailable):
        adapter.funds()


@sdk_test
def test_an_sdk_exception_becomes_a_broker_error(adapter, monkeypatch):
    def explode():
        raise RuntimeError(f"boom {TOKEN}")

    monkeypatch.setattr(adapter._sdk(), "get_fund_limits", explode)
    with pytest.raises(BrokerError) as raised:
        adapter.funds()
    assert type(raised.value) is BrokerError
    assert TOKEN not in raised.value.detail
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


@sdk_test
def test_the_access_token_never_leaks(simulator, caplog):
    app, server = simulator
    caplog.set_level(logging.DEBUG)
    adapter = make_adapter(server, timeout=0.3)
    assert TOKEN not in str(adapter) and TOKEN not in repr(adapter)

    errors: list[BrokerError] = []
    for fault in ("error", "garbage"):
        app.inject_fault(fault)
        with pytest.raises(BrokerError) as raised:
            adapter.funds()
        errors.append(raised.value)
    app.inject_fault("delay", seconds=0.8)
    with pytest.raises(BrokerError) as raised:
        adapter.positions()
    errors.append(raised.value)
    time.sleep(0.8)
    with pytest.raises(BrokerError) as raised:
        adapter.place_order(buy(order_type=OrderType.LIMIT, price=Decimal("1.01")))
    errors.append(raised.value)
    app.expire_sessions()
    with pytest.raises(BrokerError) as raised:
        adapter.orders()
    errors.append(raised.value)
    with pytest.raises(BrokerError) as raised:
        make_adapter(server, token=None).complete_login(params={"access_token": "wrong-token-42"}, redirect_uri="")
    errors.append(raised.value)

    for error in errors:
        for text in (error.detail, str(error), repr(error), repr(error.extra)):
            assert TOKEN not in text and "wrong-token-42" not in text
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


# --- wiring ------------------------------------------------------------------------------------------------------


def test_each_adapter_configures_only_its_own_sdk_connection():
    default_base_url = DhanHTTP.API_BASE_URL
    session = BrokerSession(access_token=TOKEN, broker_user_id=CLIENT_ID)
    proxied = DhanAdapter(
        credentials={"client_id": CLIENT_ID},
        session=session,
        config=AdapterConfig(base_url="http://127.0.0.1:9/v2/", timeout=2.5, proxy_url="http://127.0.0.1:3128"),
        account_ref="acc_a",
    )
    direct = DhanAdapter(
        credentials={"client_id": "1100000002"},
        session=BrokerSession(access_token="other-token", broker_user_id="1100000002"),
        config=AdapterConfig(base_url="http://127.0.0.1:10/v2"),
        account_ref="acc_b",
    )
    proxied_http, direct_http = proxied._sdk().dhan_http, direct._sdk().dhan_http
    assert (proxied_http.base_url, proxied_http.timeout) == ("http://127.0.0.1:9/v2", 2.5)
    assert proxied_http.session.proxies == {"http": "http://127.0.0.1:3128", "https": "http://127.0.0.1:3128"}
    assert proxied_http.session.trust_env is False
    assert (direct_http.base_url, direct_http.timeout, direct_http.session.proxies) == (
        "http://127.0.0.1:10/v2",
        7.0,
        {},
    )
    assert direct_http.header["access-token"] == "other-token"
    assert DhanHTTP.API_BASE_URL == default_base_url
    assert proxied.logout() is None


def test_an_adapter_without_a_token_needs_a_login():
    adapter = DhanAdapter(
        credentials={"client_id": CLIENT_ID}, session=None, config=AdapterConfig(), account_ref="acc_dhan_test"
    )
    with pytest.raises(SessionExpired):
        adapter.funds()


@sdk_test
def test_the_simulator_answers_in_dhans_error_envelope(simulator):
    _, server = simulator
    response = requests.get(
        f"{server.url}/v2/fundlimit", headers={"access-token": "nope", "client-id": CLIENT_ID}, timeout=5
    )
    assert response.status_code == 401
    assert response.json() == {
        "errorType": "Invalid_Authentication",
        "errorCode": "DH-901",
        "errorMessage": "Client ID or user generated access token is invalid or expired.",
    }
    response = requests.get(
        f"{server.url}/v2/fundlimit", headers={"access-token": TOKEN, "client-id": "someone-else"}, timeout=5
    )
    assert response.status_code == 401
