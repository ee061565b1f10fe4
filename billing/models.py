"""Plans (as data), subscriptions mirroring Razorpay's, payments, and the webhook events that moved them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from algoterm.ids import PublicIdField


class PlanPeriod(models.TextChoices):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    YEARLY = "yearly"


class Plan(models.Model):
    """What a user may do and what it costs. The trial is local (no Razorpay plan, no payment)."""

    code = models.SlugField(max_length=20, unique=True, help_text="trial, monthly, yearly")
    name = models.CharField(max_length=60)
    description = models.CharField(max_length=200, blank=True)
    price_paise = models.PositiveIntegerField(default=0)
    period = models.CharField(max_length=7, choices=PlanPeriod.choices, default=PlanPeriod.MONTHLY)
    interval = models.PositiveSmallIntegerField(default=1, help_text="periods per billing cycle")
    total_count = models.PositiveSmallIntegerField(default=12, help_text="billing cycles a subscription runs")
    trial_days = models.PositiveSmallIntegerField(default=0)
    is_trial = models.BooleanField(default=False)
    max_broker_accounts = models.PositiveSmallIntegerField()
    max_running_strategies = models.PositiveSmallIntegerField()
    max_active_backtests = models.PositiveSmallIntegerField(default=2, help_text="backtests queued or running at once")
    live_trading = models.BooleanField()
    api_requests_per_minute = models.PositiveIntegerField()
    websocket_symbols = models.PositiveIntegerField()
    razorpay_plan_id = models.CharField(max_length=40, blank=True)
    is_active = models.BooleanField(default=True)
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "price_paise"]
        constraints = [
            models.UniqueConstraint(fields=["is_trial"], condition=models.Q(is_trial=True), name="one_trial_plan")
        ]

    def __str__(self) -> str:
        return f"{self.name} (₹{self.price_paise / 100:,.2f})"


class SubscriptionStatus(models.TextChoices):
    """Razorpay's states; a trial is `active` until its end."""

    CREATED = "created"
    AUTHENTICATED = "authenticated"
    ACTIVE = "active"
    PENDING = "pending"  # a renewal payment failed; Razorpay retries
    HALTED = "halted"  # retries exhausted
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    EXPIRED = "expired"
    PAUSED = "paused"


# A pending subscription keeps its access while Razorpay retries the card; a halted one does not.
ENTITLED_STATUSES = frozenset({SubscriptionStatus.AUTHENTICATED, SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING})
FINAL_STATUSES = frozenset({SubscriptionStatus.CANCELLED, SubscriptionStatus.COMPLETED, SubscriptionStatus.EXPIRED})


class Subscription(models.Model):
    id = PublicIdField(prefix="sub")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="subscriptions")
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="subscriptions")
    status = models.CharField(max_length=13, choices=SubscriptionStatus.choices, default=SubscriptionStatus.CREATED)
    razorpay_subscription_id = models.CharField(max_length=40, null=True, blank=True, unique=True)
    razorpay_customer_id = models.CharField(
        max_length=40, blank=True, db_index=True, help_text="how a payment event without its subscription finds it"
    )
    current_start = models.DateTimeField(null=True, blank=True)
    current_end = models.DateTimeField(null=True, blank=True)
    paid_count = models.PositiveSmallIntegerField(default=0)
    cancel_at_cycle_end = models.BooleanField(default=False)
    ended_at = models.DateTimeField(null=True, blank=True)
    short_url = models.CharField(max_length=300, blank=True, help_text="Razorpay's hosted checkout page")
    last_event_at = models.DateTimeField(
        null=True, blank=True, help_text="Razorpay's time of the newest event applied: older ones never undo it"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "status"])]

    def __str__(self) -> str:
        return f"{self.id} {self.plan.code} {self.status}"


class PaymentStatus(models.TextChoices):
    CAPTURED = "captured"
    FAILED = "failed"
    AUTHORIZED = "authorized"
    REFUNDED = "refunded"


class Payment(models.Model):
    id = PublicIdField(prefix="pay")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments")
    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="payments")
    razorpay_payment_id = models.CharField(max_length=40, unique=True)
    amount_paise = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, default="INR")
    status = models.CharField(max_length=10, choices=PaymentStatus.choices)
    method = models.CharField(max_length=20, blank=True)
    error_description = models.CharField(max_length=300, blank=True)
    paid_at = models.DateTimeField(help_text="Razorpay's time of the payment")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-paid_at", "-id"]
        indexes = [models.Index(fields=["status", "paid_at"])]

    def __str__(self) -> str:
        return f"{self.id} ₹{self.amount_paise / 100:,.2f} {self.status}"


class WebhookOutcome(models.TextChoices):
    APPLIED = "applied"
    STALE = "stale"  # older than what the subscription already shows
    IGNORED = "ignored"  # an event we do not act on, or for a subscription we do not know


class WebhookEvent(models.Model):
    """Every verified Razorpay webhook, once: a repeat of the same event id is answered and not processed again."""

    event_id = models.CharField(max_length=64, unique=True)
    event = models.CharField(max_length=40)
    payload = models.JSONField()
    outcome = models.CharField(max_length=8, choices=WebhookOutcome.choices)
    detail = models.CharField(max_length=300, blank=True)
    event_created_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event_id} {self.event} {self.outcome}"
