"""Runtime configuration: the admin routes, each section's validation, optimistic locking, the audit trail, export and
import, and each section's effect where it acts (calendar, new users' risk limits, order freeze limits, the feed)."""

from datetime import date, datetime, timedelta

import pytest
from django.core.cache import cache

from accounts.models import AuditEvent
from accounts.tests.factories import UserFactory
from algoterm import config
from algoterm.management.commands.serve import market_feed_choice
from algoterm.models import ConfigSection
from algoterm.testing import assert_error, assert_requires_auth, client_for
from brokers.prices import quote_at, quote_publish
from marketdata import calendar
from marketdata.calendar import IST
from marketdata.models import Instrument, InstrumentType
from orders.tests.factories import EQUITY, instrument_create, paper_account, standard_instruments
from rms.services import profile_get_or_create

pytestmark = pytest.mark.django_db

MARKET_HOURS = {"open": "09:15", "close": "15:30", "pre_open": "09:00"}
FEED = {"source": "simulated", "interval_seconds": 1.0}
RMS = {
    "max_orders_per_day": 1000,
    "max_open_positions": 100,
    "trading_window": "09:15-15:30",
    "auto_square_off": "15:15",
}
MONDAY = date(2026, 11, 23)  # a trading day in the built-in calendar


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def put(client, section: str, data, **fields):
    return client.put(f"/api/config/{section}", {"data": data, **fields}, format="json")


def stored(client, section: str, data, **fields) -> dict:
    response = put(client, section, data, **fields)
    assert response.status_code == 200, response.json()
    return response.json()


def holidays_with(*extra: dict) -> dict:
    return {"NSE": [*config.config_get(name=config.HOLIDAYS)["NSE"], *extra]}


def ist(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=IST)


def audit_rows(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("occurred_at"))


# --- permissions ----------------------------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/api/config", None),
    ("GET", "/api/config/holidays", None),
    ("PUT", "/api/config/market_hours", {"data": {**MARKET_HOURS, "close": "15:00"}}),
    ("POST", "/api/config/export", None),
    ("POST", "/api/config/import", {"document": {"version": 1, "sections": {"feed": {**FEED, "source": ""}}}}),
]


def call(client, method: str, url: str, body):
    if body is None:
        return getattr(client, method.lower())(url)
    return getattr(client, method.lower())(url, body, format="json")


@pytest.mark.parametrize(("method", "url", "body"), ROUTES, ids=[f"{m} {u}" for m, u, _ in ROUTES])
def test_every_route_is_for_admins_only(method, url, body, admin_client, trader_client):
    assert_error(call(trader_client, method, url, body), 403, "PERMISSION_DENIED")
    assert_requires_auth(method, url, body)
    assert not ConfigSection.objects.exists()  # neither changed anything

    response = call(admin_client, method, url, body)
    assert response.status_code == 200, response.json()


def test_an_unknown_section_is_404(admin_client):
    assert_error(admin_client.get("/api/config/colours"), 404, "NOT_FOUND")
    assert_error(put(admin_client, "colours", {"red": 1}), 404, "NOT_FOUND")
    assert_error(admin_client.put("/api/config/colours", {"nonsense": 1}, format="json"), 404, "NOT_FOUND")


# --- reading --------------------------------------------------------------------------------------------------------


def test_the_list_starts_with_todays_behaviour_as_defaults(admin_client, settings):
    settings.RMS_DEFAULT_TRADING_WINDOW, settings.RMS_DEFAULT_AUTO_SQUARE_OFF = "09:15-15:30", "15:15"
    settings.MARKET_FEED, settings.MARKET_FEED_INTERVAL_SECONDS = "simulated", 2.0

    response = admin_client.get("/api/config")

    assert response.status_code == 200, response.json()
    sections = {section["name"]: section for section in response.json()["sections"]}
    assert list(sections) == ["market_hours", "holidays", "rms_defaults", "freeze_quantities", "feed"]
    assert all(s["version"] == 0 and not s["stored"] and s["updated_by"] is None for s in sections.values())
    assert sections["market_hours"]["data"] == MARKET_HOURS
    holidays = sections["holidays"]["data"]["NSE"]
    assert len(holidays) == len(calendar.NSE_TRADING_HOLIDAYS)
    assert {"date": "2026-12-25", "name": "Christmas"} in holidays
    assert sections["rms_defaults"]["data"] == RMS
    assert sections["freeze_quantities"]["data"]["NIFTY"] == 1800
    assert sections["feed"]["data"] == {"source": "simulated", "interval_seconds": 2.0}


