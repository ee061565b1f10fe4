"""Start, the minute dispatcher, a fire through the order pipeline, double delivery, a lost worker, missed minutes,
exit time and stop."""

from __future__ import annotations

import os
from datetime import datetime, time, timedelta
from decimal import Decimal
from unittest import mock
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import pytest

from orders.models import LegRole, Order, OrderSource, OrderStatus, Position
from strategies import services
from strategies.models import FireAction, FireMinute, FireStatus, Strategy, StrategyFire, StrategyRun, StrategyStatus
from strategies.tests.factories import option_symbol, straddle_body

IST = ZoneInfo("Asia/Kolkata")
pytestmark = pytest.mark.django_db


def create(client, body) -> dict:
    response = client.post("/api/strategies", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def start(client, strategy_id, mode="paper"):
    return client.post(f"/api/strategies/{strategy_id}/start", {"mode": mode}, format="json")


def at(day, hh_mm: str) -> datetime:
    return datetime.combine(day, time.fromisoformat(hh_mm), tzinfo=IST)


class WorkerKilled(BaseException):
    """The worker process dying in the middle of a fire."""


def started_before(run_id: str, moment: datetime) -> None:
    """The run began before `moment` (the minute dispatcher fires only runs that were running at the due time)."""
    StrategyRun.objects.filter(pk=run_id).update(started_at=moment - timedelta(hours=1))


def dispatched(moment: datetime, django_capture_on_commit_callbacks) -> tuple[services.DispatchResult, list[dict]]:
    """The minute dispatcher at `moment`, and the chunks it sent (captured, not run)."""
    with (
        mock.patch("strategies.services.scheduling.task_send") as send,
        django_capture_on_commit_callbacks(execute=True),
    ):
        result = services.fires_dispatch(now=moment)
    return result, [call.kwargs["kwargs"] for call in send.call_args_list]


def test_the_minute_dispatcher_claims_ist_entries_on_the_weekdays_and_stop_ends_them(
    trader_client, paper, nifty, day, django_capture_on_commit_callbacks
):
    from marketdata import calendar

    strategy = create(trader_client, straddle_body(paper, weekdays=[day.weekday()]))
    response = start(trader_client, strategy["id"])
    assert response.status_code == 201, response.json()
    run_id = response.json()["run"]["id"]
    started_before(run_id, at(day, "09:20"))

    # 09:20 IST is 03:50 UTC: the dispatcher reads the minute in IST, whatever zone `now` is given in.
    result, chunks = dispatched(at(day, "09:20").astimezone(ZoneInfo("UTC")), django_capture_on_commit_callbacks)

    fires = StrategyFire.objects.filter(strategy_id=strategy["id"]).order_by("leg")
    assert [(fire.action, fire.leg, fire.status) for fire in fires] == [
        ("entry", 0, "claimed"),
        ("entry", 1, "claimed"),
    ]
    assert {fire.scheduled_for for fire in fires} == {at(day, "09:20")}
    assert chunks == [{"minute": at(day, "09:20").isoformat(), "strategy_ids": [strategy["id"]]}]
    assert (result.minutes, result.fires) == (5, 1)  # the day's first dispatch looks back over the catch-up window
    # The minute is done: dispatching it again claims and sends nothing more.
    again, chunks = dispatched(at(day, "09:20"), django_capture_on_commit_callbacks)
    assert (again.fires, chunks) == (0, [])
    # Another trading day of another weekday: nothing is due.
    other_day = day + timedelta(days=1)
    while not calendar.is_trading_day(other_day) or other_day.weekday() == day.weekday():
        other_day += timedelta(days=1)
    assert dispatched(at(other_day, "09:20"), django_capture_on_commit_callbacks)[0].fires == 0

    exit_result, chunks = dispatched(at(day, "15:15"), django_capture_on_commit_callbacks)
    [exit_fire] = StrategyFire.objects.filter(strategy_id=strategy["id"], action=FireAction.EXIT)
    assert (exit_result.fires, exit_fire.leg) == (1, -1)
    assert chunks == [{"minute": at(day, "15:15").isoformat(), "strategy_ids": [strategy["id"]]}]

    assert trader_client.post(f"/api/strategies/{strategy['id']}/stop", {}, format="json").status_code == 200
    assert Strategy.objects.get(pk=strategy["id"]).status == StrategyStatus.STOPPED
    next_day = calendar.next_trading_day(day)
    while next_day.weekday() != day.weekday():
        next_day = calendar.next_trading_day(next_day)
    assert dispatched(at(next_day, "09:20"), django_capture_on_commit_callbacks)[0].fires == 0


def test_a_fire_sells_the_atm_straddle_of_the_current_week_with_stops(trader_client, paper, nifty, day):
    strategy = create(trader_client, straddle_body(paper))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]

    fires = services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))

    assert [fire.status for fire in fires] == ["placed", "placed"]
    orders = Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.ENTRY).order_by("symbol")
    expiry = nifty["weekly"][0]
    assert [order.symbol for order in orders] == [
        option_symbol(expiry, Decimal(24500), "CE"),
        option_symbol(expiry, Decimal(24500), "PE"),
    ]
    for order in orders:
        assert (order.side, order.quantity, order.source, order.tag) == (
            "SELL",
            75,
            OrderSource.STRATEGY,
            strategy["id"],
        )
        assert order.status == OrderStatus.FILLED
    ce = orders[0]
    # CE 24500 is quoted at 90 (see the fixture): a 25% stop on a short is 112.50.
    assert ce.stop_loss == Decimal("112.50")


