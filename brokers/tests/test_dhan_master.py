"""Dhan's compact scrip master: reading its real layout, and downloading it from the Dhan simulator, which writes it
from our instrument master, through the egress guard."""

from __future__ import annotations

import csv
import io
import socket
import time
from datetime import date
from decimal import Decimal

import pytest
import requests

from algoterm.sandbox.simulators.dhan import DhanSimulator
from brokers.adapters.dhan import (
    SCRIP_MASTER_COLUMNS,
    instrument_from_scrip_row,
    instrument_master_fetch,
    instruments_from_scrip_master,
)
from brokers.protocol import BrokerError, BrokerInstrument, BrokerUnavailable, InvalidInput
from brokers.tests.conftest import serving
from marketdata.instruments import instruments_load_demo
from marketdata.models import Instrument, InstrumentType

HEADER = ",".join(SCRIP_MASTER_COLUMNS)
# Rows as Dhan writes them: tick sizes in paise, -0.01 for "no strike", expiries with their closing time, weekly
# and monthly contracts sharing a month in their trading symbols, empty names on contracts.
ROWS = {
    "infy": "NSE,E,1594,EQUITY,,INFY,1.0,Infosys,,-0.01000,XX,5.0000,NA,ES,EQ,INFOSYS LIMITED",
    "be": "NSE,E,20374,EQUITY,,SADBHAV,1.0,Sadbhav Engineering,,-0.01000,XX,1.0000,NA,ES,BE,SADBHAV ENGINEERING LTD",
    "bse": "BSE,E,500209,EQUITY,,INFY,1.0,Infosys,,-0.01000,XX,5.0000,NA,ES,A,INFOSYS LIMITED",
    "nifty": "NSE,I,13,INDEX,0,NIFTY,1.0,Nifty 50,,-0.01000,XX,5.0000,NA,INDEX,X,NIFTY",
    "sensex": "BSE,I,51,INDEX,0,SENSEX,1.0,Sensex,,-0.01000,XX,0.0000,NA,INDEX,X,SENSEX",
    "future": "NSE,D,52175,FUTIDX,0,NIFTY-Sep2026-FUT,75.0,NIFTY SEP FUT,2026-09-29 14:30:00,-0.01000,XX,10.0000,M,"
    "FUTIDX,,",
    "weekly": "NSE,D,44430,OPTIDX,0,NIFTY-Oct2026-25800-CE,75.0,NIFTY 06 OCT 25800 CALL,2026-10-06 14:30:00,"
    "25800.00000,CE,5.0000,W,OP,,",
    "stock_option": "NSE,D,71234,OPTSTK,0,BAJAJ-AUTO-Sep2026-8500.5-PE,75.0,BAJAJ-AUTO 29 SEP 8500.5 PUT,"
    "2026-09-29 14:30:00,8500.50000,PE,5.0000,M,OP,,",
    "bfo": "BSE,D,1100470,OPTIDX,0,SENSEX-Sep2026-68000-CE,20.0,SENSEX 24 SEP 68000 CALL,2026-09-24 14:30:00,"
    "68000.00000,CE,5.0000,W,OP,,",
    "gold": "MCX,M,440000,FUTCOM,0,GOLD-Oct2026-FUT,1.0,GOLD OCT FUT,2026-10-05 23:30:00,-0.01000,XX,100.0000,M,"
    "FUTCOM,,GOLD",
    "gold_option": "MCX,M,513413,OPTFUT,0,GOLD-31Aug2026-163500-CE,1.0,GOLD 31 AUG 163500 CALL,"
    "2026-08-31 23:30:00,163500.00000,CE,50.0000,M,OP,,",
    "usdinr": "NSE,C,8500,FUTCUR,0,USDINR-28Aug2026-FUT,1.0,USDINR AUG FUT,2026-08-28 12:00:00,-0.01000,XX,"
    "0.2500,M,FUTCUR,,USDINR",
    "bse_currency": "BSE,C,1026077,FUTCUR,0,USDINR-28Aug2026-FUT,1.0,USDINR AUG FUT,2026-08-28 14:30:00,-0.01000,"
    "XX,0.2500,M,FUTCUR,,USDINR",
    "bond": "NSE,E,30001,BOND,,GS2030,1.0,GOI 2030,,-0.01000,XX,1.0000,NA,GB,GS,GOVT OF INDIA",
}