@pytest.mark.parametrize("name", list(config.SECTIONS))
def test_each_default_is_valid_and_can_be_stored_as_it_is(name, admin_client):
    default = config.config_get(name=name)
    assert config.config_validate(name=name, data=default) == {}

    body = stored(admin_client, name, default)

    assert (body["version"], body["stored"], body["data"]) == (1, True, default)


def test_reads_are_cached_and_a_change_is_seen_at_once(admin_client, django_assert_num_queries):
    config.config_get(name=config.FREEZE_QUANTITIES)
    calendar.is_trading_day(MONDAY)
    with django_assert_num_queries(0):
        assert config.config_get(name=config.FREEZE_QUANTITIES)["NIFTY"] == 1800
        assert calendar.is_trading_day(MONDAY) and calendar.is_trading_day(MONDAY)
    stored(admin_client, "freeze_quantities", {"NIFTY": 900})
    assert config.config_get(name=config.FREEZE_QUANTITIES) == {"NIFTY": 900}


def test_a_commit_forgets_what_another_process_cached_meanwhile(admin_user, django_capture_on_commit_callbacks):
    config.config_get(name=config.FEED)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        config.config_put(actor=admin_user, name=config.FEED, data={"source": "", "interval_seconds": 5})
    cache.set(config._cache_key(config.FEED), FEED)  # another process read the old row before our commit
    assert config.config_get(name=config.FEED) == FEED
    for callback in callbacks:
        callback()
    assert config.config_get(name=config.FEED) == {"source": "", "interval_seconds": 5}


# --- writing, validation, locking, audit ----------------------------------------------------------------------------


def test_a_change_is_stored_versioned_and_audited_with_its_actor(admin_user, admin_client):
    first = stored(admin_client, "market_hours", {**MARKET_HOURS, "close": "15:00"})
    assert (first["version"], first["stored"], first["updated_by"]) == (1, True, admin_user.pk)
    assert first["data"]["close"] == "15:00" and first["updated_at"]
    second = stored(admin_client, "market_hours", {**MARKET_HOURS, "close": "15:00", "open": "09:30"})
    assert second["version"] == 2
    assert admin_client.get("/api/config/market_hours").json() == second

    rows = audit_rows("config.update")
    assert [(row.actor_id, row.target_type, row.target_id) for row in rows] == [
        (admin_user.pk, "config", "market_hours")
    ] * 2
    assert rows[0].details == {
        "section": "market_hours",
        "version": 1,
        "changes": {"close": {"from": "15:30", "to": "15:00"}},
    }
    assert rows[1].details["changes"] == {"open": {"from": "09:15", "to": "09:30"}}


def test_a_holiday_change_is_audited_as_dates_added_removed_and_renamed(admin_client):
    days = config.config_get(name=config.HOLIDAYS)["NSE"]
    changed = [
        {"date": "2026-11-23", "name": "Added"},
        *({**day, "name": "Renamed"} if day["date"] == "2026-01-26" else day for day in days[1:]),
    ]
    stored(admin_client, "holidays", {"NSE": changed})
    assert audit_rows("config.update")[0].details["changes"] == {
        "added": ["2026-11-23"],
        "removed": [days[0]["date"]],
        "renamed": ["2026-01-26"],
    }