def test_offsets_premium_and_next_week_choose_their_contracts(trader_client, paper, nifty, day):
    body = straddle_body(paper)
    body["legs"] = [
        {
            "underlying": "NIFTY",
            "instrument": "OPT",
            "option_type": "CE",
            "side": "BUY",
            "lots": 2,
            "expiry": "next_week",
            "strike": "atm",
            "strike_offset": 2,
        },
        {
            "underlying": "NIFTY",
            "instrument": "OPT",
            "option_type": "PE",
            "side": "BUY",
            "lots": 1,
            "expiry": "current_month",
            "strike": "closest_premium",
            "premium": "66",
        },
    ]
    strategy = create(trader_client, body)
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))

    placed = {order.symbol: order.quantity for order in Order.objects.filter(strategy_ref=strategy["id"])}
    # ATM 24500 + 2 steps = 24600 on next week's expiry; the PE nearest a premium of 66 is 24450 (quoted 65).
    assert placed == {
        option_symbol(nifty["weekly"][1], Decimal(24600), "CE"): 150,
        option_symbol(nifty["monthly"][0], Decimal(24450), "PE"): 75,
    }


def test_a_fire_delivered_twice_places_one_set_of_orders(
    trader_client, paper, nifty, day, django_capture_on_commit_callbacks
):
    from strategies.tasks import fire_chunk

    strategy = create(trader_client, straddle_body(paper))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    started_before(run_id, at(day, "09:20"))
    _, [chunk] = dispatched(at(day, "09:20"), django_capture_on_commit_callbacks)

    fire_chunk.apply(kwargs=chunk)
    fire_chunk.apply(kwargs=chunk)

    assert Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.ENTRY).count() == 2
    fires = StrategyFire.objects.filter(strategy_id=strategy["id"], action=FireAction.ENTRY)
    assert fires.count() == 2 and {fire.status for fire in fires} == {FireStatus.PLACED}
    # The direct path claims the same rows: it finds them taken and acts on nothing.
    assert services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20")) == []
    assert Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.ENTRY).count() == 2


def test_a_worker_lost_mid_burst_loses_no_fire_and_doubles_none(
    trader_client, paper, nifty, day, django_capture_on_commit_callbacks, settings
):
    """Chunk A's worker was killed after placing leg 1 and before recording it; chunk B's message was lost with
    its worker. Once their lease is over, the recovery pass sends both again: A's placed order is recorded, not
    placed twice, and everything else is placed once."""
    from django.utils import timezone

    from strategies.tasks import fire_chunk, recover_fires

    strategies = []
    for name in ("A", "B"):
        strategy = create(trader_client, straddle_body(paper, name=name))
        run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
        started_before(run_id, at(day, "09:20"))
        strategies.append(strategy["id"])
    _, chunks = dispatched(at(day, "09:20"), django_capture_on_commit_callbacks)
    assert len(chunks) == 2
    first_leg = StrategyFire.objects.get(strategy_id=strategies[0], leg=0)
    # What A's worker did before it was killed: took leg 1, placed its order, never recorded it.
    with (
        mock.patch("strategies.services.fires._fire_finish", side_effect=WorkerKilled),
        pytest.raises(WorkerKilled),
    ):
        fire_chunk.apply(kwargs=chunks[0], throw=True)
    orphan = Order.objects.get(strategy_ref=strategies[0], role=LegRole.ENTRY)
    assert StrategyFire.objects.get(pk=first_leg.pk).status == FireStatus.CLAIMED

    # Nothing is sent again while the lease holds.
    assert _run_here(recover_fires) == 0
    lease_over = timezone.now() - timedelta(seconds=settings.STRATEGY_FIRE_LEASE_SECONDS + 1)
    StrategyFire.objects.filter(strategy_id__in=strategies).update(sent_at=lease_over)
    StrategyFire.objects.filter(pk=first_leg.pk).update(taken_at=lease_over)
    with mock.patch("strategies.services.scheduling.task_send") as send:
        assert services.fires_recover() == 4
    for call in send.call_args_list:
        fire_chunk.apply(kwargs=call.kwargs["kwargs"])
        fire_chunk.apply(kwargs=call.kwargs["kwargs"])  # and each delivered twice

    for strategy_id in strategies:
        entries = Order.objects.filter(strategy_ref=strategy_id, role=LegRole.ENTRY)
        assert sorted(order.symbol[-2:] for order in entries) == ["CE", "PE"]
    recovered = StrategyFire.objects.get(pk=first_leg.pk)
    assert (recovered.status, recovered.order_ids) == (FireStatus.PLACED, [orphan.pk])
    assert not StrategyFire.objects.filter(strategy_id__in=strategies, status=FireStatus.CLAIMED).exists()


