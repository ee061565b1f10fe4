from django.apps import AppConfig


class RmsConfig(AppConfig):
    """Risk profiles, pre-trade checks, MTM monitoring, square-off and kill switches."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "rms"
