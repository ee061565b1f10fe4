"""When time-based strategies act: one system beat entry a minute asks `fires_dispatch` for the fires due then.

It finds, set-based, the running strategies whose entry or exit time (IST, on their weekdays, on a trading day) is
that minute, claims their fires with one INSERT ... SELECT (the unique claim rows make a fire act once however
often it is sent) and fans them out in chunks to the urgent queue. Workers take each fire right before acting on it
(`fires.fires_execute`); `fires_recover` sends again what was claimed and not finished: the chunk's message lost,
or its worker dead mid-burst.

A minute beat missed (beat or every worker down) is caught up on the next dispatch: entries up to
STRATEGY_FIRE_CATCHUP_MINUTES late, older entries recorded as skipped fires and their users told (an entry's prices
are stale by then); exits back to the day's last dispatched minute, since a late exit is better than a position left
open. The day's first dispatch looks back STRATEGY_FIRE_CATCHUP_MINUTES only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Notification
from accounts.services import notification_create
from algoterm.tasking import task_send
from marketdata import calendar

from ..definitions import Kind
from ..models import (
    FireAction,
    FireMinute,
    FireStatus,
    Leg,
    RunStatus,
    Strategy,
    StrategyFire,
    StrategyRun,
    StrategyStatus,
)
from .clock import IST

FIRE_CHUNK_TASK = "strategies.tasks.fire_chunk"
STRATEGY_LEVEL = -1  # the `leg` of fires acting on the whole strategy
_SCHEDULED = (FireAction.ENTRY, FireAction.EXIT)


@dataclass(frozen=True)
class DispatchResult:
    minutes: int
    fires: int
    skipped: int


def _minute_of(moment: datetime) -> datetime:
    return moment.astimezone(IST).replace(second=0, microsecond=0)


def fires_dispatch(*, now: datetime | None = None) -> DispatchResult:
    """Claim and send the fires of this minute and of any minute missed since the last dispatch."""
    current = _minute_of(now or timezone.now())
    catchup = max(1, settings.STRATEGY_FIRE_CATCHUP_MINUTES)
    day_start = datetime.combine(current.date(), time(0, 0), tzinfo=IST)
    done = {
        minute.astimezone(IST)
        for minute in FireMinute.objects.filter(minute__gte=day_start, minute__lte=current).values_list(
            "minute", flat=True
        )
    }
    last = max(done) if done else None
    if last is None:
        # Nothing dispatched yet today: look back over the catch-up window only (a fresh start, a new day).
        first = current - timedelta(minutes=catchup - 1)
        first = max(first, day_start)
    else:
        first = last + timedelta(minutes=1)
    minutes = fires = skipped = 0
    moment = first
    while moment <= current:
        if moment not in done:
            late = current - moment > timedelta(minutes=catchup)
            counted = _minute_dispatch(minute=moment, entries_late=late)
            if counted is not None:
                minutes += 1
                fires += counted[0]
                skipped += counted[1]
        moment += timedelta(minutes=1)
    return DispatchResult(minutes=minutes, fires=fires, skipped=skipped)


def _trades_on(day: date, weekdays: Iterable[int]) -> bool:
    if calendar.market_always_open():
        return True  # the demo's simulated market trades every day
    return day.weekday() in weekdays and calendar.is_trading_day(day)


def _due(minute: datetime) -> list[tuple[str, str, str]]:
    """(run, strategy, action) of the runs due at `minute`: entries of time-based strategies, exits of every kind
    (each kind is squared off at its exit time). A run started after the minute is not due in it."""
    at = minute.time()
    rows = (
        StrategyRun.objects.filter(status=RunStatus.RUNNING, strategy__status=StrategyStatus.RUNNING)
        .filter(started_at__lt=minute + timedelta(minutes=1))
        .filter(Q(strategy__kind=Kind.TIME_BASED, strategy__entry_time=at) | Q(strategy__exit_time=at))
        .values_list(
            "id", "strategy_id", "strategy__kind", "strategy__entry_time", "strategy__exit_time", "strategy__weekdays"
        )
    )
    day = minute.date()
    trading_day = calendar.market_always_open() or calendar.is_trading_day(day)
    due = []
    for run_id, strategy_id, kind, entry_time, exit_time, weekdays in rows:
        if not trading_day or not _trades_on(day, weekdays):
            continue
        if kind == Kind.TIME_BASED and entry_time == at:
            due.append((run_id, strategy_id, FireAction.ENTRY))
        if exit_time == at:
            due.append((run_id, strategy_id, FireAction.EXIT))
    return due


_CLAIM_SQL = """
INSERT INTO {fires} (strategy_id, run_id, trading_day, leg, action, attempt, status, detail, order_ids,
                     scheduled_for, created_at, sent_at)
