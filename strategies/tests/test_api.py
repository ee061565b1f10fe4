"""The strategy routes through the API: defining, reading, changing and deleting strategies, starting them (paper,
live, backtest) and stopping them, runs, backtests and their charts, webhook secrets and signals. Every route asks
for a token, hides other users' ids behind 404 and names the fields of invalid input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import Role
from accounts.tests.factories import UserFactory
from algoterm.crypto import decrypt
from algoterm.testing import assert_error, assert_other_user_gets_404, assert_requires_auth, client_for
from marketdata import calendar
from orders.models import LegRole, Order, OrderSource, Position, Trade
from orders.tests.factories import EQUITY, paper_account
from strategies import services
from strategies.models import Backtest, Signal, Strategy, StrategyFire, StrategyRun, StrategyStatus
from strategies.rules import RuleError, rule_parse

pytestmark = pytest.mark.django_db

IST = ZoneInfo("Asia/Kolkata")
DROP = object()  # leave the field out of the body
WRONG_SECRET = "not-the-secret-7f3a"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    """Every test makes users; Argon2 costs a fifth of a second each and proves nothing here."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _body(base: dict, fields: dict) -> dict:
    base.update(fields)
    return {key: value for key, value in base.items() if value is not DROP}


def webhook_body(account, **fields) -> dict:
    """A webhook strategy: TradingView/ChartInk signals in `account`, squared off at 15:15 IST."""
    base = {"name": "Signals", "kind": "webhook", "exit_time": "15:15", "accounts": [{"account_id": account.pk}]}
    return _body(base, fields)


def equity_leg(**fields) -> dict:
    return _body({"underlying": "INFY", "instrument": "EQ", "side": "BUY", "lots": 10}, fields)


def option_leg(**fields) -> dict:
    return _body({"underlying": "NIFTY", "instrument": "OPT", "option_type": "CE", "side": "SELL", "lots": 1}, fields)


def equity_body(account, **fields) -> dict:
    """Buy 10 INFY at 09:20 IST, square off at 15:15 IST."""
    base = {
        "name": "INFY intraday",
        "kind": "time_based",
        "entry_time": "09:20",
        "exit_time": "15:15",
        "accounts": [{"account_id": account.pk, "multiplier": 1}],
        "legs": [equity_leg()],
    }
    return _body(base, fields)


def created(client, body) -> dict:
    response = client.post("/api/strategies", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def start(client, strategy_id, **data):
    return client.post(f"/api/strategies/{strategy_id}/start", {"mode": "paper", **data}, format="json")


def stop(client, strategy_id, **data):
    return client.post(f"/api/strategies/{strategy_id}/stop", data, format="json")


def at(day, hh_mm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hh_mm), tzinfo=IST)


def today_ist():
    return timezone.localdate(timezone=IST)


def past_range() -> dict:
    return {"mode": "backtest", "start": str(today_ist() - timedelta(days=10)), "end": str(today_ist() - timedelta(1))}


def exit_claimed(strategy_id: str) -> bool:
    """Whether the minute dispatcher, at the strategy's exit time on its next trading day, claims its exit."""
    from unittest import mock

    from strategies.models import FireMinute

    strategy = Strategy.objects.get(pk=strategy_id)
    day = calendar.next_trading_day(today_ist())
    StrategyRun.objects.filter(strategy_id=strategy_id, status="running").update(
        started_at=at(day, "00:00") - timedelta(days=1)
    )
    moment = at(day, f"{strategy.exit_time:%H:%M}")
    FireMinute.objects.filter(minute=moment).delete()
    with mock.patch("strategies.services.scheduling.task_send"):
        services.fires_dispatch(now=moment)
    return StrategyFire.objects.filter(strategy_id=strategy_id, action="exit", scheduled_for=moment).exists()


def snapshot(strategy_id: str) -> tuple:
    """Everything a foreign or unauthenticated call must leave as it was."""
    strategy = Strategy.objects.get(pk=strategy_id)
    return (
        strategy.name,
        strategy.status,
        strategy.updated_at,
        strategy.webhook_secret,
        strategy.webhook_secret_rotated_at,
        sorted(strategy.runs.values_list("id", "status")),
        sorted(strategy.backtests.values_list("id", flat=True)),
        Signal.objects.filter(strategy=strategy).count(),
        Order.objects.filter(strategy_ref=strategy_id).count(),
        StrategyFire.objects.filter(strategy_id=strategy_id).count(),
    )


