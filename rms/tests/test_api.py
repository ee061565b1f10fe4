"""The RMS routes: risk config and account overrides, today's risk status, and the RMS square-off."""

from datetime import time
from decimal import Decimal

import pytest

from accounts.models import Role
from accounts.tests.factories import UserFactory
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth, client_for
from brokers.adapters.paper import PaperAdapter
from brokers.gateway import adapter_for
from brokers.protocol import BrokerUnavailable
from brokers.services import broker_session_mark_expired
from marketdata.models import Instrument
from orders.models import Order, Position
from orders.tests.factories import EQUITY, OPTION, paper_account
from rms.models import RiskProfile, RmsEvent
from rms.services import PROFILE_FIELDS, Reason, breach_handle, limits_for, profit_lock_raise, trading_day

pytestmark = pytest.mark.django_db
AFTER_COMMIT = pytest.mark.django_db(transaction=True)

SBIN = "NSE:SBIN"
CONFIG, STATUS, SQUAREOFF = "/api/rms/config", "/api/rms/status", "/api/rms/squareoff"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def D(value) -> Decimal:
    return Decimal(str(value))


def configure(client, **data):
    return client.post(CONFIG, data, format="json")


def fill(client, account, *, symbol=EQUITY, side="BUY", quantity=10, limit) -> dict:
    """A marketable LIMIT order: it fills at the touch (no slippage), so prices are exact."""
    body = {
        "account_id": account.pk,
        "symbol": symbol,
        "side": side,
        "quantity": quantity,
        "order_type": "LIMIT",
        "price": limit,
        "product": "MIS",
    }
    response = client.post("/api/orders", body, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["status"] == "FILLED", response.json()
    return response.json()


def open_positions() -> dict[tuple[str, str], int]:
    return {(p.account_id, p.symbol): p.quantity for p in Position.objects.exclude(quantity=0)}


@pytest.fixture
def second(trader, instruments):
    return paper_account(trader, label="Second")


@pytest.fixture
def book(trader_client, paper, second, market):
    """First account: long 10 INFY @ 1500.05, short 5 SBIN @ 819.95; second account: long 75 of a NIFTY option
    @ 100.05. The market is then INFY 1520, SBIN 820, the option 100."""
    Instrument.objects.filter(symbol=OPTION).update(underlying="NIFTY")
    market(EQUITY, "1500")
    fill(trader_client, paper, limit=1501)  # ask 1500.05
    market(SBIN, "820")
    fill(trader_client, paper, symbol=SBIN, side="SELL", quantity=5, limit=819)  # bid 819.95
    market(OPTION, "100")
    fill(trader_client, second, symbol=OPTION, quantity=75, limit=101)  # ask 100.05
    market(EQUITY, "1520")


# --- config -----------------------------------------------------------------------------------------------------


def test_config_starts_with_the_defaults(settings, trader, trader_client):
    settings.RMS_DEFAULT_TRADING_WINDOW = "09:15-15:30"
    settings.RMS_DEFAULT_AUTO_SQUARE_OFF = "15:15"
    settings.RMS_DEFAULT_MAX_ORDERS_PER_DAY = 500
    settings.RMS_DEFAULT_MAX_OPEN_POSITIONS = 40
    assert not RiskProfile.objects.filter(user=trader).exists()

    response = trader_client.get(CONFIG)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["overrides"] == []
    profile = body["profile"]
    assert set(profile) == {*PROFILE_FIELDS, "updated_at", "pending"}
    assert (profile["trading_window_start"], profile["trading_window_end"], profile["auto_square_off_time"]) == (
        "09:15",
        "15:30",
        "15:15",
    )
    assert (profile["max_orders_per_day"], profile["max_open_positions"]) == (500, 40)
    off = [
        "max_daily_loss",
        "daily_profit_target",
        "profit_lock_at",
        "profit_lock_amount",
        "trailing_profit_every",
        "trailing_profit_step",
        "max_lots_per_order",
        "max_order_value",
    ]
    assert all(profile[name] is None for name in off), profile
    assert profile["allowed_products"] == [] and profile["allowed_segments"] == [] and profile["kill_switch"] is False
    assert RiskProfile.objects.filter(user=trader, account__isnull=True).count() == 1
    assert trader_client.get(CONFIG).json() == body  # read again: the same profile, not another


def test_update_then_read_back(before_the_open, trader, trader_client):
    response = configure(
        trader_client,
        max_daily_loss=5000,
        daily_profit_target="10000.50",
        profit_lock_at=2000,
        profit_lock_amount=1000,
        trailing_profit_every=500,
        trailing_profit_step=250,
        max_lots_per_order=5,
        max_order_value=250000.25,
        max_open_positions=8,
        max_orders_per_day=60,
        allowed_products=["NRML", "MIS"],
        allowed_segments=["nse", "NFO"],
        trading_window_start="09:20",
        trading_window_end="15:20:00",
        auto_square_off_time="15:10",
        kill_switch=True,
    )
    assert response.status_code == 200, response.json()
    profile = response.json()["profile"]
    assert profile["max_daily_loss"] == 5000 and isinstance(profile["max_daily_loss"], int | float)
    assert profile["daily_profit_target"] == 10000.5 and profile["max_order_value"] == 250000.25
    assert (profile["profit_lock_at"], profile["profit_lock_amount"]) == (2000, 1000)
    assert (profile["trailing_profit_every"], profile["trailing_profit_step"]) == (500, 250)
    assert (profile["max_lots_per_order"], profile["max_open_positions"], profile["max_orders_per_day"]) == (5, 8, 60)
    assert profile["allowed_products"] == ["MIS", "NRML"] and profile["allowed_segments"] == ["NFO", "NSE"]
    assert (profile["trading_window_start"], profile["trading_window_end"], profile["auto_square_off_time"]) == (
        "09:20",
        "15:20",
        "15:10",
    )
    assert profile["kill_switch"] is True
    assert trader_client.get(CONFIG).json() == response.json()
    limits = limits_for(user=trader)
    assert limits.max_daily_loss == Decimal("5000") and limits.trading_window_end == time(15, 20)
    assert RmsEvent.objects.filter(user=trader, kind=RmsEvent.Kind.CONFIG).count() == 1

    # A partial update: null turns one rule off, everything else stays.
    response = configure(trader_client, max_daily_loss=None, allowed_products=None, kill_switch=False)
    assert response.status_code == 200, response.json()
    changed = response.json()["profile"]
    assert changed["max_daily_loss"] is None and changed["allowed_products"] == [] and changed["kill_switch"] is False
    assert {k: v for k, v in changed.items() if k not in ("max_daily_loss", "allowed_products", "kill_switch")} == {
        k: v for k, v in profile.items() if k not in ("max_daily_loss", "allowed_products", "kill_switch", "updated_at")
    } | {"updated_at": changed["updated_at"]}

    # Turning the profit lock off takes the trailing rule with it.
    response = configure(
        trader_client,
        profit_lock_at=None,
        profit_lock_amount=None,
        trailing_profit_every=None,
        trailing_profit_step=None,
    )
    assert response.status_code == 200, response.json()
    assert response.json()["profile"]["profit_lock_at"] is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"profit_lock_at": 1000, "profit_lock_amount": 1000}, "profit_lock_amount"),
        ({"profit_lock_at": 1000, "profit_lock_amount": 1500}, "profit_lock_amount"),
        ({"profit_lock_at": 1000}, "profit_lock_amount"),
        ({"trailing_profit_every": 500, "trailing_profit_step": 100}, "trailing_profit_every"),
        (
            {"profit_lock_at": 900, "profit_lock_amount": 500, "trailing_profit_every": 10, "trailing_profit_step": 20},
            "trailing_profit_step",
        ),
        ({"daily_profit_target": 1000, "profit_lock_at": 1000, "profit_lock_amount": 500}, "profit_lock_at"),
        ({"trading_window_start": "15:00", "trading_window_end": "09:15"}, "trading_window_end"),
        ({"trading_window_start": "09:15"}, "trading_window_end"),
        (
            {"trading_window_start": "09:15", "trading_window_end": "15:30", "auto_square_off_time": "15:45"},
            "auto_square_off_time",
        ),
        (
            {"trading_window_start": "09:15", "trading_window_end": "15:30", "auto_square_off_time": "09:00"},
            "auto_square_off_time",
        ),
        ({"trading_window_start": "9am", "trading_window_end": "15:30"}, "trading_window_start"),
        ({"max_daily_loss": -100}, "max_daily_loss"),
        ({"max_daily_loss": 0}, "max_daily_loss"),
        ({"max_order_value": "-1"}, "max_order_value"),
        ({"max_lots_per_order": 0}, "max_lots_per_order"),
        ({"allowed_products": ["MIS", "BO"]}, "allowed_products"),
        ({"allowed_products": "MIS"}, "allowed_products"),
        ({"allowed_segments": ["NSE", "N$E"]}, "allowed_segments"),
        ({"kill_switch": None}, "kill_switch"),
        ({"max_loss": 1000}, "max_loss"),
    ],
)
def test_inconsistent_settings_are_refused_by_field(trader, trader_client, data, field):
    before = trader_client.get(CONFIG).json()
    body = assert_error(configure(trader_client, **data), 400, "VALIDATION_ERROR")
    assert [name.split(".")[0] for name in body["errors"]] == [field], body  # a list item's error is `field.N`
    assert trader_client.get(CONFIG).json() == before
    assert not RmsEvent.objects.filter(user=trader, kind=RmsEvent.Kind.CONFIG).exists()


