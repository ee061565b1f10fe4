"""What market data plugs into brokers from its AppConfig.ready(): the price source (quote cache and tick bus) the
paper broker prices from, and the instrument master behind the broker id lookups. Without them brokers fail loudly
rather than price every symbol synthetically or call every instrument unknown."""

from decimal import Decimal

import pytest
from django.core.exceptions import ImproperlyConfigured

from brokers import exchange, instruments, prices
from brokers.models import Venue
from brokers.protocol import OrderRequest, OrderType, Product, Side
from marketdata.models import Instrument, InstrumentType
from marketdata.quotes import quote_get


@pytest.fixture
def no_price_source(monkeypatch):
    monkeypatch.setattr(prices, "_source", None)


@pytest.fixture
def no_instrument_master(monkeypatch):
    monkeypatch.setattr(instruments, "_master", None)


def test_without_a_price_source_a_price_is_an_error_not_a_synthetic_quote(no_price_source):
    with pytest.raises(ImproperlyConfigured):
        prices.quote_for("NSE:INFY")
    with pytest.raises(ImproperlyConfigured):
        prices.quote_publish(prices.quote_at("NSE:INFY", "1000"))


@pytest.mark.django_db
def test_a_published_quote_reaches_the_quote_cache_and_the_paper_exchange_prices_from_it(publish_quote, settings):
    settings.PAPER_SLIPPAGE_BPS = 0
    publish_quote("NSE:INFY", "1234.50")

    assert quote_get("NSE:INFY").last_price == Decimal("1234.50")
    assert prices.quote_for("NSE:INFY").last_price == Decimal("1234.50")
    account = exchange.exchange_account(venue=Venue.PAPER, client_id="acc_hooks", opening_balance=Decimal("100000"))
    placed = exchange.place(
        account=account,
        request=OrderRequest(
            symbol="NSE:INFY", side=Side.BUY, quantity=1, order_type=OrderType.MARKET, product=Product.MIS
        ),
    )
    assert placed.average_price == Decimal("1234.55")  # the quote's ask


def test_the_demo_universe_levels_are_reference_prices():
    assert prices.reference_price("NSE:DLF") == Decimal(750)  # a demo stock with no level of brokers' own
    assert prices.reference_price("NSE:INFY") == prices.REFERENCE_PRICES["NSE:INFY"]


def test_the_static_table_answers_without_the_master_and_anything_else_is_an_error(no_instrument_master):
    assert instruments.by_symbol("NSE:INFY").kite_token == 408065
    assert instruments.by_kite_token(408065).symbol == "NSE:INFY"
    assert instruments.by_dhan_security_id("NSE", "1594").symbol == "NSE:INFY"
    with pytest.raises(ImproperlyConfigured):
        instruments.by_symbol("NSE:DLF")


@pytest.mark.django_db
def test_the_master_answers_what_the_static_table_does_not():
    Instrument.objects.create(
        symbol="NSE:DLF",
        exchange="NSE",
        segment="NSE",
        tradingsymbol="DLF",
        name="DLF",
        underlying="DLF",
        instrument_type=InstrumentType.EQ,
        kite_token=3771393,
        dhan_security_id="14732",
        lot_size=1,
        tick_size=Decimal("0.05"),
    )

    assert instruments.by_symbol("NSE:DLF").kite_token == 3771393
    assert instruments.by_kite_token(3771393).symbol == "NSE:DLF"
    assert instruments.by_dhan_security_id("NSE", "14732").symbol == "NSE:DLF"
    assert instruments.by_symbol("NSE:NOSUCH") is None