@dataclass
class World:
    """A running paper webhook strategy with a backtest that has a chart, and a recorded signal."""

    strategy_id: str
    secret: str
    backtest_id: str
    signal_id: str
    run_id: str


@pytest.fixture
def world(trader_client, paper) -> World:
    strategy = created(trader_client, webhook_body(paper))
    backtest = trader_client.post(f"/api/strategies/{strategy['id']}/start", past_range(), format="json")
    assert backtest.status_code == 202, backtest.json()
    backtest_id = backtest.json()["backtest"]["id"]
    Backtest.objects.filter(pk=backtest_id).update(status="succeeded", progress=100, chart_png=PNG)
    refused = trader_client.post(
        f"/api/strategies/{strategy['id']}/webhook",
        data=json.dumps({"secret": WRONG_SECRET, "action": "BUY", "symbol": EQUITY, "quantity": 1}),
        content_type="application/json",
    )
    assert refused.status_code == 401
    run = start(trader_client, strategy["id"])
    assert run.status_code == 201, run.json()
    return World(
        strategy_id=strategy["id"],
        secret=strategy["webhook_secret"],
        backtest_id=backtest_id,
        signal_id=refused.json()["signal_id"],
        run_id=run.json()["run"]["id"],
    )


def route(name: str, world: World, account) -> tuple[str, str, dict | None]:
    base = f"/api/strategies/{world.strategy_id}"
    return {
        "list": ("GET", "/api/strategies", None),
        "create": ("POST", "/api/strategies", webhook_body(account, name="Another")),
        "detail": ("GET", base, None),
        "update": ("PATCH", base, {"name": "Renamed"}),
        "delete": ("DELETE", base, None),
        "start_paper": ("POST", f"{base}/start", {"mode": "paper"}),
        "start_live": ("POST", f"{base}/start", {"mode": "live"}),
        "start_backtest": ("POST", f"{base}/start", past_range()),
        "stop": ("POST", f"{base}/stop", {}),
        "stop_exiting": ("POST", f"{base}/stop", {"exit_positions": True}),
        "runs": ("GET", f"{base}/runs", None),
        "backtests": ("GET", f"{base}/backtests", None),
        "backtest": ("GET", f"{base}/backtests/{world.backtest_id}", None),
        "chart": ("GET", f"{base}/backtests/{world.backtest_id}/chart.png", None),
        "rotate": ("POST", f"{base}/webhook/rotate", None),
        "signals": ("GET", "/api/signals", None),
        "signal": ("GET", f"/api/signals/{world.signal_id}", None),
    }[name]


ALL_ROUTES = [
    "list",
    "create",
    "detail",
    "update",
    "delete",
    "start_paper",
    "start_live",
    "start_backtest",
    "stop",
    "stop_exiting",
    "runs",
    "backtests",
    "backtest",
    "chart",
    "rotate",
    "signals",
    "signal",
]
ID_ROUTES = [name for name in ALL_ROUTES if name not in ("list", "create", "signals")]
READ_ROUTES = ["list", "detail", "runs", "backtests", "backtest", "chart", "signals", "signal"]


# --- every route: a token, and nobody else's ids -------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_ROUTES)
def test_every_route_requires_a_token_and_changes_nothing_without_one(name, world, paper):
    before, strategies = snapshot(world.strategy_id), Strategy.objects.count()

    assert_requires_auth(*route(name, world, paper))

    assert snapshot(world.strategy_id) == before
    assert Strategy.objects.count() == strategies


@pytest.mark.parametrize("name", READ_ROUTES)
def test_the_owner_reads_every_read_route(name, world, paper, trader_client):
    method, url, _ = route(name, world, paper)

    response = trader_client.get(url)

    assert response.status_code == 200, response.content[:300]


@pytest.mark.parametrize("name", ID_ROUTES)
def test_another_users_ids_read_as_missing_and_stay_untouched(name, world, paper):
    before = snapshot(world.strategy_id)

    assert_other_user_gets_404(*route(name, world, paper))

    assert snapshot(world.strategy_id) == before


def test_lists_hold_only_your_own_strategies_and_signals(world, trader):
    stranger = client_for(UserFactory())

    for url in ("/api/strategies", "/api/signals"):
        body = stranger.get(url).json()
        assert (body["items"], body["total"]) == ([], 0)
    mine = client_for(trader)
    assert [item["id"] for item in mine.get("/api/strategies").json()["items"]] == [world.strategy_id]
    assert [item["id"] for item in mine.get("/api/signals").json()["items"]] == [world.signal_id]