def test_auto_square_off_must_fall_inside_an_existing_window(trader_client):
    assert configure(trader_client, trading_window_start="09:15", trading_window_end="15:30").status_code == 200
    body = assert_error(configure(trader_client, auto_square_off_time="16:00"), 400, "VALIDATION_ERROR")
    assert list(body["errors"]) == ["auto_square_off_time"]
    assert configure(trader_client, auto_square_off_time="15:30").status_code == 200


def test_override_for_an_account(before_the_open, trader, trader_client, paper, second):
    assert configure(trader_client, profit_lock_at=2000, profit_lock_amount=1000).status_code == 200
    response = configure(trader_client, account_id=second.pk, max_lots_per_order=2, allowed_products=["CNC"])
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["profile"]["max_lots_per_order"] is None  # the profile is untouched
    (override,) = body["overrides"]
    assert override["account_id"] == second.pk
    assert (override["max_lots_per_order"], override["allowed_products"]) == (2, ["CNC"])
    assert override["profit_lock_at"] is None and override["kill_switch"] is False  # inherited
    assert set(override) == {*PROFILE_FIELDS, "updated_at", "pending", "account_id"}
    assert trader_client.get(CONFIG).json() == body
    assert limits_for(user=trader, account=second).max_lots_per_order == 2
    assert limits_for(user=trader, account=second).profit_lock_at == Decimal("2000")
    assert limits_for(user=trader, account=paper).max_lots_per_order is None

    # An override is judged with what it inherits: the profile locks 1000 at 2000.
    body = assert_error(
        configure(trader_client, account_id=second.pk, profit_lock_amount=2500), 400, "VALIDATION_ERROR"
    )
    assert "profit_lock_amount" in body["errors"]
    # null on an override: inherit again.
    response = configure(trader_client, account_id=second.pk, max_lots_per_order=None)
    assert response.json()["overrides"][0]["max_lots_per_order"] is None
    assert limits_for(user=trader, account=second).max_lots_per_order is None