VALIDATION_CASES = {
    # market_hours
    "hours: no leading zero": ("market_hours", {**MARKET_HOURS, "open": "9:15"}, ["open"]),
    "hours: not a clock": ("market_hours", {**MARKET_HOURS, "close": "24:00"}, ["close"]),
    "hours: seconds": ("market_hours", {**MARKET_HOURS, "pre_open": "09:00:00"}, ["pre_open"]),
    "hours: a number": ("market_hours", {**MARKET_HOURS, "open": 915}, ["open"]),
    "hours: close before open": ("market_hours", {**MARKET_HOURS, "close": "09:00"}, ["close"]),
    "hours: close at open": ("market_hours", {**MARKET_HOURS, "close": "09:15"}, ["close"]),
    "hours: pre-open too late": ("market_hours", {**MARKET_HOURS, "pre_open": "09:10"}, ["pre_open"]),
    "hours: unknown field": ("market_hours", {**MARKET_HOURS, "lunch": "13:00"}, ["lunch"]),
    "hours: missing field": ("market_hours", {"open": "09:15", "close": "15:30"}, ["pre_open"]),
    # holidays
    "holidays: impossible date": ("holidays", {"NSE": [{"date": "2026-02-30", "name": "x"}]}, ["NSE.0.date"]),
    "holidays: not ISO": ("holidays", {"NSE": [{"date": "26-01-2026", "name": "x"}]}, ["NSE.0.date"]),
    "holidays: a number": ("holidays", {"NSE": [{"date": 20260126, "name": "x"}]}, ["NSE.0.date"]),
    "holidays: a Saturday": ("holidays", {"NSE": [{"date": "2026-11-21", "name": "x"}]}, ["NSE.0.date"]),
    "holidays: far past": ("holidays", {"NSE": [{"date": "1900-01-01", "name": "x"}]}, ["NSE.0.date"]),
    "holidays: listed twice": (
        "holidays",
        {
            "NSE": [
                {"date": "2026-01-26", "name": "a"},
                {"date": "2026-03-03", "name": "b"},
                {"date": "2026-01-26", "name": "c"},
            ]
        },
        ["NSE.2.date"],
    ),
    "holidays: blank name": ("holidays", {"NSE": [{"date": "2026-01-26", "name": "  "}]}, ["NSE.0.name"]),
    "holidays: long name": ("holidays", {"NSE": [{"date": "2026-01-26", "name": "x" * 121}]}, ["NSE.0.name"]),
    "holidays: entry field unknown": (
        "holidays",
        {"NSE": [{"date": "2026-01-26", "name": "x", "half_day": True}]},
        ["NSE.0.half_day"],
    ),
    "holidays: entry without name": ("holidays", {"NSE": [{"date": "2026-01-26"}]}, ["NSE.0.name"]),
    "holidays: entry not an object": ("holidays", {"NSE": ["2026-01-26"]}, ["NSE.0"]),
    "holidays: not a list": ("holidays", {"NSE": {"date": "2026-01-26"}}, ["NSE"]),
    "holidays: unknown exchange": ("holidays", {"NSE": [], "BSE": []}, ["BSE"]),
    "holidays: no NSE": ("holidays", {}, ["NSE"]),
    "holidays: a month closed": (
        "holidays",
        {
            "NSE": [
                {"date": day.isoformat(), "name": "strike"}
                for day in (date(2027, 3, 1) + timedelta(days=n) for n in range(35))
                if day.weekday() < 5
            ]
        },
        ["NSE"],
    ),
    "holidays: several at once": (
        "holidays",
        {"NSE": [{"date": "2026-13-01", "name": "x"}, {"date": "2026-01-26", "name": ""}]},
        ["NSE.0.date", "NSE.1.name"],
    ),
    # rms_defaults
    "rms: zero orders": ("rms_defaults", {**RMS, "max_orders_per_day": 0}, ["max_orders_per_day"]),
    "rms: negative positions": ("rms_defaults", {**RMS, "max_open_positions": -5}, ["max_open_positions"]),
    "rms: count as text": ("rms_defaults", {**RMS, "max_orders_per_day": "100"}, ["max_orders_per_day"]),
    "rms: fractional count": ("rms_defaults", {**RMS, "max_open_positions": 2.5}, ["max_open_positions"]),
    "rms: boolean count": ("rms_defaults", {**RMS, "max_orders_per_day": True}, ["max_orders_per_day"]),
    "rms: window backwards": ("rms_defaults", {**RMS, "trading_window": "15:30-09:15"}, ["trading_window"]),
    "rms: window malformed": ("rms_defaults", {**RMS, "trading_window": "9-15"}, ["trading_window"]),
    "rms: window null": ("rms_defaults", {**RMS, "trading_window": None}, ["trading_window"]),
    "rms: square-off outside window": ("rms_defaults", {**RMS, "auto_square_off": "15:45"}, ["auto_square_off"]),
    "rms: square-off not a clock": ("rms_defaults", {**RMS, "auto_square_off": "3pm"}, ["auto_square_off"]),
    "rms: unknown field": ("rms_defaults", {**RMS, "max_daily_loss": 5000}, ["max_daily_loss"]),
    "rms: missing field": (
        "rms_defaults",
        {key: value for key, value in RMS.items() if key != "trading_window"},
        ["trading_window"],
    ),
    # freeze_quantities
    "freeze: zero": ("freeze_quantities", {"NIFTY": 0}, ["NIFTY"]),
    "freeze: negative": ("freeze_quantities", {"BANKNIFTY": -600}, ["BANKNIFTY"]),
    "freeze: text": ("freeze_quantities", {"NIFTY": "1800"}, ["NIFTY"]),
    "freeze: fraction": ("freeze_quantities", {"NIFTY": 1800.5}, ["NIFTY"]),
    "freeze: huge": ("freeze_quantities", {"NIFTY": 10**9}, ["NIFTY"]),
    "freeze: lower-case underlying": ("freeze_quantities", {"nifty": 1800, "BANKNIFTY": 600}, ["nifty"]),
    "freeze: blank underlying": ("freeze_quantities", {"": 1800}, [""]),
    # feed
    "feed: unknown source": ("feed", {**FEED, "source": "upstox"}, ["source"]),
    "feed: null source": ("feed", {**FEED, "source": None}, ["source"]),
    "feed: zero interval": ("feed", {**FEED, "interval_seconds": 0}, ["interval_seconds"]),
    "feed: negative interval": ("feed", {**FEED, "interval_seconds": -1}, ["interval_seconds"]),
    "feed: interval as text": ("feed", {**FEED, "interval_seconds": "1"}, ["interval_seconds"]),
    "feed: interval too long": ("feed", {**FEED, "interval_seconds": 61}, ["interval_seconds"]),
    "feed: missing source": ("feed", {"interval_seconds": 1}, ["source"]),
    "feed: unknown field": ("feed", {**FEED, "account_id": "acc_1"}, ["account_id"]),
}


