"""Candles imported from a broker's historical data: Zerodha through the real kiteconnect SDK against the Kite
simulator, whose candles come from the synthetic price path."""

import io
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.core.management import CommandError, call_command
from kiteconnect import exceptions as kite_errors

from algoterm.api.errors import ValidationFailed
from algoterm.sandbox.simulators.kite import KiteSimulator, synthetic_minute_volume
from brokers.adapters.zerodha import ZerodhaAdapter
from brokers.gateway import build_adapter
from brokers.models import AccountStatus, BrokerAccount
from brokers.prices import synthetic_quote
from brokers.protocol import (
    AdapterConfig,
    BrokerRateLimited,
    BrokerSession,
    HistoricalCandle,
    InvalidInput,
    SessionExpired,
)
from brokers.tests.conftest import serving
from marketdata.candles import candles_import_chunks, candles_import_from_broker
from marketdata.models import Candle

# The simulator thread reads the database (instrument lookups), so its writes must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

IST = ZoneInfo("Asia/Kolkata")
API_KEY = "hist-key"
SYMBOL = "NSE:INFY"
INFY_TOKEN = 408065
MONDAY = datetime(2026, 3, 2, tzinfo=IST)  # Tuesday 3 March 2026 is Holi, an NSE holiday
SESSION_MINUTES = 375


def session_minute(day: datetime, minute: int) -> datetime:
    return day.replace(hour=9, minute=15) + timedelta(minutes=minute)


def expected_minute(opening: datetime) -> tuple[Decimal, Decimal, Decimal, Decimal, int]:
    """The simulator's minute candle: open at the minute, close at its last second, high and low every 15 s."""
    first = int(opening.timestamp())
    prices = [synthetic_quote(SYMBOL, at=moment).last_price for moment in (first, first + 15, first + 30, first + 45)]
    prices.append(synthetic_quote(SYMBOL, at=first + 59).last_price)
    return prices[0], max(prices), min(prices), prices[-1], synthetic_minute_volume(SYMBOL, first)


@pytest.fixture
def kite(settings):
    app = KiteSimulator()
    with serving(app) as server:
        settings.KITE_ROOT_URL = server.url
        settings.KITE_LOGIN_URL = f"{server.url}/connect/login"
        yield app, server


@pytest.fixture
def account(kite, trader) -> BrokerAccount:
    app, _ = kite
    account = BrokerAccount(owner=trader, broker="zerodha", label="Kite", status=AccountStatus.CONNECTED)
    account.credentials = {"api_key": API_KEY, "api_secret": "hist-secret"}
    account.session = {"access_token": app.issue_session(API_KEY, "HS1234"), "broker_user_id": "HS1234"}
    account.save()
    return account


@pytest.fixture
def adapter(kite) -> ZerodhaAdapter:
    app, server = kite
    return ZerodhaAdapter(
        credentials={"api_key": API_KEY, "api_secret": "hist-secret"},
        session=BrokerSession(access_token=app.issue_session(API_KEY, "HS1234")),
        config=AdapterConfig(base_url=server.url, timeout=5),
        account_ref="acc_hist",
    )


# --- the adapter and the simulator ---------------------------------------------------------------------------


def test_zerodha_historical_candles_are_aware_exact_and_half_open(adapter):
    candles = adapter.historical_candles(
        symbol=SYMBOL, interval="1m", start=session_minute(MONDAY, 0), end=session_minute(MONDAY, 5)
    )

    assert [candle.start for candle in candles] == [session_minute(MONDAY, minute) for minute in range(5)]
    first = candles[0]
    assert first.start.utcoffset() == timedelta(hours=5, minutes=30)
    assert isinstance(first, HistoricalCandle) and isinstance(first.open, Decimal)
    assert (first.open, first.high, first.low, first.close, first.volume) == expected_minute(first.start)
    assert first.oi is None  # Kite's 0 open interest for an equity

    days = adapter.historical_candles(symbol=SYMBOL, interval="1d", start=MONDAY, end=MONDAY + timedelta(days=3))
    assert [day.start for day in days] == [MONDAY, MONDAY + timedelta(days=2)]  # Holi skipped
    assert all(day.start.tzinfo is not None and day.start.utcoffset() == timedelta(hours=5, minutes=30) for day in days)