def test_minutes_missed_while_beat_was_down_are_caught_up_and_stale_entries_skipped_loudly(
    trader_client, paper, nifty, day, django_capture_on_commit_callbacks
):
    from accounts.models import Notification

    late = create(trader_client, straddle_body(paper, name="late", entry_time="09:20", exit_time="09:22"))
    stale = create(trader_client, straddle_body(paper, name="stale", entry_time="09:12", exit_time="15:15"))
    for strategy in (late, stale):
        started_before(start(trader_client, strategy["id"]).json()["run"]["id"], at(day, "09:00"))
    FireMinute.objects.create(minute=at(day, "09:10"))  # beat's last minute before it went down

    result, chunks = dispatched(at(day, "09:23"), django_capture_on_commit_callbacks)

    # 09:11 to 09:23 are dispatched: the 09:20 entry (3 minutes late) and the 09:22 exit are sent, the 09:12
    # entry (11 minutes late) is recorded as skipped and its owner told.
    assert (result.minutes, result.fires, result.skipped) == (13, 2, 1)
    assert sorted((chunk["minute"], chunk["strategy_ids"]) for chunk in chunks) == [
        (at(day, "09:20").isoformat(), [late["id"]]),
        (at(day, "09:22").isoformat(), [late["id"]]),
    ]
    skipped = StrategyFire.objects.filter(strategy_id=stale["id"])
    assert {(fire.status, fire.scheduled_for) for fire in skipped} == {(FireStatus.SKIPPED, at(day, "09:12"))}
    assert Notification.objects.filter(user=paper.owner, title="stale: the 09:12 entry was not taken").count() == 1


def test_a_run_stopped_after_its_fires_were_claimed_places_nothing(
    trader_client, paper, nifty, day, django_capture_on_commit_callbacks
):
    from strategies.tasks import fire_chunk

    strategy = create(trader_client, straddle_body(paper))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    started_before(run_id, at(day, "09:20"))
    _, [chunk] = dispatched(at(day, "09:20"), django_capture_on_commit_callbacks)
    assert trader_client.post(f"/api/strategies/{strategy['id']}/stop", {}, format="json").status_code == 200

    assert _run_here(fire_chunk, **chunk) == 0

    assert not Order.objects.filter(strategy_ref=strategy["id"]).exists()
    assert {fire.status for fire in StrategyFire.objects.filter(strategy_id=strategy["id"])} == {FireStatus.SKIPPED}


@pytest.mark.django_db(transaction=True)
def test_exit_time_squares_off_only_the_strategys_own_positions(
    trader_client, paper, nifty, day, publish_quote, eager_tasks
):
    from orders.services import OrderSpec, order_place

    expiry = nifty["weekly"][0]
    own_symbol = option_symbol(expiry, Decimal(24500), "CE")
    # The user's own manual short in the same contract must survive the strategy's exit.
    order_place(
        user=paper.owner,
        spec=OrderSpec(
            account_id=paper.pk, symbol=own_symbol, side="SELL", quantity=75, order_type="MARKET", product="MIS"
        ),
    )
    strategy = create(trader_client, straddle_body(paper))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))
    assert Position.objects.get(account=paper, symbol=own_symbol).quantity == -150

    services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="exit", now=at(day, "15:15"))

    assert Position.objects.get(account=paper, symbol=own_symbol).quantity == -75
    pe = option_symbol(expiry, Decimal(24500), "PE")
    assert Position.objects.get(account=paper, symbol=pe).quantity == 0
    # The stop-loss legs of the entries were cancelled, not left to fire on a flat position.
    stops = Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.STOP_LOSS)
    assert stops.exists() and all(stop.status == OrderStatus.CANCELLED for stop in stops)
    # Exiting twice (the exit task delivered again) does nothing more.
    assert services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="exit", now=at(day, "15:15")) == []


