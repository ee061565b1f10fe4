from django.apps import AppConfig


class AlgotermConfig(AppConfig):
    """The project package as an app: shared API layer, health, system models and commands."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "algoterm"
    verbose_name = "AlgoTerm platform"
