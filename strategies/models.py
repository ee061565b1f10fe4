"""Strategies, their legs and accounts, runs, fires (the once-per-day claims), signals and backtests."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from algoterm.crypto import EncryptedTextField
from algoterm.ids import PublicIdField

from .definitions import ExitUnit, ExpiryChoice, Kind, LegInstrument, StrikeChoice


def _choices(enum) -> list[tuple[str, str]]:
    return [(member.value, member.value.replace("_", " ")) for member in enum]


KIND_CHOICES = _choices(Kind)


class StrategyStatus(models.TextChoices):
    DRAFT = "draft"
    RUNNING = "running"
    STOPPED = "stopped"
    COMPLETED = "completed"  # nothing left to trade: every fixed expiry it names has passed
    ERROR = "error"  # a fire could not place its orders; the user must look, fix and start again


class RunMode(models.TextChoices):
    PAPER = "paper"
    LIVE = "live"


class Strategy(models.Model):
    id = PublicIdField(prefix="stg")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="strategies")
    name = models.CharField(max_length=80)
    kind = models.CharField(max_length=10, choices=KIND_CHOICES)
    status = models.CharField(max_length=10, choices=StrategyStatus.choices, default=StrategyStatus.DRAFT)
    status_message = models.CharField(max_length=300, blank=True)
    entry_time = models.TimeField(null=True, blank=True, help_text="IST; time-based strategies")
    exit_time = models.TimeField(help_text="IST; the strategy's own positions are squared off then")
    weekdays = models.JSONField(default=list, help_text="0 = Monday ... 4 = Friday")
    product = models.CharField(max_length=4, default="MIS")
    mtm_stop_loss = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    mtm_target = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    reentries = models.PositiveSmallIntegerField(default=0, help_text="per leg and day, after its stop-loss")
    trailing_stop = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    rule_symbol = models.CharField(max_length=64, blank=True)
    timeframe_minutes = models.PositiveSmallIntegerField(default=1)
    entry_rule = models.CharField(max_length=500, blank=True)
    exit_rule = models.CharField(max_length=500, blank=True)
    webhook_secret = EncryptedTextField(blank=True)
    webhook_secret_rotated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["user", "name"], name="strategy_name_unique_per_user")]
        indexes = [
            models.Index(fields=["status", "kind"]),
            # The minute dispatcher's look-ups: the running strategies due at one entry or exit time.
            models.Index(fields=["status", "entry_time"], name="strategy_due_entry"),
            models.Index(fields=["status", "exit_time"], name="strategy_due_exit"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.name} ({self.kind}, {self.status})"


class StrategyAccount(models.Model):
    """A broker account the strategy trades in, with how many times the legs' lots it takes there."""

    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="accounts")
    account = models.ForeignKey("brokers.BrokerAccount", on_delete=models.CASCADE, related_name="strategies")
    multiplier = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["strategy", "account"], name="strategy_account_once")]

    def __str__(self) -> str:
        return f"{self.account_id} x{self.multiplier}"


LEG_FIELDS = [
    "position",
    "underlying",
    "instrument",
    "option_type",
    "side",
    "lots",
    "expiry",
    "expiry_date",
    "strike",
    "strike_offset",
    "premium",
    "strike_price",
    "stop_loss_unit",
    "stop_loss",
    "target_unit",
    "target",
]


class Leg(models.Model):
    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="legs")
    position = models.PositiveSmallIntegerField(help_text="0-based order of the legs")
    underlying = models.CharField(max_length=32)
    instrument = models.CharField(max_length=3, choices=_choices(LegInstrument))
    option_type = models.CharField(max_length=2, blank=True)
    side = models.CharField(max_length=4)
    lots = models.PositiveIntegerField()
    expiry = models.CharField(max_length=14, choices=_choices(ExpiryChoice), default=ExpiryChoice.CURRENT_WEEK)
    expiry_date = models.DateField(null=True, blank=True)
    strike = models.CharField(max_length=16, choices=_choices(StrikeChoice), default=StrikeChoice.ATM)
    strike_offset = models.SmallIntegerField(default=0)
    premium = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    strike_price = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    stop_loss_unit = models.CharField(max_length=7, choices=_choices(ExitUnit), blank=True)
    stop_loss = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    target_unit = models.CharField(max_length=7, choices=_choices(ExitUnit), blank=True)
    target = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)

    class Meta:
        ordering = ["strategy", "position"]
        constraints = [models.UniqueConstraint(fields=["strategy", "position"], name="leg_position_unique")]

    def __str__(self) -> str:
        contract = f"{self.strike} {self.option_type}" if self.instrument == LegInstrument.OPTION else self.instrument
        return f"leg {self.position + 1}: {self.side} {self.lots} lot(s) {self.underlying} {contract}"


class RunStatus(models.TextChoices):
    RUNNING = "running"
    STOPPED = "stopped"
    COMPLETED = "completed"
    ERROR = "error"


class StrategyRun(models.Model):
    """One start-to-stop stretch of a strategy in one mode; its orders are the strategy's orders placed meanwhile."""

    id = PublicIdField(prefix="run")
    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="runs")
    mode = models.CharField(max_length=5, choices=RunMode.choices)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.RUNNING)
    status_message = models.CharField(max_length=300, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)
    final_pnl = models.DecimalField(
        max_digits=16,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="PnL of its own fills when it ended: realized, plus any position left open at the last price",
    )

    class Meta:
        ordering = ["-started_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["strategy"], condition=models.Q(status="running"), name="one_running_run_per_strategy"
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.mode} {self.status}"


