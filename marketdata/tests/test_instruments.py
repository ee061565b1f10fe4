import io
from datetime import date
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from brokers import instruments as broker_instruments
from marketdata import instruments as master
from marketdata.instruments import (
    InstrumentLoadError,
    demo_universe_kite_rows,
    instruments_load_demo,
    instruments_load_kite_csv,
    kite_csv_text,
    kite_option_tradingsymbol,
    loader,
    monthly_expiry,
    weekly_expiries,
)
from marketdata.models import Instrument

pytestmark = pytest.mark.django_db

HEADER = ",".join(master.KITE_CSV_COLUMNS)
KITE_CSV = f"""{HEADER}
738561,2885,RELIANCE,RELIANCE INDUSTRIES,0.0,,0.0,0.05,1,EQ,NSE,NSE
256265,1001,NIFTY 50,NIFTY 50,0.0,,0.0,0.0,0,EQ,INDICES,NSE
265,1,SENSEX,SENSEX,0.0,,0.0,0.0,0,EQ,INDICES,BSE
13319426,52029,NIFTY26DECFUT,NIFTY,0.0,2026-12-29,0.0,0.1,75,FUT,NFO-FUT,NFO
12183298,47591,NIFTY26D0124000CE,NIFTY,0.0,2026-12-01,24000.0,0.05,75,CE,NFO-OPT,NFO
12183554,47592,NIFTY26DEC24000PE,NIFTY,0.0,2026-12-29,24000.0,0.05,75,PE,NFO-OPT,NFO
206599173,807028,SENSEX2612380000CE,SENSEX,0.0,2026-12-03,80000.0,0.05,20,CE,BFO-OPT,BFO
128083204,500325,RELIANCE,RELIANCE INDUSTRIES,0.0,,0.0,0.05,1,EQ,BSE,BSE
2817,11,USDINR26DECFUT,USDINR,0.0,2026-12-29,0.0,0.0025,1,FUT,BCD-FUT,BCD
"""


def load(text: str, **kwargs):
    return instruments_load_kite_csv(source=io.StringIO(text), **kwargs)


def test_a_kite_dump_maps_to_canonical_instruments():
    result = load(KITE_CSV)
    assert (result.total, result.created, result.updated, result.skipped) == (8, 8, 0, 1)
    equity = Instrument.objects.get(symbol="NSE:RELIANCE")
    assert (equity.instrument_type, equity.underlying, equity.kite_token) == ("EQ", "RELIANCE", 738561)
    assert (equity.dhan_security_id, equity.fyers_symbol, equity.expiry, equity.strike) == (
        "2885",
        "NSE:RELIANCE-EQ",
        None,
        None,
    )
    index = Instrument.objects.get(symbol="NSE:NIFTY 50")
    assert (index.instrument_type, index.underlying, index.dhan_security_id, index.fyers_symbol) == (
        "INDEX",
        "NIFTY",
        "13",
        "NSE:NIFTY50-INDEX",
    )
    assert Instrument.objects.get(symbol="BSE:SENSEX").fyers_symbol == "BSE:SENSEX-INDEX"
    future = Instrument.objects.get(symbol="NFO:NIFTY26DECFUT")
    assert (future.instrument_type, future.underlying, future.expiry, future.lot_size) == (
        "FUT",
        "NIFTY",
        date(2026, 12, 29),
        75,
    )
    assert future.tick_size == Decimal("0.1") and future.fyers_symbol == "NSE:NIFTY26DECFUT"
    assert future.dhan_security_id == "52029"  # Dhan's id is the exchange token
    weekly = Instrument.objects.get(symbol="NFO:NIFTY26D0124000CE")
    assert (weekly.instrument_type, weekly.strike, weekly.segment) == ("CE", Decimal("24000.00"), "NFO-OPT")
    sensex = Instrument.objects.get(symbol="BFO:SENSEX2612380000CE")
    assert sensex.fyers_symbol == "BSE:SENSEX2612380000CE" and sensex.underlying == "SENSEX"
    assert Instrument.objects.get(symbol="BSE:RELIANCE").fyers_symbol == "BSE:RELIANCE-A"
    assert not Instrument.objects.filter(exchange="BCD").exists()