def read(*names: str, header: str = HEADER) -> list[BrokerInstrument]:
    return instruments_from_scrip_master(io.StringIO("\n".join([header, *(ROWS[name] for name in names)]) + "\n"))


def row(name: str) -> dict[str, str]:
    return next(csv.DictReader(io.StringIO(f"{HEADER}\n{ROWS[name]}\n")))


# --- reading the layout ------------------------------------------------------------------------------------------


def test_cash_rows_keep_our_symbols_and_read_tick_sizes_in_paise():
    infy, sadbhav, bse_infy = read("infy", "be", "bse")
    assert infy == BrokerInstrument(
        exchange="NSE",
        instrument_type="EQ",
        tradingsymbol="INFY",
        broker_id="1594",
        name="INFOSYS LIMITED",
        underlying="INFY",
        lot_size=1,
        tick_size=Decimal("0.05"),
        exchange_token="1594",
    )
    assert (sadbhav.tradingsymbol, sadbhav.tick_size) == ("SADBHAV-BE", Decimal("0.01"))  # NSE names its series
    assert (bse_infy.exchange, bse_infy.tradingsymbol, bse_infy.broker_id) == ("BSE", "INFY", "500209")


def test_indices_keep_dhans_name_and_security_id():
    nifty, sensex = read("nifty", "sensex")
    assert (nifty.exchange, nifty.instrument_type, nifty.tradingsymbol, nifty.name) == (
        "NSE",
        "INDEX",
        "NIFTY",
        "Nifty 50",
    )
    assert (nifty.broker_id, nifty.exchange_token) == ("13", "13")
    assert (sensex.exchange, sensex.broker_id, sensex.tick_size) == ("BSE", "51", Decimal("0"))


def test_contracts_carry_underlying_expiry_strike_and_lot():
    future, weekly, stock_option, bfo = read("future", "weekly", "stock_option", "bfo")
    assert future == BrokerInstrument(
        exchange="NFO",
        instrument_type="FUT",
        tradingsymbol="NIFTY-Sep2026-FUT",
        broker_id="52175",
        name="NIFTY SEP FUT",
        underlying="NIFTY",
        expiry=date(2026, 9, 29),
        strike=None,
        lot_size=75,
        tick_size=Decimal("0.1"),
        exchange_token="52175",
    )
    assert (weekly.instrument_type, weekly.underlying, weekly.expiry, weekly.strike) == (
        "CE",
        "NIFTY",
        date(2026, 10, 6),
        Decimal("25800.00"),
    )
    assert (stock_option.instrument_type, stock_option.underlying, stock_option.strike) == (
        "PE",
        "BAJAJ-AUTO",  # an underlying with a dash of its own
        Decimal("8500.50"),
    )
    assert (bfo.exchange, bfo.underlying, bfo.lot_size) == ("BFO", "SENSEX", 20)


def test_commodity_and_currency_contracts():
    gold, gold_option, usdinr = read("gold", "gold_option", "usdinr")
    assert (gold.exchange, gold.instrument_type, gold.underlying, gold.tick_size) == ("MCX", "FUT", "GOLD", Decimal(1))
    assert (gold_option.instrument_type, gold_option.underlying, gold_option.expiry) == (
        "CE",
        "GOLD",
        date(2026, 8, 31),
    )
    assert (usdinr.exchange, usdinr.underlying, usdinr.tick_size) == ("CDS", "USDINR", Decimal("0.0025"))


def test_what_we_do_not_trade_is_skipped_and_bad_rows_do_not_sink_the_file(caplog):
    assert instrument_from_scrip_row(row("bse_currency")) is None  # BSE's currency segment
    assert instrument_from_scrip_row(row("bond")) is None
    broken = ROWS["future"].replace("2026-09-29 14:30:00", "")
    lines = [HEADER, ROWS["infy"], ROWS["bond"], broken, ROWS["nifty"]]
    instruments = instruments_from_scrip_master(io.StringIO("\n".join(lines)))
    assert [instrument.broker_id for instrument in instruments] == ["1594", "13"]
    assert "without an expiry" in caplog.text