def test_override_of_someone_elses_account_is_404(trader, trader_client, paper):
    assert_other_user_gets_404("POST", CONFIG, {"account_id": paper.pk, "max_lots_per_order": 2})
    assert_error(configure(trader_client, account_id="acc_nosuchaccount", max_lots_per_order=2), 404, "NOT_FOUND")
    assert not RiskProfile.objects.filter(account__isnull=False).exists()


# --- status -----------------------------------------------------------------------------------------------------


def test_status_without_positions(trader_client):
    response = trader_client.get(STATUS)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["state"], body["reason"], body["mtm"], body["locked_profit"], body["breached_at"]) == (
        "NORMAL",
        "",
        0,
        None,
        None,
    )
    assert (body["open_positions"], body["orders_today"], body["loss_remaining"]) == (0, 0, None)
    assert body["accounts"] == [] and body["exposure"] == []
    assert set(body["limits"]) == set(PROFILE_FIELDS)


def test_status_with_positions_mtm_exposure_and_funds(trader, trader_client, paper, second, book):
    response = trader_client.get(STATUS)
    assert response.status_code == 200, response.json()
    body = response.json()
    # 10 x (1520 - 1500.05) + 5 x (819.95 - 820) + 75 x (100 - 100.05)
    assert D(body["mtm"]) == Decimal("199.50") - Decimal("0.25") - Decimal("3.75")
    assert (body["state"], body["open_positions"], body["orders_today"]) == ("NORMAL", 3, 3)
    assert body["loss_remaining"] is None and body["kill_switch"] is False
    assert body["trading_day"]

    exposure = {row["underlying"]: row for row in body["exposure"]}
    assert set(exposure) == {"INFY", "SBIN", "NIFTY"}
    assert (D(exposure["INFY"]["long_value"]), D(exposure["INFY"]["short_value"])) == (Decimal("15200"), 0)
    assert D(exposure["INFY"]["net_value"]) == Decimal("15200")
    assert (D(exposure["SBIN"]["long_value"]), D(exposure["SBIN"]["short_value"])) == (0, Decimal("4100"))
    assert D(exposure["SBIN"]["net_value"]) == Decimal("-4100")
    assert D(exposure["NIFTY"]["long_value"]) == Decimal("7500")  # 75 x 100, named by the instrument's underlying

    accounts = {row["account_id"]: row for row in body["accounts"]}
    assert list(accounts) == [paper.pk, second.pk]
    assert D(accounts[paper.pk]["mtm"]) == Decimal("199.25") and D(accounts[second.pk]["mtm"]) == Decimal("-3.75")
    for account in (paper, second):
        funds = adapter_for(account).funds()
        row = accounts[account.pk]
        assert (row["broker"], row["funds_error"]) == ("paper", "")
        assert D(row["used_margin"]) == funds.used_margin and D(row["available_cash"]) == funds.available_cash
        assert funds.used_margin > 0

    # A loss limit shows what is left of it; limits are the effective profile.
    assert configure(trader_client, max_daily_loss=1000).status_code == 200
    body = trader_client.get(STATUS).json()
    assert D(body["loss_remaining"]) == Decimal("1195.50")
    assert body["limits"]["max_daily_loss"] == 1000


