"""Rule strategies live: evaluating their rules on the last closed candle and acting once per bar."""

from __future__ import annotations

from datetime import date, datetime

from django.utils import timezone

from ..definitions import Kind
from ..models import FireAction, FireStatus, RunStatus, Signal, SignalStatus, StrategyRun
from ..rules import rule_history, rule_parse, rule_true_on_last_bar
from .clock import IST, _runnable_today, _today_ist
from .definitions import definition_of
from .fires import STRATEGY_LEVEL, _fire_claim, _fire_finish, _fires_failed, _leg_fire
from .runs import _own_open_quantities, run_exit
from .signals import signal_announce


def rules_evaluate(*, now: datetime | None = None) -> int:
    """Each running rule strategy against its symbol's last closed candle: enter when the entry rule turns true
    and the run holds nothing, exit when the exit rule does. Once per (strategy, day, bar) however often it runs."""
    now = now or timezone.now()
    day = _today_ist(now)
    acted = 0
    runs = StrategyRun.objects.filter(status=RunStatus.RUNNING, strategy__kind=Kind.RULE).select_related(
        "strategy", "strategy__user"
    )
    for run in runs:
        strategy = run.strategy
        if not _runnable_today(strategy, day) or now.astimezone(IST).time() >= strategy.exit_time:
            continue
        entry_rule = rule_parse(strategy.entry_rule)
        exit_rule = rule_parse(strategy.exit_rule) if strategy.exit_rule else None
        history = rule_history(
            symbol=strategy.rule_symbol,
            timeframe_minutes=strategy.timeframe_minutes,
            rules=[rule for rule in (entry_rule, exit_rule) if rule is not None],
            first_day=day,
            end=now,
        )
        series, last_close = history.series, history.last_close
        if last_close is None or last_close.date() != day:
            continue
        bar_minute = last_close.hour * 60 + last_close.minute
        holding = bool(_own_open_quantities(run))
        if not holding and rule_true_on_last_bar(entry_rule, series):
            acted += _rule_act(run=run, day=day, action=FireAction.RULE_ENTRY, bar_minute=bar_minute, at=last_close)
        elif holding and exit_rule is not None and rule_true_on_last_bar(exit_rule, series):
            acted += _rule_act(run=run, day=day, action=FireAction.RULE_EXIT, bar_minute=bar_minute, at=last_close)
    return acted


def _rule_act(*, run: StrategyRun, day: date, action: str, bar_minute: int, at: datetime) -> int:
    strategy = run.strategy
    fire = _fire_claim(
        strategy=strategy, run=run, day=day, leg=STRATEGY_LEVEL, action=action, attempt=bar_minute, scheduled_for=at
    )
    if fire is None:
        return 0
    rule = strategy.entry_rule if action == FireAction.RULE_ENTRY else strategy.exit_rule
    if action == FireAction.RULE_EXIT:
        placed = run_exit(run=run, reason="exit_rule")
        _fire_finish(fire, status=FireStatus.PLACED, order_ids=placed, detail=rule)
    else:
        definition = definition_of(strategy)
        placed, problems = [], []
        for index in range(len(definition.legs)):
            leg_fire = _fire_claim(
                strategy=strategy, run=run, day=day, leg=index, action=FireAction.RULE_ENTRY, attempt=bar_minute
            )
            if leg_fire is None:
                continue
            _leg_fire(strategy=strategy, run=run, definition=definition, fire=leg_fire, index=index, day=day)
            placed += leg_fire.order_ids
            if leg_fire.status == FireStatus.FAILED:
                problems.append(leg_fire)
        _fire_finish(fire, status=FireStatus.FAILED if problems else FireStatus.PLACED, order_ids=placed, detail=rule)
        if problems:
            _fires_failed(strategy=strategy, run=run, failed=problems)
    signal = Signal.objects.create(
        strategy=strategy,
        user=strategy.user,
        source="rule",
        action="ENTRY" if action == FireAction.RULE_ENTRY else "EXIT",
        symbol=strategy.rule_symbol,
        status=SignalStatus.ACCEPTED if fire.status == FireStatus.PLACED else SignalStatus.REJECTED,
        reason="" if fire.status == FireStatus.PLACED else "LEG_FAILED",
        detail=f"{rule} on the bar closing {at:%H:%M}"[:300],
        dedupe_key=f"rule:{day.isoformat()}:{action}:{bar_minute}",
        order_ids=fire.order_ids,
    )
    signal_announce(signal=signal)
    return 1