def test_zerodha_refuses_what_it_cannot_serve(adapter):
    with pytest.raises(InvalidInput, match="1m, 1d"):
        adapter.historical_candles(symbol=SYMBOL, interval="5m", start=MONDAY, end=MONDAY + timedelta(days=1))
    with pytest.raises(InvalidInput, match="no instrument NSE:NOSUCH"):
        adapter.historical_candles(symbol="NSE:NOSUCH", interval="1m", start=MONDAY, end=MONDAY + timedelta(days=1))
    with pytest.raises(InvalidInput, match="max limit: 60 days"):
        adapter.historical_candles(symbol=SYMBOL, interval="1m", start=MONDAY, end=MONDAY + timedelta(days=61))


def test_the_simulator_answers_kites_errors_and_rate_limit(adapter):
    kite = adapter._kite()
    with pytest.raises(kite_errors.InputException, match="invalid interval") as bad_interval:
        kite.historical_data(INFY_TOKEN, "2026-03-02 09:15:00", "2026-03-02 10:00:00", "fortnight")
    with pytest.raises(kite_errors.InputException, match="invalid token") as bad_token:
        kite.historical_data(12345, "2026-03-02 09:15:00", "2026-03-02 10:00:00", "minute")
    assert bad_interval.value.code == bad_token.value.code == 400

    kite_with_oi = adapter._kite().historical_data(
        INFY_TOKEN, "2026-03-02 09:15:00", "2026-03-02 09:15:00", "minute", oi=True
    )
    assert kite_with_oi[0]["date"] == session_minute(MONDAY, 0) and kite_with_oi[0]["oi"] == 0
    with pytest.raises(BrokerRateLimited):  # 3 requests a second: the fourth within the second is refused
        adapter.historical_candles(
            symbol=SYMBOL, interval="1m", start=session_minute(MONDAY, 0), end=session_minute(MONDAY, 1)
        )


def test_brokers_without_historical_data_say_so():
    paper = build_adapter(broker="paper", credentials={}, session=None, account_ref="acc_paper")
    with pytest.raises(InvalidInput, match="paper offers no historical data"):
        paper.historical_candles(symbol=SYMBOL, interval="1m", start=MONDAY, end=MONDAY + timedelta(days=1))


# --- the import --------------------------------------------------------------------------------------------------


def test_minute_import_stores_exact_candles_and_reimporting_changes_nothing(account):
    start, end = session_minute(MONDAY, 0), session_minute(MONDAY, 30)

    first = candles_import_from_broker(account=account, symbol=SYMBOL, interval="1m", start=start, end=end)

    assert (first.rows, first.created, first.updated) == (30, 30, 0)
    stored = list(Candle.objects.filter(symbol=SYMBOL, interval="1m").order_by("start"))
    assert [row.start for row in stored] == [session_minute(MONDAY, minute) for minute in range(30)]
    for row in stored:
        assert (row.open, row.high, row.low, row.close, row.volume) == expected_minute(row.start)
        assert row.oi is None

    again = candles_import_from_broker(account=account, symbol=SYMBOL, interval="1m", start=start, end=end)

    assert (again.rows, again.created, again.updated) == (30, 0, 30)
    assert [
        (row.open, row.high, row.low, row.close, row.volume)
        for row in Candle.objects.filter(symbol=SYMBOL).order_by("start")
    ] == [(row.open, row.high, row.low, row.close, row.volume) for row in stored]


def test_day_import_stores_one_candle_per_trading_day_at_ist_midnight(account):
    result = candles_import_from_broker(
        account=account, symbol=SYMBOL, interval="1d", start=MONDAY, end=MONDAY + timedelta(days=7)
    )

    days = list(Candle.objects.filter(symbol=SYMBOL, interval="1d").order_by("start"))
    assert result.rows == result.created == 4 and Candle.objects.count() == 4
    assert [day.start for day in days] == [MONDAY + timedelta(days=offset) for offset in (0, 2, 3, 4)]
    monday = days[0]
    session_open, last_second = (
        session_minute(MONDAY, 0),
        session_minute(MONDAY, SESSION_MINUTES) - timedelta(seconds=1),
    )
    assert monday.open == synthetic_quote(SYMBOL, at=session_open.timestamp()).last_price
    assert monday.close == synthetic_quote(SYMBOL, at=last_second.timestamp()).last_price
    assert monday.low <= min(monday.open, monday.close) and monday.high >= max(monday.open, monday.close)
    assert monday.volume == sum(
        synthetic_minute_volume(SYMBOL, int(session_minute(MONDAY, minute).timestamp()))
        for minute in range(SESSION_MINUTES)
    )

    again = candles_import_from_broker(
        account=account, symbol=SYMBOL, interval="1d", start=MONDAY, end=MONDAY + timedelta(days=7)
    )
    assert (again.rows, again.created, again.updated) == (4, 0, 4) and Candle.objects.count() == 4


