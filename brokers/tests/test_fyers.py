"""The Fyers adapter through the real fyers-apiv3 SDK against the local Fyers simulator, plus table tests of every
mapping between our vocabulary and Fyers'."""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from fyers_apiv3 import fyersModel

from algoterm.sandbox.simulators.base import SimulatorServer
from algoterm.sandbox.simulators.fyers import FyersSimulator, app_id_hash
from brokers import exchange
from brokers.adapters import fyers as fy
from brokers.adapters.fyers import FyersAdapter
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

from .conftest import serving

APP_ID = "XJ12345-100"
SECRET = "sim-secret-4d1f0c"
USER_ID = "XJ00001"
REDIRECT_URI = "http://127.0.0.1:9/brokers/fyers/callback"

transactional = pytest.mark.django_db(transaction=True)


# --- helpers -------------------------------------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[SimulatorServer]:
    app = FyersSimulator()
    app.register_app(APP_ID, SECRET, redirect_uri=REDIRECT_URI)
    with serving(app) as running:
        yield running


def make_adapter(
    server: SimulatorServer, *, session: BrokerSession | None = None, secret: str = SECRET, timeout: float = 5.0
) -> FyersAdapter:
    return FyersAdapter(
        credentials={"client_id": APP_ID, "secret_key": secret},
        session=session,
        config=AdapterConfig(
            base_url=f"{server.url}/api/v3", timeout=timeout, extra={"data_url": f"{server.url}/data"}
        ),
        account_ref="acc_fyers_test",
    )


def _browser() -> requests.Session:
    browser = requests.Session()
    browser.trust_env = False  # loopback only, never an environment proxy
    return browser


def log_in_at_broker(login_url: str, *, user_id: str = USER_ID) -> dict[str, str]:
    """What a user does in the browser: open the login page, submit its form, get redirected back to us."""
    browser = _browser()
    page = browser.get(login_url, timeout=5)
    assert page.status_code == 200, page.text
    action = re.search(r'<form method="post" action="([^"]+)"', page.text).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    fields.update(fy_id=user_id, pin="1234")
    answer = browser.post(urljoin(login_url, action), data=fields, allow_redirects=False, timeout=5)
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT_URI)
    return {key: values[0] for key, values in parse_qs(urlsplit(location).query).items()}


def logged_in(server: SimulatorServer, *, user_id: str = USER_ID, timeout: float = 5.0) -> FyersAdapter:
    adapter = make_adapter(server, timeout=timeout)
    params = log_in_at_broker(adapter.login_url(state="st-1", redirect_uri=REDIRECT_URI), user_id=user_id)
    adapter.complete_login(params=params, redirect_uri=REDIRECT_URI)
    return adapter


def market_buy(symbol: str = "NSE:SBIN", quantity: int = 10, **overrides) -> OrderRequest:
    values = dict(symbol=symbol, side=Side.BUY, quantity=quantity, order_type=OrderType.MARKET, product=Product.MIS)
    return OrderRequest(**(values | overrides))


# --- mappings (pure) -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "fyers"),
    [(OrderType.LIMIT, 1), (OrderType.MARKET, 2), (OrderType.SL_M, 3), (OrderType.SL, 4)],
)
def test_order_type_mapping_both_ways(ours, fyers):
    assert fy.ORDER_TYPE_TO_FYERS[ours] == fyers
    assert fy.ORDER_TYPE_FROM_FYERS[fyers] == ours


@pytest.mark.parametrize(("ours", "fyers"), [(Side.BUY, 1), (Side.SELL, -1)])
def test_side_mapping_both_ways(ours, fyers):
    assert fy.SIDE_TO_FYERS[ours] == fyers
    assert fy.SIDE_FROM_FYERS[fyers] == ours