def test_sdk_typed_rows_load_too():
    rows = [
        {
            "instrument_token": 12183298,
            "exchange_token": "47591",
            "tradingsymbol": "NIFTY26D0124000CE",
            "name": "NIFTY",
            "last_price": 0.0,
            "expiry": date(2026, 12, 1),
            "strike": 24000.0,
            "tick_size": 0.05,
            "lot_size": 75,
            "instrument_type": "CE",
            "segment": "NFO-OPT",
            "exchange": "NFO",
        }
    ]
    result = master.instruments_load_kite_rows(rows=rows)
    assert result.created == 1
    assert Instrument.objects.get(kite_token=12183298).tick_size == Decimal("0.05")


def test_reloading_updates_and_retires_what_the_dump_no_longer_lists():
    load(KITE_CSV)
    changed = KITE_CSV.replace(
        "NIFTY26DECFUT,NIFTY,0.0,2026-12-29,0.0,0.1,75", "NIFTY26DECFUT,NIFTY,0.0,2026-12-29,0.0,0.1,65"
    )
    without_put = "\n".join(line for line in changed.splitlines() if "24000PE" not in line) + "\n"
    result = load(without_put)
    assert (result.created, result.updated, result.deactivated) == (0, 7, 1)
    assert Instrument.objects.get(symbol="NFO:NIFTY26DECFUT").lot_size == 65
    put = Instrument.objects.get(symbol="NFO:NIFTY26DEC24000PE")
    assert put.is_active is False  # kept, not deleted
    assert load(KITE_CSV).created == 0
    assert Instrument.objects.get(symbol="NFO:NIFTY26DEC24000PE").is_active is True


def test_a_partial_load_leaves_other_instruments_active():
    load(KITE_CSV)
    one_row = f"{HEADER}\n738561,2885,RELIANCE,RELIANCE INDUSTRIES,0.0,,0.0,0.05,1,EQ,NSE,NSE\n"
    assert load(one_row, full=False).deactivated == 0
    assert Instrument.objects.filter(is_active=True).count() == 8


def test_a_recycled_token_moves_to_its_new_contract():
    load(KITE_CSV)
    recycled = KITE_CSV.replace("NIFTY26DEC24000PE", "NIFTY26DEC24100PE").replace(
        ",24000.0,0.05,75,PE", ",24100.0,0.05,75,PE"
    )
    load(recycled)
    assert Instrument.objects.get(kite_token=12183554).symbol == "NFO:NIFTY26DEC24100PE"
    old = Instrument.objects.get(symbol="NFO:NIFTY26DEC24000PE")
    assert (old.is_active, old.kite_token) == (False, None)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("x,1,ABC,ABC,0.0,,0.0,0.05,1,EQ,NSE,NSE", "instrument_token"),
        ("999,1,NIFTY26DEC24000CE,NIFTY,0.0,29-12-2026,24000.0,0.05,75,CE,NFO-OPT,NFO", "expiry"),
        ("999,1,NIFTY26DEC24000CE,NIFTY,0.0,2026-12-29,abc,0.05,75,CE,NFO-OPT,NFO", "strike"),
        ("999,1,NIFTY26DEC24000CE,NIFTY,0.0,2026-12-29,0.0,0.05,75,CE,NFO-OPT,NFO", "without a strike"),
        ("999,1,NIFTY26DECFUT2,NIFTY,0.0,,0.0,0.05,75,FUT,NFO-FUT,NFO", "without an expiry"),
        ("999,1,ABC,ABC,0.0,,0.0,0.05,1,XX,NSE,NSE", "instrument_type"),
        ("999,1,ABC,ABC,0.0,,0.0,0.05,0,EQ,NSE,NSE", "lot_size"),
        ("999,1,RELIANCE,DUP,0.0,,0.0,0.05,1,EQ,NSE,NSE", "twice"),
        ("738561,1,OTHER,DUP,0.0,,0.0,0.05,1,EQ,NSE,NSE", "twice"),
    ],
)
def test_a_bad_row_in_the_middle_changes_nothing(bad_line, message):
    load(KITE_CSV)
    before = list(Instrument.objects.order_by("symbol").values())
    lines = KITE_CSV.replace(
        "NIFTY26DECFUT,NIFTY,0.0,2026-12-29,0.0,0.1,75", "NIFTY26DECFUT,NIFTY,0.0,2026-12-29,0.0,0.1,65"
    ).splitlines()
    lines.insert(5, bad_line)
    with pytest.raises(InstrumentLoadError) as error:
        load("\n".join(lines) + "\n")
    assert "line 6" in str(error.value) and message in str(error.value)
    assert list(Instrument.objects.order_by("symbol").values()) == before


