"""Dhan's and Fyers' instrument masters merged into the one master: canonical symbols, broker ids, and what each
master owns."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
import time_machine

from brokers.protocol import BrokerInstrument
from marketdata.instruments.masters import (
    canonical_symbol,
    instrument_master_check,
    instrument_records_from_master,
    instruments_merge_master,
)
from marketdata.models import Instrument, InstrumentType

pytestmark = pytest.mark.django_db

# Tuesdays of December 2026: the 29th is the month's last (monthly) NIFTY expiry, the 15th a weekly one.
WEEKLY, MONTHLY = date(2026, 12, 15), date(2026, 12, 29)


def dhan_rows() -> list[BrokerInstrument]:
    return [
        BrokerInstrument("NSE", "INDEX", "NIFTY", "13", name="NIFTY 50"),
        BrokerInstrument("NSE", "EQ", "INFY", "1594", name="INFOSYS LIMITED", tick_size=Decimal("0.10")),
        BrokerInstrument("NFO", "FUT", "NIFTY-Dec2026-FUT", "35001", underlying="NIFTY", expiry=MONTHLY, lot_size=75),
        BrokerInstrument(
            "NFO", "CE", "NIFTY-Dec2026-24000-CE", "35002", underlying="NIFTY", expiry=WEEKLY, strike=Decimal("24000")
        ),
        BrokerInstrument(
            "NFO", "PE", "NIFTY-Dec2026-24000-PE", "35003", underlying="NIFTY", expiry=MONTHLY, strike=Decimal("24000")
        ),
        BrokerInstrument("NCDEX", "FUT", "GUARSEED", "9", underlying="GUARSEED", expiry=MONTHLY),
    ]


def test_derivatives_get_kite_tradingsymbols_weekly_and_monthly():
    records, skipped, problems = instrument_records_from_master(broker="dhan", rows=dhan_rows())
    by_symbol = {record.symbol: record for record in records}

    assert set(by_symbol) == {
        "NSE:NIFTY 50",  # Dhan's index id 13 is our NIFTY 50
        "NSE:INFY",
        "NFO:NIFTY26DECFUT",
        "NFO:NIFTY26D1524000CE",  # weekly: YY, month character, DD
        "NFO:NIFTY26DEC24000PE",  # the month's last expiry: monthly
    }
    assert skipped == 1 and problems == []
    assert by_symbol["NFO:NIFTY26D1524000CE"].dhan_security_id == "35002"
    assert by_symbol["NFO:NIFTY26D1524000CE"].strike == Decimal("24000.00")
    assert by_symbol["NFO:NIFTY26DECFUT"].lot_size == 75 and by_symbol["NFO:NIFTY26DECFUT"].segment == "NFO-FUT"
    assert by_symbol["NSE:NIFTY 50"].instrument_type == InstrumentType.INDEX
    assert by_symbol["NSE:NIFTY 50"].underlying == "NIFTY"


def test_unreadable_rows_are_reported_not_fatal():
    rows = [
        *dhan_rows(),
        BrokerInstrument("NFO", "CE", "NIFTY-BAD", "35009", underlying="NIFTY", expiry=WEEKLY, strike=None),
    ]
    records, _, problems = instrument_records_from_master(broker="dhan", rows=rows)
    assert len(records) == 5
    assert problems == ["35009 is an option without a strike"]


def test_fyers_index_names_map_to_ours():
    row = BrokerInstrument("NSE", "INDEX", "NIFTYBANK", "NSE:NIFTYBANK-INDEX")
    assert canonical_symbol(broker="fyers", row=row, monthly=set()) == "NSE:NIFTY BANK"


@time_machine.travel("2026-12-07 08:00 +0530", tick=False)
def test_a_merge_sets_only_its_own_id_and_takes_it_off_what_it_no_longer_lists():
    kite_infy = Instrument.objects.create(
        symbol="NSE:INFY",
        exchange="NSE",
        segment="NSE",
        tradingsymbol="INFY",
        name="INFOSYS",
        underlying="INFY",
        instrument_type="EQ",
        lot_size=1,
        tick_size=Decimal("0.05"),
        kite_token=408065,
        dhan_security_id="999",
        fyers_symbol="NSE:INFY-EQ",
    )
    delisted = Instrument.objects.create(
        symbol="NSE:OLDCO",
        exchange="NSE",
        segment="NSE",
        tradingsymbol="OLDCO",
        underlying="OLDCO",
        instrument_type="EQ",
        dhan_security_id="777",
    )
    records, _, _ = instrument_records_from_master(broker="dhan", rows=dhan_rows())

    result = instruments_merge_master(broker="dhan", records=records)

    kite_infy.refresh_from_db()
    assert kite_infy.dhan_security_id == "1594"  # Dhan's own id wins over what Kite's dump implied
    assert kite_infy.kite_token == 408065 and kite_infy.name == "INFOSYS"  # Kite's fields are Kite's
    assert kite_infy.tick_size == Decimal("0.05") and kite_infy.fyers_symbol == "NSE:INFY-EQ"
    delisted.refresh_from_db()
    assert delisted.dhan_security_id == ""
    created = Instrument.objects.get(symbol="NFO:NIFTY26D1524000CE")
    assert created.kite_token is None and created.expiry == WEEKLY and created.fyers_symbol == "NSE:NIFTY26D1524000CE"
    assert (result.created, result.updated) == (4, 1)

    again = instruments_merge_master(broker="dhan", records=records)  # idempotent
    assert (again.created, again.updated) == (0, 0)
    assert Instrument.objects.filter(dhan_security_id="35002").count() == 1


def test_the_guard_refuses_a_shrunken_master_or_one_without_the_indices(settings):
    settings.INSTRUMENT_MASTER_REQUIRED_INDICES = ["NSE:NIFTY 50"]
    records, _, _ = instrument_records_from_master(broker="dhan", rows=dhan_rows())
    assert instrument_master_check(broker="dhan", records=records) == []  # the first load has nothing to compare
    instruments_merge_master(broker="dhan", records=records)

    assert instrument_master_check(broker="dhan", records=records) == []
    without_index = [record for record in records if record.symbol != "NSE:NIFTY 50"]
    reasons = instrument_master_check(broker="dhan", records=without_index)
    assert reasons == ["it lacks the indices NSE:NIFTY 50"]
    reasons = instrument_master_check(broker="dhan", records=records[:2])
    assert len(reasons) == 1 and "lists 2 instruments where we have 5 from dhan" in reasons[0]
    assert instrument_master_check(broker="dhan", records=[]) == ["the download lists no instruments we trade"]
