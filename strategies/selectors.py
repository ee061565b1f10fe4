"""Reads of the strategies app, always scoped to the user: another user's ids read as missing (404)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from algoterm.api.errors import NotFound
from marketdata.sources import symbols_of_underlyings

from .models import Backtest, Leg, RunStatus, Signal, Strategy, StrategyRun, StrategyStatus, WebhookRejectionCount
from .services import RunPnl, run_pnl, signal_ops_view
from .services.clock import IST


def _today_ist():
    return timezone.localdate(timezone=IST)


def _with_webhook_rejections_today(strategies: QuerySet[Strategy]) -> QuerySet[Strategy]:
    today_counts = WebhookRejectionCount.objects.filter(strategy=OuterRef("pk"), day=_today_ist())
    return strategies.annotate(webhook_rejections_today_count=Coalesce(Subquery(today_counts.values("count")[:1]), 0))


def webhook_rejections_today(*, strategy: Strategy) -> int:
    """Webhook calls refused today (IST), from the list's annotation when there is one."""
    annotated = getattr(strategy, "webhook_rejections_today_count", None)
    if annotated is not None:
        return annotated
    counts = WebhookRejectionCount.objects.filter(strategy_id=strategy.pk, day=_today_ist())
    return counts.values_list("count", flat=True).first() or 0


def strategy_list(*, user: User, status: str | None = None, kind: str | None = None) -> QuerySet[Strategy]:
    strategies = _with_webhook_rejections_today(Strategy.objects.filter(user=user)).prefetch_related("legs", "accounts")
    if status:
        strategies = strategies.filter(status=status)
    if kind:
        strategies = strategies.filter(kind=kind)
    return strategies


def strategy_get(*, user: User, strategy_id: str) -> Strategy:
    strategies = _with_webhook_rejections_today(Strategy.objects.filter(user=user, pk=strategy_id))
    strategy = strategies.prefetch_related("legs", "accounts").first()
    if strategy is None:
        raise NotFound()
    return strategy


@dataclass
class StrategyDetail:
    strategy: Strategy
    current_run: StrategyRun | None
    pnl: RunPnl | None

    def __getattr__(self, name: str):
        return getattr(self.strategy, name)


def strategy_detail(*, user: User, strategy_id: str) -> StrategyDetail:
    """The strategy with its running (or last) run and that run's PnL at the last prices."""
    strategy = strategy_get(user=user, strategy_id=strategy_id)
    run = strategy.runs.filter(status=RunStatus.RUNNING).first() or strategy.runs.first()
    return StrategyDetail(strategy=strategy, current_run=run, pnl=run_pnl(run=run) if run is not None else None)


def run_list(*, user: User, strategy_id: str) -> QuerySet[StrategyRun]:
    return strategy_get(user=user, strategy_id=strategy_id).runs.all()


def backtest_list(*, user: User, strategy_id: str) -> QuerySet[Backtest]:
    strategy = strategy_get(user=user, strategy_id=strategy_id)
    return Backtest.objects.filter(user=user, strategy=strategy).defer("result", "chart_png")


def backtest_get(*, user: User, strategy_id: str, backtest_id: str) -> Backtest:
    backtest = Backtest.objects.filter(user=user, strategy__pk=strategy_id, pk=backtest_id).first()
    if backtest is None:
        raise NotFound()
    return backtest


def signal_list(*, user: User, strategy_id: str | None = None, status: str | None = None) -> QuerySet[Signal]:
    signals = Signal.objects.filter(user=user)
    if strategy_id:
        signals = signals.filter(strategy__pk=strategy_id)
    if status:
        signals = signals.filter(status=status)
    return signals


def signal_get(*, user: User, signal_id: str) -> Signal:
    signal = Signal.objects.filter(user=user, pk=signal_id).first()
    if signal is None:
        raise NotFound()
    return signal


def signal_platform_recent(*, limit: int) -> list[dict]:
    """The latest `limit` signals of every user, newest first, as the operators' socket shows them (operators only)."""
    return [signal_ops_view(signal) for signal in Signal.objects.order_by("-received_at", "-id")[:limit]]


def strategy_platform_symbols_needed() -> list[str]:
    """The symbols running strategies price from: rule strategies' symbol and the legs' underlyings' spots."""
    running = Strategy.objects.filter(status=StrategyStatus.RUNNING)
    rule_symbols = [symbol for symbol in running.values_list("rule_symbol", flat=True).distinct() if symbol]
    underlyings = Leg.objects.filter(strategy__status=StrategyStatus.RUNNING).values_list("underlying", flat=True)
    return list(dict.fromkeys([*rule_symbols, *symbols_of_underlyings(set(underlyings))]))