@pytest.mark.parametrize(("ours", "fyers"), [(Product.MIS, "INTRADAY"), (Product.CNC, "CNC"), (Product.NRML, "MARGIN")])
def test_product_mapping_both_ways(ours, fyers):
    assert fy.PRODUCT_TO_FYERS[ours] == fyers
    assert fy.PRODUCT_FROM_FYERS[fyers] == ours


@pytest.mark.parametrize(("fyers", "ours"), [("CO", Product.MIS), ("BO", Product.MIS), ("MTF", Product.CNC)])
def test_products_we_only_read(fyers, ours):
    assert fy.PRODUCT_FROM_FYERS[fyers] == ours


@pytest.mark.parametrize(("ours", "fyers"), [(Validity.DAY, "DAY"), (Validity.IOC, "IOC")])
def test_validity_mapping_both_ways(ours, fyers):
    assert fy.VALIDITY_TO_FYERS[ours] == fyers
    assert fy.VALIDITY_FROM_FYERS[fyers] == ours


def test_every_value_of_our_vocabulary_is_mapped():
    assert set(fy.ORDER_TYPE_TO_FYERS) == set(OrderType)
    assert set(fy.SIDE_TO_FYERS) == set(Side)
    assert set(fy.PRODUCT_TO_FYERS) == set(Product)
    assert set(fy.VALIDITY_TO_FYERS) == set(Validity)
    assert set(fy.STATUS_TO_FYERS) == set(BrokerOrderStatus)


@pytest.mark.parametrize(
    ("fyers", "filled", "ours"),
    [
        (1, 0, BrokerOrderStatus.CANCELLED),
        (2, 5, BrokerOrderStatus.FILLED),
        (4, 0, BrokerOrderStatus.PENDING),
        (5, 0, BrokerOrderStatus.REJECTED),
        (6, 0, BrokerOrderStatus.OPEN),
        (6, 3, BrokerOrderStatus.PARTIALLY_FILLED),
        (7, 0, BrokerOrderStatus.EXPIRED),
        (1, 3, BrokerOrderStatus.CANCELLED),  # a partly filled order cancelled stays cancelled
        (99, 0, BrokerOrderStatus.PENDING),  # unknown: not final, so reconciliation asks again
    ],
)
def test_status_from_fyers(fyers, filled, ours):
    assert fy.status_from_fyers(fyers, filled) == ours


@pytest.mark.parametrize(
    ("ours", "fyers"),
    [
        (BrokerOrderStatus.CANCELLED, 1),
        (BrokerOrderStatus.FILLED, 2),
        (BrokerOrderStatus.PENDING, 4),
        (BrokerOrderStatus.REJECTED, 5),
        (BrokerOrderStatus.OPEN, 6),
        (BrokerOrderStatus.TRIGGER_PENDING, 6),
        (BrokerOrderStatus.PARTIALLY_FILLED, 6),
        (BrokerOrderStatus.EXPIRED, 7),
    ],
)
def test_status_to_fyers(ours, fyers):
    assert fy.STATUS_TO_FYERS[ours] == fyers


@pytest.mark.parametrize(
    ("ours", "fyers"),
    [
        ("NSE:SBIN", "NSE:SBIN-EQ"),
        ("NSE:BAJAJ-AUTO", "NSE:BAJAJ-AUTO-EQ"),
        ("NSE:M&M", "NSE:M&M-EQ"),
        ("NSE:SUZLON-BE", "NSE:SUZLON-BE"),
        ("BSE:RELIANCE", "BSE:RELIANCE-A"),
        ("NFO:NIFTY25JUNFUT", "NSE:NIFTY25JUNFUT"),
        ("NFO:NIFTY25JUN24000CE", "NSE:NIFTY25JUN24000CE"),
        ("NFO:BANKNIFTY2561252000PE", "NSE:BANKNIFTY2561252000PE"),
        ("NFO:BAJAJ-AUTO25JUNFUT", "NSE:BAJAJ-AUTO25JUNFUT"),
        ("BFO:SENSEX25JUN80000CE", "BSE:SENSEX25JUN80000CE"),
        ("CDS:USDINR25JUNFUT", "NSE:USDINR25JUNFUT"),
        ("MCX:CRUDEOIL25JUNFUT", "MCX:CRUDEOIL25JUNFUT"),
        ("NSE:NIFTY 50", "NSE:NIFTY50-INDEX"),
        ("NSE:NIFTY BANK", "NSE:NIFTYBANK-INDEX"),
        ("BSE:SENSEX", "BSE:SENSEX-INDEX"),
    ],
)
def test_symbol_mapping_both_ways(ours, fyers):
    assert fy.to_fyers_symbol(ours) == fyers
    assert fy.from_fyers_symbol(fyers) == ours