def test_status_reports_a_broker_that_cannot_answer_without_failing(
    trader, trader_client, paper, second, book, monkeypatch
):
    real_funds = PaperAdapter.funds

    def funds(self):
        if self.account_ref == second.pk:
            raise BrokerUnavailable("The paper broker is not answering.")
        return real_funds(self)

    monkeypatch.setattr(PaperAdapter, "funds", funds)
    expired = paper_account(trader, label="Expired")
    assert broker_session_mark_expired(account=expired, reason="test")

    response = trader_client.get(STATUS)
    assert response.status_code == 200, response.json()
    accounts = {row["account_id"]: row for row in response.json()["accounts"]}
    assert accounts[paper.pk]["funds_error"] == "" and accounts[paper.pk]["available_cash"] is not None
    assert "not answering" in accounts[second.pk]["funds_error"]
    assert (accounts[second.pk]["used_margin"], accounts[second.pk]["available_cash"]) == (None, None)
    assert D(accounts[second.pk]["mtm"]) == Decimal("-3.75")
    assert "not connected" in accounts[expired.pk]["funds_error"]
    assert D(accounts[expired.pk]["mtm"]) == 0


@AFTER_COMMIT
def test_status_after_a_breach_is_halted_with_the_reason(trader, trader_client, paper, book, eager_tasks):
    profit_lock_raise(user_id=trader.pk, level=Decimal("1000"), mtm=Decimal("2100"), day=trading_day())
    assert breach_handle(user_id=trader.pk, reason=Reason.DAILY_LOSS_LIMIT_HIT, mtm=Decimal("-1500"))
    body = trader_client.get(STATUS).json()
    assert (body["state"], body["reason"]) == ("HALTED", Reason.DAILY_LOSS_LIMIT_HIT)
    assert body["trading_day"] == trading_day().isoformat()
    assert body["breached_at"] is not None and D(body["locked_profit"]) == Decimal("1000")
    assert Order.objects.filter(source="rms", status="FILLED").count() == 3
    assert body["open_positions"] == 0 and body["exposure"] == []  # the breach squared everything off
    assert client_for(UserFactory()).get(STATUS).json()["state"] == "NORMAL"  # nobody else's state