def test_a_byte_order_mark_and_windows_line_ends_are_read():
    text = "\ufeff" + "\r\n".join([HEADER, ROWS["infy"], ROWS["nifty"]]) + "\r\n"
    assert [instrument.broker_id for instrument in instruments_from_scrip_master(io.StringIO(text))] == ["1594", "13"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "lacks the column"),
        ("<html><body>502 Bad Gateway</body></html>\n", "lacks the column"),
        ("instrument_token,exchange_token,tradingsymbol\n1,2,INFY\n", "SEM_SMST_SECURITY_ID"),
        (HEADER + "\n", "no rows"),
        (HEADER + "\n" + ROWS["bond"] + "\n", "none of the instruments"),
    ],
)
def test_files_that_are_not_a_scrip_master_are_invalid(text, message):
    with pytest.raises(InvalidInput, match=message):
        instruments_from_scrip_master(io.StringIO(text))


# --- downloading from the simulator ------------------------------------------------------------------------------

TODAY = date(2026, 3, 2)


@pytest.fixture
def simulator():
    app = DhanSimulator()
    with serving(app) as server:
        yield app, server


def master_url(server) -> str:
    return f"{server.url}/api-data/api-scrip-master.csv"


@pytest.mark.django_db(transaction=True)
def test_the_simulators_file_round_trips_our_instrument_master(simulator):
    instruments_load_demo(today=TODAY, strikes_each_side=1)
    _, server = simulator
    fetched = instrument_master_fetch(url=master_url(server), timeout=10)

    ours = list(Instrument.objects.filter(is_active=True).exclude(dhan_security_id=""))
    assert len(fetched) == len(ours) > 500
    by_id = {(instrument.exchange, instrument.broker_id): instrument for instrument in fetched}
    assert len(by_id) == len(fetched)
    for instrument in ours:
        dhan = by_id[(instrument.exchange, instrument.dhan_security_id)]
        assert dhan.instrument_type == instrument.instrument_type
        assert (dhan.expiry, dhan.strike) == (instrument.expiry, instrument.strike)
        if instrument.instrument_type == InstrumentType.INDEX:
            assert dhan.tradingsymbol == instrument.underlying  # Dhan's index name: NIFTY, BANKNIFTY, SENSEX
        else:
            assert (dhan.tick_size, dhan.lot_size) == (instrument.tick_size, instrument.lot_size)
        if instrument.instrument_type == InstrumentType.EQ:
            assert dhan.tradingsymbol == instrument.tradingsymbol
        if instrument.instrument_type in (InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE):
            assert dhan.underlying == instrument.underlying

    nifty = by_id[("NSE", "13")]
    assert (nifty.instrument_type, nifty.tradingsymbol, nifty.name) == ("INDEX", "NIFTY", "Nifty 50")
    assert by_id[("NSE", "1594")].tradingsymbol == "INFY"
    weekly = {instrument.expiry for instrument in fetched if instrument.underlying == "NIFTY" and instrument.strike}
    assert len(weekly) > 2  # NIFTY's weeklies as well as its monthlies


@pytest.mark.django_db(transaction=True)
def test_the_file_is_written_in_dhans_layout(simulator):
    instruments_load_demo(today=TODAY, strikes_each_side=1)
    _, server = simulator
    response = requests.get(master_url(server), timeout=10)
    assert response.status_code == 200 and "csv" in response.headers["Content-Type"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0]) == SCRIP_MASTER_COLUMNS
    by_symbol = {(row["SEM_SEGMENT"], row["SEM_TRADING_SYMBOL"], row["SEM_EXPIRY_DATE"]): row for row in rows}
    infy = by_symbol[("E", "INFY", "")]
    assert (infy["SEM_EXM_EXCH_ID"], infy["SEM_SMST_SECURITY_ID"], infy["SEM_TICK_SIZE"]) == ("NSE", "1594", "5.0000")
    assert (infy["SEM_INSTRUMENT_NAME"], infy["SEM_SERIES"], infy["SEM_STRIKE_PRICE"]) == ("EQUITY", "EQ", "-0.01000")
    nifty = by_symbol[("I", "NIFTY", "")]
    assert (nifty["SEM_SMST_SECURITY_ID"], nifty["SEM_INSTRUMENT_NAME"]) == ("13", "INDEX")
    futures = [
        row for row in rows if row["SEM_INSTRUMENT_NAME"] == "FUTIDX" and row["SEM_TRADING_SYMBOL"][:6] == "NIFTY-"
    ]
    assert futures and futures[0]["SEM_TRADING_SYMBOL"] == "NIFTY-Mar2026-FUT"
    assert futures[0]["SEM_EXPIRY_DATE"].endswith(" 14:30:00") and futures[0]["SEM_LOT_UNITS"] == "75.0"
    options = [row for row in rows if row["SEM_INSTRUMENT_NAME"] == "OPTSTK"]
    assert options and all(row["SEM_OPTION_TYPE"] in ("CE", "PE") for row in options)
    assert {row["SEM_EXPIRY_FLAG"] for row in rows if row["SEM_INSTRUMENT_NAME"] == "OPTIDX"} == {"M", "W"}