class FireAction(models.TextChoices):
    ENTRY = "entry"
    REENTRY = "reentry"
    EXIT = "exit"  # the exit time
    MTM_EXIT = "mtm_exit"  # the strategy's MTM stop-loss or target
    RULE_ENTRY = "rule_entry"
    RULE_EXIT = "rule_exit"


class FireStatus(models.TextChoices):
    CLAIMED = "claimed"
    PLACED = "placed"
    FAILED = "failed"
    SKIPPED = "skipped"


class StrategyFire(models.Model):
    """The claim that makes one (strategy, day, leg, action, attempt) act once, however often its task arrives.
    `leg` is -1 for actions on the whole strategy (exit time, MTM exit).

    Entry and exit-time fires are claimed in bulk by the minute dispatcher before any worker sees them; a worker
    takes one (`taken_at`, a lease) right before acting on it, so a fire sent twice acts once and one whose worker
    died is sent again by the recovery pass once its lease has run out."""

    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="fires")
    run = models.ForeignKey(StrategyRun, on_delete=models.CASCADE, related_name="fires")
    trading_day = models.DateField()
    leg = models.SmallIntegerField()
    action = models.CharField(max_length=10, choices=FireAction.choices)
    attempt = models.PositiveSmallIntegerField(default=0)
    status = models.CharField(max_length=8, choices=FireStatus.choices, default=FireStatus.CLAIMED)
    detail = models.CharField(max_length=300, blank=True)
    order_ids = models.JSONField(default=list)
    scheduled_for = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="when a worker was last asked to act on it")
    taken_at = models.DateTimeField(null=True, blank=True, help_text="when a worker last took it (its lease)")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["strategy", "trading_day", "leg", "action", "attempt"], name="strategy_fire_once"
            )
        ]
        indexes = [
            # The recovery pass reads only the fires still claimed, a handful outside the busy minutes.
            models.Index(fields=["sent_at"], condition=models.Q(status="claimed"), name="strategy_fire_open")
        ]

    def __str__(self) -> str:
        return f"{self.strategy_id} {self.trading_day} leg {self.leg} {self.action}#{self.attempt} {self.status}"


class FireMinute(models.Model):
    """One IST minute the dispatcher has claimed the due fires of; the first dispatcher to insert it does the
    minute, and the minutes missing after a scheduler outage are the ones it catches up."""

    minute = models.DateTimeField(unique=True)
    started_at = models.DateTimeField(default=timezone.now)
    dispatched_at = models.DateTimeField(null=True, blank=True, help_text="when its last chunk was sent")
    fires = models.PositiveIntegerField(default=0, help_text="strategies sent to act (entry or exit)")
    skipped = models.PositiveIntegerField(default=0, help_text="strategies whose entry was too late to take")

    class Meta:
        ordering = ["-minute"]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M}: {self.fires} fire(s)"


class SignalStatus(models.TextChoices):
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class Signal(models.Model):
    """One webhook call (or rule trigger), accepted or rejected with its reason."""

    id = PublicIdField(prefix="sig")
    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="signals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="signals")
    source = models.CharField(max_length=12, help_text="tradingview, chartink, rule, other")
    action = models.CharField(max_length=6, blank=True)
    symbol = models.CharField(max_length=64, blank=True)
    quantity = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=SignalStatus.choices)
    reason = models.CharField(max_length=32, blank=True, help_text="an error code when rejected")
    detail = models.CharField(max_length=300, blank=True)
    dedupe_key = models.CharField(max_length=64, blank=True)
    payload = models.JSONField(default=dict, help_text="the body as received, without the secret")
    order_ids = models.JSONField(default=list)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["strategy", "dedupe_key"],
                condition=models.Q(status="accepted"),
                name="signal_accepted_once",
            )
        ]
        indexes = [models.Index(fields=["user", "-received_at"])]

    def __str__(self) -> str:
        return f"{self.id} {self.action} {self.symbol} {self.status}"


class WebhookRejectionCount(models.Model):
    """Refused webhook calls of one strategy on one day (IST), all counted, while only the first few are kept as
    Signal rows: a flood of bad calls costs one counter, not one row each."""

    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="webhook_rejection_counts")
    day = models.DateField()
    count = models.PositiveIntegerField(default=0)
    last_reason = models.CharField(max_length=32, blank=True)
    last_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-day"]
        constraints = [models.UniqueConstraint(fields=["strategy", "day"], name="webhook_rejection_count_per_day")]

    def __str__(self) -> str:
        return f"{self.strategy_id} {self.day}: {self.count} refused"


class BacktestStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Backtest(models.Model):
    id = PublicIdField(prefix="bkt")
    strategy = models.ForeignKey(Strategy, on_delete=models.CASCADE, related_name="backtests")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="backtests")
    status = models.CharField(max_length=9, choices=BacktestStatus.choices, default=BacktestStatus.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0, help_text="percent")
    start_date = models.DateField()
    end_date = models.DateField()
    capital = models.DecimalField(max_digits=16, decimal_places=2)
    volatility = models.DecimalField(max_digits=6, decimal_places=4, help_text="annual, for Black-Scholes pricing")
    definition = models.JSONField(default=dict, help_text="the strategy as it was when the backtest started")
    result = models.JSONField(null=True, blank=True)
    chart_png = models.BinaryField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.id} {self.start_date}..{self.end_date} {self.status}"