def test_a_header_without_kite_columns_is_refused():
    with pytest.raises(InstrumentLoadError, match="header lacks"):
        load("symbol,token\nNSE:INFY,1\n")
    assert not Instrument.objects.exists()


def test_a_failure_while_writing_rolls_the_whole_load_back(monkeypatch):
    load(KITE_CSV)
    before = list(Instrument.objects.order_by("symbol").values())
    monkeypatch.setattr(loader, "WRITE_BATCH_SIZE", 3)
    real_bulk_create = Instrument.objects.bulk_create.__func__
    calls = []

    def failing_bulk_create(manager, objs, **kwargs):
        calls.append(len(objs))
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real_bulk_create(manager, objs, **kwargs)

    monkeypatch.setattr(type(Instrument.objects), "bulk_create", failing_bulk_create)
    changed = "\n".join(line for line in KITE_CSV.splitlines() if "SENSEX26" not in line).replace(
        ",0.1,75,", ",0.1,50,"
    )
    with pytest.raises(RuntimeError):
        load(changed + "\n")
    assert calls[0] == 3
    assert list(Instrument.objects.order_by("symbol").values()) == before


def test_progress_is_reported_per_phase():
    seen = []
    load(KITE_CSV, progress=lambda phase, advanced, total: seen.append((phase, advanced, total)))
    assert ("validate", 9, None) in seen and ("write", 8, 8) in seen


# --- expiries and tradingsymbols ----------------------------------------------------------------------------------


def test_expiries_follow_the_2026_rules_and_move_before_holidays():
    assert monthly_expiry(exchange="NFO", year=2026, month=12) == date(2026, 12, 29)  # last Tuesday
    assert monthly_expiry(exchange="NFO", year=2026, month=11) == date(2026, 11, 23)  # Tuesday 24th is a holiday
    assert monthly_expiry(exchange="NFO", year=2026, month=3) == date(2026, 3, 30)  # Tuesday 31st is a holiday
    assert monthly_expiry(exchange="BFO", year=2026, month=11) == date(2026, 11, 26)  # last Thursday
    assert monthly_expiry(exchange="BFO", year=2026, month=3) == date(2026, 3, 25)  # Thursday 26th is a holiday
    assert weekly_expiries(exchange="NFO", today=date(2026, 11, 18), count=3) == [
        date(2026, 11, 23),
        date(2026, 12, 1),
        date(2026, 12, 8),
    ]
    assert weekly_expiries(exchange="BFO", today=date(2026, 1, 12), count=2) == [date(2026, 1, 14), date(2026, 1, 22)]


def test_kite_tradingsymbols():
    assert master.kite_future_tradingsymbol(underlying="NIFTY", expiry=date(2026, 12, 29)) == "NIFTY26DECFUT"
    monthly = kite_option_tradingsymbol(
        underlying="NIFTY", expiry=date(2026, 12, 29), strike=Decimal("24000"), option_type="CE", monthly=True
    )
    weekly = kite_option_tradingsymbol(
        underlying="NIFTY", expiry=date(2026, 1, 20), strike=Decimal("24000"), option_type="PE", monthly=False
    )
    october = kite_option_tradingsymbol(
        underlying="SENSEX", expiry=date(2026, 10, 8), strike=Decimal("80000"), option_type="CE", monthly=False
    )
    fractional = kite_option_tradingsymbol(
        underlying="WIPRO", expiry=date(2026, 12, 29), strike=Decimal("252.50"), option_type="CE", monthly=True
    )
    assert (monthly, weekly, october, fractional) == (
        "NIFTY26DEC24000CE",
        "NIFTY2612024000PE",
        "SENSEX26O0880000CE",
        "WIPRO26DEC252.5CE",
    )


