from django.apps import AppConfig


class RmsConfig(AppConfig):
    """Risk profiles, pre-trade checks, MTM monitoring, square-off and kill switches."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "rms"

    def ready(self) -> None:
        from rms.receivers import receivers_connect  # loads models: only once the app registry is ready

        receivers_connect()