@pytest.mark.parametrize(("section", "data", "fields"), VALIDATION_CASES.values(), ids=VALIDATION_CASES.keys())
def test_bad_data_is_refused_naming_the_fields(section, data, fields, admin_client):
    body = assert_error(put(admin_client, section, data), 400, "VALIDATION_ERROR")
    assert set(body["errors"]) == {f"data.{field}" if field else "data" for field in fields}, body["errors"]
    assert not ConfigSection.objects.exists() and not audit_rows("config.update")


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"data"}),
        ({"data": [MARKET_HOURS]}, {"data"}),
        ({"data": MARKET_HOURS, "force": True}, {"force"}),
        ({"data": MARKET_HOURS, "expected_version": -1}, {"expected_version"}),
        ({"data": MARKET_HOURS, "expected_version": "latest"}, {"expected_version"}),
    ],
)
def test_a_malformed_put_body_is_refused_naming_the_fields(body, fields, admin_client):
    response = admin_client.put("/api/config/market_hours", body, format="json")
    assert set(assert_error(response, 400, "VALIDATION_ERROR")["errors"]) == fields


def test_optimistic_locking_refuses_a_write_based_on_an_old_version(admin_client):
    assert stored(admin_client, "feed", {**FEED, "interval_seconds": 2}, expected_version=0)["version"] == 1

    stale = put(admin_client, "feed", {**FEED, "interval_seconds": 3}, expected_version=0)

    body = assert_error(stale, 409, "CONFLICT")
    assert body["current_version"] == 1
    assert config.config_get(name=config.FEED)["interval_seconds"] == 2
    assert stored(admin_client, "feed", {**FEED, "interval_seconds": 3}, expected_version=1)["version"] == 2
    assert_error(put(admin_client, "feed", FEED, expected_version=7), 409, "CONFLICT")
    assert stored(admin_client, "feed", FEED)["version"] == 3  # without expected_version the last write wins
    assert len(audit_rows("config.update")) == 3


# --- export and import ----------------------------------------------------------------------------------------------


def test_export_then_import_restores_a_changed_configuration(admin_user, admin_client):
    exported = admin_client.post("/api/config/export")
    assert exported.status_code == 200, exported.json()
    assert exported["Content-Disposition"].startswith('attachment; filename="algoterm-config-')
    document = exported.json()
    assert document["version"] == 1 and document["exported_at"]
    assert set(document["sections"]) == set(config.SECTIONS)

    stored(admin_client, "market_hours", {**MARKET_HOURS, "close": "15:00"})
    stored(admin_client, "holidays", holidays_with({"date": "2026-11-23", "name": "Extra"}))
    assert not calendar.is_trading_day(MONDAY)

    response = admin_client.post("/api/config/import", {"document": document}, format="json")

    assert response.status_code == 200, response.json()
    result = response.json()
    assert (result["dry_run"], result["changed"]) == (False, ["market_hours", "holidays"])
    assert set(result["unchanged"]) == {"rms_defaults", "freeze_quantities", "feed"}
    assert result["changes"]["holidays"] == {"removed": ["2026-11-23"]}
    assert admin_client.post("/api/config/export").json()["sections"] == document["sections"]
    assert calendar.is_trading_day(MONDAY)
    assert ConfigSection.objects.get(name="market_hours").version == 2
    assert not ConfigSection.objects.filter(name="feed").exists()  # unchanged sections are not rewritten
    [audit] = audit_rows("config.import")
    assert (audit.actor_id, audit.details["changed"]) == (admin_user.pk, ["market_hours", "holidays"])