def test_bse_groups_other_than_a_are_read():
    assert fy.from_fyers_symbol("BSE:BIOGEN-XT") == "BSE:BIOGEN"


@pytest.mark.parametrize("bad", ["SBIN-EQ", "NYSE:IBM", "NSE:", ""])
def test_unrecognisable_fyers_symbols_are_invalid_input(bad):
    with pytest.raises(InvalidInput):
        fy.from_fyers_symbol(bad)


@pytest.mark.parametrize(("wire", "ours"), [("1:abc123", "abc123"), ("2:Untagged", ""), ("", ""), (None, "")])
def test_order_tag_from_fyers(wire, ours):
    assert fy.tag_from_fyers(wire) == ours


def test_fyers_time_is_ist():
    parsed = fy.parse_fyers_time("09-Mar-2023 09:34:38")
    assert parsed.utcoffset().total_seconds() == 5.5 * 3600
    assert fy.format_fyers_time(parsed) == "09-Mar-2023 09:34:38"
    assert fy.parse_fyers_time("garbage") is None


def test_funds_lines_map_by_id_or_title():
    lines = [
        {"id": 2, "title": "Utilized Amount", "equityAmount": 20.77479, "commodityAmount": 0},
        {"id": 9, "title": "Limit at start of the day", "equityAmount": 56.82, "commodityAmount": 0},
        {"id": 99, "title": "Available Balance", "equityAmount": 36.045209961373, "commodityAmount": 0},
    ]
    funds = fy._funds_from_fyers(lines)
    assert (funds.available_cash, funds.used_margin, funds.opening_balance) == (
        Decimal("36.05"),
        Decimal("20.77"),
        Decimal("56.82"),
    )
    with pytest.raises(BrokerError):
        fy._funds_from_fyers(lines[:2])


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, {"s": "error", "code": -16, "message": "Could not authenticate the user"}, SessionExpired),
        (400, {"s": "error", "code": -8, "message": "token expired"}, SessionExpired),
        (200, {"s": "error", "code": -17, "message": "token invalid"}, SessionExpired),
        (400, {"s": "error", "code": -99, "message": "RMS: margin shortfall"}, OrderRejected),
        (400, {"s": "error", "code": -50, "message": "Invalid params"}, InvalidInput),
        (400, {"s": "error", "code": -300, "message": "Invalid symbol"}, InvalidInput),
        (429, {"s": "error", "code": 429, "message": "request limit reached"}, BrokerRateLimited),
        (503, {"s": "error", "code": 503, "message": "down"}, BrokerUnavailable),
        (403, {"s": "error", "code": -1000, "message": "IP not whitelisted"}, BrokerError),
    ],
)
def test_error_mapping(status, body, error):
    with pytest.raises(error) as raised:
        fy._raise_for(body, fy._WireOutcome(status=status), swallowed=False, what="test")
    assert type(raised.value) is error


def test_success_raises_nothing():
    fy._raise_for({"s": "ok", "code": 200}, fy._WireOutcome(status=200), swallowed=False, what="test")


def test_sdk_swallowed_failures_are_unavailable():
    with pytest.raises(BrokerUnavailable):
        fy._raise_for(
            {"s": "error", "code": -99, "message": "Bad request"}, fy._WireOutcome(), swallowed=True, what="t"
        )
    with pytest.raises(BrokerUnavailable):
        fy._raise_for({"s": "error", "code": -99}, fy._WireOutcome(failure="ReadTimeout"), swallowed=False, what="t")