def test_a_holiday_or_another_weekday_fires_nothing(trader_client, paper, nifty, day):
    from datetime import timedelta

    from marketdata import calendar

    strategy = create(trader_client, straddle_body(paper, weekdays=[day.weekday()]))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    other_day = day + timedelta(days=1)
    while not calendar.is_trading_day(other_day) or other_day.weekday() == day.weekday():
        other_day += timedelta(days=1)
    assert (
        services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(other_day, "09:20"))
        == []
    )
    sunday = day + timedelta(days=(6 - day.weekday()) % 7)
    assert (
        services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(sunday, "09:20")) == []
    )
    assert not Order.objects.filter(strategy_ref=strategy["id"]).exists()


def test_a_leg_that_cannot_be_placed_marks_the_fire_failed_and_tells_the_user(trader_client, paper, nifty, day):
    from accounts.models import Notification

    body = straddle_body(paper)
    body["legs"][0].update({"strike": "fixed", "strike_price": "30000", "stop_loss_unit": None, "stop_loss": None})
    body["legs"] = body["legs"][:1]
    strategy = create(trader_client, body)
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]

    fires = services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=at(day, "09:20"))

    assert fires[0].status == "failed" and "30000" in fires[0].detail
    assert Notification.objects.filter(user=paper.owner, level="error", title__contains="not placed").exists()


def test_mtm_stop_loss_exits_the_strategy_on_the_rms_sweep(trader_client, paper, nifty, day, publish_quote, settings):
    from django.utils import timezone

    from rms.tasks import sweep

    strategy = create(trader_client, straddle_body(paper, mtm_stop_loss="1500", entry_time="00:01", exit_time="23:59"))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    settings.MARKET_ALWAYS_OPEN = True  # the sweep runs on the real clock: let today trade, whatever day it is
    services.strategy_fire(strategy_id=strategy["id"], run_id=run_id, action="entry", now=timezone.now())
    expiry = nifty["weekly"][0]
    # Both short legs rise by 12: 2 x 75 x 12 = 1,800 of loss, beyond the 1,500 stop.
    publish_quote(option_symbol(expiry, Decimal(24500), "CE"), Decimal(102))
    publish_quote(option_symbol(expiry, Decimal(24500), "PE"), Decimal(102))

    sweep.apply()

    assert StrategyFire.objects.filter(strategy_id=strategy["id"], action=FireAction.MTM_EXIT).count() == 1
    for option_type in ("CE", "PE"):
        assert (
            Position.objects.get(account=paper, symbol=option_symbol(expiry, Decimal(24500), option_type)).quantity == 0
        )


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_runs_a_dispatched_chunk_once_though_it_arrives_twice(
    wall_clock, trader_client, paper, nifty, monkeypatch, settings
):
    import time as clock

    from django.db import connection
    from django.utils import timezone

    from algoterm.celery import app as celery_app
    from algoterm.testing import celery_worker_process

    parts = urlparse(os.environ["DATABASE_URL"])
    monkeypatch.setenv("DATABASE_URL", parts._replace(path=f"/{connection.settings_dict['NAME']}").geturl())
    monkeypatch.setenv("MARKET_ALWAYS_OPEN", "true")  # the worker fires on the real clock, whatever the day
    settings.MARKET_ALWAYS_OPEN = True
    celery_app.control.purge()
    now = timezone.now().astimezone(IST)
    minute = f"{now:%H:%M}"
    exit_time = "23:59" if minute != "23:59" else "00:01"
    strategy = create(trader_client, straddle_body(paper, entry_time=minute, exit_time=exit_time))
    run_id = start(trader_client, strategy["id"]).json()["run"]["id"]
    StrategyRun.objects.filter(pk=run_id).update(started_at=now - timedelta(minutes=5))
    with mock.patch("strategies.services.scheduling.task_send") as send:
        services.fires_dispatch(now=now)
    [call] = send.call_args_list
    chunk = call.kwargs["kwargs"]
    assert chunk["strategy_ids"] == [strategy["id"]]

    with celery_worker_process():
        for _ in range(2):  # the dispatcher's chunk, delivered twice
            celery_app.send_task("strategies.tasks.fire_chunk", kwargs=chunk)
        deadline = clock.monotonic() + 30
        while StrategyFire.objects.filter(strategy_id=strategy["id"]).exclude(status="claimed").count() < 2:
            assert clock.monotonic() < deadline, "the worker never fired the entry"
            clock.sleep(0.1)
        clock.sleep(1)  # the second delivery has had its turn on the solo worker

    orders = Order.objects.filter(strategy_ref=strategy["id"], role=LegRole.ENTRY)
    assert orders.count() == 2 and {order.side for order in orders} == {"SELL"}
    assert StrategyFire.objects.filter(strategy_id=strategy["id"], action=FireAction.ENTRY).count() == 2


def _run_here(task, **kwargs):
    """The task run in this process, its return value. `.get()` is refused when Celery believes a task is running in
    this thread, which a task run before by an eager test can leave behind."""
    result = task.apply(kwargs=kwargs)
    assert result.successful(), result.traceback
    return result.result