@pytest.mark.django_db(transaction=True)
def test_an_empty_instrument_master_serves_the_static_table(simulator, settings):
    _, server = simulator
    settings.DHAN_SCRIP_MASTER_URL = master_url(server)
    fetched = instrument_master_fetch()  # no url: the setting
    by_id = {(instrument.exchange, instrument.broker_id): instrument for instrument in fetched}
    assert by_id[("NSE", "1594")].tradingsymbol == "INFY"
    assert by_id[("BSE", "500325")].tradingsymbol == "RELIANCE"
    assert (by_id[("NSE", "13")].instrument_type, by_id[("NSE", "13")].tradingsymbol) == ("INDEX", "NIFTY")


# --- failures ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.django_db(transaction=True)
def test_a_failing_download_is_unavailable(simulator, status):
    app, server = simulator
    app.inject_fault("error", status=status)
    with pytest.raises(BrokerUnavailable, match=f"HTTP {status}"):
        instrument_master_fetch(url=master_url(server), timeout=10)
    assert instrument_master_fetch(url=master_url(server), timeout=10)  # the fault was one request long


@pytest.mark.django_db(transaction=True)
def test_a_garbage_page_instead_of_the_file_is_invalid(simulator):
    app, server = simulator
    app.inject_fault("garbage")
    with pytest.raises(InvalidInput, match="lacks the column"):
        instrument_master_fetch(url=master_url(server), timeout=10)


@pytest.mark.django_db(transaction=True)
def test_a_truncated_file_serves_what_it_was_cut_to(simulator):
    instruments_load_demo(today=TODAY, strikes_each_side=1)
    app, server = simulator
    whole = instrument_master_fetch(url=master_url(server), timeout=10)

    requests.post(f"{server.url}/__sim__/scrip-master", json={"rows": 40}, timeout=5).raise_for_status()
    assert instrument_master_fetch(url=master_url(server), timeout=10) == whole[:40]

    requests.post(f"{server.url}/__sim__/scrip-master", json={"indices": False}, timeout=5).raise_for_status()
    without_indices = instrument_master_fetch(url=master_url(server), timeout=10)
    assert len(without_indices) == len(whole) - 4
    assert not [instrument for instrument in without_indices if instrument.instrument_type == "INDEX"]

    requests.post(f"{server.url}/__sim__/scrip-master", json={"rows": 0}, timeout=5).raise_for_status()
    with pytest.raises(InvalidInput, match="no rows"):
        instrument_master_fetch(url=master_url(server), timeout=10)

    app.scrip_master_truncate()
    assert len(instrument_master_fetch(url=master_url(server), timeout=10)) == len(whole)


@pytest.mark.django_db(transaction=True)
def test_a_slow_download_times_out_as_unavailable(simulator):
    app, server = simulator
    app.inject_fault("delay", seconds=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        instrument_master_fetch(url=master_url(server), timeout=0.3)
    assert time.monotonic() - started < 0.9
    time.sleep(1.0)  # let the delayed request finish before the test database is flushed


def test_an_unreachable_host_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BrokerUnavailable, match="could not be downloaded"):
        instrument_master_fetch(url=f"http://127.0.0.1:{port}/api-data/api-scrip-master.csv", timeout=2)


@pytest.mark.django_db(transaction=True)
def test_a_wrong_address_is_a_broker_error(simulator):
    _, server = simulator
    with pytest.raises(BrokerError, match="HTTP 404") as raised:
        instrument_master_fetch(url=f"{server.url}/api-data/no-such-file.csv", timeout=10)
    assert type(raised.value) is BrokerError


@pytest.mark.django_db(transaction=True)
def test_the_download_goes_through_the_egress_guard(simulator):
    """A proxy on our own network is refused before any connection is made to it."""
    app, server = simulator
    with pytest.raises(BrokerUnavailable):
        instrument_master_fetch(url=master_url(server), timeout=5, proxy_url=f"http://127.0.0.1:{server.port}")
    assert app.requests_served == 0
