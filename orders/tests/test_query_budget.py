"""The cost of one order, pinned: the queries of POST /api/orders for a paper MARKET order (with and without its
target and stop-loss), and the Redis round trips of pacing. A change that adds a query to the order path fails
here and has to say why in the budget below."""

from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from brokers.protection import pace_order
from orders.models import LegRole, Order, OrderStatus
from orders.tests.factories import EQUITY

pytestmark = pytest.mark.django_db(transaction=True)

# Statements of one POST /api/orders (BEGIN and COMMIT included), authentication and the response included, with
# the account's funds snapshot fresh and its position open (a busy account). 64 before the lean order path, 39 after
# its first part.
#   authentication 1; validation 2 (account, instrument); the user's day 1 (orders placed today and open positions,
#   one statement, which the exposure and the risk check share); risk check 3 (the profile with the account's
#   override 1, both ceilings 1, today's state 1; funds from the snapshot); the order with its two events and the
#   audit row 5 (one transaction); the stall check 1; the paper exchange 8 (account lock, positions, margin in use,
#   order, trade, position; one transaction); acceptance and fill 9 (one transaction: lock, trade, position lock and
#   update, order, events, the fill notification without a savepoint); the response 1 (its events: the order is
#   rendered as the fill left it, and an order without a target or stop-loss has no exit legs to read).
ENTRY_BUDGET = 31
# With a target and a stop-loss, which go out in the same request (the answer shows them working): the follow-up
# reads 2 and places both legs in one transaction 8, each leg is checked 1, sent 5 and accepted 5, the legs are
# fitted to the position 2 and the entry re-read with its events and legs 3. 118 before the lean order path.
EXITS_BUDGET = 67


def _post(client, account, **fields):
    body = {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 10,
        "order_type": "MARKET",
        "product": "MIS",
        **fields,
    }
    return client.post("/api/orders", body, format="json")


@pytest.fixture
def busy_account(trader_client, paper, market):
    """An account that has traded: its funds snapshot is fresh and its position in EQUITY is open."""
    market(EQUITY, "1500")
    response = _post(trader_client, paper)
    assert response.status_code == 201, response.json()
    return paper


def test_a_paper_market_order_stays_within_its_query_budget(trader_client, busy_account):
    with CaptureQueriesContext(connection) as queries:
        response = _post(trader_client, busy_account)
    assert response.status_code == 201 and response.json()["status"] == "FILLED", response.json()
    statements = "\n".join(query["sql"][:120] for query in queries.captured_queries)
    assert len(queries) <= ENTRY_BUDGET, f"{len(queries)} queries:\n{statements}"


def test_a_paper_market_order_with_exits_stays_within_its_query_budget(trader_client, busy_account):
    with CaptureQueriesContext(connection) as queries:
        response = _post(trader_client, busy_account, target="1600", stop_loss="1400")
    assert response.status_code == 201 and response.json()["status"] == "FILLED", response.json()
    legs = Order.objects.filter(parent_id=response.json()["id"])
    assert {(leg.role, leg.status) for leg in legs} == {
        (LegRole.TARGET, OrderStatus.OPEN),
        (LegRole.STOP_LOSS, OrderStatus.OPEN),
    }
    statements = "\n".join(query["sql"][:120] for query in queries.captured_queries)
    assert len(queries) <= EXITS_BUDGET, f"{len(queries)} queries:\n{statements}"


def test_the_risk_check_reads_funds_from_the_snapshot_not_the_broker(trader_client, busy_account, monkeypatch):
    from brokers.adapters.paper import PaperAdapter

    def asked(self):
        raise AssertionError("the broker was asked for funds on the order path")

    monkeypatch.setattr(PaperAdapter, "funds", asked)
    assert _post(trader_client, busy_account).status_code == 201


def test_a_missing_or_old_funds_snapshot_is_read_once(trader_client, busy_account, monkeypatch, time_machine):
    from brokers.adapters.paper import PaperAdapter

    calls = []
    real = PaperAdapter.funds

    def counted(self):
        calls.append(self.account_ref)
        return real(self)

    monkeypatch.setattr(PaperAdapter, "funds", counted)
    time_machine.move_to(timezone.now() + timedelta(seconds=settings.RMS_FUNDS_MAX_AGE_SECONDS + 1), tick=True)
    assert _post(trader_client, busy_account).status_code == 201
    assert _post(trader_client, busy_account).status_code == 201
    assert calls == [busy_account.pk]


@pytest.mark.skipif(settings.EMBEDDED, reason="pacing is in-process without Redis")
def test_pacing_an_order_is_one_redis_round_trip(monkeypatch):
    commands = []
    real = redis.Redis.execute_command

    def counted(self, *args, **kwargs):
        commands.append(args[0])
        return real(self, *args, **kwargs)

    pace_order(account_id="acc_budget", broker="paper")  # the script is registered on first use
    monkeypatch.setattr(redis.Redis, "execute_command", counted)
    for _ in range(3):
        assert pace_order(account_id="acc_budget", broker="paper") == pytest.approx(0, abs=0.5)
    assert commands == ["EVALSHA"] * 3


def test_a_fill_refreshes_the_funds_snapshot_only_while_the_funds_check_is_on(
    trader_client, paper, market, eager_tasks, settings, monkeypatch
):
    from brokers.adapters.paper import PaperAdapter

    market(EQUITY, "1500")
    calls = []
    real = PaperAdapter.funds

    def counted(self):
        calls.append(self.account_ref)
        return real(self)

    monkeypatch.setattr(PaperAdapter, "funds", counted)
    settings.RMS_FUNDS_CHECK = False
    assert _post(trader_client, paper).status_code == 201
    assert calls == []  # nothing reads a snapshot: none is taken

    settings.RMS_FUNDS_CHECK = True
    assert _post(trader_client, paper).status_code == 201
    # Read once by the check (there was no snapshot), then again after the fill changed the funds.
    assert calls == [paper.pk, paper.pk]