def test_proxy_and_timeout_reach_the_sdk_session():
    adapter = FyersAdapter(
        credentials={"client_id": APP_ID, "secret_key": SECRET},
        session=BrokerSession(access_token="header.payload.signature"),
        config=AdapterConfig(base_url="http://127.0.0.1:9/api/v3", timeout=2.5, proxy_url="http://127.0.0.1:3128"),
        account_ref="acc_proxy",
    )
    model = adapter._model()
    assert model.service.session.proxies == {"http": "http://127.0.0.1:3128", "https": "http://127.0.0.1:3128"}
    assert model.service.session.trust_env is False
    assert model.service.session.get_adapter("http://127.0.0.1:9")._timeout == 2.5


def test_calls_without_a_session_need_a_login():
    adapter = FyersAdapter(
        credentials={"client_id": APP_ID, "secret_key": SECRET},
        session=None,
        config=AdapterConfig(base_url="http://127.0.0.1:9/api/v3"),
        account_ref="acc_none",
    )
    with pytest.raises(SessionExpired):
        adapter.orders()


# --- login through the SDK -----------------------------------------------------------------------------------------


@transactional
def test_login_url_is_the_sdk_authcode_url(server):
    url = make_adapter(server).login_url(state="xyz", redirect_uri=REDIRECT_URI)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == server.url
    assert parts.path == "/api/v3/generate-authcode"
    query = parse_qs(parts.query)
    assert query["client_id"] == [APP_ID]
    assert query["redirect_uri"] == [REDIRECT_URI]
    assert query["response_type"] == ["code"]
    assert query["state"] == ["xyz"]


@transactional
def test_whole_login_flow(server):
    adapter = make_adapter(server)
    params = log_in_at_broker(adapter.login_url(state="st-42", redirect_uri=REDIRECT_URI))
    assert params["s"] == "ok" and params["state"] == "st-42" and params["auth_code"]

    session = adapter.complete_login(params=params, redirect_uri=REDIRECT_URI)

    assert session.broker_user_id == USER_ID
    assert session.access_token.count(".") == 2
    assert adapter.session == session
    assert adapter.funds().opening_balance > 0  # the token works


@transactional
def test_auth_code_is_single_use(server):
    adapter = make_adapter(server)
    params = log_in_at_broker(adapter.login_url(state="s", redirect_uri=REDIRECT_URI))
    adapter.complete_login(params=params, redirect_uri=REDIRECT_URI)
    with pytest.raises(InvalidInput):
        make_adapter(server).complete_login(params=params, redirect_uri=REDIRECT_URI)


@transactional
def test_wrong_secret_is_refused(server):
    adapter = make_adapter(server, secret="not-the-secret")
    params = log_in_at_broker(adapter.login_url(state="s", redirect_uri=REDIRECT_URI))
    with pytest.raises(InvalidInput) as raised:
        adapter.complete_login(params=params, redirect_uri=REDIRECT_URI)
    assert "appIdHash" in raised.value.detail
    assert "not-the-secret" not in raised.value.detail
    assert adapter.session is None


@transactional
def test_redirect_without_auth_code_is_refused(server):
    with pytest.raises(InvalidInput):
        make_adapter(server).complete_login(params={"s": "error", "message": "user cancelled"}, redirect_uri="x")


@transactional
def test_login_page_refuses_unknown_app_and_foreign_redirect(server):
    browser = _browser()
    unknown = browser.get(f"{server.url}/api/v3/generate-authcode?client_id=NOPE-100&redirect_uri=x&response_type=code")
    assert unknown.status_code == 400 and unknown.json()["s"] == "error"
    foreign = make_adapter(server).login_url(state="s", redirect_uri="http://127.0.0.1:9/elsewhere")
    assert browser.get(foreign).json()["code"] == -50


