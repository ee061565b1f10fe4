"""The instrument master and stored candles."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class InstrumentType(models.TextChoices):
    EQ = "EQ", "Equity"
    FUT = "FUT", "Future"
    CE = "CE", "Call option"
    PE = "PE", "Put option"
    INDEX = "INDEX", "Index"


class Instrument(models.Model):
    """One tradable (or, for indices, quotable) instrument, keyed by our canonical `EXCHANGE:TRADINGSYMBOL`,
    with the id each broker knows it by."""

    symbol = models.CharField(max_length=64, unique=True)
    exchange = models.CharField(max_length=8)  # NSE, BSE, NFO, BFO, MCX, CDS
    segment = models.CharField(max_length=16, help_text="e.g. NSE, NFO-OPT, NFO-FUT, INDICES")
    tradingsymbol = models.CharField(max_length=48)
    name = models.CharField(max_length=120, blank=True)
    underlying = models.CharField(max_length=32, blank=True, db_index=True, help_text="NIFTY, RELIANCE...")
    instrument_type = models.CharField(max_length=5, choices=InstrumentType.choices)
    expiry = models.DateField(null=True, blank=True)
    strike = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    lot_size = models.PositiveIntegerField(default=1)
    tick_size = models.DecimalField(max_digits=8, decimal_places=4, default="0.05")
    kite_token = models.BigIntegerField(null=True, blank=True, unique=True)
    dhan_security_id = models.CharField(max_length=16, blank=True)
    fyers_symbol = models.CharField(max_length=64, blank=True)
    is_active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["symbol"]
        indexes = [
            models.Index(fields=["underlying", "instrument_type", "expiry"]),
            models.Index(fields=["exchange", "instrument_type"]),
            models.Index(fields=["dhan_security_id"]),
        ]

    def __str__(self) -> str:
        return self.symbol


class InstrumentMasterLoad(models.Model):
    """One attempt to refresh a broker's instrument master (`marketdata.instruments.masters`): what it found and
    what it did. A failed or refused attempt changed no instrument."""

    class Outcome(models.TextChoices):
        RUNNING = "running"
        LOADED = "loaded"
        KEPT = "kept", "kept the previous master (the download looked wrong)"
        FAILED = "failed", "failed (the download failed or was unreadable)"

    broker = models.CharField(max_length=10)
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.RUNNING)
    attempt = models.PositiveSmallIntegerField(default=1)
    rows = models.PositiveIntegerField(default=0, help_text="instruments in the master we trade")
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(default=0)
    removed = models.PositiveIntegerField(default=0, help_text="instruments marked inactive or no longer listed")
    skipped = models.PositiveIntegerField(default=0, help_text="rows of exchanges or types we do not trade")
    message = models.TextField(blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["broker", "-started_at"])]

    def __str__(self) -> str:
        return f"{self.broker} master {self.started_at:%Y-%m-%d %H:%M}: {self.outcome}"


class Candle(models.Model):
    """OHLCV for one symbol and interval. 1-minute candles are built from ticks (or imported); higher
    intervals are derived from them; daily candles may be imported as such."""

    class Interval(models.TextChoices):
        MINUTE = "1m"
        DAY = "1d"

    symbol = models.CharField(max_length=64)
    interval = models.CharField(max_length=3, choices=Interval.choices, default=Interval.MINUTE)
    start = models.DateTimeField(help_text="the candle's opening time (aware, stored UTC)")
    open = models.DecimalField(max_digits=14, decimal_places=2)
    high = models.DecimalField(max_digits=14, decimal_places=2)
    low = models.DecimalField(max_digits=14, decimal_places=2)
    close = models.DecimalField(max_digits=14, decimal_places=2)
    volume = models.BigIntegerField(default=0)
    oi = models.BigIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["symbol", "interval", "start"]
        constraints = [models.UniqueConstraint(fields=["symbol", "interval", "start"], name="uniq_candle")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.interval} {self.start:%Y-%m-%d %H:%M}"