def test_a_signal_of_another_strategy_filtered_by_a_foreign_strategy_id_is_not_shown(world, trader_client, paper):
    other = created(trader_client, webhook_body(paper, name="Other"))

    body = trader_client.get("/api/signals", {"strategy_id": other["id"]}).json()
    assert body["items"] == []
    body = trader_client.get("/api/signals", {"strategy_id": world.strategy_id, "status": "rejected"}).json()
    assert [item["id"] for item in body["items"]] == [world.signal_id]
    assert body["items"][0]["reason"] == "BAD_SECRET"


def test_unknown_ids_are_404(trader_client, world, paper):
    base = f"/api/strategies/{world.strategy_id}"
    for url in (
        "/api/strategies/stg_missing",
        "/api/strategies/stg_missing/runs",
        f"{base}/backtests/bkt_missing",
        f"{base}/backtests/bkt_missing/chart.png",
        "/api/signals/sig_missing",
    ):
        assert_error(trader_client.get(url), 404, "NOT_FOUND")
    # A backtest is found only under its own strategy.
    other = created(trader_client, webhook_body(paper, name="Other"))
    assert_error(trader_client.get(f"/api/strategies/{other['id']}/backtests/{world.backtest_id}"), 404, "NOT_FOUND")


# --- create --------------------------------------------------------------------------------------------------------


def test_create_answers_the_strategy_and_its_webhook_secret_once(trader_client, paper):
    body = created(trader_client, equity_body(paper, weekdays=[4, 0, 2]))

    assert body["id"].startswith("stg_")
    assert body["status"] == "draft"
    assert body["weekdays"] == [0, 2, 4]
    assert body["accounts"] == [{"account_id": paper.pk, "multiplier": 1}]
    [leg] = body["legs"]
    assert (leg["position"], leg["underlying"], leg["instrument"], leg["side"], leg["lots"]) == (
        0,
        "INFY",
        "EQ",
        "BUY",
        10,
    )
    assert body["webhook_url"] == f"/api/strategies/{body['id']}/webhook"
    secret = body["webhook_secret"]
    assert len(secret) >= 32

    detail = trader_client.get(f"/api/strategies/{body['id']}").json()
    listed = trader_client.get("/api/strategies").json()["items"][0]
    for shown in (detail, listed):
        assert "webhook_secret" not in shown
        assert secret not in json.dumps(shown)
    assert detail["current_run"] is None and detail["pnl"] is None

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT webhook_secret FROM {Strategy._meta.db_table} WHERE id = %s", [body["id"]])
        (stored,) = cursor.fetchone()
    assert stored != secret and secret not in stored
    assert decrypt(stored) == secret


def test_two_strategies_get_different_secrets(trader_client, paper):
    first = created(trader_client, webhook_body(paper, name="One"))
    second = created(trader_client, webhook_body(paper, name="Two"))

    assert first["webhook_secret"] != second["webhook_secret"]


def test_a_rule_strategy_is_created_with_its_rules(trader_client, paper):
    body = created(
        trader_client,
        equity_body(
            paper,
            kind="rule",
            entry_time=DROP,
            rule_symbol="nse:infy",
            entry_rule="close crosses_above sma(close, 3)",
            exit_rule="close < sma(close, 3)",
            timeframe_minutes=5,
        ),
    )

    assert (body["kind"], body["rule_symbol"], body["timeframe_minutes"]) == ("rule", "NSE:INFY", 5)
    assert body["entry_rule"] == "close crosses_above sma(close, 3)"


LEGLESS_TIME_BASED = {"legs": []}


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"exit_time": DROP}, {"exit_time"}),
        ({"entry_time": "15:20", "exit_time": "15:15"}, {"exit_time"}),
        ({"entry_time": DROP}, {"entry_time"}),
        ({"kind": "scalper"}, {"kind"}),
        ({"legs": [option_leg(option_type=DROP)]}, {"legs.0.option_type"}),
        ({"legs": [option_leg(strike="fixed")]}, {"legs.0.strike_price"}),
        ({"legs": [equity_leg(option_type="CE")]}, {"legs.0.option_type"}),
        ({"legs": [equity_leg(underlying="NOSUCH")]}, {"legs.0.underlying"}),
        ({"legs": [equity_leg(stop_loss="5")]}, {"legs.0.stop_loss_unit"}),
        ({"legs": [equity_leg(lots=0)]}, {"legs.0.lots"}),
        (LEGLESS_TIME_BASED, {"legs"}),
        ({"colour": "red"}, {"colour"}),
        ({"legs": [equity_leg(colour="red")]}, {"legs.0.colour"}),
        ({"weekdays": [0, 5]}, {"weekdays.1"}),
        ({"weekdays": [1, 1]}, {"weekdays"}),
        ({"weekdays": []}, {"weekdays"}),
        ({"entry_rule": "close > 1"}, {"entry_rule"}),
        ({"mtm_stop_loss": "-5"}, {"mtm_stop_loss"}),
        ({"reentries": 2}, {"reentries"}),
        ({"name": DROP, "accounts": DROP}, {"name", "accounts"}),
    ],
)
def test_create_refuses_invalid_strategies_naming_the_fields(fields, named, trader_client, paper):
    response = trader_client.post("/api/strategies", equity_body(paper, **fields), format="json")

    body = assert_error(response, 400, "VALIDATION_ERROR")
    assert named <= set(body["errors"]), body["errors"]
    assert not Strategy.objects.exists()


