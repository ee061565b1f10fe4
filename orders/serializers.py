"""Input and output shapes of the orders, trades, positions and portfolio API."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, tzinfo
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from algoterm.api.errors import ErrorCode, ValidationFailed
from algoterm.api.serializers import BlankAsNullChoiceField, InputSerializer
from brokers.protocol import OrderType, Product, Side, Validity
from marketdata.selectors import symbol_normalize
from orders.models import Order, OrderEvent, OrderStatus, Position, Trade
from orders.services import OrderSpec

MONEY = {"max_digits": 14, "decimal_places": 2, "coerce_to_string": False}


def _money(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(**MONEY, **kwargs)


def _positive_money(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(**MONEY, min_value=Decimal("0.01"), required=False, allow_null=True, **kwargs)


# --- outputs -----------------------------------------------------------------------------------------------------


class OrderEventOutput(serializers.ModelSerializer):
    from_status = BlankAsNullChoiceField(choices=OrderStatus.choices, help_text="null on the order's first event")
    to_status = serializers.ChoiceField(choices=OrderStatus.choices)

    class Meta:
        model = OrderEvent
        fields = ["from_status", "to_status", "source", "message", "filled_quantity", "created_at"]
        read_only_fields = fields


class OrderOutput(serializers.ModelSerializer):
    account_id = serializers.CharField()
    parent_id = serializers.CharField(allow_null=True)
    pending_quantity = serializers.IntegerField()
    average_price = _money(allow_null=True)
    price = _money(allow_null=True)
    trigger_price = _money(allow_null=True)
    target = _money(allow_null=True)
    stop_loss = _money(allow_null=True)
    trailing_stop = _money(allow_null=True)

    class Meta:
        model = Order
        fields = [
            "id",
            "account_id",
            "symbol",
            "side",
            "quantity",
            "filled_quantity",
            "pending_quantity",
            "average_price",
            "order_type",
            "product",
            "price",
            "trigger_price",
            "validity",
            "status",
            "status_message",
            "broker_order_id",
            "tag",
            "source",
            "role",
            "parent_id",
            "target",
            "stop_loss",
            "trailing_stop",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class OrderDetailOutput(OrderOutput):
    events = OrderEventOutput(many=True)
    exit_ids = serializers.SerializerMethodField(help_text="the target and stop-loss legs placed for this entry")

    class Meta(OrderOutput.Meta):
        fields = [*OrderOutput.Meta.fields, "exit_ids", "events"]
        read_only_fields = fields

    def get_exit_ids(self, order: Order) -> list[str]:
        if order.target is None and order.stop_loss is None:
            return []  # exit legs are only ever placed for an entry's target or stop-loss
        return [exit_order.pk for exit_order in order.exits.all()]


class TradeOutput(serializers.ModelSerializer):
    order_id = serializers.CharField()
    account_id = serializers.CharField()
    price = _money()
    value = _money()

    class Meta:
        model = Trade
        fields = [
            "id",
            "order_id",
            "account_id",
            "symbol",
            "side",
            "product",
            "quantity",
            "price",
            "value",
            "traded_at",
        ]
        read_only_fields = fields


class PositionOutput(serializers.ModelSerializer):
    """`ltp` and `unrealized_pnl` come from the quote cache; pass `{"quotes": {symbol: Quote}}` in the context."""

    account_id = serializers.CharField()
    average_price = _money()
    realized_pnl = _money()
    day_quantity = serializers.IntegerField()
    day_buy_value = _money()
    day_sell_value = _money()
    day_realized_pnl = _money()
    ltp = serializers.SerializerMethodField()
    unrealized_pnl = serializers.SerializerMethodField()

    class Meta:
        model = Position
        fields = [
            "account_id",
            "symbol",
            "product",
            "quantity",
            "average_price",
            "ltp",
            "unrealized_pnl",
            "realized_pnl",
            "day_quantity",
            "day_buy_quantity",
            "day_sell_quantity",
            "day_buy_value",
            "day_sell_value",
            "day_realized_pnl",
            "trading_day",
            "updated_at",
        ]
        read_only_fields = fields

    def _ltp(self, position: Position) -> Decimal | None:
        quote = (self.context.get("quotes") or {}).get(position.symbol)
        return quote.last_price if quote else None

    def get_ltp(self, position: Position) -> float | None:
        ltp = self._ltp(position)
        return float(ltp) if ltp is not None else None

    def get_unrealized_pnl(self, position: Position) -> float | None:
        ltp = self._ltp(position)
        if ltp is None:
            return None
        return float(((ltp - position.average_price) * position.quantity).quantize(Decimal("0.01")))


_PAISE = Decimal("0.01")
# DecimalField quantizes with its max_digits as the precision.
_MONEY_CONTEXT = Context(prec=MONEY["max_digits"], rounding=ROUND_HALF_EVEN)


def _iso_datetime(value: datetime | None, zone: tzinfo) -> str | None:
    if not value:
        return None
    text = value.astimezone(zone).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def positions_render(*, positions: Iterable[Any], quotes: dict[str, Any]) -> list[dict[str, Any]]:
    """What `PositionOutput(positions, many=True, context={"quotes": quotes}).data` renders, to the byte once
    encoded, built directly: a serializer's per-field machinery costs more than the request around it for a book
    of hundreds of positions. `PositionOutput` stays the schema; a test holds the two to the same bytes."""
    zone = timezone.get_current_timezone()
    prices = {symbol: quote.last_price for symbol, quote in quotes.items() if quote}
    floats = {symbol: float(price) for symbol, price in prices.items()}
    paise, context = _PAISE, _MONEY_CONTEXT
    rendered = []
    append = rendered.append
    for position in positions:
        symbol, quantity, average = position.symbol, position.quantity, position.average_price
        ltp = prices.get(symbol)
        trading_day = position.trading_day
        append(
            {
                "account_id": str(position.account_id),
                "symbol": str(symbol),
                "product": str(position.product),
                "quantity": int(quantity),
                "average_price": float(average.quantize(paise, context=context)),
                "ltp": floats[symbol] if ltp is not None else None,
                "unrealized_pnl": float(((ltp - average) * quantity).quantize(paise)) if ltp is not None else None,
                "realized_pnl": float(position.realized_pnl.quantize(paise, context=context)),
                "day_quantity": int(position.day_quantity),
                "day_buy_quantity": int(position.day_buy_quantity),
                "day_sell_quantity": int(position.day_sell_quantity),
                "day_buy_value": float(position.day_buy_value.quantize(paise, context=context)),
                "day_sell_value": float(position.day_sell_value.quantize(paise, context=context)),
                "day_realized_pnl": float(position.day_realized_pnl.quantize(paise, context=context)),
                "trading_day": trading_day.isoformat() if trading_day else None,
                "updated_at": _iso_datetime(position.updated_at, zone),
            }
        )
    return rendered


class PositionGroupOutput(serializers.Serializer):
    """One instrument and product across all the user's accounts."""

    symbol = serializers.CharField()
    product = serializers.ChoiceField(choices=[v.value for v in Product])
    quantity = serializers.IntegerField()
    average_price = _money()
    ltp = _money(allow_null=True)
    unrealized_pnl = _money(allow_null=True)
    realized_pnl = _money()
    day_realized_pnl = _money()
    accounts = serializers.ListField(child=serializers.CharField())


