"""Every write of the strategies app: defining strategies, starting and stopping them, the minute dispatcher and
firing their legs through the order pipeline exactly once per (strategy, day, leg, action), webhooks, rules, the
strategy-level MTM watch and backtests. This package's names are the app's service API; each sub-domain lives in
a module of its own."""

from .backtests import BacktestInput, backtest_execute_stored, backtest_start, backtests_expire
from .definitions import (
    AccountInput,
    LegInput,
    StrategyInput,
    definition_of,
    strategy_create,
    strategy_delete,
    strategy_update,
    strategy_webhook_secret_rotate,
)
from .fires import LegResolver, ResolvedLeg, fires_execute, leg_place, leg_resolve, strategy_fire
from .live_rules import rules_evaluate
from .runs import RunPnl, run_exit, run_orders, run_pnl, strategies_stop_for_user, strategy_start, strategy_stop
from .scheduling import DispatchResult, fires_dispatch, fires_recover
from .signals import signal_announce, signal_ops_view
from .watch import strategies_monitor
from .webhooks import WEBHOOK_ACTIONS, WebhookCall, WebhookRefused, signal_receive

__all__ = [
    "WEBHOOK_ACTIONS",
    "AccountInput",
    "BacktestInput",
    "DispatchResult",
    "LegInput",
    "LegResolver",
    "ResolvedLeg",
    "RunPnl",
    "StrategyInput",
    "WebhookCall",
    "WebhookRefused",
    "backtest_execute_stored",
    "backtest_start",
    "backtests_expire",
    "definition_of",
    "fires_dispatch",
    "fires_execute",
    "fires_recover",
    "leg_place",
    "leg_resolve",
    "rules_evaluate",
    "run_exit",
    "run_orders",
    "run_pnl",
    "signal_announce",
    "signal_ops_view",
    "signal_receive",
    "strategies_monitor",
    "strategies_stop_for_user",
    "strategy_create",
    "strategy_delete",
    "strategy_fire",
    "strategy_start",
    "strategy_stop",
    "strategy_update",
    "strategy_webhook_secret_rotate",
]
