from django.apps import AppConfig


class StrategiesConfig(AppConfig):
    """Strategies, legs, schedules, webhooks, rules, signals, runs and backtests."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "strategies"