def test_app_id_hash_matches_the_sdk():
    sdk_hash = fyersModel.SessionModel(client_id=APP_ID, secret_key=SECRET).get_hash().hexdigest()
    assert app_id_hash(APP_ID, SECRET) == sdk_hash == hashlib.sha256(f"{APP_ID}:{SECRET}".encode()).hexdigest()


@transactional
def test_logout_kills_the_token(server):
    adapter = logged_in(server)
    adapter.logout()
    with pytest.raises(SessionExpired):
        adapter.orders()
    adapter.logout()  # best effort: a dead session is not an error


# --- trading through the SDK ---------------------------------------------------------------------------------------


@transactional
def test_market_order_fills(server, publish_quote):
    publish_quote("NSE:SBIN", "800")
    adapter = logged_in(server)

    order_id = adapter.place_order(market_buy(tag="ord1mkt"))

    order = adapter.order(order_id)
    assert order.status == BrokerOrderStatus.FILLED
    assert (order.symbol, order.side, order.quantity, order.filled_quantity) == ("NSE:SBIN", Side.BUY, 10, 10)
    assert order.order_type == OrderType.MARKET and order.product == Product.MIS
    assert order.price is None and Decimal("800") <= order.average_price <= Decimal("801")
    assert order.tag == "ord1mkt"
    assert isinstance(order.placed_at, datetime)


@transactional
def test_limit_order_rests_then_fills_when_the_market_crosses(server, publish_quote):
    publish_quote("NSE:INFY", "1900")
    adapter = logged_in(server)
    request = market_buy("NSE:INFY", 5, order_type=OrderType.LIMIT, price=Decimal("1890.00"), product=Product.CNC)

    order_id = adapter.place_order(request)
    resting = adapter.order(order_id)
    assert resting.status == BrokerOrderStatus.OPEN and resting.price == Decimal("1890.00")

    publish_quote("NSE:INFY", "1885")

    filled = adapter.order(order_id)
    assert filled.status == BrokerOrderStatus.FILLED
    assert filled.average_price == Decimal("1885.05")  # the ask of the crossing quote


@transactional
def test_modify_and_cancel(server, publish_quote):
    publish_quote("NSE:TCS", "4100")
    adapter = logged_in(server)
    order_id = adapter.place_order(
        market_buy("NSE:TCS", 2, order_type=OrderType.LIMIT, price=Decimal("4000.00"), tag="mod1")
    )

    adapter.modify_order(order_id, ModifyRequest(quantity=3, price=Decimal("4010.50")))
    modified = adapter.order(order_id)
    assert (modified.quantity, modified.price, modified.status) == (3, Decimal("4010.50"), BrokerOrderStatus.OPEN)

    adapter.cancel_order(order_id)
    assert adapter.order(order_id).status == BrokerOrderStatus.CANCELLED

    with pytest.raises(InvalidInput):
        adapter.cancel_order(order_id)  # already cancelled
    with pytest.raises(InvalidInput):
        adapter.modify_order("250000000999999", ModifyRequest(quantity=1))  # unknown order
    with pytest.raises(InvalidInput):
        adapter.modify_order(order_id, ModifyRequest())


@transactional
def test_stop_order_maps_its_trigger(server, publish_quote):
    publish_quote("NSE:ITC", "470")
    adapter = logged_in(server)
    request = OrderRequest(
        symbol="NSE:ITC",
        side=Side.SELL,
        quantity=1,
        order_type=OrderType.SL,
        product=Product.MIS,
        price=Decimal("459.00"),
        trigger_price=Decimal("460.00"),
    )
    order = adapter.order(adapter.place_order(request))
    assert (order.order_type, order.trigger_price, order.price) == (OrderType.SL, Decimal("460.00"), Decimal("459.00"))
    assert order.status == BrokerOrderStatus.OPEN  # Fyers does not tell an untriggered stop from an open order


