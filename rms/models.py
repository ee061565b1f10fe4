"""Risk profiles, each user's risk state for the trading day, and the RMS event log."""

from __future__ import annotations

from datetime import time
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from algoterm.config import RMS_DEFAULTS, config_get
from algoterm.ids import PublicIdField


class RiskProfile(models.Model):
    """A user's limits (`account` empty), or one broker account's overrides of them (empty fields inherit).

    Money limits are rupees; an empty limit is off. MTM rules (loss, target, profit lock, trailing) watch the
    user's MTM across accounts; the per-order rules apply per account, overrides first.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="risk_profiles")
    account = models.ForeignKey(
        "brokers.BrokerAccount", on_delete=models.CASCADE, null=True, blank=True, related_name="risk_profiles"
    )
    max_daily_loss = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    daily_profit_target = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    profit_lock_at = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, help_text="when MTM reaches this..."
    )
    profit_lock_amount = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, help_text="...this much profit is locked"
    )
    trailing_profit_every = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, help_text="for every this much MTM gained..."
    )
    trailing_profit_step = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, help_text="...raise the lock by this much"
    )
    max_lots_per_order = models.PositiveIntegerField(null=True, blank=True)
    max_order_value = models.DecimalField(max_digits=16, decimal_places=2, null=True, blank=True)
    max_open_positions = models.PositiveIntegerField(null=True, blank=True)
    max_orders_per_day = models.PositiveIntegerField(null=True, blank=True)
    allowed_products = models.JSONField(default=list, blank=True, help_text="empty: all of MIS, CNC, NRML")
    allowed_segments = models.JSONField(default=list, blank=True, help_text="exchanges, e.g. NSE, NFO; empty: all")
    trading_window_start = models.TimeField(null=True, blank=True, help_text="IST")
    trading_window_end = models.TimeField(null=True, blank=True, help_text="IST")
    auto_square_off_time = models.TimeField(null=True, blank=True, help_text="IST; intraday positions closed")
    kill_switch = models.BooleanField(default=False, help_text="the user's own stop: no new orders at all")
    # A user's loosening made after trading started for the day waits for the next trading day (as brokers' own
    # kill switches do): the new values by field name, as JSON, and the IST day they take effect.
    pending_changes = models.JSONField(default=dict, blank=True)
    pending_from = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(account__isnull=True), name="one_user_risk_profile"
            ),
            models.UniqueConstraint(
                fields=["user", "account"], condition=models.Q(account__isnull=False), name="one_account_override"
            ),
        ]

    def __str__(self) -> str:
        return f"risk profile of {self.user_id}" + (f" for {self.account_id}" if self.account_id else "")


class CeilingFields(models.Model):
    """Limits an operator sets as the outer bound of a user's own: the effective limit is the tightest of the
    platform's ceiling, the user's ceiling and the user's own setting. Empty fields set no bound."""

    max_daily_loss = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    max_lots_per_order = models.PositiveIntegerField(null=True, blank=True)
    max_order_value = models.DecimalField(max_digits=16, decimal_places=2, null=True, blank=True)
    max_open_positions = models.PositiveIntegerField(null=True, blank=True)
    max_orders_per_day = models.PositiveIntegerField(null=True, blank=True)
    allowed_products = models.JSONField(default=list, blank=True, help_text="empty: all of MIS, CNC, NRML")
    allowed_segments = models.JSONField(default=list, blank=True, help_text="exchanges, e.g. NSE, NFO; empty: all")
    trading_window_start = models.TimeField(null=True, blank=True, help_text="IST")
    trading_window_end = models.TimeField(null=True, blank=True, help_text="IST")
    auto_square_off_time = models.TimeField(
        null=True, blank=True, help_text="IST; intraday positions are closed at this time at the latest"
    )
    kill_switch = models.BooleanField(default=False, help_text="no new orders at all; only an operator lifts it")
    note = models.CharField(max_length=200, blank=True, help_text="why, shown to the user")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        abstract = True


class PlatformRiskCeiling(CeilingFields):
    """The platform-wide ceiling on every user's limits: one row."""

    class Meta:
        verbose_name = "platform risk ceiling"

    def __str__(self) -> str:
        return "platform risk ceiling"


class UserRiskCeiling(CeilingFields):
    """An operator's ceiling on one user's limits, inside the platform's."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="risk_ceiling")

    def __str__(self) -> str:
        return f"risk ceiling of {self.user_id}"


def default_limits() -> dict:
    """What a new user's profile starts with (the `rms_defaults` configuration section, by default the settings
    `RMS_DEFAULT_*`): loss and profit rules are the user's choice and start off; the counts sit well inside the
    brokers' own daily limits."""

    def clock(value: str) -> time | None:
        return time.fromisoformat(value) if value else None

    defaults = config_get(name=RMS_DEFAULTS)
    start, _, end = defaults["trading_window"].partition("-")
    return {
        "max_orders_per_day": defaults["max_orders_per_day"] or None,
        "max_open_positions": defaults["max_open_positions"] or None,
        "trading_window_start": clock(start.strip()),
        "trading_window_end": clock(end.strip()),
        "auto_square_off_time": clock(defaults["auto_square_off"]),
    }


# Rules on the user's MTM across accounts: on the user's profile only, never on an account's override.
MTM_RULES = (
    "max_daily_loss",
    "daily_profit_target",
    "profit_lock_at",
    "profit_lock_amount",
    "trailing_profit_every",
    "trailing_profit_step",
)
MONEY_FIELDS = (*MTM_RULES, "max_order_value")


class TradingState(models.TextChoices):
    NORMAL = "NORMAL"
    REDUCING = "REDUCING"  # exits only
    HALTED = "HALTED"  # nothing but the RMS's own exits


class RmsState(models.Model):
    """One user's risk state for one IST trading day; a new day starts NORMAL."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rms_states")
    trading_day = models.DateField()
    status = models.CharField(max_length=8, choices=TradingState.choices, default=TradingState.NORMAL)
    reason = models.CharField(max_length=40, blank=True)
    locked_profit = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    # An operator's reset starts the day's MTM rules afresh from the MTM at that moment.
    mtm_baseline = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    breach_mtm = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    breached_at = models.DateTimeField(null=True, blank=True)
    # Set with the breach and cleared when the square-off has run: a breach whose worker died half-way is resumed.
    square_off_pending = models.BooleanField(default=False)
    square_off_done_at = models.DateTimeField(null=True, blank=True)
    auto_square_off_done_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "trading_day"], name="one_rms_state_per_day")]
        indexes = [models.Index(fields=["trading_day", "status"])]

    def __str__(self) -> str:
        return f"{self.user_id} {self.trading_day} {self.status}"


class RmsEvent(models.Model):
    """What the risk engine decided and did: breaches, square-offs, locks raised, resets. Append-only."""

    class Kind(models.TextChoices):
        BREACH = "breach"
        SQUARE_OFF = "square_off"
        AUTO_SQUARE_OFF = "auto_square_off"
        PROFIT_LOCKED = "profit_locked"
        HALT = "halt"
        RESUME = "resume"
        CONFIG = "config"

    id = PublicIdField(prefix="rke")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="rms_events")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    reason = models.CharField(max_length=40, blank=True)
    mtm = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.user_id} {self.kind} {self.reason}"


ZERO = Decimal("0")