SELECT run.strategy_id, run.id, %s, {leg}, %s, 0, %s, %s, '[]', %s, %s, %s
FROM {runs} run {legs_join}
WHERE run.id IN ({run_ids})
ON CONFLICT DO NOTHING
"""
_CLAIM_BATCH = 5000


def _claim(*, runs: list[str], action: str, minute: datetime, now: datetime, skipped: bool) -> None:
    """One INSERT ... SELECT per batch of runs: a row per leg for an entry, one for the strategy for an exit. A
    claim that exists already (a direct fire, a dispatcher run twice) is left as it is."""
    ops = connection.ops
    entry = action == FireAction.ENTRY
    legs_join = f"JOIN {Leg._meta.db_table} leg ON leg.strategy_id = run.strategy_id" if entry else ""
    detail = f"not entered: the scheduler was down at {minute:%H:%M} IST" if skipped else ""
    with connection.cursor() as cursor:
        for start in range(0, len(runs), _CLAIM_BATCH):
            batch = runs[start : start + _CLAIM_BATCH]
            sql = _CLAIM_SQL.format(
                fires=StrategyFire._meta.db_table,
                runs=StrategyRun._meta.db_table,
                legs_join=legs_join,
                leg="leg.position" if entry else str(STRATEGY_LEVEL),
                run_ids=", ".join(["%s"] * len(batch)),
            )
            cursor.execute(
                sql,
                [
                    ops.adapt_datefield_value(minute.date()),
                    action,
                    FireStatus.SKIPPED if skipped else FireStatus.CLAIMED,
                    detail,
                    ops.adapt_datetimefield_value(minute),
                    ops.adapt_datetimefield_value(now),
                    None if skipped else ops.adapt_datetimefield_value(now),
                    *batch,
                ],
            )


def _minute_dispatch(*, minute: datetime, entries_late: bool) -> tuple[int, int] | None:
    """Claim the minute, then its fires; None when another dispatcher has the minute already."""
    now = timezone.now()
    day = minute.date()
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = FireMinute.objects.create(minute=minute, started_at=now)
        except IntegrityError:
            return None
        due = _due(minute)
        entries = [(run_id, strategy_id) for run_id, strategy_id, action in due if action == FireAction.ENTRY]
        exits = [(run_id, strategy_id) for run_id, strategy_id, action in due if action == FireAction.EXIT]
        late = []
        if entries_late and entries:
            already = set(
                StrategyFire.objects.filter(
                    trading_day=day, action=FireAction.ENTRY, strategy_id__in=[strategy for _, strategy in entries]
                ).values_list("strategy_id", flat=True)
            )
            late = [strategy_id for _, strategy_id in entries if strategy_id not in already]
        _claim(runs=[run for run, _ in entries], action=FireAction.ENTRY, minute=minute, now=now, skipped=entries_late)
        _claim(runs=[run for run, _ in exits], action=FireAction.EXIT, minute=minute, now=now, skipped=False)
        # Chunks name the strategies and the minute, not fire ids: nothing is read back. A fire a direct call
        # claimed first is acted on by whoever takes it first, once.
        sent = sorted({strategy for _, strategy in exits} | (set() if entries_late else {s for _, s in entries}))
        record.fires = len(sent)
        record.skipped = len(late)
        record.save(update_fields=["fires", "skipped"])
        if late:
            _missed_notify(strategy_ids=late, minute=minute)
    # Sent once the claims are committed; a dispatcher that dies in between leaves them to the recovery pass.
    for chunk in _chunks(sent):
        task_send(name=FIRE_CHUNK_TASK, kwargs={"minute": minute.isoformat(), "strategy_ids": chunk})
    FireMinute.objects.filter(pk=record.pk).update(dispatched_at=timezone.now())
    return record.fires, len(late)


def _chunks(strategy_ids: list[str]) -> list[list[str]]:
    """About STRATEGY_FIRE_CHUNKS chunks whatever the burst: small ones spread a small burst over every worker
    process, and a big burst's messages stay a small part of the dispatch."""
    size = max(1, -(-len(strategy_ids) // max(1, settings.STRATEGY_FIRE_CHUNKS)))
    return [strategy_ids[start : start + size] for start in range(0, len(strategy_ids), size)]


def _missed_notify(*, strategy_ids: list[str], minute: datetime) -> None:
    for strategy in Strategy.objects.filter(pk__in=strategy_ids).select_related("user"):
        notification_create(
            user=strategy.user,
            kind="strategy",
            title=f"{strategy.name}: the {minute:%H:%M} entry was not taken",
            body="The platform's scheduler was down at the entry time and came back too late to enter at a fair "
            "price. The strategy keeps running and enters again on its next day.",
            level=Notification.Level.WARNING,
            data={"strategy_id": strategy.pk},
        )


def fires_recover(*, now: datetime | None = None) -> int:
    """Send again the entry and exit fires still claimed whose message was sent and not acted on within the lease:
    the message lost, or its worker killed while it held them. Returns how many were sent."""
    now = now or timezone.now()
    expired = now - timedelta(seconds=settings.STRATEGY_FIRE_LEASE_SECONDS)
    stale = (
        StrategyFire.objects.filter(status=FireStatus.CLAIMED, action__in=_SCHEDULED, sent_at__lt=expired)
        .exclude(scheduled_for=None)
        .filter(Q(taken_at__isnull=True) | Q(taken_at__lt=expired))
        .order_by("strategy_id", "leg")
    )
    fires = list(stale.values_list("id", "strategy_id", "scheduled_for")[: settings.STRATEGY_FIRE_RECOVER_MAX])
    if not fires:
        return 0
    StrategyFire.objects.filter(pk__in=[fire_id for fire_id, _, _ in fires]).update(sent_at=now)
    by_minute: dict[datetime, set[str]] = {}
    for _, strategy_id, minute in fires:
        by_minute.setdefault(minute, set()).add(strategy_id)
    for minute, strategy_ids in sorted(by_minute.items()):
        for chunk in _chunks(sorted(strategy_ids)):
            task_send(name=FIRE_CHUNK_TASK, kwargs={"minute": minute.isoformat(), "strategy_ids": chunk})
    return len(fires)
