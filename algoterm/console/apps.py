from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    """The operator console, on the top floor: the admin dashboard, metrics, and the system, configuration,
    operations and admin APIs. It reads every app below it and owns no models."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "algoterm.console"
    label = "console"
    verbose_name = "AlgoTerm operator console"

    def ready(self) -> None:
        # The alerts' /ws/ops snapshot part and their Prometheus gauges (registered on import).
        from algoterm.console import alert_metrics  # noqa: F401
        from algoterm.console.alerts import alerts_snapshot_part
        from algoterm.console.ops_socket import ops_snapshot_register

        ops_snapshot_register("alerts", alerts_snapshot_part)
