from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The operator console, on the top floor: the admin dashboard, metrics, and the system, configuration,
    operations and admin APIs. It reads every app below it and owns no models."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "algoterm.console"
    label = "console"
    verbose_name = "AlgoTerm operator console"