@transactional
def test_order_book_by_tag_and_trades(server, publish_quote):
    publish_quote("NSE:SBIN", "800")
    adapter = logged_in(server)
    first = adapter.place_order(market_buy(tag="tagA"))
    second = adapter.place_order(market_buy(quantity=4, tag="tagB"))
    untagged = adapter.place_order(market_buy(quantity=1))

    assert [order.broker_order_id for order in adapter.orders()] == [first, second, untagged]
    assert [order.broker_order_id for order in adapter.orders_by_tag("tagB")] == [second]
    assert adapter.orders_by_tag("nope") == []
    with pytest.raises(InvalidInput):
        adapter.order("250000000999999")

    trades = adapter.trades()
    assert sorted((trade.broker_order_id, trade.quantity) for trade in trades) == sorted(
        [(first, 10), (second, 4), (untagged, 1)]
    )
    assert all(trade.symbol == "NSE:SBIN" and trade.side == Side.BUY and trade.price > 0 for trade in trades)


@transactional
def test_positions_holdings_and_funds(server, publish_quote):
    publish_quote("NSE:SBIN", "800")
    adapter = logged_in(server)
    account = exchange.exchange_account(venue="fyers", client_id=USER_ID)
    exchange.holding_add(account=account, symbol="NSE:HDFCBANK", quantity=7, average_price=Decimal("1650.25"))
    opening = adapter.funds()

    adapter.place_order(market_buy(quantity=10))
    adapter.place_order(market_buy(quantity=4, side=Side.SELL))

    (position,) = adapter.positions()
    assert (position.symbol, position.product, position.quantity) == ("NSE:SBIN", Product.MIS, 6)
    assert (position.buy_quantity, position.sell_quantity) == (10, 4)
    assert position.average_price > 0 and position.last_price is not None

    (holding,) = adapter.holdings()
    assert (holding.symbol, holding.quantity, holding.average_price) == ("NSE:HDFCBANK", 7, Decimal("1650.25"))

    funds = adapter.funds()
    assert funds.opening_balance == opening.opening_balance == account.opening_balance
    assert funds.used_margin > 0
    assert funds.available_cash < opening.available_cash
    expected = exchange.funds(account=account)
    assert (funds.available_cash, funds.used_margin) == (expected.available_cash, expected.used_margin)


@transactional
def test_quotes_from_the_data_api(server, publish_quote):
    publish_quote("NSE:RELIANCE", "1300")
    publish_quote("NSE:NIFTY 50", "24400")
    adapter = logged_in(server)

    quotes = adapter.quotes(["NSE:RELIANCE", "NSE:NIFTY 50"])

    assert set(quotes) == {"NSE:RELIANCE", "NSE:NIFTY 50"}
    reliance = quotes["NSE:RELIANCE"]
    assert (reliance.last_price, reliance.bid, reliance.ask) == (
        Decimal("1300.00"),
        Decimal("1299.95"),
        Decimal("1300.05"),
    )
    assert reliance.timestamp is not None
    assert quotes["NSE:NIFTY 50"].last_price == Decimal("24400.00")


@transactional
def test_quotes_for_many_symbols_are_chunked(server):
    adapter = logged_in(server)
    symbols = [f"NFO:NIFTY25JUN{strike}CE" for strike in range(20000, 20000 + 60 * 50, 50)]
    assert len(adapter.quotes(symbols)) == 60


# --- errors through the SDK ----------------------------------------------------------------------------------------


@transactional
def test_expired_session(server):
    adapter = logged_in(server)
    requests.post(f"{server.url}/__sim__/expire-sessions", timeout=5)
    with pytest.raises(SessionExpired) as raised:
        adapter.orders()
    assert adapter.session.access_token not in raised.value.detail


