from django.apps import AppConfig


class OrdersConfig(AppConfig):
    """Orders and their state machine, trades, positions, portfolio and reconciliation."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "orders"