def test_import_is_all_or_nothing(admin_client):
    document = {
        "version": 1,
        "sections": {
            "market_hours": {**MARKET_HOURS, "close": "15:00"},
            "freeze_quantities": {"NIFTY": 900},
            "feed": {**FEED, "source": "upstox"},
        },
    }

    response = admin_client.post("/api/config/import", {"document": document}, format="json")

    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert set(body["errors"]) == {"document.sections.feed.source"}
    assert not ConfigSection.objects.exists() and not audit_rows("config.import")
    assert config.config_get(name=config.MARKET_HOURS) == MARKET_HOURS


@pytest.mark.parametrize(
    ("document", "fields"),
    [
        ({"version": 2, "sections": {"feed": FEED}}, {"document.version"}),
        ({"sections": {"feed": FEED}}, {"document.version"}),
        ({"version": 1, "sections": {}}, {"document.sections"}),
        ({"version": 1}, {"document.sections"}),
        ({"version": 1, "sections": {"feed": FEED}, "comment": "x"}, {"document.comment"}),
        ({"version": 1, "sections": {"colours": {}, "feed": FEED}}, {"document.sections.colours"}),
        ({"version": 1, "sections": {"feed": "simulated"}}, {"document.sections.feed"}),
        (
            {"version": 1, "sections": {"market_hours": {**MARKET_HOURS, "x": 1}, "holidays": {"NSE": 5}}},
            {"document.sections.market_hours.x", "document.sections.holidays.NSE"},
        ),
    ],
)
def test_a_bad_document_is_refused_naming_the_fields(document, fields, admin_client):
    response = admin_client.post("/api/config/import", {"document": document}, format="json")
    assert set(assert_error(response, 400, "VALIDATION_ERROR")["errors"]) == fields
    assert not ConfigSection.objects.exists()


def test_a_malformed_import_body_is_refused_naming_the_fields(admin_client):
    response = admin_client.post("/api/config/import", {"document": [], "dry_run": "maybe"}, format="json")
    assert set(assert_error(response, 400, "VALIDATION_ERROR")["errors"]) == {"document", "dry_run"}


def test_a_dry_run_reports_and_changes_nothing(admin_client, settings):
    settings.MARKET_FEED, settings.MARKET_FEED_INTERVAL_SECONDS = "simulated", 1.0  # the document's feed: no change
    document = {"version": 1, "sections": {"market_hours": {**MARKET_HOURS, "open": "09:30"}, "feed": FEED}}

    response = admin_client.post("/api/config/import", {"document": document, "dry_run": True}, format="json")

    assert response.status_code == 200, response.json()
    result = response.json()
    assert result["dry_run"] is True and result["changed"] == ["market_hours"]
    assert result["changes"] == {"market_hours": {"open": {"from": "09:15", "to": "09:30"}}}
    assert not ConfigSection.objects.exists() and not AuditEvent.objects.filter(kind="config").exists()
    assert calendar.session_bounds(MONDAY).open == ist(MONDAY, 9, 15)


# --- effects --------------------------------------------------------------------------------------------------------


def test_a_holiday_added_closes_the_market_that_day_and_one_removed_opens_it(admin_client):
    christmas = date(2026, 12, 25)
    assert calendar.is_trading_day(MONDAY) and not calendar.is_trading_day(christmas)

    days = [day for day in config.config_get(name=config.HOLIDAYS)["NSE"] if day["date"] != christmas.isoformat()]
    stored(admin_client, "holidays", {"NSE": [*days, {"date": MONDAY.isoformat(), "name": "Exchange outage"}]})

    assert not calendar.is_trading_day(MONDAY)
    assert calendar.holiday_name(MONDAY) == "Exchange outage"
    assert calendar.session_bounds(MONDAY) is None
    assert calendar.next_trading_day(date(2026, 11, 20)) == date(2026, 11, 25)  # Monday and the Tuesday holiday
    assert not calendar.is_open(ist(MONDAY, 11))
    assert calendar.is_trading_day(christmas)


