"""GET /api/ltp/{symbol}, /api/quotes, /api/candles."""

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from algoterm.testing import assert_error, assert_requires_auth
from brokers.prices import quote_at
from marketdata.candles import CandleBar, candles_upsert
from marketdata.models import Instrument
from marketdata.quotes import quotes_put

pytestmark = pytest.mark.django_db

IST = ZoneInfo("Asia/Kolkata")


@pytest.fixture
def market():
    Instrument.objects.create(
        symbol="NSE:NIFTY 50", exchange="NSE", segment="INDICES", tradingsymbol="NIFTY 50", instrument_type="INDEX"
    )
    Instrument.objects.create(
        symbol="NSE:M&M", exchange="NSE", segment="NSE", tradingsymbol="M&M", instrument_type="EQ"
    )
    nifty = quote_at("NSE:NIFTY 50", "24350.15")
    infy = quote_at("NSE:INFY", "1890.40")
    quotes_put([nifty, infy])
    return {"nifty": nifty, "infy": infy}


@pytest.mark.parametrize("url", ["/api/ltp/NSE:INFY", "/api/quotes?symbols=NSE:INFY", "/api/candles?symbol=NSE:INFY"])
def test_routes_require_authentication(url):
    assert_requires_auth("get", url)


def test_ltp_of_a_symbol_with_a_colon_and_a_space(trader_client, market):
    response = trader_client.get("/api/ltp/NSE%3ANIFTY%2050")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["symbol"] == "NSE:NIFTY 50" and body["ltp"] == 24350.15
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None
    assert trader_client.get("/api/ltp/nse:infy").json()["ltp"] == 1890.4


def test_ltp_unknown_is_404_and_listed_without_a_price_is_503(trader_client, market):
    assert_error(trader_client.get("/api/ltp/NSE:NOPE"), 404, "NOT_FOUND")
    assert_error(trader_client.get("/api/ltp/NSE%3AM%26M"), 503, "SERVICE_UNAVAILABLE")


def test_quotes_and_missing(trader_client, market):
    response = trader_client.get("/api/quotes", {"symbols": "NSE:INFY, nse:nifty 50,NSE:M&M,NSE:NOPE,NSE:INFY"})

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body["quotes"]) == {"NSE:INFY", "NSE:NIFTY 50"}
    assert body["missing"] == ["NSE:M&M", "NSE:NOPE"]
    infy = body["quotes"]["NSE:INFY"]
    assert infy["ltp"] == 1890.4 and infy["bid"] == 1890.35 and infy["ask"] == 1890.45
    assert {"volume", "oi", "oi_change", "open", "high", "low", "close", "change", "timestamp"} <= set(infy)


@pytest.mark.parametrize("query", [{}, {"symbols": " , "}, {"symbols": ",".join(f"NSE:S{i}" for i in range(101))}])
def test_quotes_bad_symbols_are_400(trader_client, query):
    body = assert_error(trader_client.get("/api/quotes", query), 400, "VALIDATION_ERROR")
    assert "symbols" in body["errors"]


def test_quotes_unknown_parameter_is_refused(trader_client):
    body = assert_error(trader_client.get("/api/quotes", {"symbols": "NSE:INFY", "mode": "x"}), 400, "VALIDATION_ERROR")
    assert "mode" in body["errors"]


@pytest.fixture
def minutes():
    start = datetime(2026, 3, 2, 9, 15, tzinfo=IST)
    candles_upsert(
        candles=[
            CandleBar(
                "NSE:INFY",
                "1m",
                start + timedelta(minutes=i),
                Decimal(100 + i),
                Decimal(101 + i),
                Decimal(99 + i),
                Decimal("100.25") + i,
                10,
                None,
            )
            for i in range(30)
        ]
    )


def test_candles_derived_for_a_day(trader_client, market, minutes):
    response = trader_client.get(
        "/api/candles", {"symbol": "NSE:INFY", "interval": "15m", "from": "2026-03-02", "to": "2026-03-02"}
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["symbol"] == "NSE:INFY" and body["interval"] == "15m"
    assert body["candles"][0] == {
        "start": "2026-03-02T09:15:00+05:30",
        "open": 100.0,
        "high": 115.0,
        "low": 99.0,
        "close": 114.25,
        "volume": 150,
        "oi": None,
    }
    assert [candle["start"] for candle in body["candles"]] == ["2026-03-02T09:15:00+05:30", "2026-03-02T09:30:00+05:30"]


def test_candles_between_datetimes(trader_client, market, minutes):
    response = trader_client.get(
        "/api/candles",
        {"symbol": "NSE:INFY", "interval": "1m", "from": "2026-03-02T09:20:00", "to": "2026-03-02T03:55:00Z"},
    )
    assert [candle["start"][11:16] for candle in response.json()["candles"]] == [
        "09:20",
        "09:21",
        "09:22",
        "09:23",
        "09:24",
    ]


def test_candles_of_an_imported_symbol_outside_the_master(trader_client, minutes):
    response = trader_client.get(
        "/api/candles", {"symbol": "NSE:INFY", "interval": "1d", "from": "2026-03-01", "to": "2026-03-03"}
    )
    assert response.status_code == 200 and len(response.json()["candles"]) == 1


@pytest.mark.parametrize(
    "query, field",
    [
        ({"symbol": "NSE:INFY", "interval": "2m"}, "interval"),
        ({"symbol": "NSE:INFY", "from": "yesterday"}, "from"),
        ({"symbol": "NSE:INFY", "to": "2026-13-01"}, "to"),
        ({"symbol": "NSE:INFY", "from": "2026-03-02", "to": "2026-03-01"}, "to"),
        ({"symbol": "NSE:INFY", "interval": "1m", "from": "2025-01-01", "to": "2026-03-01"}, "from"),
        ({"interval": "1m"}, "symbol"),
        ({"symbol": "NSE:INFY", "limit": "5"}, "limit"),
    ],
)
def test_candles_bad_input_is_400(trader_client, market, query, field):
    body = assert_error(trader_client.get("/api/candles", query), 400, "VALIDATION_ERROR")
    assert field in body["errors"], body


def test_candles_unknown_symbol_is_404(trader_client, market):
    assert_error(trader_client.get("/api/candles", {"symbol": "NSE:NOPE"}), 404, "NOT_FOUND")


def test_candles_for_a_listed_symbol_without_data_are_empty(trader_client, market):
    response = trader_client.get("/api/candles", {"symbol": "NSE:M&M", "interval": "5m"})
    assert response.status_code == 200 and response.json()["candles"] == []


@pytest.mark.django_db
def test_impossible_inputs_are_400_not_500(trader_client):
    from algoterm.testing import assert_error

    assert_error(trader_client.get("/api/ltp/NSE:%00"), 400, "VALIDATION_ERROR")
    assert_error(
        trader_client.get("/api/candles", {"symbol": "NSE:INFY", "interval": "1d", "to": "9999-12-31"}),
        400,
        "VALIDATION_ERROR",
    )
    assert_error(trader_client.get("/api/instruments", {"page": "999999999999999999999"}), 400, "VALIDATION_ERROR")