# --- the demo universe --------------------------------------------------------------------------------------------


def test_the_demo_universe_is_deterministic_and_well_formed():
    today = date(2026, 11, 23)
    rows = demo_universe_kite_rows(today=today)
    assert rows == demo_universe_kite_rows(today=today)
    assert len({row["instrument_token"] for row in rows}) == len(rows)
    by_symbol = {f"{row['exchange']}:{row['tradingsymbol']}": row for row in rows}
    assert len(by_symbol) == len(rows)
    for symbol in ("NSE:NIFTY 50", "NSE:NIFTY BANK", "NSE:NIFTY FIN SERVICE", "BSE:SENSEX"):
        assert by_symbol[symbol]["segment"] == "INDICES"
    stocks = [row for row in rows if row["exchange"] == "NSE" and row["segment"] == "NSE"]
    assert len(stocks) >= 50
    assert by_symbol["NSE:RELIANCE"]["instrument_token"] == "738561"  # the real token kept
    assert "BSE:RELIANCE" in by_symbol
    nifty = [row for row in rows if row["name"] == "NIFTY" and row["instrument_type"] in ("CE", "PE")]
    assert {row["expiry"] for row in nifty} == {"2026-11-23", "2026-12-01", "2026-12-08", "2026-12-15", "2026-12-29"}
    assert "NFO:NIFTY26NOV24350CE" in by_symbol and "NFO:NIFTY26D0124350CE" in by_symbol
    assert {row["lot_size"] for row in nifty} == {"75"}
    assert len({row["strike"] for row in nifty}) == 41
    banknifty = {row["expiry"] for row in rows if row["name"] == "BANKNIFTY"}
    assert banknifty == {"2026-11-23", "2026-12-29"}  # monthly only
    sensex = {row["expiry"] for row in rows if row["name"] == "SENSEX" and row["instrument_type"] == "CE"}
    assert sensex == {"2026-11-26", "2026-12-03", "2026-12-10", "2026-12-17", "2026-12-31"}
    assert {"NFO:INFY26NOVFUT", "NFO:INFY26DECFUT", "BFO:SENSEX26DECFUT", "NFO:FINNIFTY26DECFUT"} <= set(by_symbol)


def test_the_same_contract_keeps_its_tokens_from_day_to_day():
    monday = {
        f"{row['exchange']}:{row['tradingsymbol']}": row for row in demo_universe_kite_rows(today=date(2026, 11, 23))
    }
    tuesday = {
        f"{row['exchange']}:{row['tradingsymbol']}": row for row in demo_universe_kite_rows(today=date(2026, 11, 25))
    }
    shared = set(monday) & set(tuesday)
    assert len(shared) > 1000
    assert all(monday[symbol]["instrument_token"] == tuesday[symbol]["instrument_token"] for symbol in shared)


def test_demo_load_then_the_next_day_retires_expired_contracts():
    first = instruments_load_demo(today=date(2026, 11, 23), strikes_each_side=2)
    assert first.created == first.total > 500
    assert Instrument.objects.get(symbol="NSE:NIFTY 50").underlying == "NIFTY"
    second = instruments_load_demo(today=date(2026, 11, 25), strikes_each_side=2)
    assert second.deactivated > 0
    assert not Instrument.objects.get(symbol="NFO:NIFTY26NOVFUT").is_active
    assert Instrument.objects.get(symbol="NFO:NIFTY26JANFUT".replace("26JAN", "27JAN")).is_active


def test_demo_csv_round_trips_through_the_loader():
    rows = demo_universe_kite_rows(today=date(2026, 11, 23), strikes_each_side=1)
    result = load(kite_csv_text(rows=rows))
    assert result.total == len(rows)