@transactional
def test_token_of_another_app_is_refused(server):
    adapter = logged_in(server)
    server.app.register_app("ZZ99999-100", "other")
    other = FyersAdapter(
        credentials={"client_id": "ZZ99999-100", "secret_key": "other"},
        session=adapter.session,
        config=adapter.config,
        account_ref="acc_other",
    )
    with pytest.raises(SessionExpired):
        other.funds()


@transactional
def test_rejection_for_insufficient_funds(server, publish_quote):
    publish_quote("NSE:SBIN", "800")
    adapter = logged_in(server)
    with pytest.raises(OrderRejected) as raised:
        adapter.place_order(market_buy(quantity=1_000_000, product=Product.CNC, tag="toobig"))
    assert "Insufficient funds" in raised.value.detail
    (rejected,) = adapter.orders_by_tag("toobig")
    assert rejected.status == BrokerOrderStatus.REJECTED
    assert "Insufficient funds" in rejected.status_message


@transactional
def test_invalid_order_input(server, publish_quote):
    publish_quote("NSE:SBIN", "800")
    adapter = logged_in(server)
    with pytest.raises(InvalidInput):
        adapter.place_order(market_buy(order_type=OrderType.LIMIT, price=Decimal("800.03")))  # off tick
    with pytest.raises(InvalidInput):
        adapter.place_order(market_buy(tag="not alnum!"))


