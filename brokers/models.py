"""Broker accounts, and the simulated exchange behind the paper broker and the broker simulators."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from algoterm.crypto import EncryptedTextField
from algoterm.ids import PublicIdField
from brokers.protocol import BrokerOrderStatus, OrderType, Product, Side, Validity


class Broker(models.TextChoices):
    PAPER = "paper", "Paper (simulated)"
    ZERODHA = "zerodha", "Zerodha (Kite Connect)"
    DHAN = "dhan", "Dhan"
    FYERS = "fyers", "Fyers"


class AccountStatus(models.TextChoices):
    CONNECTED = "connected"
    LOGIN_REQUIRED = "login_required"
    EXPIRED = "expired"
    ERROR = "error"
    DISCONNECTED = "disconnected"


class BrokerAccount(models.Model):
    id = PublicIdField(prefix="acc")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="broker_accounts")
    broker = models.CharField(max_length=10, choices=Broker.choices)
    label = models.CharField(max_length=60)
    client_id = models.CharField(max_length=64, blank=True, help_text="the user's id at the broker")
    # JSON of the credentials (api keys, secrets) and of the session (access token), both Fernet-encrypted.
    credentials_encrypted = EncryptedTextField(blank=True, default="")
    session_encrypted = EncryptedTextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=AccountStatus.choices, default=AccountStatus.LOGIN_REQUIRED)
    session_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    proxy_url = models.CharField(max_length=300, blank=True, help_text="egress proxy with the whitelisted static IP")
    algo_id = models.CharField(max_length=40, blank=True, help_text="exchange algo id sent with every order")
    login_nonce = models.CharField(
        max_length=32, blank=True, help_text="binds the one live broker login link; cleared when it is used"
    )
    market_data_priority = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="set by an operator: this account feeds the platform's market data (1 first; the next number "
        "takes over when its session expires); empty: not a market-data source",
    )
    session_renewal_consented_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="when the user agreed that we renew the broker session before the open without a login (Fyers: "
        "with their PIN, stored encrypted); empty: no consent",
    )
    created_at = models.DateTimeField(default=timezone.now)
    connected_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["owner", "deleted_at"]),
            models.Index(fields=["status", "session_expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.broker})"

    def save(self, *args, **kwargs) -> None:
        loaded_owner_id = getattr(self, "_loaded_owner_id", None)
        if loaded_owner_id is not None and self.owner_id != loaded_owner_id:
            # The credentials and session are the owner's: moving the account would hand them to someone else.
            raise ValueError("A broker account's owner cannot be changed.")
        super().save(*args, **kwargs)
        self._loaded_owner_id = self.owner_id

    @classmethod
    def from_db(cls, db, field_names, values):
        account = super().from_db(db, field_names, values)
        account._loaded_owner_id = account.__dict__.get("owner_id")
        return account

    @property
    def credentials(self) -> dict[str, Any]:
        return json.loads(self.credentials_encrypted) if self.credentials_encrypted else {}

    @credentials.setter
    def credentials(self, value: dict[str, Any]) -> None:
        self.credentials_encrypted = json.dumps(value) if value else ""

    @property
    def session(self) -> dict[str, Any]:
        return json.loads(self.session_encrypted) if self.session_encrypted else {}

    @session.setter
    def session(self, value: dict[str, Any]) -> None:
        self.session_encrypted = json.dumps(value) if value else ""


# --- the simulated exchange ----------------------------------------------------------------------------------------


class Venue(models.TextChoices):
    """Which front door an exchange account is reached through: the paper adapter or a broker simulator."""

    PAPER = "paper"
    KITE = "kite"
    DHAN = "dhan"
    FYERS = "fyers"


class SimAccount(models.Model):
    venue = models.CharField(max_length=8, choices=Venue.choices)
    client_id = models.CharField(max_length=64)
    opening_balance = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("1000000.00"))
    cash = models.DecimalField(
        max_digits=16, decimal_places=2, default=Decimal("1000000.00"), help_text="opening balance + realized PnL"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["venue", "client_id"], name="uniq_sim_account")]

    def __str__(self) -> str:
        return f"{self.venue}:{self.client_id}"


ORDER_ID_BASE = 250_000_000_000_000  # exchange order ids look like brokers' 15-digit numeric ids


class SimOrder(models.Model):
    account = models.ForeignKey(SimAccount, on_delete=models.CASCADE, related_name="orders")
    symbol = models.CharField(max_length=64)
    side = models.CharField(max_length=4, choices=[(v, v) for v in Side])
    quantity = models.PositiveIntegerField()
    filled_quantity = models.PositiveIntegerField(default=0)
    average_price = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    order_type = models.CharField(max_length=6, choices=[(v, v) for v in OrderType])
    product = models.CharField(max_length=4, choices=[(v, v) for v in Product])
    price = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    trigger_price = models.DecimalField(max_digits=14, decimal_places=2, null=True, blank=True)
    validity = models.CharField(max_length=3, choices=[(v, v) for v in Validity], default=Validity.DAY)
    status = models.CharField(max_length=16, choices=[(v, v) for v in BrokerOrderStatus])
    status_message = models.CharField(max_length=200, blank=True)
    tag = models.CharField(max_length=40, blank=True)
    algo_id = models.CharField(max_length=40, blank=True)
    triggered = models.BooleanField(default=False)
    modifications = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["symbol", "status"]),
            models.Index(fields=["account", "tag"]),
            # Every tick batch asks which symbols have resting orders: answered from this small index, not the table
            # of every paper order ever placed.
            models.Index(
                fields=["symbol"],
                condition=models.Q(
                    status__in=[
                        BrokerOrderStatus.OPEN,
                        BrokerOrderStatus.TRIGGER_PENDING,
                        BrokerOrderStatus.PARTIALLY_FILLED,
                    ]
                ),
                name="simorder_resting_symbol",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.order_id} {self.side} {self.quantity} {self.symbol} {self.status}"

    @property
    def order_id(self) -> str:
        return str(ORDER_ID_BASE + self.pk)

    @staticmethod
    def pk_from_order_id(order_id: str) -> int | None:
        try:
            pk = int(order_id) - ORDER_ID_BASE
        except (TypeError, ValueError):
            return None
        return pk if pk > 0 else None

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled_quantity


class SimTrade(models.Model):
    order = models.ForeignKey(SimOrder, on_delete=models.CASCADE, related_name="trades")
    account = models.ForeignKey(SimAccount, on_delete=models.CASCADE, related_name="trades")
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=2)
    traded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.trade_id} {self.quantity} @ {self.price}"

    @property
    def trade_id(self) -> str:
        return str(ORDER_ID_BASE + self.pk)


class SimPosition(models.Model):
    account = models.ForeignKey(SimAccount, on_delete=models.CASCADE, related_name="positions")
    symbol = models.CharField(max_length=64)
    product = models.CharField(max_length=4, choices=[(v, v) for v in Product])
    quantity = models.IntegerField(default=0)
    average_price = models.DecimalField(max_digits=14, decimal_places=2, default=Decimal("0"))
    realized_pnl = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0"))
    buy_quantity = models.PositiveIntegerField(default=0)
    sell_quantity = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["account", "symbol", "product"], name="uniq_sim_position")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.product} {self.quantity}"


class SimHolding(models.Model):
    account = models.ForeignKey(SimAccount, on_delete=models.CASCADE, related_name="holdings")
    symbol = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()
    average_price = models.DecimalField(max_digits=14, decimal_places=2)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["account", "symbol"], name="uniq_sim_holding")]

    def __str__(self) -> str:
        return f"{self.symbol} {self.quantity}"