def test_a_bad_rule_names_the_parsers_reason(trader_client, paper):
    text = "close crosses_above sma(close"
    with pytest.raises(RuleError) as parsed:
        rule_parse(text)
    body = equity_body(paper, kind="rule", entry_time=DROP, rule_symbol=EQUITY, entry_rule=text)

    errors = assert_error(trader_client.post("/api/strategies", body, format="json"), 400, "VALIDATION_ERROR")["errors"]

    assert errors["entry_rule"] == [str(parsed.value)]
    assert not Strategy.objects.exists()


def test_a_rule_strategy_needs_a_listed_symbol_and_an_entry_rule(trader_client, paper):
    body = equity_body(paper, kind="rule", entry_time=DROP, rule_symbol="NSE:NOSUCH")

    errors = assert_error(trader_client.post("/api/strategies", body, format="json"), 400, "VALIDATION_ERROR")["errors"]

    assert {"rule_symbol", "entry_rule"} <= set(errors)


def test_each_account_once(trader_client, paper):
    body = webhook_body(paper, accounts=[{"account_id": paper.pk}, {"account_id": paper.pk, "multiplier": 2}])

    errors = assert_error(trader_client.post("/api/strategies", body, format="json"), 400, "VALIDATION_ERROR")["errors"]

    assert "accounts" in errors
    assert not Strategy.objects.exists()


def test_another_users_account_reads_as_missing(trader_client, paper):
    foreign = paper_account(UserFactory())

    response = trader_client.post("/api/strategies", webhook_body(foreign), format="json")

    assert_error(response, 404, "NOT_FOUND")
    assert not Strategy.objects.exists()


def test_names_are_unique_per_user_only(trader_client, paper):
    created(trader_client, webhook_body(paper))

    errors = assert_error(
        trader_client.post("/api/strategies", webhook_body(paper), format="json"), 400, "VALIDATION_ERROR"
    )["errors"]
    assert "name" in errors
    someone = UserFactory()
    created(client_for(someone), webhook_body(paper_account(someone)))
    assert Strategy.objects.filter(name="Signals").count() == 2