def test_long_ranges_go_in_chunks_the_broker_allows():
    start = MONDAY
    chunks = candles_import_chunks(interval="1m", start=start, end=start + timedelta(days=130))

    assert [chunk_end - chunk_start for chunk_start, chunk_end in chunks] == [
        timedelta(days=60),
        timedelta(days=60),
        timedelta(days=10),
    ]
    assert all(previous[1] == following[0] for previous, following in zip(chunks, chunks[1:], strict=False))
    assert len(candles_import_chunks(interval="1d", start=start, end=start + timedelta(days=4000))) == 2
    # Dhan allows 90 days of minute candles a request, Fyers 100: their imports take fewer, longer chunks.
    dhan = candles_import_chunks(interval="1m", start=start, end=start + timedelta(days=130), max_span_days=90)
    assert [chunk_end - chunk_start for chunk_start, chunk_end in dhan] == [timedelta(days=90), timedelta(days=40)]
    with pytest.raises(ValidationFailed):
        candles_import_chunks(interval="5m", start=start, end=start + timedelta(days=1))
    with pytest.raises(ValidationFailed):
        candles_import_chunks(interval="1m", start=start, end=start)


def test_a_chunked_import_waits_out_the_rate_limit(account, monkeypatch):
    # Kite's limit is 60 days a request; one day here makes five chunks of the week.
    monkeypatch.setattr(ZerodhaAdapter, "historical_max_span_days", {"1m": 1, "1d": 2000})
    progress: list[tuple[int, int]] = []

    result = candles_import_from_broker(
        account=account,
        symbol=SYMBOL,
        interval="1m",
        start=MONDAY,
        end=MONDAY + timedelta(days=5),
        on_progress=lambda done, total: progress.append((done, total)),
    )

    assert progress == [(done, 5) for done in range(1, 6)]  # five requests: the fourth waited for the limit
    assert result.rows == result.created == 4 * SESSION_MINUTES
    assert Candle.objects.filter(symbol=SYMBOL, interval="1m").count() == 4 * SESSION_MINUTES


def test_unknown_symbol_is_invalid_input(account):
    with pytest.raises(InvalidInput):
        candles_import_from_broker(
            account=account, symbol="NSE:NOSUCH", interval="1m", start=MONDAY, end=MONDAY + timedelta(days=1)
        )
    assert not Candle.objects.exists()


def test_an_expired_session_is_409_and_marks_the_account(kite, account):
    app, _ = kite
    app.expire_sessions()

    with pytest.raises(SessionExpired) as expired:
        candles_import_from_broker(
            account=account, symbol=SYMBOL, interval="1m", start=MONDAY, end=MONDAY + timedelta(days=1)
        )

    assert expired.value.status_code == 409
    account.refresh_from_db()
    assert account.status == AccountStatus.EXPIRED
    assert not Candle.objects.exists()


# --- the command ---------------------------------------------------------------------------------------------


def test_import_candles_command_from_an_account(account):
    out = io.StringIO()
    arguments = ["--account", account.pk, "--symbol", "nse:infy", "--from", "2026-03-02", "--to", "2026-03-03"]

    call_command("import_candles", *arguments, verbosity=0, stdout=out)
    call_command("import_candles", *arguments, verbosity=0, stdout=out)
    call_command("import_candles", *arguments, "--interval", "1d", verbosity=0, stdout=out)

    assert "375 rows, 375 new, 0 updated" in out.getvalue()
    assert "375 rows, 0 new, 375 updated" in out.getvalue()
    assert "1 rows, 1 new, 0 updated" in out.getvalue()
    assert Candle.objects.filter(symbol=SYMBOL, interval="1m").count() == SESSION_MINUTES
    with pytest.raises(CommandError, match="needs --symbol"):
        call_command("import_candles", "--account", account.pk, "--from", "2026-03-02", "--to", "2026-03-02")
    with pytest.raises(CommandError, match="No broker account"):
        call_command("import_candles", *["--account", "acc_nobody", *arguments[2:]], verbosity=0)
    with pytest.raises(CommandError, match="Must be after from"):
        call_command("import_candles", *arguments[:4], "--from", "2026-03-05", "--to", "2026-03-01", verbosity=0)
    with pytest.raises(CommandError, match="not both"):
        call_command("import_candles", "some.csv", *arguments, verbosity=0)
