"""Exactly once under concurrency and faults: clients that retry, placement racing exits, reconciliation and the RMS
sweep on shared accounts, and errors after the broker already has the order."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from decimal import Decimal

import pytest
from django.db import connection, connections

from algoterm.testing import client_for
from brokers.models import SimOrder
from orders import services
from orders.models import IdempotencyRecord, LegRole, Order, OrderStatus, Position, Trade
from orders.services import exits as exit_services
from orders.services import placement as placement_services
from orders.tests.factories import EQUITY, paper_account

# Transactional: the follow-ups of a fill run after its commit, as they do in production.
CONCURRENT = pytest.mark.django_db(transaction=True)
RETRY_STATUSES = {409, 500, 502, 503, 504}


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def entry_body(account, **fields) -> dict:
    return {
        "account_id": account.pk,
        "symbol": EQUITY,
        "side": "BUY",
        "quantity": 1,
        "order_type": "MARKET",
        "product": "MIS",
        "target": 1600,
        "stop_loss": 1400,
        **fields,
    }


def place_with_retries(client, body: dict, *, key: str, statuses: list[int], attempts: int = 6):
    """What a mobile client does: the same key again on a 5xx or a 409 CONFLICT, until an answer sticks."""
    for _ in range(attempts):
        response = client.post("/api/orders", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
        statuses.append(response.status_code)
        if response.status_code not in RETRY_STATUSES or response.json().get("error_code") == "IDEMPOTENCY_KEY_REUSED":
            return response
    return response


class _DeadlockWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (self.format(record) if record.exc_info else "")
        if "deadlock" in text.lower():
            self.seen.append(text[:300])


@CONCURRENT
def test_concurrent_placing_exits_reconciles_and_sweeps_never_deadlock_500_or_double(trader, instruments, market):
    """Eight clients place orders with target and stop (each fill places its exits in the same flow), while other
    threads reconcile the account, run the RMS sweep and close positions by hand: nothing deadlocks, nothing answers
    500, every key is one order at the broker, and no exit is left working for more than is held."""
    assert connection.vendor == "postgresql", "row locks and deadlocks are PostgreSQL's: make test sets DATABASE_URL"
    from rms.services import sweep

    market(EQUITY, "1500")
    first = paper_account(trader, label="Paper A")
    second = paper_account(trader, label="Paper B")
    accounts = [first, second]
    watch = _DeadlockWatch()
    logging.getLogger().addHandler(watch)
    statuses: list[int] = []
    errors: list[str] = []
    keys: list[str] = []
    stop = threading.Event()

    def guarded(work):
        def run():
            try:
                work()
            except Exception as error:  # a thread's failure is the test's failure, reported below
                errors.append(f"{type(error).__name__}: {error}")
            finally:
                connections.close_all()

        return run

    def client_thread(index: int) -> None:
        client = client_for(trader)
        for n in range(8):
            key = f"c{index}-{n}-{uuid.uuid4().hex[:8]}"
            keys.append(key)
            place_with_retries(client, entry_body(accounts[(index + n) % 2]), key=key, statuses=statuses)
            if n % 3 == 2:
                # A manual close of part of the position: the exits on it must shrink to fit.
                closing = entry_body(accounts[index % 2], side="SELL")
                del closing["target"], closing["stop_loss"]
                client.post("/api/orders", closing, format="json")

    def reconcile_thread() -> None:
        while not stop.is_set():
            for account in accounts:
                services.orders_reconcile(account_id=account.pk)

    def sweep_thread() -> None:
        while not stop.is_set():
            sweep()

    workers = [threading.Thread(target=guarded(lambda i=i: client_thread(i))) for i in range(8)]
    background = [threading.Thread(target=guarded(reconcile_thread)), threading.Thread(target=guarded(sweep_thread))]
    for thread in background + workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=240)
    stop.set()
    for thread in background:
        thread.join(timeout=60)
    logging.getLogger().removeHandler(watch)

    assert not errors, errors[:5]
    assert not watch.seen, watch.seen[:3]
    assert 500 not in statuses, Counter(statuses)
    assert all(status == 201 for status in statuses), Counter(statuses)
    entries = Order.objects.filter(role=LegRole.ENTRY, side="BUY")
    # One order per key, each sent to the broker once (the broker's book has our tag exactly once).
    assert entries.count() == len(keys) == IdempotencyRecord.objects.count()
    assert Counter(entries.values_list("idempotency_record__key", flat=True)) == Counter(set(keys))
    at_broker = Counter(SimOrder.objects.values_list("tag", flat=True))
    assert all(count == 1 for count in at_broker.values()), at_broker.most_common(3)
    assert Order.objects.filter(status__in=[OrderStatus.SUBMITTING, OrderStatus.UNKNOWN]).count() == 0
    for account in accounts:
        position = Position.objects.get(account=account, symbol=EQUITY)
        fills = sum(t.quantity if t.side == "BUY" else -t.quantity for t in Trade.objects.filter(account=account))
        assert position.quantity == fills
        services.exits_fit_position(account_id=account.pk, symbol=EQUITY, product="MIS")
        working = Order.objects.filter(account=account, role=LegRole.STOP_LOSS, status__in=[OrderStatus.OPEN])
        assert sum(leg.pending_quantity for leg in working) <= max(position.quantity, 0)


# --- an error after the broker has the order keeps the key ------------------------------------------------------


@CONCURRENT
def test_an_error_after_the_broker_accepted_answers_the_order_and_never_places_it_again(
    trader, instruments, market, monkeypatch
):
    market(EQUITY, "1500")
    account = paper_account(trader)
    client = client_for(trader)
    real_mark_accepted = placement_services._order_mark_accepted
    calls = {"n": 0}

    def fails_once(**kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            from django.db import OperationalError

            raise OperationalError("deadlock detected")
        return real_mark_accepted(**kwargs)

    monkeypatch.setattr(placement_services, "_order_mark_accepted", fails_once)
    body = entry_body(account)
    del body["target"], body["stop_loss"]
    first = client.post("/api/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="after-send")
    # The broker has the order: the client is told so, with the order's state read back from the broker.
    assert first.status_code == 201, first.content[:400]
    assert first.json()["status"] == OrderStatus.FILLED
    again = client.post("/api/orders", body, format="json", HTTP_IDEMPOTENCY_KEY="after-send")
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert SimOrder.objects.count() == 1 and Order.objects.count() == 1


# --- exits ---------------------------------------------------------------------------------------------------------


@CONCURRENT
def test_a_filled_market_entry_answers_with_its_exits_already_working(trader_client, paper, market):
    market(EQUITY, "1500")
    response = trader_client.post("/api/orders", entry_body(paper, quantity=10), format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == OrderStatus.FILLED
    assert len(body["exit_ids"]) == 2
    legs = Order.objects.filter(parent_id=body["id"])
    assert {leg.status for leg in legs} == {OrderStatus.OPEN}
    assert all(leg.quantity == 10 for leg in legs)


@CONCURRENT
def test_closing_the_position_by_hand_cancels_its_exits(trader_client, paper, market):
    market(EQUITY, "1500")
    entry = trader_client.post("/api/orders", entry_body(paper, quantity=10), format="json").json()
    sell = entry_body(paper, side="SELL", quantity=4)
    del sell["target"], sell["stop_loss"]
    assert trader_client.post("/api/orders", sell, format="json").status_code == 201
    legs = Order.objects.filter(parent_id=entry["id"])
    assert {leg.quantity - leg.filled_quantity for leg in legs} == {6}
    sell["quantity"] = 6
    assert trader_client.post("/api/orders", sell, format="json").status_code == 201
    assert {leg.status for leg in Order.objects.filter(parent_id=entry["id"])} == {OrderStatus.CANCELLED}
    # Nothing is left to open a naked short when the price falls through the old stop.
    market(EQUITY, "1350")
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 0


@CONCURRENT
def test_a_square_off_cancels_the_exits_it_makes_redundant(trader_client, paper, market):
    market(EQUITY, "1500")
    entry = trader_client.post("/api/orders", entry_body(paper, quantity=10), format="json").json()
    assert trader_client.post("/api/positions/squareoff", {}, format="json").status_code in (200, 201)
    assert {leg.status for leg in Order.objects.filter(parent_id=entry["id"])} == {OrderStatus.CANCELLED}
    assert Position.objects.get(account=paper, symbol=EQUITY).quantity == 0


@CONCURRENT
def test_exits_owed_to_an_entry_are_only_placed_for_what_is_still_held(trader, paper, market, monkeypatch):
    """Exits that could not go out with the fill (a broker hiccup) are placed later by reconciliation: for the
    part of the position still held, and not at all when it was closed meanwhile."""
    market(EQUITY, "1500")
    monkeypatch.setattr(exit_services, "order_exits_place", lambda **kwargs: [])
    entry = services.order_place(
        user=trader,
        spec=services.OrderSpec(
            account_id=paper.pk,
            symbol=EQUITY,
            side="BUY",
            quantity=10,
            order_type="MARKET",
            product="MIS",
            target=Decimal("1600"),
            stop_loss=Decimal("1400"),
        ),
    )
    services.order_place(
        user=trader,
        spec=services.OrderSpec(
            account_id=paper.pk, symbol=EQUITY, side="SELL", quantity=10, order_type="MARKET", product="MIS"
        ),
    )
    monkeypatch.undo()
    services.orders_reconcile(account_id=paper.pk)
    entry.refresh_from_db()
    assert entry.exits_placed_at is not None
    assert not Order.objects.filter(parent=entry).exists()
    assert entry.events.filter(message__contains="already closed").exists()


@CONCURRENT
def test_a_bulk_order_that_fails_after_a_send_answers_each_legs_real_state(trader, instruments, market, monkeypatch):
    market(EQUITY, "1500")
    account = paper_account(trader)
    client = client_for(trader)
    real_mark_accepted = placement_services._order_mark_accepted

    def fails_on_the_first_leg(**kwargs):
        from django.db import OperationalError

        monkeypatch.setattr(placement_services, "_order_mark_accepted", real_mark_accepted)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(placement_services, "_order_mark_accepted", fails_on_the_first_leg)
    leg = entry_body(account)
    del leg["target"], leg["stop_loss"]
    body = {"legs": [leg, {**leg, "quantity": 2}], "all_or_none": False}
    first = client.post("/api/orders/bulk", body, format="json", HTTP_IDEMPOTENCY_KEY="bulk-after-send")

    # The first leg reached the broker before the failure: it is reported as placed (as the broker holds it), the
    # second never went out. The retry replays that answer and sends nothing.
    assert first.status_code == 201, first.content[:400]
    legs = first.json()["legs"]
    assert [leg["status"] for leg in legs] == ["placed", "not_sent"]
    assert legs[0]["order"]["status"] == OrderStatus.FILLED
    again = client.post("/api/orders/bulk", body, format="json", HTTP_IDEMPOTENCY_KEY="bulk-after-send")
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert SimOrder.objects.count() == 1