def test_a_plain_user_can_read_but_not_write(trader, trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    trader.role = Role.USER
    trader.save(update_fields=["role"])
    viewer = client_for(trader)
    base = f"/api/strategies/{strategy['id']}"
    before = snapshot(strategy["id"])

    assert viewer.get("/api/strategies").json()["total"] == 1
    assert viewer.get(base).status_code == 200
    assert viewer.get(f"{base}/runs").status_code == 200
    assert viewer.get("/api/signals").status_code == 200
    for method, url, data in (
        ("post", "/api/strategies", webhook_body(paper, name="Mine")),
        ("patch", base, {"name": "Renamed"}),
        ("delete", base, None),
        ("post", f"{base}/start", {"mode": "paper"}),
        ("post", f"{base}/start", past_range()),
        ("post", f"{base}/stop", {}),
        ("post", f"{base}/webhook/rotate", None),
    ):
        assert_error(getattr(viewer, method)(url, data, format="json"), 403, "PERMISSION_DENIED")
    assert snapshot(strategy["id"]) == before
    assert Strategy.objects.count() == 1


def test_a_fresh_user_role_gets_403_on_create(db):
    viewer = client_for(UserFactory(role=Role.USER))
    account = paper_account(UserFactory())

    assert viewer.get("/api/strategies").status_code == 200
    assert_error(viewer.post("/api/strategies", webhook_body(account), format="json"), 403, "PERMISSION_DENIED")
    assert not Strategy.objects.exists()


# --- list ----------------------------------------------------------------------------------------------------------


def test_list_is_paginated_newest_first_and_filtered(trader_client, paper):
    ids = [created(trader_client, webhook_body(paper, name=f"S{index}"))["id"] for index in range(3)]
    assert start(trader_client, ids[0]).status_code == 201

    body = trader_client.get("/api/strategies", {"page": 1, "page_size": 2}).json()

    assert {key: body[key] for key in ("page", "page_size", "total", "total_pages")} == {
        "page": 1,
        "page_size": 2,
        "total": 3,
        "total_pages": 2,
    }
    assert [item["id"] for item in body["items"]] == [ids[2], ids[1]]
    assert [
        item["id"] for item in trader_client.get("/api/strategies", {"page": 2, "page_size": 2}).json()["items"]
    ] == [ids[0]]
    running = trader_client.get("/api/strategies", {"status": "running"}).json()
    assert [item["id"] for item in running["items"]] == [ids[0]]
    assert trader_client.get("/api/strategies", {"kind": "rule"}).json()["total"] == 0


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "paused"}, "status"),
        ({"kind": "scalper"}, "kind"),
        ({"page": 0}, "page"),
        ({"page_size": 101}, "page_size"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_list_refuses_bad_queries(query, field, trader_client):
    body = assert_error(trader_client.get("/api/strategies", query), 400, "VALIDATION_ERROR")

    assert field in body["errors"]


# --- update and delete ---------------------------------------------------------------------------------------------


def test_patch_changes_only_the_fields_sent(trader_client, paper):
    strategy = created(trader_client, equity_body(paper))

    response = trader_client.patch(
        f"/api/strategies/{strategy['id']}", {"name": "Renamed", "weekdays": [2, 1]}, format="json"
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["name"], body["weekdays"]) == ("Renamed", [1, 2])
    assert (body["entry_time"], body["exit_time"], body["legs"]) == (
        strategy["entry_time"],
        strategy["exit_time"],
        strategy["legs"],
    )
    assert "webhook_secret" not in body
    stored = Strategy.objects.get(pk=strategy["id"])
    assert (stored.name, stored.weekdays, stored.legs.count()) == ("Renamed", [1, 2], 1)


def test_patch_replaces_legs_and_accounts_when_sent(trader, trader_client, paper):
    second = paper_account(trader, label="Second")
    strategy = created(trader_client, equity_body(paper))

    response = trader_client.patch(
        f"/api/strategies/{strategy['id']}",
        {
            "legs": [equity_leg(underlying="SBIN", side="SELL", lots=3), equity_leg()],
            "accounts": [{"account_id": second.pk, "multiplier": 2}],
        },
        format="json",
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert [(leg["position"], leg["underlying"], leg["side"], leg["lots"]) for leg in body["legs"]] == [
        (0, "SBIN", "SELL", 3),
        (1, "INFY", "BUY", 10),
    ]
    assert body["accounts"] == [{"account_id": second.pk, "multiplier": 2}]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"weekdays": [5]}, "weekdays.0"),
        ({"colour": "red"}, "colour"),
        ({"entry_time": "16:00"}, "exit_time"),
        ({"kind": "scalper"}, "kind"),
        ({"legs": []}, "legs"),
        ({"legs": [option_leg(option_type=DROP)]}, "legs.0.option_type"),
        # a PATCH replaces the legs and accounts whole, so each item is checked whole (these were 500s)
        ({"legs": [equity_leg(underlying=DROP)]}, "legs.0.underlying"),
        ({"legs": [equity_leg(), equity_leg(side=DROP)]}, "legs.1.side"),
        ({"accounts": [{"multiplier": 2}]}, "accounts.0.account_id"),
        ({"entry_rule": "close > 1"}, "entry_rule"),
        ({"exit_time": None}, "exit_time"),
    ],
)
def test_patch_refuses_invalid_changes_and_keeps_the_strategy(data, field, trader_client, paper):
    strategy = created(trader_client, equity_body(paper))
    before = snapshot(strategy["id"])

    body = assert_error(
        trader_client.patch(f"/api/strategies/{strategy['id']}", data, format="json"), 400, "VALIDATION_ERROR"
    )

    assert field in body["errors"], body["errors"]
    assert snapshot(strategy["id"]) == before
    assert Strategy.objects.get(pk=strategy["id"]).legs.count() == 1


