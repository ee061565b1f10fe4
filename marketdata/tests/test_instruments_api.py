import io

import pytest

from algoterm.testing import assert_error, assert_requires_auth
from marketdata.instruments import instruments_load_kite_csv
from marketdata.models import Instrument
from marketdata.tests.test_instruments import KITE_CSV

URL = "/api/instruments"
FIELDS = {
    "symbol",
    "exchange",
    "segment",
    "tradingsymbol",
    "name",
    "underlying",
    "instrument_type",
    "expiry",
    "strike",
    "lot_size",
    "tick_size",
    "is_active",
}


@pytest.fixture
def master(db):
    instruments_load_kite_csv(source=io.StringIO(KITE_CSV))
    Instrument.objects.filter(symbol="NFO:NIFTY26D0124000CE").update(is_active=False)


def symbols(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["symbol"] for item in response.json()["items"]]


def test_requires_auth(db):
    assert_requires_auth("GET", URL)


def test_lists_active_instruments_with_public_fields_only(trader_client, master):
    response = trader_client.get(URL)
    body = response.json()
    assert (body["total"], body["page"], body["page_size"], body["total_pages"]) == (7, 1, 20, 1)
    assert "NFO:NIFTY26D0124000CE" not in symbols(response)
    put = next(item for item in body["items"] if item["symbol"] == "NFO:NIFTY26DEC24000PE")
    assert set(put) == FIELDS
    assert put["strike"] == 24000.0 and put["tick_size"] == 0.05 and put["expiry"] == "2026-12-29"
    equity = next(item for item in body["items"] if item["symbol"] == "NSE:RELIANCE")
    assert equity["strike"] is None and equity["instrument_type"] == "EQ"


def test_include_inactive(trader_client, master):
    response = trader_client.get(URL, {"include_inactive": "true"})
    assert "NFO:NIFTY26D0124000CE" in symbols(response)
    assert response.json()["total"] == 8


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"exchange": "NFO"}, ["NFO:NIFTY26DEC24000PE", "NFO:NIFTY26DECFUT"]),
        ({"exchange": "bse"}, ["BSE:RELIANCE", "BSE:SENSEX"]),
        ({"instrument_type": "INDEX"}, ["BSE:SENSEX", "NSE:NIFTY 50"]),
        ({"underlying": "nifty"}, ["NFO:NIFTY26DEC24000PE", "NFO:NIFTY26DECFUT", "NSE:NIFTY 50"]),
        ({"underlying": "NIFTY", "instrument_type": "FUT"}, ["NFO:NIFTY26DECFUT"]),
        ({"expiry": "2026-12-29"}, ["NFO:NIFTY26DEC24000PE", "NFO:NIFTY26DECFUT"]),
        ({"expiry": "2026-12-03", "exchange": "BFO"}, ["BFO:SENSEX2612380000CE"]),
        ({"search": "reliance"}, ["BSE:RELIANCE", "NSE:RELIANCE"]),
        ({"search": "industries"}, ["BSE:RELIANCE", "NSE:RELIANCE"]),
        ({"search": "nse:nifty"}, ["NSE:NIFTY 50"]),
        ({"search": "24000pe"}, ["NFO:NIFTY26DEC24000PE"]),
        ({"search": "nothing-like-it"}, []),
    ],
)
def test_filters_and_search(trader_client, master, params, expected):
    assert symbols(trader_client.get(URL, params)) == expected


def test_pagination(trader_client, master):
    first = trader_client.get(URL, {"page_size": 3}).json()
    second = trader_client.get(URL, {"page_size": 3, "page": 3}).json()
    assert (first["total"], first["total_pages"], len(first["items"])) == (7, 3, 3)
    assert len(second["items"]) == 1
    past_the_end = trader_client.get(URL, {"page_size": 3, "page": 9}).json()
    assert past_the_end["items"] == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"expiry": "29-12-2026"}, "expiry"),
        ({"expiry": "2026-02-30"}, "expiry"),
        ({"exchange": "NYSE"}, "exchange"),
        ({"instrument_type": "SWAP"}, "instrument_type"),
        ({"include_inactive": "maybe"}, "include_inactive"),
        ({"page_size": "500"}, "page_size"),
        ({"segmnt": "NFO"}, "segmnt"),
    ],
)
def test_bad_input_is_a_validation_error(trader_client, master, params, field):
    body = assert_error(trader_client.get(URL, params), 400, "VALIDATION_ERROR")
    assert field in body["errors"]
