from django.apps import AppConfig


class OrdersConfig(AppConfig):
    """Orders and their state machine, trades, positions, portfolio and reconciliation."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "orders"

    def ready(self) -> None:
        from marketdata.sources import market_data_wants_register
        from orders.receivers import receivers_connect  # loads models: only once the app registry is ready
        from orders.selectors import order_platform_symbols_needed

        receivers_connect()
        market_data_wants_register("orders", order_platform_symbols_needed)
