from django.apps import AppConfig

from accounts.signals import trading_revoked
from rms.signals import sweep_finished


class StrategiesConfig(AppConfig):
    """Strategies, legs, schedules, webhooks, rules, signals, runs and backtests."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "strategies"

    def ready(self) -> None:
        # Both load models, so they wait for the app registry. Importing the tasks registers them by name, which is
        # how the services queue them (algoterm.tasking), in every process and not only in workers.
        from marketdata.sources import market_data_wants_register
        from strategies import tasks  # noqa: F401
        from strategies.receivers import on_sweep_finished, on_trading_revoked
        from strategies.selectors import strategy_platform_symbols_needed

        market_data_wants_register("strategies", strategy_platform_symbols_needed)
        trading_revoked.connect(on_trading_revoked, dispatch_uid="strategies.stop_on_trading_revoked")
        sweep_finished.connect(on_sweep_finished, dispatch_uid="strategies.monitor_after_rms_sweep")