def burst(call, count: int = 20) -> list[BaseException]:
    """`count` calls at once (so the limit trips even on a slow machine); the errors they raised."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(call) for _ in range(count)]
    return [future.exception() for future in futures if future.exception() is not None]


@transactional
def test_burst_beyond_the_rate_limit(server):
    adapter = logged_in(server)
    errors = burst(adapter.holdings)
    assert errors and all(isinstance(error, BrokerRateLimited) for error in errors)
    assert errors[0].headers["Retry-After"] == "1"


@transactional
def test_order_burst_beyond_the_rate_limit(server, publish_quote):
    publish_quote("NSE:SBIN", "800")
    adapter = logged_in(server)
    errors = burst(lambda: adapter.place_order(market_buy(quantity=1)))
    assert errors and all(isinstance(error, BrokerRateLimited) for error in errors)
    assert len(adapter.orders()) == 20 - len(errors)  # limited orders never reached the exchange


@transactional
@pytest.mark.parametrize("status", [500, 502, 503])
def test_injected_server_error(server, status):
    adapter = logged_in(server)
    server.app.inject_fault("error", status=status)
    with pytest.raises(BrokerUnavailable):
        adapter.orders()
    assert adapter.orders() == []  # the fault was one-off


@transactional
def test_injected_garbage_body(server):
    adapter = logged_in(server)
    server.app.inject_fault("garbage")
    with pytest.raises(BrokerUnavailable):
        adapter.funds()


@transactional
def test_delay_beyond_the_timeout(server):
    adapter = logged_in(server, timeout=0.5)
    server.app.inject_fault("delay", seconds=1.5)
    with pytest.raises(BrokerUnavailable) as raised:
        adapter.positions()
    assert "Timeout" in raised.value.detail
    time.sleep(1.2)  # let the simulator finish the delayed request before the test's data is flushed


@transactional
def test_broker_down(server):
    adapter = logged_in(server)
    adapter._api_url = "http://127.0.0.1:9/api/v3"  # nothing listens on the discard port
    with pytest.raises(BrokerUnavailable):
        adapter.orders()


@transactional
def test_login_exchange_when_the_broker_fails(server):
    adapter = make_adapter(server)
    params = log_in_at_broker(adapter.login_url(state="s", redirect_uri=REDIRECT_URI))
    server.app.inject_fault("error", status=502)
    with pytest.raises(BrokerUnavailable):
        adapter.complete_login(params=params, redirect_uri=REDIRECT_URI)


# --- secrets and shared SDK state ----------------------------------------------------------------------------------


@transactional
def test_secrets_stay_out_of_reprs_errors_and_sdk_logs(server):
    adapter = logged_in(server)
    token = adapter.session.access_token
    for text in (str(adapter), repr(adapter)):
        assert token not in text and SECRET not in text
    server.app.inject_fault("error", status=500)
    failures = []
    for call in (adapter.orders, lambda: adapter.place_order(market_buy(quantity=10**9, product=Product.CNC))):
        with pytest.raises(BrokerError) as raised:
            call()
        failures.append(raised.value)
    requests.post(f"{server.url}/__sim__/expire-sessions", timeout=5)
    with pytest.raises(SessionExpired) as expired:
        adapter.funds()
    failures.append(expired.value)
    for error in failures:
        assert token not in str(error.detail) and SECRET not in str(error.detail) and token not in repr(error)
    for name in os.listdir(fy.LOG_DIRECTORY):
        with open(os.path.join(fy.LOG_DIRECTORY, name), encoding="utf-8", errors="replace") as log_file:
            content = log_file.read()
        assert token not in content and SECRET not in content


@transactional
def test_two_accounts_on_different_simulators_do_not_interfere():
    first_app, second_app = FyersSimulator(), FyersSimulator()
    for app in (first_app, second_app):
        app.register_app(APP_ID, SECRET, redirect_uri=REDIRECT_URI)
    with serving(first_app) as first_server, serving(second_app) as second_server:
        first = logged_in(first_server, user_id="XJ00001")
        second = logged_in(second_server, user_id="XJ00002")
        errors: list[Exception] = []

        def poll(adapter: FyersAdapter) -> None:
            try:
                for _ in range(4):
                    adapter.positions()
                    adapter.funds()
            except Exception as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=poll, args=(adapter,)) for adapter in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        # Each token is valid only at its own simulator: a call sent to the other URL would have failed.
        assert errors == []
        assert first.session.broker_user_id == "XJ00001" and second.session.broker_user_id == "XJ00002"
        assert fyersModel.Config.API in (f"{first_server.url}/api/v3", f"{second_server.url}/api/v3")


def test_endpoint_lease_lets_same_url_calls_overlap_and_makes_other_urls_wait():
    lease = fy._EndpointLease()
    saved = (fyersModel.Config.API, fyersModel.Config.DATA_API)
    inside, release = threading.Event(), threading.Event()
    seen: list[tuple[str, str]] = []

    def slow_call_at_a() -> None:
        with lease.hold("http://127.0.0.1:1/api", "http://127.0.0.1:1/data"):
            inside.set()
            release.wait(5)
            seen.append(("a", fyersModel.Config.API))

    def call_at_b() -> None:
        with lease.hold("http://127.0.0.1:2/api", "http://127.0.0.1:2/data"):
            seen.append(("b", fyersModel.Config.API))

    try:
        holder = threading.Thread(target=slow_call_at_a)
        holder.start()
        assert inside.wait(5)
        with lease.hold("http://127.0.0.1:1/api", "http://127.0.0.1:1/data"):  # same URLs: no waiting
            seen.append(("a-too", fyersModel.Config.API))
        waiter = threading.Thread(target=call_at_b)
        waiter.start()
        time.sleep(0.2)
        assert [name for name, _ in seen] == ["a-too"]  # b waits while a call at a is in flight
        release.set()
        holder.join(5)
        waiter.join(5)
        assert seen == [
            ("a-too", "http://127.0.0.1:1/api"),
            ("a", "http://127.0.0.1:1/api"),
            ("b", "http://127.0.0.1:2/api"),
        ]
    finally:
        fyersModel.Config.API, fyersModel.Config.DATA_API = saved


@pytest.mark.parametrize(
    ("token", "fy_id"),
    [("not-a-jwt", ""), ("a.!!!.c", ""), ("a.bnVsbA.c", ""), ("h.eyJmeV9pZCI6ICJYSjAwMDA3In0.s", "XJ00007")],
)
def test_user_id_from_the_access_token(token, fy_id):
    assert fy._jwt_claim(token, "fy_id") == fy_id
