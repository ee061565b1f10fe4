"""Input and output shapes of the strategies, runs, backtests and signals API."""

from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from algoterm.api.serializers import BlankAsNullChoiceField, InputSerializer, ItemInputSerializer
from brokers.protocol import Product, Side

from .definitions import ExitUnit, ExpiryChoice, LegInstrument, StrikeChoice
from .models import (
    KIND_CHOICES,
    LEG_FIELDS,
    Backtest,
    Leg,
    Signal,
    SignalStatus,
    Strategy,
    StrategyAccount,
    StrategyRun,
    StrategyStatus,
)
from .selectors import webhook_rejections_today
from .services import AccountInput, BacktestInput, LegInput, StrategyInput

MONEY = {"max_digits": 14, "decimal_places": 2, "coerce_to_string": False}


def _money(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(**MONEY, **kwargs)


def _optional_money(*, default: Decimal | None = None, **kwargs) -> serializers.DecimalField:
    # null means "none" only where none is the default: a field that has a value by default (capital) refuses null
    return serializers.DecimalField(
        **MONEY, min_value=Decimal("0.01"), required=False, allow_null=default is None, default=default, **kwargs
    )


# --- inputs ------------------------------------------------------------------------------------------------------


class LegInputSerializer(ItemInputSerializer):
    underlying = serializers.RegexField(r"^[A-Za-z0-9&\-]{1,32}$", help_text="NIFTY, BANKNIFTY, SENSEX, RELIANCE...")
    instrument = serializers.ChoiceField(choices=[value.value for value in LegInstrument])
    option_type = serializers.ChoiceField(
        choices=["CE", "PE"], required=False, allow_null=True, help_text="options only; null (or absent) otherwise"
    )
    side = serializers.ChoiceField(choices=[Side.BUY.value, Side.SELL.value])
    lots = serializers.IntegerField(min_value=1, max_value=1000)
    expiry = serializers.ChoiceField(choices=[value.value for value in ExpiryChoice], default=ExpiryChoice.CURRENT_WEEK)
    expiry_date = serializers.DateField(required=False, allow_null=True, default=None)
    strike = serializers.ChoiceField(choices=[value.value for value in StrikeChoice], default=StrikeChoice.ATM)
    strike_offset = serializers.IntegerField(min_value=-30, max_value=30, default=0, help_text="ATM +/- n steps")
    premium = _optional_money(default=None)
    strike_price = _optional_money(default=None)
    stop_loss_unit = serializers.ChoiceField(
        choices=[value.value for value in ExitUnit], required=False, allow_null=True, help_text="with stop_loss"
    )
    stop_loss = _optional_money(default=None)
    target_unit = serializers.ChoiceField(
        choices=[value.value for value in ExitUnit], required=False, allow_null=True, help_text="with target"
    )
    target = _optional_money(default=None)

    def validate_underlying(self, value: str) -> str:
        return value.upper()

    def validate(self, attrs: dict) -> dict:
        # null, as GET answers an absent option type or exit unit, is stored as the blank the model keeps
        for name in ("option_type", "stop_loss_unit", "target_unit"):
            if name in attrs and attrs[name] is None:
                attrs[name] = ""
        return super().validate(attrs)


class AccountInputSerializer(ItemInputSerializer):
    account_id = serializers.CharField(max_length=40)
    multiplier = serializers.IntegerField(min_value=1, max_value=100, default=1)


class StrategyInputSerializer(InputSerializer):
    name = serializers.CharField(max_length=80)
    kind = serializers.ChoiceField(choices=KIND_CHOICES)
    exit_time = serializers.TimeField(help_text="IST, HH:MM")
    entry_time = serializers.TimeField(required=False, allow_null=True, default=None, help_text="IST; time-based")
    weekdays = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=4),
        default=lambda: [0, 1, 2, 3, 4],
        max_length=5,
        help_text="0 = Monday ... 4 = Friday",
    )
    product = serializers.ChoiceField(choices=[Product.MIS.value, Product.NRML.value], default=Product.MIS.value)
    mtm_stop_loss = _optional_money(default=None)
    mtm_target = _optional_money(default=None)
    reentries = serializers.IntegerField(min_value=0, max_value=10, default=0)
    trailing_stop = _optional_money(default=None)
    rule_symbol = serializers.CharField(max_length=64, required=False, allow_blank=True, help_text="rule strategies")
    timeframe_minutes = serializers.ChoiceField(choices=[1, 3, 5, 15, 30, 60], default=1)
    entry_rule = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
    exit_rule = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)
    accounts = AccountInputSerializer(many=True, max_length=20)
    legs = LegInputSerializer(many=True, required=False, default=list, max_length=10)

    def validate_rule_symbol(self, value: str) -> str:
        return value.strip().upper()

    def validate_weekdays(self, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("Each weekday once.")
        return sorted(value)

    def validate_accounts(self, value: list[dict]) -> list[dict]:
        if len({entry["account_id"] for entry in value}) != len(value):
            raise serializers.ValidationError("Each account once.")
        return value

    def to_input(self) -> StrategyInput:
        data = dict(self.validated_data)
        fields_set = frozenset(self.initial_data) if self.partial else frozenset(data)
        accounts = [AccountInput(**entry) for entry in data.pop("accounts", [])]
        legs = [LegInput(**entry) for entry in data.pop("legs", [])]
        return StrategyInput(**data, accounts=accounts, legs=legs, fields_set=fields_set & _KNOWN)


_KNOWN = frozenset(StrategyInputSerializer().fields)


class StartInput(InputSerializer):
    mode = serializers.ChoiceField(choices=["backtest", "paper", "live"])
    start = serializers.DateField(required=False, help_text="backtest: first day (IST)")
    end = serializers.DateField(required=False, help_text="backtest: last day (IST)")
    capital = _optional_money(default=Decimal("1000000"), help_text="backtest: the equity curve starts here")
    volatility = serializers.DecimalField(
        max_digits=6,
        decimal_places=4,
        default=Decimal("0.15"),
        coerce_to_string=False,
        help_text="backtest: annual volatility for Black-Scholes when an option has no stored candles",
    )

    def validate(self, attrs: dict) -> dict:
        if attrs["mode"] == "backtest":
            missing = {name: ["A backtest needs this date."] for name in ("start", "end") if name not in attrs}
            if missing:
                raise serializers.ValidationError(missing)
        else:
            extra = sorted(name for name in ("start", "end") if name in attrs)
            if extra:
                raise serializers.ValidationError({name: ["Only backtests take dates."] for name in extra})
        return attrs

    def backtest_input(self) -> BacktestInput:
        data = self.validated_data
        return BacktestInput(
            start=data["start"], end=data["end"], capital=data["capital"], volatility=data["volatility"]
        )


class StopInput(InputSerializer):
    exit_positions = serializers.BooleanField(
        default=False, help_text="also cancel the strategy's working orders and square off its own positions"
    )


class StrategyListQuery(InputSerializer):
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)
    status = serializers.ChoiceField(choices=StrategyStatus.values, required=False)
    kind = serializers.ChoiceField(choices=KIND_CHOICES, required=False)