def test_patch_to_another_users_account_reads_as_missing(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    foreign = paper_account(UserFactory())

    response = trader_client.patch(
        f"/api/strategies/{strategy['id']}", {"accounts": [{"account_id": foreign.pk}]}, format="json"
    )

    assert_error(response, 404, "NOT_FOUND")
    assert list(Strategy.objects.get(pk=strategy["id"]).accounts.values_list("account_id", flat=True)) == [paper.pk]


def test_patch_and_delete_while_running_are_refused(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    assert start(trader_client, strategy["id"]).status_code == 201
    before = snapshot(strategy["id"])

    assert_error(
        trader_client.patch(f"/api/strategies/{strategy['id']}", {"name": "Renamed"}, format="json"),
        409,
        "INVALID_STATE",
    )
    assert_error(trader_client.delete(f"/api/strategies/{strategy['id']}"), 409, "INVALID_STATE")

    assert snapshot(strategy["id"]) == before


def test_delete_removes_a_stopped_strategy_with_its_schedules(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    assert start(trader_client, strategy["id"]).status_code == 201
    assert stop(trader_client, strategy["id"]).status_code == 200

    response = trader_client.delete(f"/api/strategies/{strategy['id']}")

    assert response.status_code == 204
    assert_error(trader_client.get(f"/api/strategies/{strategy['id']}"), 404, "NOT_FOUND")
    assert not Strategy.objects.filter(pk=strategy["id"]).exists()
    assert not StrategyRun.objects.filter(strategy_id=strategy["id"]).exists()


# --- start and stop ------------------------------------------------------------------------------------------------


def test_paper_start_begins_a_run_and_twice_is_refused(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))

    response = start(trader_client, strategy["id"])

    assert response.status_code == 201, response.json()
    run = response.json()["run"]
    assert (response.json()["mode"], run["mode"], run["status"], run["ended_at"]) == ("paper", "paper", "running", None)
    assert run["id"].startswith("run_")
    assert Strategy.objects.get(pk=strategy["id"]).status == StrategyStatus.RUNNING
    assert exit_claimed(strategy["id"])

    assert_error(start(trader_client, strategy["id"]), 409, "INVALID_STATE")
    assert StrategyRun.objects.filter(strategy_id=strategy["id"]).count() == 1


def test_live_start_with_only_a_paper_account_is_refused(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))

    assert_error(start(trader_client, strategy["id"], mode="live"), 409, "INVALID_STATE")

    assert Strategy.objects.get(pk=strategy["id"]).status == StrategyStatus.DRAFT
    assert not StrategyRun.objects.filter(strategy_id=strategy["id"]).exists()
    assert not exit_claimed(strategy["id"])


def test_paper_start_without_a_connected_paper_account_is_refused(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    paper.status = "disconnected"
    paper.save(update_fields=["status"])

    assert_error(start(trader_client, strategy["id"]), 409, "INVALID_STATE")
    assert not StrategyRun.objects.filter(strategy_id=strategy["id"]).exists()


def test_backtest_start_queues_a_backtest_readable_by_its_id(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    dates = past_range()

    response = trader_client.post(
        f"/api/strategies/{strategy['id']}/start", {**dates, "capital": "500000"}, format="json"
    )

    assert response.status_code == 202, response.json()
    backtest = response.json()["backtest"]
    assert backtest["id"].startswith("bkt_")
    assert (backtest["status"], backtest["start_date"], backtest["end_date"], backtest["capital"]) == (
        "queued",
        dates["start"],
        dates["end"],
        500000,
    )
    # A backtest is no run: the strategy stays a draft.
    assert Strategy.objects.get(pk=strategy["id"]).status == StrategyStatus.DRAFT
    listed = trader_client.get(f"/api/strategies/{strategy['id']}/backtests").json()
    assert [item["id"] for item in listed["items"]] == [backtest["id"]]
    assert "result" not in listed["items"][0]
    detail = trader_client.get(f"/api/strategies/{strategy['id']}/backtests/{backtest['id']}").json()
    assert (detail["status"], detail["strategy_id"], detail["result"], detail["chart_url"]) == (
        "queued",
        strategy["id"],
        None,
        None,
    )
    assert_error(
        trader_client.get(f"/api/strategies/{strategy['id']}/backtests/{backtest['id']}/chart.png"), 404, "NOT_FOUND"
    )


def test_a_finished_backtests_chart_is_served_as_png(trader_client, world):
    base = f"/api/strategies/{world.strategy_id}/backtests/{world.backtest_id}"

    detail = trader_client.get(base).json()
    response = trader_client.get(f"{base}/chart.png")

    assert detail["chart_url"] == f"{base}/chart.png"
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response.content == PNG


def future_day() -> str:
    return str(today_ist() + timedelta(days=1))


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"mode": "backtest"}, {"start", "end"}),
        ({"mode": "backtest", "start": "2024-01-10"}, {"end"}),
        ({"mode": "backtest", "start": "2024-01-10", "end": "2024-01-05"}, {"end"}),
        ({"mode": "backtest", "start": "2024-01-10", "end": "future"}, {"end"}),
        ({"mode": "backtest", "start": "2024-01-10", "end": "2024-01-20", "capital": "0"}, {"capital"}),
        ({"mode": "backtest", "start": "2024-01-10", "end": "2024-01-20", "capital": None}, {"capital"}),  # was a 500
        ({"mode": "backtest", "start": "2024-01-10", "end": "2024-01-20", "volatility": "9"}, {"volatility"}),
        ({"mode": "backtest", "start": "yesterday", "end": "2024-01-20"}, {"start"}),
        ({"mode": "paper", "start": "2024-01-10"}, {"start"}),
        ({"mode": "turbo"}, {"mode"}),
        ({}, {"mode"}),
        ({"mode": "paper", "colour": "red"}, {"colour"}),
    ],
)
def test_start_refuses_invalid_input_and_starts_nothing(data, fields, trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    if data.get("end") == "future":
        data = {**data, "end": future_day()}
    before = snapshot(strategy["id"])

    body = assert_error(
        trader_client.post(f"/api/strategies/{strategy['id']}/start", data, format="json"), 400, "VALIDATION_ERROR"
    )

    assert fields <= set(body["errors"]), body["errors"]
    assert snapshot(strategy["id"]) == before


def test_stop_when_not_running_is_refused(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))

    assert_error(stop(trader_client, strategy["id"]), 409, "INVALID_STATE")
    assert start(trader_client, strategy["id"]).status_code == 201
    assert stop(trader_client, strategy["id"]).status_code == 200
    assert_error(stop(trader_client, strategy["id"], exit_positions=True), 409, "INVALID_STATE")


