"""Fyers' public symbol master: the per-segment CSVs our Fyers simulator serves from the instrument master, read by
`instrument_master_fetch` in our vocabulary, and every way a download or a file can go wrong."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import date
from decimal import Decimal

import pytest
import requests

from algoterm.sandbox.simulators.base import SimulatorServer
from algoterm.sandbox.simulators.fyers import FyersSimulator
from brokers.adapters.fyers import SYMBOL_MASTER_FILES, instrument_master_fetch, symbol_master_parse
from brokers.protocol import BrokerInstrument, BrokerUnavailable, InvalidInput
from marketdata.instruments import instruments_load_demo
from marketdata.models import Instrument

from .conftest import serving

transactional = pytest.mark.django_db(transaction=True)

DEMO_DAY = date(2025, 6, 2)
SBIN_ROW = (
    "10100000003045,STATE BANK OF INDIA,0,1,0.05,INE062A01020,0915-1530|1815-1915:,2025-06-02,,NSE:SBIN-EQ,"
    "10,10,3045,SBIN,3045,-1.0,XX,10100000003045,None,1,0.0"
)


@pytest.fixture
def server() -> Iterator[SimulatorServer]:
    instruments_load_demo(today=DEMO_DAY, strikes_each_side=1)
    with serving(FyersSimulator()) as running:
        yield running


def fetch(server: SimulatorServer, **kwargs) -> list[BrokerInstrument]:
    return instrument_master_fetch(url=f"{server.url}/sym_details", timeout=kwargs.pop("timeout", 5.0), **kwargs)


def by_broker_id(instruments: list[BrokerInstrument]) -> dict[str, BrokerInstrument]:
    return {instrument.broker_id: instrument for instrument in instruments}


def control(server: SimulatorServer, route: str, body: dict) -> None:
    browser = requests.Session()
    browser.trust_env = False  # loopback only
    assert browser.post(f"{server.url}/__sim__/{route}", json=body, timeout=5).status_code == 200


# --- the whole master ---------------------------------------------------------------------------------------------


@transactional
def test_the_master_comes_back_in_our_vocabulary(server, settings):
    settings.FYERS_SYMBOL_MASTER_URL = f"{server.url}/sym_details/"
    instruments = instrument_master_fetch(timeout=5.0)  # an empty url: the setting's
    listed = by_broker_id(instruments)

    # Every instrument of our master, by its Fyers symbol; the files the demo universe leaves empty (commodities,
    # currencies) list near-month futures, as Fyers' files always have rows.
    ours = set(Instrument.objects.filter(is_active=True).values_list("exchange", "fyers_symbol"))
    fetched = {(instrument.exchange, instrument.broker_id) for instrument in instruments}
    assert ours <= fetched
    assert fetched - ours == {(i.exchange, i.broker_id) for i in instruments if i.exchange in ("MCX", "CDS")}
    assert {instrument.exchange for instrument in instruments} == {"NSE", "BSE", "NFO", "BFO", "MCX", "CDS"}

    # cash
    assert listed["NSE:SBIN-EQ"] == BrokerInstrument(
        exchange="NSE",
        instrument_type="EQ",
        tradingsymbol="SBIN",
        broker_id="NSE:SBIN-EQ",
        name="STATE BANK OF INDIA",
        lot_size=1,
        tick_size=Decimal("0.05"),
        exchange_token="3045",
        isin="INE062A01020",
    )
    assert listed["NSE:M&M-EQ"].tradingsymbol == "M&M"
    reliance = listed["BSE:RELIANCE-A"]
    assert (reliance.exchange, reliance.tradingsymbol, reliance.instrument_type) == ("BSE", "RELIANCE", "EQ")

    # indices, from the cash files
    nifty = listed["NSE:NIFTY50-INDEX"]
    assert (nifty.exchange, nifty.instrument_type, nifty.tradingsymbol) == ("NSE", "INDEX", "NIFTY50")
    assert (nifty.underlying, nifty.exchange_token, nifty.expiry, nifty.isin) == ("NIFTY", "26000", None, "")
    sensex = listed["BSE:SENSEX-INDEX"]
    assert (sensex.exchange, sensex.instrument_type, sensex.underlying) == ("BSE", "INDEX", "SENSEX")

    # derivatives
    stored = Instrument.objects.filter(exchange="NFO", underlying="NIFTY", instrument_type="CE").first()
    option = listed[stored.fyers_symbol]
    assert (option.exchange, option.instrument_type, option.tradingsymbol) == ("NFO", "CE", stored.tradingsymbol)
    assert (option.underlying, option.expiry, option.strike) == ("NIFTY", stored.expiry, stored.strike)
    assert (option.lot_size, option.isin) == (75, "")
    future = Instrument.objects.filter(exchange="BFO", underlying="SENSEX", instrument_type="FUT").first()
    sensex_future = listed[future.fyers_symbol]
    assert (sensex_future.exchange, sensex_future.expiry, sensex_future.strike) == ("BFO", future.expiry, None)
    crude = [i for i in instruments if i.exchange == "MCX" and i.underlying == "CRUDEOIL"]
    assert crude and all(i.instrument_type == "FUT" and i.broker_id.startswith("MCX:CRUDEOIL") for i in crude)


# --- failures ----------------------------------------------------------------------------------------------------


@transactional
def test_a_server_error_on_any_file_is_unavailability_and_nothing_half_read_comes_back(server):
    server.app.inject_fault("error", status=503)
    with pytest.raises(BrokerUnavailable, match=r"NSE_CM\.csv could not be downloaded: HTTP 503"):
        fetch(server)
    served = server.app.requests_served
    # The fault injection's control route, as the platform's refresh-guard tests will use it: the third file fails.
    server.app.inject_fault("delay", count=2, seconds=0)
    control(server, "fault", {"mode": "error", "count": 1, "status": 500})
    with pytest.raises(BrokerUnavailable, match=r"NSE_FO\.csv could not be downloaded: HTTP 500"):
        fetch(server)
    assert server.app.requests_served == served + 3  # it stopped at the failing file
    assert len(fetch(server)) > 0  # and the broker is back


@transactional
def test_a_timeout_is_unavailability(server):
    server.app.inject_fault("delay", seconds=1.0)
    with pytest.raises(BrokerUnavailable, match="ReadTimeout"):
        fetch(server, timeout=0.3)


def test_nobody_listening_is_unavailability():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(BrokerUnavailable, match="ConnectionError"):
        instrument_master_fetch(url=f"http://127.0.0.1:{port}/sym_details", timeout=2.0)


@transactional
def test_files_not_in_fyers_layout_are_refused_naming_file_and_line(server):
    server.app.inject_fault("garbage")  # an HTML error page with status 200
    with pytest.raises(InvalidInput, match=r"NSE_CM\.csv, line 1: 1 columns where 21 were expected"):
        fetch(server)
    control(server, "symbol-master", {"columns": 18, "segment": "NSE_FO"})  # Fyers' older 18-column layout
    with pytest.raises(InvalidInput, match=r"NSE_FO\.csv, line 1: 18 columns where 21 were expected"):
        fetch(server)
    control(server, "symbol-master", {"rows": 0, "segment": "BSE_FO"})
    with pytest.raises(InvalidInput, match=r"BSE_FO\.csv is empty"):
        fetch(server)


@transactional
def test_a_truncated_master_is_served_on_request_and_restored(server):
    complete = fetch(server)
    control(server, "symbol-master", {"rows": 5, "segment": "NSE_CM"})
    truncated = fetch(server)
    assert len([i for i in truncated if i.exchange == "NSE"]) == 5
    assert len([i for i in truncated if i.exchange == "NFO"]) == len([i for i in complete if i.exchange == "NFO"])
    control(server, "symbol-master", {"without_indices": True})
    assert not [i for i in fetch(server) if i.instrument_type == "INDEX"]
    control(server, "symbol-master", {})
    assert len(fetch(server)) == len(complete)


# --- reading rows (the parser alone) --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (SBIN_ROW.replace(",0.05,", ",tick,"), r"line 2: tick size 'tick' is not a number"),
        (SBIN_ROW.replace(",INE062A01020,0915-1530|1815-1915:,2025-06-02,,", ",x,y,z,abc,"), "line 2: expiry"),
        (SBIN_ROW.replace(",3045,SBIN,", ",30x45,SBIN,"), r"line 2: scrip code '30x45' is not a number"),
        (SBIN_ROW.replace("NSE:SBIN-EQ", "SBIN"), r"line 2: symbol ticker 'SBIN' is not like NSE:SBIN-EQ"),
        (SBIN_ROW.replace(",10,10,3045,", ",NSE,10,3045,"), r"line 2: exchange 'NSE' is not a number"),
    ],
)
def test_unreadable_values_name_the_file_and_line(row, message):
    text = SBIN_ROW + "\n" + row + "\n"
    if "expiry" in message:  # an unreadable expiry matters on derivatives only
        text = SBIN_ROW + "\n" + row.replace(",0,1,", ",13,1,").replace(",10,10,", ",10,11,") + "\n"
    with pytest.raises(InvalidInput, match=rf"NSE_CM\.csv, {message}"):
        symbol_master_parse(text, file_name="NSE_CM.csv")


def test_rows_we_do_not_trade_are_left_out():
    debenture = SBIN_ROW.replace(",0,1,", ",2,1,").replace("NSE:SBIN-EQ", "NSE:SBIN-N1")
    nse_commodity = SBIN_ROW.replace(",10,10,3045,", ",10,20,3045,")
    parsed = symbol_master_parse("\n".join([SBIN_ROW, debenture, nse_commodity, ""]), file_name="NSE_CM.csv")
    assert [instrument.broker_id for instrument in parsed] == ["NSE:SBIN-EQ"]


def test_blank_lines_alone_are_an_empty_file():
    with pytest.raises(InvalidInput, match=r"NSE_CD\.csv is empty"):
        symbol_master_parse("\n\n", file_name="NSE_CD.csv")


def test_every_published_segment_is_fetched():
    assert SYMBOL_MASTER_FILES == ("NSE_CM", "BSE_CM", "NSE_FO", "BSE_FO", "MCX_COM", "NSE_CD")
