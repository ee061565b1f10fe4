"""Input and output shapes of the RMS API."""

from __future__ import annotations

from rest_framework import serializers

from algoterm.api.serializers import InputSerializer
from brokers.models import Broker
from brokers.protocol import Product
from rms.models import TradingState

PRODUCTS = [product.value for product in Product]
CLOCK = "%H:%M"


def _money(max_digits: int = 14, **kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=max_digits, decimal_places=2, coerce_to_string=False, **kwargs)


def _clock(**kwargs) -> serializers.TimeField:
    return serializers.TimeField(format=CLOCK, input_formats=[CLOCK, "%H:%M:%S"], **kwargs)


# --- outputs -----------------------------------------------------------------------------------------------------


class RiskLimitsOutput(serializers.Serializer):
    """Rupees and IST "HH:MM"; null (or an empty list) means the rule is off."""

    max_daily_loss = _money(allow_null=True, help_text="halt and square off when MTM falls to minus this")
    daily_profit_target = _money(allow_null=True, help_text="exits only, squared off, when MTM reaches this")
    profit_lock_at = _money(allow_null=True, help_text="when MTM reaches this...")
    profit_lock_amount = _money(allow_null=True, help_text="...this much profit is locked")
    trailing_profit_every = _money(allow_null=True, help_text="for every this much MTM gained beyond the lock...")
    trailing_profit_step = _money(allow_null=True, help_text="...raise the locked profit by this much")
    max_lots_per_order = serializers.IntegerField(allow_null=True)
    max_order_value = _money(max_digits=16, allow_null=True)
    max_open_positions = serializers.IntegerField(allow_null=True)
    max_orders_per_day = serializers.IntegerField(allow_null=True)
    allowed_products = serializers.ListField(child=serializers.CharField(), help_text="empty: all of MIS, CNC, NRML")
    allowed_segments = serializers.ListField(child=serializers.CharField(), help_text="exchanges; empty: all")
    trading_window_start = _clock(allow_null=True)
    trading_window_end = _clock(allow_null=True)
    auto_square_off_time = _clock(allow_null=True, help_text="intraday (MIS) positions are closed at this time")
    kill_switch = serializers.BooleanField(help_text="your own stop: no new orders at all")


class PendingChangesOutput(RiskLimitsOutput):
    """Only the settings that will change, with their new values."""

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        for field in fields.values():
            field.required = False
        return fields

    def to_representation(self, instance: dict) -> dict:
        return {name: value for name, value in super().to_representation(instance).items() if name in instance}


class PendingLimitsOutput(serializers.Serializer):
    """Changes that loosen your limits, made after trading started for the day: they wait for the next trading day,
    as a broker's own kill switch does."""

    changes = PendingChangesOutput()
    effective_from = serializers.DateField(help_text="the IST trading day they take effect")
    message = serializers.CharField()


class RiskProfileOutput(RiskLimitsOutput):
    """Your own settings in force now (the effective limits are these bounded by the ceilings)."""

    updated_at = serializers.DateTimeField()
    pending = PendingLimitsOutput(allow_null=True, help_text="what waits for the next trading day; null: nothing")


class RiskOverrideOutput(RiskProfileOutput):
    """One broker account's overrides: empty fields inherit the profile; the kill switch adds to the profile's."""

    account_id = serializers.CharField()


class RiskCeilingsOutput(serializers.Serializer):
    """The bounds your operator set (platform-wide and for you; the tightest of both). Null, an empty list or false:
    no bound. You can tighten your own limits below them, never loosen beyond."""

    max_daily_loss = _money(allow_null=True)
    max_lots_per_order = serializers.IntegerField(allow_null=True)
    max_order_value = _money(max_digits=16, allow_null=True)
    max_open_positions = serializers.IntegerField(allow_null=True)
    max_orders_per_day = serializers.IntegerField(allow_null=True)
    allowed_products = serializers.ListField(child=serializers.CharField())
    allowed_segments = serializers.ListField(child=serializers.CharField())
    trading_window_start = _clock(allow_null=True)
    trading_window_end = _clock(allow_null=True)
    auto_square_off_time = _clock(allow_null=True, help_text="the latest auto square-off")
    kill_switch = serializers.BooleanField(help_text="your operator stopped your trading; only they can lift it")
    notes = serializers.ListField(child=serializers.CharField(), help_text="your operator's reasons")