@pytest.mark.parametrize(
    ("data", "field"), [({"exit_positions": "maybe"}, "exit_positions"), ({"force": True}, "force")]
)
def test_stop_refuses_invalid_input_and_keeps_running(data, field, trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    assert start(trader_client, strategy["id"]).status_code == 201
    before = snapshot(strategy["id"])

    body = assert_error(stop(trader_client, strategy["id"], **data), 400, "VALIDATION_ERROR")

    assert field in body["errors"]
    assert snapshot(strategy["id"]) == before


@pytest.fixture
def entered(trader_client, paper, publish_quote, day) -> dict:
    """A paper run of the INFY strategy after its 09:20 fire bought 10 INFY (quoted 1500)."""
    publish_quote(EQUITY, Decimal(1500))
    strategy = created(trader_client, equity_body(paper))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    fires = services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))
    assert [fire.status for fire in fires] == ["placed"]
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 10
    return {"id": strategy["id"], "run_id": run_id}


def test_detail_shows_the_current_run_and_its_pnl_after_a_fire(trader_client, paper, publish_quote, entered):
    bought = Trade.objects.get(order__strategy_ref=entered["id"])
    publish_quote(EQUITY, Decimal(1510))

    detail = trader_client.get(f"/api/strategies/{entered['id']}").json()

    assert detail["status"] == "running"
    assert (detail["current_run"]["id"], detail["current_run"]["status"], detail["current_run"]["mode"]) == (
        entered["run_id"],
        "running",
        "paper",
    )
    unrealized = 10 * (Decimal(1510) - bought.price)
    assert Decimal(str(detail["pnl"]["unrealized"])) == unrealized
    assert Decimal(str(detail["pnl"]["realized"])) == 0
    assert Decimal(str(detail["pnl"]["total"])) == unrealized
    [position] = detail["pnl"]["positions"]
    assert (position["account_id"], position["symbol"], position["quantity"], position["last_price"]) == (
        paper.pk,
        EQUITY,
        10,
        1510,
    )


def test_stop_without_exit_leaves_the_position(trader_client, paper, entered):
    response = stop(trader_client, entered["id"])

    assert response.status_code == 200, response.json()
    assert (response.json()["id"], response.json()["status"]) == (entered["run_id"], "stopped")
    assert response.json()["ended_at"] is not None
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 10
    assert not Order.objects.filter(strategy_ref=entered["id"], role=LegRole.SQUARE_OFF).exists()
    assert not exit_claimed(entered["id"])
    assert Strategy.objects.get(pk=entered["id"]).status == StrategyStatus.STOPPED