def test_market_hours_move_the_session(admin_client):
    stored(admin_client, "market_hours", {"open": "10:00", "close": "16:00", "pre_open": "09:45"})

    bounds = calendar.session_bounds(MONDAY)

    assert (bounds.pre_open_start, bounds.pre_open_end) == (ist(MONDAY, 9, 45), ist(MONDAY, 9, 53))
    assert (bounds.open, bounds.close) == (ist(MONDAY, 10), ist(MONDAY, 16))
    assert not calendar.is_open(ist(MONDAY, 9, 30)) and calendar.is_open(ist(MONDAY, 15, 45))
    assert calendar.is_pre_open(ist(MONDAY, 9, 50)) and not calendar.is_pre_open(ist(MONDAY, 9, 5))
    assert calendar.next_open(ist(MONDAY, 8)) == ist(MONDAY, 10)


def test_rms_defaults_set_a_new_users_limits_and_leave_existing_ones(trader, admin_client):
    before = profile_get_or_create(user=trader)
    stored(
        admin_client,
        "rms_defaults",
        {"max_orders_per_day": 7, "max_open_positions": None, "trading_window": "09:30-15:00", "auto_square_off": ""},
    )

    newcomer = UserFactory()
    profile = client_for(newcomer).get("/api/rms/config").json()["profile"]

    assert (profile["max_orders_per_day"], profile["max_open_positions"]) == (7, None)
    assert (profile["trading_window_start"], profile["trading_window_end"]) == ("09:30", "15:00")
    assert profile["auto_square_off_time"] is None
    before.refresh_from_db()
    assert before.max_orders_per_day == 1000 and before.trading_window_start is None


@pytest.fixture
def nifty_option(trader):
    """A NIFTY weekly call (lot 75) on the paper broker, quoted at 100; returns (account, symbol)."""
    standard_instruments()
    symbol = "NFO:NIFTYCFG24500CE"
    instrument_create(symbol, instrument_type=InstrumentType.CE, lot_size=75, expiry=date.today() + timedelta(days=7))
    Instrument.objects.filter(symbol=symbol).update(underlying="NIFTY")
    quote_publish(quote_at(symbol, "100"))
    return paper_account(trader), symbol


def order(client, account, symbol: str, quantity: int, **fields):
    body = {
        "account_id": account.pk,
        "symbol": symbol,
        "side": "BUY",
        "quantity": quantity,
        "order_type": "LIMIT",
        "price": 100,
        "product": "NRML",
        **fields,
    }
    return client.post("/api/orders", body, format="json")


def test_an_order_above_the_freeze_quantity_is_refused(nifty_option, trader_client, admin_client):
    account, symbol = nifty_option

    refused = assert_error(order(trader_client, account, symbol, 1875), 400, "VALIDATION_ERROR")
    assert set(refused["errors"]) == {"quantity"}
    assert "1800" in refused["errors"]["quantity"][0] and "NIFTY" in refused["errors"]["quantity"][0]
    placed = order(trader_client, account, symbol, 1800)
    assert placed.status_code == 201, placed.json()

    stored(admin_client, "freeze_quantities", {"NIFTY": 900, "INFY": 5})
    refused = assert_error(order(trader_client, account, symbol, 975), 400, "VALIDATION_ERROR")
    assert "900" in refused["errors"]["quantity"][0]
    assert order(trader_client, account, symbol, 900).status_code == 201
    # Freeze limits are the derivatives': an equity (even one with a limit under its name) has none.
    Instrument.objects.filter(symbol=EQUITY).update(underlying="INFY")
    quote_publish(quote_at(EQUITY, "1500"))
    equity = order(trader_client, account, EQUITY, 20, price=1500, product="MIS")
    assert equity.status_code == 201, equity.json()


def test_serve_runs_the_configured_feed_else_the_setting(settings, admin_client):
    settings.MARKET_FEED, settings.MARKET_FEED_INTERVAL_SECONDS = "simulated", 1.0
    assert market_feed_choice() == ("simulated", 1.0)

    stored(admin_client, "feed", {"source": "", "interval_seconds": 2.5})
    assert market_feed_choice() == ("", 2.5)
    stored(admin_client, "feed", {"source": "kite", "interval_seconds": 1})
    assert market_feed_choice() == ("kite", 1.0)