# --- broker lookups -------------------------------------------------------------------------------------------------


def test_broker_lookups_read_the_master_after_the_static_table():
    assert broker_instruments.by_symbol("NFO:NIFTY26DECFUT") is None
    load(KITE_CSV)
    future = broker_instruments.by_symbol("NFO:NIFTY26DECFUT")
    assert (future.kite_token, future.dhan_security_id, future.lot_size) == (13319426, "52029", 75)
    assert broker_instruments.by_kite_token(13319426).symbol == "NFO:NIFTY26DECFUT"
    assert broker_instruments.by_dhan_security_id("NFO", "52029").symbol == "NFO:NIFTY26DECFUT"
    assert broker_instruments.by_symbol("NSE:INFY").kite_token == 408065  # static, with no row in the master
    assert broker_instruments.by_dhan_security_id("BFO", "52029") is None


# --- the command ----------------------------------------------------------------------------------------------------


def test_command_loads_a_csv(tmp_path):
    path = tmp_path / "instruments.csv"
    path.write_text(KITE_CSV)
    out = io.StringIO()
    call_command("load_instruments", "--csv", str(path), "--no-progress", stdout=out)
    assert "8 instruments loaded" in out.getvalue()
    assert Instrument.objects.count() == 8


def test_command_refuses_a_bad_file_and_a_missing_one(tmp_path):
    path = tmp_path / "instruments.csv"
    path.write_text(KITE_CSV + "x,1,ABC,ABC,0.0,,0.0,0.05,1,EQ,NSE,NSE\n")
    with pytest.raises(CommandError, match="line 11"):
        call_command("load_instruments", "--csv", str(path), "--no-progress")
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("load_instruments", "--csv", str(tmp_path / "missing.csv"), "--no-progress")
    with pytest.raises(CommandError, match="No broker account"):
        call_command("load_instruments", "--account", "acc_nope", "--no-progress")


def test_command_loads_the_demo_universe():
    out = io.StringIO()
    call_command("load_instruments", "--demo", "--today", "2026-11-23", "--no-progress", stdout=out)
    assert Instrument.objects.filter(underlying="NIFTY", instrument_type="CE").count() == 5 * 41


# --- Kite: the simulator's dump, read by the adapter through the SDK ----------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_kite_adapter_reads_the_simulators_dump_and_it_loads():
    from algoterm.sandbox.simulators.kite import KiteSimulator
    from brokers.adapters.paper import PaperAdapter
    from brokers.adapters.zerodha import ZerodhaAdapter
    from brokers.protocol import AdapterConfig, BrokerSession, InvalidInput
    from brokers.tests.conftest import serving

    app = KiteSimulator()
    app.register_app("bench-key", "bench-secret", "http://127.0.0.1/callback")
    with serving(app) as server:
        adapter = ZerodhaAdapter(
            credentials={"api_key": "bench-key", "api_secret": "bench-secret"},
            session=BrokerSession(access_token=app.issue_session("bench-key", "ZX1")),
            config=AdapterConfig(base_url=server.url, timeout=5),
            account_ref="acc_test",
        )
        static_rows = adapter.instruments()  # an empty master: the static table
        assert {f"{row['exchange']}:{row['tradingsymbol']}" for row in static_rows} == {
            instrument.symbol for instrument in broker_instruments.DEMO_INSTRUMENTS
        }
        load(KITE_CSV)
        rows = adapter.instruments()
    assert len(rows) == 8 and isinstance(rows[0]["instrument_token"], int)
    before = list(
        Instrument.objects.order_by("symbol").values_list("symbol", "kite_token", "instrument_type", "expiry")
    )
    assert master.instruments_load_kite_rows(rows=rows).updated == 8
    after = list(Instrument.objects.order_by("symbol").values_list("symbol", "kite_token", "instrument_type", "expiry"))
    assert after == before
    paper = PaperAdapter(credentials={}, session=None, config=AdapterConfig(), account_ref="acc_paper")
    with pytest.raises(InvalidInput, match="no instrument dump"):
        paper.instruments()