def test_stop_with_exit_positions_squares_off_the_runs_own_position(trader_client, paper, entered):
    from orders.services import OrderSpec, order_place

    # The user's own INFY, bought by hand, is not the strategy's to close.
    order_place(
        user=paper.owner,
        spec=OrderSpec(account_id=paper.pk, symbol=EQUITY, side="BUY", quantity=4, order_type="MARKET", product="MIS"),
    )

    response = stop(trader_client, entered["id"], exit_positions=True)

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "stopped"
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 4
    [square_off] = Order.objects.filter(strategy_ref=entered["id"], role=LegRole.SQUARE_OFF)
    assert (square_off.side, square_off.quantity, square_off.source) == ("SELL", 10, OrderSource.STRATEGY)
    # The run's realized PnL is what its own fills made: the sale minus the purchase.
    fills = Trade.objects.filter(order__strategy_ref=entered["id"])
    made = sum((trade.price if trade.side == "SELL" else -trade.price) * trade.quantity for trade in fills)
    assert Decimal(str(response.json()["final_pnl"])) == made
    runs = trader_client.get(f"/api/strategies/{entered['id']}/runs").json()["items"]
    assert Decimal(str(runs[0]["final_pnl"])) == made


# --- runs ----------------------------------------------------------------------------------------------------------


def test_runs_are_paginated_newest_first(trader_client, paper):
    strategy = created(trader_client, webhook_body(paper))
    run_ids = []
    for _ in range(3):
        run_ids.append(start(trader_client, strategy["id"]).json()["run"]["id"])
        assert stop(trader_client, strategy["id"]).status_code == 200

    first = trader_client.get(f"/api/strategies/{strategy['id']}/runs", {"page": 1, "page_size": 2}).json()
    second = trader_client.get(f"/api/strategies/{strategy['id']}/runs", {"page": 2, "page_size": 2}).json()

    assert {key: first[key] for key in ("page", "page_size", "total", "total_pages")} == {
        "page": 1,
        "page_size": 2,
        "total": 3,
        "total_pages": 2,
    }
    assert [run["id"] for run in first["items"] + second["items"]] == run_ids[::-1]
    assert {run["status"] for run in first["items"]} == {"stopped"}
    assert set(first["items"][0]) == {
        "id",
        "mode",
        "status",
        "status_message",
        "started_at",
        "ended_at",
        "final_pnl",
    }


@pytest.mark.parametrize("suffix", ["runs", "backtests"])
@pytest.mark.parametrize(("query", "field"), [({"page": 0}, "page"), ({"page_size": 101}, "page_size")])
def test_run_and_backtest_lists_refuse_bad_pages(suffix, query, field, trader_client, world):
    body = assert_error(
        trader_client.get(f"/api/strategies/{world.strategy_id}/{suffix}", query), 400, "VALIDATION_ERROR"
    )

    assert field in body["errors"]


# --- webhook secret ------------------------------------------------------------------------------------------------


def test_rotate_answers_a_new_secret_once(trader_client, world):
    before = Strategy.objects.get(pk=world.strategy_id).webhook_secret_rotated_at

    response = trader_client.post(f"/api/strategies/{world.strategy_id}/webhook/rotate")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["webhook_url"] == f"/api/strategies/{world.strategy_id}/webhook"
    assert body["webhook_secret"] != world.secret and len(body["webhook_secret"]) >= 32
    stored = Strategy.objects.get(pk=world.strategy_id)
    assert stored.webhook_secret == body["webhook_secret"]
    assert stored.webhook_secret_rotated_at > before
    detail = trader_client.get(f"/api/strategies/{world.strategy_id}").json()
    assert body["webhook_secret"] not in json.dumps(detail)


# --- signals -------------------------------------------------------------------------------------------------------


def test_signal_detail_and_list(trader_client, world):
    detail = trader_client.get(f"/api/signals/{world.signal_id}").json()

    assert (detail["id"], detail["strategy_id"], detail["status"], detail["reason"]) == (
        world.signal_id,
        world.strategy_id,
        "rejected",
        "BAD_SECRET",
    )
    assert "secret" not in detail["payload"]
    assert WRONG_SECRET not in json.dumps(detail)
    listed = trader_client.get("/api/signals", {"page_size": 1}).json()
    assert (listed["total"], listed["total_pages"], listed["items"][0]["id"]) == (1, 1, world.signal_id)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "maybe"}, "status"),
        ({"page": "x"}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"colour": 1}, "colour"),
    ],
)
def test_signal_list_refuses_bad_queries(query, field, trader_client):
    body = assert_error(trader_client.get("/api/signals", query), 400, "VALIDATION_ERROR")

    assert field in body["errors"]
