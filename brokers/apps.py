from django.apps import AppConfig


class BrokersConfig(AppConfig):
    """Broker accounts, encrypted credentials, broker adapters and protocol simulators."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "brokers"
