"""Platform-wide state: the trading mode and kill switch, runtime configuration sections, and the platform's own
alerts."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from algoterm.ids import PublicIdField


class PlatformMode(models.TextChoices):
    LIVE = "live"
    PAPER = "paper"  # every order goes to the paper broker, whatever account it names


class PlatformState(models.Model):
    """One row (pk 1): the mode and the platform kill switch, changed only through `algoterm.system`."""

    mode = models.CharField(max_length=5, choices=PlatformMode.choices, default=PlatformMode.LIVE)
    trading_halted = models.BooleanField(default=False)
    halt_reason = models.CharField(max_length=300, blank=True)
    changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    changed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(pk=1), name="platform_state_singleton")]

    def __str__(self) -> str:
        return f"{self.mode}, trading {'halted' if self.trading_halted else 'on'}"


class ConfigSection(models.Model):
    """One runtime configuration section (market_hours, holidays, rms_defaults, freeze_quantities, feed), validated
    by `algoterm.config` before it is saved; `version` grows with each change."""

    name = models.SlugField(max_length=32, unique=True)
    data = models.JSONField(default=dict)
    version = models.PositiveIntegerField(default=1)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"


class AlertSeverity(models.TextChoices):
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(models.Model):
    """One episode of a platform condition operators must hear of (`feed.stale`, `workers.urgent`,
    `broker.circuit.zerodha`...): raised when the console's evaluator sees it start, ended when it sees it end.
    Written only through `algoterm.console.alerts` (`alert_raise`, `alert_clear`)."""

    id = PublicIdField(prefix="alr")
    condition = models.CharField(max_length=64)
    severity = models.CharField(max_length=8, choices=AlertSeverity.choices)
    title = models.CharField(max_length=200)
    detail = models.TextField(blank=True)
    readings = models.JSONField(default=dict, blank=True, help_text="what the evaluator measured when it was raised")
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    cleared_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    cleared_reason = models.CharField(max_length=300, blank=True, help_text="what ended it, e.g. the evaluator")

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            # Two evaluators racing on one condition: the second insert fails, so the condition is raised once.
            models.UniqueConstraint(
                fields=["condition"], condition=models.Q(ended_at__isnull=True), name="alert_one_open_per_condition"
            ),
        ]
        indexes = [models.Index(fields=["condition", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.condition} ({self.severity}) {'open' if self.is_open else 'ended'}"

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    @property
    def duration_seconds(self) -> float | None:
        """How long it lasted; None while it is open."""
        return None if self.ended_at is None else (self.ended_at - self.started_at).total_seconds()
