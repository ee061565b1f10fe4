from django.apps import AppConfig


class MarketDataConfig(AppConfig):
    """Instrument master, quote cache, ticks, feeds, candles, option chain and market calendar."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "marketdata"

    def ready(self) -> None:
        from marketdata.receivers import hooks_connect  # loads models: only once the app registry is ready

        hooks_connect()