class PnlTotalsOutput(serializers.Serializer):
    realized_pnl = _money()
    unrealized_pnl = _money()
    day_pnl = _money(help_text="today's realized PnL plus the unrealized PnL of open positions")
    open_positions = serializers.IntegerField()


class PositionsOutput(serializers.Serializer):
    items = PositionOutput(many=True, help_text="per account, instrument and product")
    consolidated = PositionGroupOutput(many=True)
    totals = PnlTotalsOutput()


class HoldingOutput(serializers.Serializer):
    account_id = serializers.CharField()
    symbol = serializers.CharField()
    quantity = serializers.IntegerField()
    average_price = _money()
    ltp = _money(allow_null=True)
    value = _money(allow_null=True)
    unrealized_pnl = _money(allow_null=True)


class AccountProblemOutput(serializers.Serializer):
    account_id = serializers.CharField()
    error_code = serializers.ChoiceField(choices=[(code.value, code.value) for code in ErrorCode])
    detail = serializers.CharField()


class PortfolioOutput(serializers.Serializer):
    holdings = HoldingOutput(many=True)
    positions = PositionOutput(many=True)
    holdings_value = _money()
    holdings_unrealized_pnl = _money()
    totals = PnlTotalsOutput()
    unavailable_accounts = AccountProblemOutput(many=True, help_text="accounts whose holdings could not be read")


class LegResultOutput(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["placed", "failed", "not_sent", "cancelled"])
    order = OrderOutput(allow_null=True)
    error_code = BlankAsNullChoiceField(choices=[(code.value, code.value) for code in ErrorCode])
    detail = serializers.CharField(allow_blank=True)


class BulkOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["placed", "partial", "failed", "rolled_back"])
    all_or_none = serializers.BooleanField()
    legs = LegResultOutput(many=True)


class SquareOffFailureOutput(serializers.Serializer):
    order_id = serializers.CharField(required=False, help_text="a pending order that could not be cancelled")
    account_id = serializers.CharField(required=False)
    symbol = serializers.CharField()
    detail = serializers.CharField()


