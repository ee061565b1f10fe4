from django.apps import AppConfig


class OrdersConfig(AppConfig):
    """Orders and their state machine, trades, positions, portfolio and reconciliation."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "orders"

    def ready(self) -> None:
        from orders.receivers import receivers_connect  # loads models: only once the app registry is ready

        receivers_connect()
