"""The daily instrument-master refresh against the Dhan simulator: a good download loads, a failed or suspicious one
keeps yesterday's master, raises the alert, and the next good one clears it; `load_instruments --broker`."""

from __future__ import annotations

from datetime import date

import pytest
import time_machine
from django.core.management import CommandError, call_command

from algoterm.console.alerts import _instruments
from algoterm.sandbox.simulators.dhan import DhanSimulator
from brokers.tests.conftest import serving
from marketdata.instruments import instruments_load_demo
from marketdata.instruments.masters import instrument_master_refresh
from marketdata.models import Instrument, InstrumentMasterLoad

pytestmark = pytest.mark.django_db(transaction=True)
TODAY = date(2026, 3, 2)
Outcome = InstrumentMasterLoad.Outcome


@pytest.fixture
def dhan(settings):
    app = DhanSimulator()
    with serving(app) as server:
        settings.DHAN_SCRIP_MASTER_URL = f"{server.url}/api-data/api-scrip-master.csv"
        settings.INSTRUMENT_MASTER_TIMEOUT_SECONDS = 10
        yield app


def dhan_ids() -> dict[str, str]:
    return dict(Instrument.objects.exclude(dhan_security_id="").values_list("symbol", "dhan_security_id"))


@time_machine.travel("2026-03-02 07:30 +0530", tick=False)
def test_a_bad_download_keeps_yesterdays_master_and_raises_the_alert_until_a_good_one(dhan):
    instruments_load_demo(today=TODAY, strikes_each_side=1)
    first = instrument_master_refresh(broker="dhan")
    assert first.outcome == Outcome.LOADED, first.message
    before = dhan_ids()
    assert len(before) > 500 and before["NSE:NIFTY 50"] == "13" and before["NSE:INFY"] == "1594"
    assert _instruments(now=None) == []

    dhan.scrip_master_truncate(rows=50)  # a download cut short
    shrunk = instrument_master_refresh(broker="dhan", attempt=1)
    assert shrunk.outcome == Outcome.KEPT and "more than the 20% allowed" in shrunk.message
    assert dhan_ids() == before

    dhan.scrip_master_truncate(indices=False)  # whole, but without the indices
    indexless = instrument_master_refresh(broker="dhan", attempt=2)
    assert indexless.outcome == Outcome.KEPT and "NSE:NIFTY 50" in indexless.message
    assert dhan_ids() == before

    dhan.scrip_master_truncate()
    dhan.inject_fault("error", status=503)  # Dhan's file server is down
    failed = instrument_master_refresh(broker="dhan", attempt=3)
    assert failed.outcome == Outcome.FAILED and "503" in failed.message
    assert dhan_ids() == before

    findings = _instruments(now=None)
    assert [finding.condition for finding in findings] == ["instruments.master.dhan"]
    assert "Yesterday's master stays in use" in findings[0].detail

    healed = instrument_master_refresh(broker="dhan", attempt=1)
    assert healed.outcome == Outcome.LOADED
    assert dhan_ids() == before
    assert _instruments(now=None) == []
    assert list(
        InstrumentMasterLoad.objects.filter(broker="dhan").order_by("id").values_list("outcome", flat=True)
    ) == [
        Outcome.LOADED,
        Outcome.KEPT,
        Outcome.KEPT,
        Outcome.FAILED,
        Outcome.LOADED,
    ]


@time_machine.travel("2026-03-02 07:30 +0530", tick=False)
def test_the_command_refreshes_one_broker_and_refuses_a_suspicious_master(dhan, capsys):
    instruments_load_demo(today=TODAY, strikes_each_side=1)
    call_command("load_instruments", "--broker", "dhan")
    assert "dhan:" in capsys.readouterr().out

    dhan.scrip_master_truncate(rows=10)
    with pytest.raises(CommandError, match="kept the previous master"):
        call_command("load_instruments", "--broker", "dhan")
    call_command("load_instruments", "--broker", "dhan", "--force")  # the operator knows better
    assert len(dhan_ids()) < 20


@time_machine.travel("2026-03-02 07:30 +0530", tick=False)
def test_kites_dump_is_read_through_the_market_data_account(settings, trader):
    from algoterm.sandbox.simulators.kite import KiteSimulator
    from brokers.models import AccountStatus, Broker, BrokerAccount

    instruments_load_demo(today=TODAY, strikes_each_side=1)
    nobody = instrument_master_refresh(broker="zerodha")
    assert nobody.outcome == Outcome.FAILED and "no connected Zerodha account" in nobody.message

    app = KiteSimulator()
    app.register_app("md-key", "md-secret", "http://127.0.0.1/callback")
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        account = BrokerAccount(owner=trader, broker=Broker.ZERODHA, label="feeds", status=AccountStatus.CONNECTED)
        account.credentials = {"api_key": "md-key", "api_secret": "md-secret"}
        account.session = {"access_token": app.issue_session("md-key", "ZX1"), "broker_user_id": "ZX1"}
        account.market_data_priority = 1
        account.save()
        tokens = dict(Instrument.objects.exclude(kite_token=None).values_list("symbol", "kite_token"))

        loaded = instrument_master_refresh(broker="zerodha")

    assert loaded.outcome == Outcome.LOADED, loaded.message
    assert loaded.rows == len(tokens) and loaded.created == 0
    assert dict(Instrument.objects.exclude(kite_token=None).values_list("symbol", "kite_token")) == tokens