def test_status_is_private(trader_client, paper, book):
    body = client_for(UserFactory()).get(STATUS).json()
    assert (body["mtm"], body["open_positions"], body["accounts"], body["exposure"]) == (0, 0, [], [])


# --- square-off -------------------------------------------------------------------------------------------------


def test_squareoff_closes_paper_positions_as_the_rms(trader, trader_client, paper, second, book):
    response = trader_client.post(SQUAREOFF, {}, format="json", HTTP_IDEMPOTENCY_KEY="rms-close-1")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["cancelled"] == [] and body["failed"] == []
    placed = {(o["account_id"], o["symbol"]): o for o in body["placed"]}
    assert set(placed) == {(paper.pk, EQUITY), (paper.pk, SBIN), (second.pk, OPTION)}
    assert all((o["source"], o["status"], o["order_type"]) == ("rms", "FILLED", "MARKET") for o in placed.values())
    assert (placed[(paper.pk, SBIN)]["side"], placed[(paper.pk, SBIN)]["quantity"]) == ("BUY", 5)
    assert open_positions() == {}
    event = RmsEvent.objects.get(user=trader, kind=RmsEvent.Kind.SQUARE_OFF)
    assert (event.reason, event.actor_id, sorted(event.details["placed"])) == (
        "MANUAL",
        trader.pk,
        sorted(o["id"] for o in body["placed"]),
    )

    # The same key again: the first answer, nothing done twice.
    again = trader_client.post(SQUAREOFF, {}, format="json", HTTP_IDEMPOTENCY_KEY="rms-close-1")
    assert again.status_code == 200 and again.json() == body and again["Idempotent-Replayed"] == "true"
    assert RmsEvent.objects.filter(user=trader, kind=RmsEvent.Kind.SQUARE_OFF).count() == 1
    reused = trader_client.post(SQUAREOFF, {"account_id": paper.pk}, format="json", HTTP_IDEMPOTENCY_KEY="rms-close-1")
    assert_error(reused, 409, "IDEMPOTENCY_KEY_REUSED")


def test_squareoff_one_account(trader_client, paper, second, book):
    body = trader_client.post(SQUAREOFF, {"account_id": second.pk}, format="json").json()
    assert [(o["account_id"], o["symbol"], o["side"], o["source"]) for o in body["placed"]] == [
        (second.pk, OPTION, "SELL", "rms")
    ]
    assert open_positions() == {(paper.pk, EQUITY): 10, (paper.pk, SBIN): -5}


def test_squareoff_of_someone_elses_account_is_404(trader_client, paper, book):
    assert_other_user_gets_404("POST", SQUAREOFF, {"account_id": paper.pk})
    assert_error(trader_client.post(SQUAREOFF, {"account_id": "acc_nosuchaccount"}, format="json"), 404, "NOT_FOUND")
    body = assert_error(trader_client.post(SQUAREOFF, {"symbol": EQUITY}, format="json"), 400, "VALIDATION_ERROR")
    assert "symbol" in body["errors"]
    assert len(open_positions()) == 3
    assert not Order.objects.filter(source="rms").exists()


# --- access -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "data"),
    [("GET", CONFIG, None), ("POST", CONFIG, {"max_daily_loss": 100}), ("GET", STATUS, None), ("POST", SQUAREOFF, {})],
)
def test_every_route_requires_authentication(db, method, url, data):
    assert_requires_auth(method, url, data)


def test_a_view_only_user_reads_but_cannot_write(db):
    viewer = UserFactory(role=Role.USER)
    client = client_for(viewer)
    assert client.get(CONFIG).status_code == 200
    assert client.get(STATUS).status_code == 200
    assert_error(client.post(CONFIG, {"max_daily_loss": 100}, format="json"), 403, "PERMISSION_DENIED")
    assert_error(client.post(SQUAREOFF, {}, format="json"), 403, "PERMISSION_DENIED")
    assert limits_for(user=viewer).max_daily_loss is None
    assert not RmsEvent.objects.filter(user=viewer).exists()


def test_an_override_cannot_carry_mtm_rules(trader_client, paper):
    response = trader_client.post("/api/rms/config", {"account_id": paper.pk, "max_daily_loss": 1000}, format="json")
    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert "max_daily_loss" in body["errors"]
