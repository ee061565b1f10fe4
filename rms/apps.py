from django.apps import AppConfig

from marketdata.signals import ticks_published


class RmsConfig(AppConfig):
    """Risk profiles, pre-trade checks, MTM monitoring, square-off and kill switches."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "rms"

    def ready(self) -> None:
        from rms.receivers import on_ticks_published  # loads models: only once the app registry is ready

        ticks_published.connect(on_ticks_published, dispatch_uid="rms.evaluate_on_ticks")
