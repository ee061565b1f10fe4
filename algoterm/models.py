"""Platform-wide state operators control: the trading mode and kill switch, and runtime configuration sections."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


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
