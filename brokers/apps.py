from django.apps import AppConfig


class BrokersConfig(AppConfig):
    """Broker accounts, encrypted credentials and broker adapters."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "brokers"