class SquareOffOutput(serializers.Serializer):
    cancelled = OrderOutput(many=True, help_text="pending orders cancelled first")
    placed = OrderOutput(many=True, help_text="the closing market orders")
    failed = SquareOffFailureOutput(many=True)


# --- inputs ------------------------------------------------------------------------------------------------------


class OrderInput(InputSerializer):
    account_id = serializers.CharField(max_length=40)
    symbol = serializers.CharField(max_length=64, help_text="EXCHANGE:TRADINGSYMBOL, e.g. NSE:INFY")
    side = serializers.ChoiceField(choices=[v.value for v in Side])
    quantity = serializers.IntegerField(min_value=1, max_value=10_000_000, help_text="units, a multiple of the lot")
    order_type = serializers.ChoiceField(choices=[v.value for v in OrderType])
    product = serializers.ChoiceField(choices=[v.value for v in Product])
    price = _positive_money()
    trigger_price = _positive_money()
    validity = serializers.ChoiceField(choices=[v.value for v in Validity], default=Validity.DAY)
    target = _positive_money(help_text="exit at this price once the entry fills (a LIMIT leg)")
    stop_loss = _positive_money(help_text="exit at this trigger once the entry fills (an SL-M leg)")
    trailing_stop = _positive_money(help_text="points the stop-loss trails the price by as it moves in favour")
    tag = serializers.RegexField(r"^[A-Za-z0-9_\-]*$", max_length=20, required=False, allow_blank=True, default="")

    def validate_symbol(self, value: str) -> str:
        try:
            return symbol_normalize(value)
        except ValidationFailed as error:
            # As a field error, so a bulk leg's bad symbol is named `legs.N.symbol` beside the leg's other errors.
            raise serializers.ValidationError((error.errors or {}).get("symbol") or [error.detail]) from None

    def to_spec(self) -> OrderSpec:
        return OrderSpec(**self.validated_data)


class OrderModifyInput(InputSerializer):
    quantity = serializers.IntegerField(min_value=1, max_value=10_000_000, required=False)
    price = _positive_money()
    trigger_price = _positive_money()
    order_type = serializers.ChoiceField(choices=[v.value for v in OrderType], required=False)

    def validate(self, attrs: dict) -> dict:
        if not any(attrs.get(name) is not None for name in ("quantity", "price", "trigger_price", "order_type")):
            raise serializers.ValidationError("Give at least one of quantity, price, trigger_price, order_type.")
        return attrs


class BulkInput(InputSerializer):
    legs = OrderInput(many=True, allow_empty=False, max_length=20)
    all_or_none = serializers.BooleanField(default=False)


class SquareOffInput(InputSerializer):
    account_id = serializers.CharField(max_length=40, required=False)
    symbol = serializers.CharField(max_length=64, required=False)

    def validate_symbol(self, value: str) -> str:
        return symbol_normalize(value)


class _WindowQuery(InputSerializer):
    """A list's query: pagination, a symbol, and a `from`..`to` time window."""

    symbol = serializers.CharField(max_length=64, required=False)
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)
    to = serializers.DateTimeField(required=False, help_text="ISO 8601 time, inclusive")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # `from` is a Python keyword, so it cannot be declared as a class attribute.
        self.fields["from"] = serializers.DateTimeField(required=False, help_text="ISO 8601 time, inclusive")

    def validate_symbol(self, value: str) -> str:
        return symbol_normalize(value)

    def validate(self, attrs: dict) -> dict:
        if attrs.get("from") and attrs.get("to") and attrs["from"] > attrs["to"]:
            raise serializers.ValidationError({"from": ["Must not be after `to`."]})
        return attrs


class OrderListQuery(_WindowQuery):
    status = serializers.MultipleChoiceField(choices=OrderStatus.choices, required=False)
    account_id = serializers.CharField(max_length=40, required=False)
    side = serializers.ChoiceField(choices=[v.value for v in Side], required=False)
    source = serializers.CharField(max_length=10, required=False)
    tag = serializers.CharField(max_length=20, required=False)
    # allow_null: a query string is form input, where DRF reads a missing boolean as False ("only final orders").
    open = serializers.BooleanField(
        required=False, allow_null=True, help_text="true: only orders the broker may still fill"
    )


class TradeListQuery(_WindowQuery):
    account_id = serializers.CharField(max_length=40, required=False)
    order_id = serializers.CharField(max_length=40, required=False)


class PositionListQuery(InputSerializer):
    account_id = serializers.CharField(max_length=40, required=False)
    open = serializers.BooleanField(required=False, help_text="true: only non-zero positions")
