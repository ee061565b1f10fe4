"""The strategy-level watch on the RMS sweep: MTM stop-loss and target, and re-entries after a stop-loss."""

from __future__ import annotations

from datetime import date, datetime, time

from django.db.models import Q
from django.utils import timezone

from accounts.models import Notification
from accounts.services import notification_create
from orders.selectors import stop_loss_filled_get

from ..models import FireAction, FireStatus, RunStatus, StrategyFire, StrategyRun
from .clock import IST, _runnable_today, _today_ist
from .definitions import definition_of
from .fires import STRATEGY_LEVEL, _fire_claim, _fire_finish, _leg_fire
from .runs import run_exit, run_pnl


def _session_start(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=IST)


def strategies_monitor(*, now: datetime | None = None) -> dict[str, int]:
    """For every running run: the strategy's MTM stop-loss and target (today's PnL of its own fills), and leg
    re-entries after a stop-loss. Called from the RMS sweep, so it runs on the same clock."""
    now = now or timezone.now()
    day = _today_ist(now)
    counts = {"mtm_exits": 0, "reentries": 0}
    runs = StrategyRun.objects.filter(status=RunStatus.RUNNING).select_related("strategy", "strategy__user")
    runs = runs.filter(_watched())
    for run in runs:
        strategy = run.strategy
        if not _runnable_today(strategy, day):
            continue
        local_time = now.astimezone(IST).time()
        if strategy.exit_time is not None and local_time >= strategy.exit_time:
            continue
        if strategy.mtm_stop_loss is not None or strategy.mtm_target is not None:
            if _mtm_check(run=run, day=day):
                counts["mtm_exits"] += 1
                continue
        if strategy.reentries:
            counts["reentries"] += _reentries_place(run=run, day=day)
    return counts


def _watched() -> Q:
    return (
        Q(strategy__mtm_stop_loss__isnull=False) | Q(strategy__mtm_target__isnull=False) | Q(strategy__reentries__gt=0)
    )


def _mtm_check(*, run: StrategyRun, day: date) -> bool:
    strategy = run.strategy
    if StrategyFire.objects.filter(strategy=strategy, trading_day=day, action=FireAction.MTM_EXIT).exists():
        return False
    pnl = run_pnl(run=run, since=max(run.started_at, _session_start(day))).total
    hit = None
    if strategy.mtm_stop_loss is not None and pnl <= -strategy.mtm_stop_loss:
        hit = "stop-loss"
    elif strategy.mtm_target is not None and pnl >= strategy.mtm_target:
        hit = "target"
    if hit is None:
        return False
    fire = _fire_claim(strategy=strategy, run=run, day=day, leg=STRATEGY_LEVEL, action=FireAction.MTM_EXIT)
    if fire is None:
        return False
    # Today's remaining entries and re-entries must not reopen what this exit closes.
    placed = run_exit(run=run, reason=f"mtm_{hit.replace('-', '_')}")
    _fire_finish(fire, status=FireStatus.PLACED, order_ids=placed, detail=f"MTM {hit} at {pnl}")
    notification_create(
        user=strategy.user,
        kind="strategy",
        title=f"{strategy.name}: MTM {hit} hit",
        body=f"The strategy's MTM reached {pnl}; its positions are being squared off for today.",
        level=Notification.Level.WARNING,
        data={"strategy_id": strategy.pk, "run_id": run.pk, "mtm": str(pnl)},
    )
    return True


def _reentries_place(*, run: StrategyRun, day: date) -> int:
    """A leg whose stop-loss filled is entered again in the same contract, up to the strategy's re-entries."""
    strategy = run.strategy
    if StrategyFire.objects.filter(strategy=strategy, trading_day=day, action=FireAction.MTM_EXIT).exists():
        return 0
    fires = StrategyFire.objects.filter(
        strategy=strategy,
        trading_day=day,
        action__in=(FireAction.ENTRY, FireAction.REENTRY, FireAction.RULE_ENTRY),
        status=FireStatus.PLACED,
    )
    latest: dict[int, StrategyFire] = {}
    for fire in fires.order_by("attempt", "created_at"):
        latest[fire.leg] = fire
    definition = None
    placed = 0
    for leg_index, fire in latest.items():
        if leg_index < 0 or fire.attempt >= strategy.reentries:
            continue
        stopped = stop_loss_filled_get(entry_order_ids=fire.order_ids)
        if stopped is None:
            continue
        claim = _fire_claim(
            strategy=strategy, run=run, day=day, leg=leg_index, action=FireAction.REENTRY, attempt=fire.attempt + 1
        )
        if claim is None:
            continue
        definition = definition or definition_of(strategy)
        _leg_fire(
            strategy=strategy,
            run=run,
            definition=definition,
            fire=claim,
            index=leg_index,
            day=day,
            symbol=stopped.symbol,
        )
        placed += 1
    return placed