class RiskConfigOutput(serializers.Serializer):
    profile = RiskProfileOutput()
    overrides = RiskOverrideOutput(many=True)
    effective = RiskLimitsOutput(
        help_text="the limits in force now: the tightest of your profile and the ceilings (per account, an "
        "override's fields replace the profile's before the ceilings apply)"
    )
    pending = PendingLimitsOutput(allow_null=True, help_text="your profile's changes waiting for the next trading day")
    ceilings = RiskCeilingsOutput()
    trading_started = serializers.BooleanField(
        help_text="trading has started today (pre-open began on a trading day, or you placed an order today): "
        "changes that loosen your limits now wait for the next trading day"
    )


class AccountRiskOutput(serializers.Serializer):
    account_id = serializers.CharField()
    broker = serializers.ChoiceField(choices=Broker.choices)
    mtm = _money()
    used_margin = _money(max_digits=16, allow_null=True)
    available_cash = _money(max_digits=16, allow_null=True)
    funds_error = serializers.CharField(allow_blank=True, help_text="why the broker's funds could not be read")


class ExposureOutput(serializers.Serializer):
    underlying = serializers.CharField()
    long_value = _money(max_digits=18, help_text="open long positions at their last price")
    short_value = _money(max_digits=18, help_text="open short positions at their last price, as a positive amount")
    net_value = _money(max_digits=18, help_text="long_value - short_value")


class RmsStatusOutput(serializers.Serializer):
    trading_day = serializers.DateField(help_text="the IST trading day")
    state = serializers.ChoiceField(
        choices=TradingState.choices, help_text="NORMAL; REDUCING: exits only; HALTED: no orders but the RMS's own"
    )
    reason = serializers.CharField(allow_blank=True, help_text="the breach that set the state")
    mtm = _money(help_text="today's realized plus unrealized PnL across your accounts")
    locked_profit = _money(allow_null=True)
    breached_at = serializers.DateTimeField(allow_null=True)
    kill_switch = serializers.BooleanField()
    open_positions = serializers.IntegerField()
    orders_today = serializers.IntegerField()
    limits = RiskLimitsOutput(help_text="your profile's limits")
    loss_remaining = _money(allow_null=True, help_text="max_daily_loss + mtm; null without a loss limit")
    accounts = AccountRiskOutput(many=True)
    exposure = ExposureOutput(many=True, help_text="per underlying")


# --- inputs ------------------------------------------------------------------------------------------------------


def _optional_money(max_digits: int = 14, **kwargs) -> serializers.DecimalField:
    return _money(max_digits=max_digits, required=False, allow_null=True, **kwargs)


def _optional_count(**kwargs) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=1, max_value=1_000_000, required=False, allow_null=True, **kwargs)


class RiskConfigInput(InputSerializer):
    """A partial update: fields left out keep their value, null turns a rule off (on an override: inherit)."""

    account_id = serializers.CharField(
        max_length=40, required=False, help_text="change this account's overrides instead of your profile"
    )
    max_daily_loss = _optional_money()
    daily_profit_target = _optional_money()
    profit_lock_at = _optional_money(help_text="with profit_lock_amount")
    profit_lock_amount = _optional_money(help_text="less than profit_lock_at")
    trailing_profit_every = _optional_money(help_text="with trailing_profit_step; needs a profit lock")
    trailing_profit_step = _optional_money(help_text="at most trailing_profit_every")
    max_lots_per_order = _optional_count()
    max_order_value = _optional_money(max_digits=16)
    max_open_positions = _optional_count()
    max_orders_per_day = _optional_count()
    allowed_products = serializers.MultipleChoiceField(
        choices=PRODUCTS, required=False, allow_null=True, help_text="empty or null: all"
    )
    allowed_segments = serializers.ListField(
        child=serializers.RegexField(r"^[A-Za-z]{2,10}$"),
        required=False,
        allow_null=True,
        max_length=20,
        help_text="exchanges, e.g. NSE, NFO; empty or null: all",
    )
    trading_window_start = _clock(required=False, allow_null=True, help_text="IST")
    trading_window_end = _clock(required=False, allow_null=True, help_text="IST, after the start")
    auto_square_off_time = _clock(required=False, allow_null=True, help_text="IST, inside the trading window")
    kill_switch = serializers.BooleanField(required=False)

    def validate_allowed_products(self, value: set[str] | None) -> list[str]:
        return [product for product in PRODUCTS if product in (value or ())]

    def validate_allowed_segments(self, value: list[str] | None) -> list[str]:
        return sorted({segment.upper() for segment in value or ()})


class RmsSquareOffInput(InputSerializer):
    account_id = serializers.CharField(max_length=40, required=False, help_text="only this account; default: all")