class SignalListQuery(InputSerializer):
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)
    strategy_id = serializers.CharField(required=False, max_length=40)
    status = serializers.ChoiceField(choices=SignalStatus.values, required=False)


# --- outputs -----------------------------------------------------------------------------------------------------


class LegOutput(serializers.ModelSerializer):
    option_type = BlankAsNullChoiceField(choices=["CE", "PE"], help_text="options only")
    side = serializers.ChoiceField(choices=[Side.BUY.value, Side.SELL.value])
    stop_loss_unit = BlankAsNullChoiceField(choices=[value.value for value in ExitUnit])
    target_unit = BlankAsNullChoiceField(choices=[value.value for value in ExitUnit])
    premium = _money(allow_null=True)
    strike_price = _money(allow_null=True)
    stop_loss = _money(allow_null=True)
    target = _money(allow_null=True)

    class Meta:
        model = Leg
        fields = LEG_FIELDS
        read_only_fields = fields


class StrategyAccountOutput(serializers.ModelSerializer):
    account_id = serializers.CharField()

    class Meta:
        model = StrategyAccount
        fields = ["account_id", "multiplier"]
        read_only_fields = fields


class StrategyOutput(serializers.ModelSerializer):
    weekdays = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=4), help_text="0 = Monday ... 4 = Friday"
    )
    product = serializers.ChoiceField(choices=[Product.MIS.value, Product.NRML.value])
    mtm_stop_loss = _money(allow_null=True)
    mtm_target = _money(allow_null=True)
    trailing_stop = _money(allow_null=True)
    accounts = StrategyAccountOutput(many=True)
    legs = LegOutput(many=True)
    webhook_url = serializers.SerializerMethodField()
    webhook_rejections_today = serializers.SerializerMethodField(
        help_text="Webhook calls refused today (IST): all are counted, the first few are kept as signals."
    )

    class Meta:
        model = Strategy
        fields = [
            "id",
            "name",
            "kind",
            "status",
            "status_message",
            "entry_time",
            "exit_time",
            "weekdays",
            "product",
            "mtm_stop_loss",
            "mtm_target",
            "reentries",
            "trailing_stop",
            "rule_symbol",
            "timeframe_minutes",
            "entry_rule",
            "exit_rule",
            "accounts",
            "legs",
            "webhook_url",
            "webhook_secret_rotated_at",
            "webhook_rejections_today",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_webhook_url(self, strategy: Strategy) -> str:
        return f"/api/strategies/{strategy.pk}/webhook"

    def get_webhook_rejections_today(self, strategy: Strategy) -> int:
        return webhook_rejections_today(strategy=strategy)


class StrategyCreatedOutput(StrategyOutput):
    webhook_secret = serializers.CharField(help_text="shown only now (and on rotation); stored encrypted")

    class Meta(StrategyOutput.Meta):
        fields = [*StrategyOutput.Meta.fields, "webhook_secret"]
        read_only_fields = fields


class WebhookSecretOutput(serializers.Serializer):
    webhook_secret = serializers.CharField(help_text="shown only now; the previous secret is refused from now on")
    webhook_url = serializers.CharField()


class RunOutput(serializers.ModelSerializer):
    final_pnl = _money(allow_null=True)

    class Meta:
        model = StrategyRun
        fields = ["id", "mode", "status", "status_message", "started_at", "ended_at", "final_pnl"]
        read_only_fields = fields


class RunPositionOutput(serializers.Serializer):
    account_id = serializers.CharField()
    symbol = serializers.CharField()
    product = serializers.ChoiceField(choices=[value.value for value in Product])
    quantity = serializers.IntegerField()
    last_price = _money(allow_null=True)
    pnl = _money()


class PnlOutput(serializers.Serializer):
    realized = _money()
    unrealized = _money()
    total = _money()
    positions = RunPositionOutput(many=True)


class StrategyDetailOutput(StrategyOutput):
    current_run = RunOutput(allow_null=True)
    pnl = PnlOutput(allow_null=True, help_text="the current run's PnL from its own fills, at the last prices")

    class Meta(StrategyOutput.Meta):
        fields = [*StrategyOutput.Meta.fields, "current_run", "pnl"]
        read_only_fields = fields


def _number(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=None, decimal_places=None, coerce_to_string=False, **kwargs)


class BacktestTradeOutput(serializers.Serializer):
    leg = serializers.IntegerField(help_text="index into the legs; webhook trades: the symbol's order of appearance")
    symbol = serializers.CharField()
    side = serializers.ChoiceField(choices=[Side.BUY.value, Side.SELL.value], help_text="the entry's side")
    quantity = serializers.IntegerField()
    entry_at = serializers.DateTimeField()
    entry_price = _money()
    exit_at = serializers.DateTimeField()
    exit_price = _money()
    exit_reason = serializers.CharField()
    pnl = _money()
    priced_by = serializers.CharField(help_text="candles, or the model used where an option had no candles")


class EquityPointOutput(serializers.Serializer):
    at = serializers.DateTimeField()
    equity = _money()


class BacktestResultOutput(serializers.Serializer):
    """A finished backtest's metrics; money as numbers, like the rest of the API."""

    total_pnl = _money()
    win_rate = _number(help_text="percent of trades with PnL above 0")
    max_drawdown = _money(help_text="rupees, peak to trough of the equity curve")
    max_drawdown_pct = _number(help_text="the largest fall as a percent of the peak it fell from")
    sharpe = _number(allow_null=True, help_text="annualised; null under 2 days or without variation")
    days = serializers.IntegerField()
    bars = serializers.IntegerField()
    trades = BacktestTradeOutput(many=True)
    equity_curve = EquityPointOutput(
        many=True, help_text="the capital at the first open, then capital + cumulative PnL at each day's close"
    )

    def to_representation(self, instance):
        # Stored as [[moment, equity], ...]: a typed client reads objects, not positional pairs.
        points = [{"at": moment, "equity": equity} for moment, equity in instance.get("equity_curve", [])]
        return super().to_representation({**instance, "equity_curve": points})


class BacktestOutput(serializers.ModelSerializer):
    strategy_id = serializers.CharField()
    capital = _money()
    volatility = serializers.DecimalField(max_digits=6, decimal_places=4, coerce_to_string=False)
    chart_url = serializers.SerializerMethodField()
    result = BacktestResultOutput(allow_null=True, help_text="null until the backtest has succeeded")

    class Meta:
        model = Backtest
        fields = [
            "id",
            "strategy_id",
            "status",
            "progress",
            "start_date",
            "end_date",
            "capital",
            "volatility",
            "result",
            "error",
            "chart_url",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_chart_url(self, backtest: Backtest) -> str | None:
        if not backtest.chart_png:
            return None
        return f"/api/strategies/{backtest.strategy_id}/backtests/{backtest.pk}/chart.png"


class BacktestSummaryOutput(BacktestOutput):
    class Meta(BacktestOutput.Meta):
        fields = [name for name in BacktestOutput.Meta.fields if name != "result"]
        read_only_fields = fields


class StartOutput(serializers.Serializer):
    mode = serializers.ChoiceField(choices=["backtest", "paper", "live"])
    run = RunOutput(required=False, help_text="paper and live")
    backtest = BacktestSummaryOutput(required=False, help_text="backtest: poll GET .../backtests/{id}")


class SignalOutput(serializers.ModelSerializer):
    strategy_id = serializers.CharField()
    source = serializers.ChoiceField(choices=["tradingview", "chartink", "rule", "other"])
    action = BlankAsNullChoiceField(
        choices=["BUY", "SELL", "SHORT", "COVER", "EXIT", "ENTRY"],
        help_text="webhooks: BUY, SELL, SHORT, COVER, EXIT; rules: ENTRY, EXIT; null when the call named none",
    )
    payload = serializers.DictField(read_only=True, help_text="the body as received, without the secret")
    order_ids = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Signal
        fields = [
            "id",
            "strategy_id",
            "source",
            "action",
            "symbol",
            "quantity",
            "status",
            "reason",
            "detail",
            "payload",
            "order_ids",
            "remote_addr",
            "received_at",
        ]
        read_only_fields = fields
