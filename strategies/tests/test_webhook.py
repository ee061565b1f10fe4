"""POST /api/strategies/{id}/webhook: TradingView and ChartInk calls authenticated by the strategy's own secret (no
JWT), acted on once through the order pipeline, and recorded as signals whatever their outcome."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from algoterm.testing import assert_error
from orders.models import Order, OrderSource, Position
from orders.tests.factories import EQUITY
from strategies.models import Signal, SignalStatus

pytestmark = pytest.mark.django_db

SBIN = "NSE:SBIN"
CHARTINK = {
    "stocks": "INFY,SBIN",
    "trigger_prices": "1500,800",
    "triggered_at": "2:34 pm",
    "scan_name": "x",
    "scan_url": "x",
    "alert_name": "x",
}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def quoted(publish_quote):
    publish_quote(EQUITY, Decimal(1500))
    publish_quote(SBIN, Decimal(800))


def webhook_strategy(client, account, name="Signals") -> dict:
    body = {"name": name, "kind": "webhook", "exit_time": "15:15", "accounts": [{"account_id": account.pk}]}
    response = client.post("/api/strategies", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


@pytest.fixture
def strategy(trader_client, paper, quoted) -> dict:
    """A running paper webhook strategy: {"id", "webhook_secret", ...}."""
    created = webhook_strategy(trader_client, paper)
    started = trader_client.post(f"/api/strategies/{created['id']}/start", {"mode": "paper"}, format="json")
    assert started.status_code == 201, started.json()
    return created


def call(strategy_id: str, body, *, client: APIClient | None = None, query: str = "", **headers):
    """The webhook as TradingView sends it: a raw JSON (or any) body, no token."""
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return (client or APIClient()).post(
        f"/api/strategies/{strategy_id}/webhook{query}", data=raw, content_type="application/json", **headers
    )


def tv(strategy: dict, action: str = "BUY", symbol: str = EQUITY, quantity=10, id: str = "a1", **fields) -> dict:
    body = {"secret": strategy["webhook_secret"], "action": action, "symbol": symbol, "quantity": quantity, "id": id}
    body.update(fields)
    return {key: value for key, value in body.items() if value is not None}


def orders_of(strategy: dict):
    return Order.objects.filter(strategy_ref=strategy["id"]).order_by("created_at")


def held(account, symbol: str) -> int:
    position = Position.objects.filter(account=account, symbol=symbol).first()
    return position.quantity if position is not None else 0


def signals_of(strategy: dict):
    return Signal.objects.filter(strategy_id=strategy["id"]).order_by("received_at", "id")


def test_a_tradingview_buy_places_one_order_through_the_pipeline(strategy, paper):
    response = call(strategy["id"], tv(strategy))

    assert response.status_code == 202, response.json()
    body = response.json()
    [order] = orders_of(strategy)
    assert (body["status"], body["source"], body["action"], body["symbol"], body["quantity"]) == (
        "accepted",
        "tradingview",
        "BUY",
        EQUITY,
        10,
    )
    assert body["order_ids"] == [order.pk]
    assert (order.account_id, order.symbol, order.side, order.quantity, order.order_type) == (
        paper.pk,
        EQUITY,
        "BUY",
        10,
        "MARKET",
    )
    assert (order.source, order.strategy_ref, order.tag) == (OrderSource.STRATEGY, strategy["id"], strategy["id"])
    assert held(paper, EQUITY) == 10
    [signal] = signals_of(strategy)
    assert (signal.pk, signal.status, signal.order_ids) == (body["id"], SignalStatus.ACCEPTED, [order.pk])
    assert "secret" not in signal.payload
    assert strategy["webhook_secret"] not in json.dumps(signal.payload)
    assert signal.payload == {"action": "BUY", "symbol": EQUITY, "quantity": 10, "id": "a1"}


def test_a_replayed_alert_is_recorded_and_not_traded_again(strategy, paper):
    first = call(strategy["id"], tv(strategy))
    assert first.status_code == 202

    replay = assert_error(call(strategy["id"], tv(strategy)), 409, "CONFLICT")

    assert orders_of(strategy).count() == 1
    assert held(paper, EQUITY) == 10
    accepted, rejected = signals_of(strategy)
    assert accepted.status == SignalStatus.ACCEPTED
    assert (rejected.status, rejected.reason, rejected.order_ids) == (SignalStatus.REJECTED, "REPLAYED", [])
    assert replay["signal_id"] == rejected.pk
    # Another alert (another id) is a new signal.
    assert call(strategy["id"], tv(strategy, id="a2")).status_code == 202
    assert held(paper, EQUITY) == 20


def test_a_wrong_secret_is_refused_recorded_and_never_stored(strategy, paper):
    wrong = "guessed-secret-93kq"

    body = assert_error(call(strategy["id"], tv(strategy, secret=wrong)), 401, "AUTH_INVALID")

    assert not orders_of(strategy).exists()
    [signal] = signals_of(strategy)
    assert (signal.pk, signal.status, signal.reason) == (body["signal_id"], SignalStatus.REJECTED, "BAD_SECRET")
    assert "secret" not in signal.payload
    assert wrong not in json.dumps(signal.payload) and wrong not in signal.detail


def test_rotation_refuses_the_old_secret_and_accepts_the_new(strategy, trader_client, paper):
    rotated = trader_client.post(f"/api/strategies/{strategy['id']}/webhook/rotate")
    assert rotated.status_code == 200
    new_secret = rotated.json()["webhook_secret"]

    assert_error(call(strategy["id"], tv(strategy)), 401, "AUTH_INVALID")
    assert [(signal.status, signal.reason) for signal in signals_of(strategy)] == [("rejected", "BAD_SECRET")]
    assert not orders_of(strategy).exists()

    response = call(strategy["id"], tv(strategy, secret=new_secret))
    assert response.status_code == 202, response.json()
    assert held(paper, EQUITY) == 10


def test_the_secret_may_come_in_a_header_or_the_query_string(strategy, paper):
    bare = tv(strategy, secret=None)
    assert "secret" not in bare

    by_header = call(strategy["id"], bare, HTTP_X_WEBHOOK_SECRET=strategy["webhook_secret"])
    by_query = call(strategy["id"], {**bare, "id": "a2"}, query=f"?secret={strategy['webhook_secret']}")
    neither = call(strategy["id"], {**bare, "id": "a3"})

    assert by_header.status_code == 202, by_header.json()
    assert by_query.status_code == 202, by_query.json()
    assert_error(neither, 401, "AUTH_INVALID")
    assert held(paper, EQUITY) == 20


def test_a_token_alone_is_not_a_secret(strategy, trader_client, paper):
    response = call(strategy["id"], tv(strategy, secret=None), client=trader_client)

    assert_error(response, 401, "AUTH_INVALID")
    assert not orders_of(strategy).exists()
    assert [signal.reason for signal in signals_of(strategy)] == ["BAD_SECRET"]


def test_a_stale_timestamp_is_refused_and_recorded(strategy, paper):
    ten_minutes_ago = (timezone.now() - timedelta(minutes=10)).isoformat()
    fresh = timezone.now().isoformat()

    body = assert_error(call(strategy["id"], tv(strategy, timestamp=ten_minutes_ago)), 400, "VALIDATION_ERROR")

    assert not orders_of(strategy).exists()
    [signal] = signals_of(strategy)
    assert (signal.pk, signal.status, signal.reason) == (body["signal_id"], "rejected", "STALE")
    assert call(strategy["id"], tv(strategy, id="a2", timestamp=fresh)).status_code == 202


def test_sell_closes_only_the_strategys_own_long(strategy, paper):
    assert call(strategy["id"], tv(strategy)).status_code == 202

    response = call(strategy["id"], tv(strategy, action="SELL", quantity=50, id="a2"))

    assert response.status_code == 202, response.json()
    sale = Order.objects.get(pk=response.json()["order_ids"][0])
    assert (sale.side, sale.quantity, sale.strategy_ref) == ("SELL", 10, strategy["id"])
    assert held(paper, EQUITY) == 0


def test_sell_with_nothing_held_is_rejected_and_recorded(strategy, trader_client, paper):
    from orders.services import OrderSpec, order_place

    # The user's own INFY, bought by hand, is not the strategy's to sell.
    order_place(
        user=paper.owner,
        spec=OrderSpec(account_id=paper.pk, symbol=EQUITY, side="BUY", quantity=7, order_type="MARKET", product="MIS"),
    )

    body = assert_error(call(strategy["id"], tv(strategy, action="SELL")), 422, "ORDER_REJECTED")

    assert not orders_of(strategy).exists()
    assert held(paper, EQUITY) == 7
    [signal] = signals_of(strategy)
    assert (signal.pk, signal.status, signal.reason) == (body["signal_id"], SignalStatus.REJECTED, "NO_POSITION")
    assert body["reason"] == "NO_POSITION"


def test_short_then_cover(strategy, paper):
    shorted = call(strategy["id"], tv(strategy, action="SHORT", quantity=5))
    assert shorted.status_code == 202, shorted.json()
    assert held(paper, EQUITY) == -5

    covered = call(strategy["id"], tv(strategy, action="COVER", quantity=None, id="a2"))

    assert covered.status_code == 202, covered.json()
    cover = Order.objects.get(pk=covered.json()["order_ids"][0])
    assert (cover.side, cover.quantity) == ("BUY", 5)
    assert held(paper, EQUITY) == 0


@pytest.mark.parametrize(("opening", "closing"), [("SHORT", "SELL"), ("BUY", "COVER")])
def test_closing_the_other_side_is_no_position_and_never_flips(opening, closing, strategy, paper):
    assert call(strategy["id"], tv(strategy, action=opening, quantity=5)).status_code == 202
    before = held(paper, EQUITY)

    body = assert_error(call(strategy["id"], tv(strategy, action=closing, quantity=5, id="a2")), 422, "ORDER_REJECTED")

    assert body["reason"] == "NO_POSITION"
    assert held(paper, EQUITY) == before
    assert orders_of(strategy).count() == 1


def test_exit_closes_all_the_strategys_positions(strategy, paper):
    assert call(strategy["id"], tv(strategy)).status_code == 202
    assert call(strategy["id"], tv(strategy, symbol=SBIN, action="SHORT", quantity=3, id="a2")).status_code == 202
    assert (held(paper, EQUITY), held(paper, SBIN)) == (10, -3)

    response = call(strategy["id"], tv(strategy, action="EXIT", symbol=None, quantity=None, id="a3"))

    assert response.status_code == 202, response.json()
    assert len(response.json()["order_ids"]) == 2
    assert (held(paper, EQUITY), held(paper, SBIN)) == (0, 0)


def test_a_chartink_scan_buys_each_stock(strategy, paper):
    response = call(strategy["id"], CHARTINK, query=f"?secret={strategy['webhook_secret']}&action=BUY&quantity=5")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["source"], body["action"], body["symbol"], body["quantity"]) == (
        "chartink",
        "BUY",
        f"{EQUITY},{SBIN}",
        5,
    )
    placed = {order.symbol: (order.side, order.quantity) for order in orders_of(strategy)}
    assert placed == {EQUITY: ("BUY", 5), SBIN: ("BUY", 5)}
    assert sorted(body["order_ids"]) == sorted(order.pk for order in orders_of(strategy))
    assert (held(paper, EQUITY), held(paper, SBIN)) == (5, 5)
    # ChartInk calls again with the same scan result: not acted on twice.
    again = call(strategy["id"], CHARTINK, query=f"?secret={strategy['webhook_secret']}&action=BUY&quantity=5")
    assert_error(again, 409, "CONFLICT")
    assert orders_of(strategy).count() == 2


def test_malformed_json_with_a_valid_secret_is_recorded_as_a_bad_payload(strategy):
    body = assert_error(
        call(strategy["id"], '{"action": "BUY", ', HTTP_X_WEBHOOK_SECRET=strategy["webhook_secret"]),
        400,
        "VALIDATION_ERROR",
    )

    [signal] = signals_of(strategy)
    assert (signal.pk, signal.status, signal.reason) == (body["signal_id"], "rejected", "BAD_PAYLOAD")
    assert not orders_of(strategy).exists()


def test_an_unlisted_symbol_is_a_bad_payload_naming_the_field(strategy):
    body = assert_error(call(strategy["id"], tv(strategy, symbol="NSE:NOSUCH")), 400, "VALIDATION_ERROR")

    assert "symbol" in body["errors"]
    assert [signal.reason for signal in signals_of(strategy)] == ["BAD_PAYLOAD"]


def test_an_unknown_strategy_is_404_and_nothing_is_recorded(strategy):
    assert_error(call("stg_missing", tv(strategy)), 404, "NOT_FOUND")

    assert not Signal.objects.exists()
    assert not Order.objects.exists()


def test_a_stopped_strategy_refuses_webhooks_and_records_them(strategy, trader_client):
    assert trader_client.post(f"/api/strategies/{strategy['id']}/stop", {}, format="json").status_code == 200

    body = assert_error(call(strategy["id"], tv(strategy)), 409, "INVALID_STATE")

    [signal] = signals_of(strategy)
    assert (signal.pk, signal.status, signal.reason) == (body["signal_id"], "rejected", "NOT_RUNNING")
    assert not orders_of(strategy).exists()


def test_a_draft_strategy_refuses_webhooks(trader_client, paper, quoted):
    draft = webhook_strategy(trader_client, paper, name="Draft")

    assert_error(call(draft["id"], tv(draft)), 409, "INVALID_STATE")
    assert not orders_of(draft).exists()


def test_another_strategys_secret_is_refused(strategy, trader_client, paper):
    other = webhook_strategy(trader_client, paper, name="Other")

    assert_error(call(strategy["id"], tv(other)), 401, "AUTH_INVALID")
    assert not orders_of(strategy).exists()


def test_signals_of_the_webhook_are_listed_for_the_owner(strategy, trader_client):
    call(strategy["id"], tv(strategy))
    call(strategy["id"], tv(strategy))

    listed = trader_client.get("/api/signals", {"strategy_id": strategy["id"]}).json()

    assert [(item["status"], item["reason"]) for item in listed["items"]] == [
        ("rejected", "REPLAYED"),
        ("accepted", ""),
    ]
    assert all(strategy["webhook_secret"] not in json.dumps(item) for item in listed["items"])


# --- abuse: bounded storage, counted refusals, quantity bound, size and rate limits -------------------------------


def test_a_flood_of_refused_calls_is_counted_in_full_but_stored_only_up_to_the_bound(
    strategy, trader_client, admin_user, client, settings
):
    settings.STRATEGY_WEBHOOK_REJECTED_SIGNALS_PER_DAY = 5
    statuses = [call(strategy["id"], tv(strategy, secret=f"guess-{attempt}")).status_code for attempt in range(12)] + [
        call(strategy["id"], "not json at all").status_code for _ in range(3)
    ]

    assert statuses == [401] * 15
    assert signals_of(strategy).count() == 5
    shown = trader_client.get(f"/api/strategies/{strategy['id']}").json()
    assert shown["webhook_rejections_today"] == 15
    listed = trader_client.get("/api/strategies").json()["items"]
    assert [item["webhook_rejections_today"] for item in listed if item["id"] == strategy["id"]] == [15]
    client.force_login(admin_user)
    operators_view = client.get("/admin/strategies/webhookrejectioncount/")
    assert operators_view.status_code == 200 and strategy["name"] in operators_view.content.decode()


def test_a_refusal_past_the_bound_still_answers_the_error_without_a_signal(strategy, settings):
    settings.STRATEGY_WEBHOOK_REJECTED_SIGNALS_PER_DAY = 1
    call(strategy["id"], tv(strategy, secret="guess-1"))

    body = assert_error(call(strategy["id"], tv(strategy, secret="guess-2")), 401, "AUTH_INVALID")

    assert body["signal_id"] is None and signals_of(strategy).count() == 1


@pytest.mark.parametrize("quantity", [10**12, 2**31, 100_001])
def test_a_huge_quantity_is_a_validation_error_not_a_server_error(strategy, paper, quantity):
    body = assert_error(call(strategy["id"], tv(strategy, quantity=quantity)), 400, "VALIDATION_ERROR")

    assert "at most 100000" in body["errors"]["quantity"][0]
    assert not orders_of(strategy).exists()
    [signal] = signals_of(strategy)
    assert (signal.reason, signal.quantity) == ("BAD_PAYLOAD", None)


def test_a_negative_quantity_is_a_validation_error(strategy, paper):
    assert_error(call(strategy["id"], tv(strategy, quantity=-5)), 400, "VALIDATION_ERROR")


def test_an_oversized_webhook_is_413_before_its_secret_is_checked(strategy):
    padding = "x" * (70 * 1024)

    body = assert_error(call(strategy["id"], tv(strategy, note=padding)), 413, "PAYLOAD_TOO_LARGE")

    assert body["max_bytes"] == 64 * 1024
    assert not signals_of(strategy).exists()


def test_webhook_calls_from_one_address_are_throttled(strategy, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "strategy_webhook": "3/minute"},
    }
    statuses = [
        call(strategy["id"], tv(strategy, secret="guess"), REMOTE_ADDR="198.51.100.20").status_code for _ in range(3)
    ]
    refused = call(strategy["id"], tv(strategy, secret="guess"), REMOTE_ADDR="198.51.100.20")
    unknown = call("stg_doesnotexist", tv(strategy), REMOTE_ADDR="198.51.100.20")
    elsewhere = call(strategy["id"], tv(strategy, secret="guess"), REMOTE_ADDR="198.51.100.21")

    assert statuses == [401] * 3
    body = assert_error(refused, 429, "RATE_LIMITED")
    assert int(refused["Retry-After"]) >= 1 and body["retry_after"] >= 1
    assert_error(unknown, 429, "RATE_LIMITED")
    assert elsewhere.status_code == 401
    assert signals_of(strategy).count() == 4


def test_a_flood_of_refused_calls_raises_one_platform_alert_that_clears_when_it_stops(
    strategy, settings, market_open, time_machine
):
    from algoterm.console import alerts
    from algoterm.models import Alert

    settings.ALERT_STRATEGY_WEBHOOK_REFUSED, settings.ALERT_WEBHOOK_WINDOW_MINUTES = 3, 10
    webhooks = tuple(check for check in alerts.CHECKS if check.name == "webhooks")
    for attempt in range(2):
        assert_error(call(strategy["id"], tv(strategy, secret=f"guess-{attempt}")), 401, "AUTH_INVALID")
    assert alerts.alerts_evaluate(checks=webhooks).raised == []

    assert_error(call(strategy["id"], tv(strategy, secret="guess-3")), 401, "AUTH_INVALID")
    assert [alerts.alerts_evaluate(checks=webhooks).raised for _ in range(2)] == [["webhooks.strategy_refused"], []]
    [alert] = Alert.objects.filter(condition="webhooks.strategy_refused")
    assert alert.readings["refused"] == 3 and alert.ended_at is None

    time_machine.shift(timedelta(minutes=11))  # the window has passed without a refusal
    assert alerts.alerts_evaluate(checks=webhooks).cleared == ["webhooks.strategy_refused"]
