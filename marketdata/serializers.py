"""Market data's API shapes: what the routes read (`...Query`) and what they answer (`...Output`)."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from algoterm.api.errors import ValidationFailed
from algoterm.api.serializers import InputSerializer
from brokers.protocol import EXCHANGES
from marketdata import selectors
from marketdata.candles import INTERVALS, IST, ist_day_start
from marketdata.chain import ChainLeg, ChainStrike
from marketdata.models import Instrument, InstrumentType

# --- instruments --------------------------------------------------------------------------------------------------


class InstrumentListQuery(InputSerializer):
    search = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="part of the symbol, tradingsymbol or name (any case)",
    )
    exchange = serializers.ChoiceField(choices=EXCHANGES, required=False)
    instrument_type = serializers.ChoiceField(choices=InstrumentType.choices, required=False)
    underlying = serializers.CharField(
        required=False, allow_blank=True, max_length=32, help_text="e.g. NIFTY, RELIANCE"
    )
    expiry = serializers.DateField(required=False, input_formats=["%Y-%m-%d"], help_text="YYYY-MM-DD")
    include_inactive = serializers.BooleanField(
        required=False, default=False, help_text="also instruments no longer listed"
    )
    # Pagination reads these itself; they are listed so the unknown-field check lets them through.
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)

    def to_internal_value(self, data):
        # Query strings spell choices in any case: ?exchange=nfo&instrument_type=ce.
        data = {key: data.get(key) for key in data}
        for name in ("exchange", "instrument_type"):
            if isinstance(data.get(name), str):
                data[name] = data[name].upper()
        return super().to_internal_value(data)


class InstrumentOutput(serializers.ModelSerializer):
    strike = serializers.DecimalField(max_digits=12, decimal_places=2, coerce_to_string=False, allow_null=True)
    tick_size = serializers.DecimalField(max_digits=8, decimal_places=4, coerce_to_string=False)

    class Meta:
        model = Instrument
        fields = [
            "symbol",
            "exchange",
            "segment",
            "tradingsymbol",
            "name",
            "underlying",
            "instrument_type",
            "expiry",
            "strike",
            "lot_size",
            "tick_size",
            "is_active",
        ]
        read_only_fields = fields


# --- last prices, quotes and candles ------------------------------------------------------------------------------


DEFAULT_LOOKBACK = {
    "1m": timedelta(days=1),
    "3m": timedelta(days=5),
    "5m": timedelta(days=5),
    "15m": timedelta(days=15),
    "30m": timedelta(days=15),
    "1h": timedelta(days=30),
    "1d": timedelta(days=365),
}


class LtpOutput(serializers.Serializer):
    symbol = serializers.CharField()
    ltp = serializers.FloatField()
    timestamp = serializers.DateTimeField(allow_null=True)


class QuoteOutput(serializers.Serializer):
    symbol = serializers.CharField()
    ltp = serializers.FloatField()
    bid = serializers.FloatField(allow_null=True)
    ask = serializers.FloatField(allow_null=True)
    bid_quantity = serializers.IntegerField()
    ask_quantity = serializers.IntegerField()
    volume = serializers.IntegerField(help_text="traded today")
    open = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True)
    low = serializers.FloatField(allow_null=True)
    close = serializers.FloatField(allow_null=True, help_text="the previous session's close")
    change = serializers.FloatField(allow_null=True, help_text="ltp - close")
    change_percent = serializers.FloatField(allow_null=True)
    oi = serializers.IntegerField(help_text="open interest (derivatives)")
    oi_change = serializers.IntegerField(help_text="since the previous session")
    timestamp = serializers.DateTimeField(allow_null=True)


class QuotesOutput(serializers.Serializer):
    quotes = serializers.DictField(child=QuoteOutput())
    missing = serializers.ListField(child=serializers.CharField(), help_text="unknown, or not quoted yet")


class CandleOutput(serializers.Serializer):
    start = serializers.DateTimeField()
    open = serializers.DecimalField(max_digits=14, decimal_places=2)
    high = serializers.DecimalField(max_digits=14, decimal_places=2)
    low = serializers.DecimalField(max_digits=14, decimal_places=2)
    close = serializers.DecimalField(max_digits=14, decimal_places=2)
    volume = serializers.IntegerField()
    oi = serializers.IntegerField(allow_null=True)


class CandlesOutput(serializers.Serializer):
    symbol = serializers.CharField()
    interval = serializers.ChoiceField(choices=INTERVALS)
    candles = CandleOutput(many=True)


class QuotesQuery(InputSerializer):
    # 100 symbols fit in 4,000 characters; the bound keeps the request line, percent-encoded, under the HTTP
    # server's limit, past which the server answers a plain-text 400 before the API sees the request.
    symbols = serializers.CharField(
        max_length=4000, help_text=f"comma-separated, at most {selectors.MAX_SYMBOLS_PER_REQUEST}"
    )

    def validate_symbols(self, raw: str) -> list[str]:
        names = [name for name in (part.strip() for part in raw.split(",")) if name]
        try:
            symbols = list(dict.fromkeys(selectors.symbol_normalize(name) for name in names))
        except ValidationFailed as error:
            raise serializers.ValidationError(error.errors["symbol"]) from None
        if not symbols:
            raise serializers.ValidationError("Name at least one symbol.")
        if len(symbols) > selectors.MAX_SYMBOLS_PER_REQUEST:
            raise serializers.ValidationError(f"At most {selectors.MAX_SYMBOLS_PER_REQUEST} symbols per request.")
        return symbols


@extend_schema_field(OpenApiTypes.STR)
class DateOrDateTimeField(serializers.Field):
    """`2024-01-02` (a whole IST day) or an ISO 8601 datetime (naive means IST)."""

    def to_internal_value(self, raw) -> date | datetime:
        text = str(raw).strip()
        try:
            if len(text) == 10:
                return date.fromisoformat(text)
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise serializers.ValidationError("A date (2024-01-02) or an ISO 8601 datetime.") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=IST)

    def to_representation(self, value):
        return value.isoformat()


class CandlesQuery(InputSerializer):
    symbol = serializers.CharField(max_length=64)
    interval = serializers.ChoiceField(choices=INTERVALS, default="1m")

    def get_fields(self):
        # `from` is a Python keyword, so it cannot be a class attribute.
        fields = super().get_fields()
        fields["from"] = DateOrDateTimeField(required=False, help_text="inclusive; default: a lookback per interval")
        fields["to"] = DateOrDateTimeField(required=False, help_text="exclusive; a date includes that day; default now")
        return fields

    def validate_symbol(self, raw: str) -> str:
        return selectors.symbol_normalize(raw)

    def validate(self, attrs):
        try:
            end = attrs.get("to")
            if end is None:
                end = timezone.now()
            elif not isinstance(end, datetime):
                end = ist_day_start(end + timedelta(days=1))
            start = attrs.get("from")
            if start is None:
                start = end - DEFAULT_LOOKBACK[attrs["interval"]]
            elif not isinstance(start, datetime):
                start = ist_day_start(start)
        except OverflowError:
            raise serializers.ValidationError({"to": ["Dates must be between the years 1 and 9999."]}) from None
        return {"symbol": attrs["symbol"], "interval": attrs["interval"], "start": start, "end": end}


# --- the option chain ---------------------------------------------------------------------------------------------


class OptionChainQuery(InputSerializer):
    symbol = serializers.RegexField(
        r"^[A-Za-z0-9&_-]{1,32}$",
        help_text="The underlying as instruments list it in `underlying`, e.g. NIFTY.",
        error_messages={"invalid": "Give an underlying such as NIFTY or RELIANCE."},
    )
    expiry = serializers.DateField(input_formats=["%Y-%m-%d"], help_text="YYYY-MM-DD")

    def validate_symbol(self, value: str) -> str:
        return value.upper()


def finite_rounded(value, *, decimals: int) -> float | None:
    if value is None:
        return None
    number = float(value)
    return round(number, decimals) if math.isfinite(number) else None


class FiniteFloatField(serializers.FloatField):
    """A float rounded to `decimals`, and null for NaN or infinity, which JSON cannot carry."""

    def __init__(self, *, decimals: int, **kwargs) -> None:
        self.decimals = decimals
        kwargs.setdefault("allow_null", True)
        kwargs.setdefault("read_only", True)
        super().__init__(**kwargs)

    def to_representation(self, value):
        return finite_rounded(value, decimals=self.decimals)


class PercentField(FiniteFloatField):
    """A decimal fraction shown as a percent (0.065 -> 6.5)."""

    def to_representation(self, value):
        return super().to_representation(None if value is None else float(value) * 100.0)


class ChainLegOutput(serializers.Serializer):
    symbol = serializers.CharField()
    ltp = FiniteFloatField(decimals=2, help_text="last traded price")
    oi = serializers.IntegerField(allow_null=True, help_text="open interest, contracts' units")
    chg_oi = serializers.IntegerField(allow_null=True, help_text="OI change since the previous session's close")
    volume = serializers.IntegerField(allow_null=True)
    iv = FiniteFloatField(decimals=2, help_text="implied volatility, percent")
    delta = FiniteFloatField(decimals=4)
    gamma = FiniteFloatField(decimals=6, help_text="delta change per 1 rupee move of the underlying")
    theta = FiniteFloatField(decimals=4, help_text="price change per calendar day")
    vega = FiniteFloatField(decimals=4, help_text="price change per 1 volatility point")

    def to_representation(self, leg: ChainLeg) -> dict:
        # Written out rather than walked field by field: a chain has hundreds of legs and DRF's generic walk was
        # most of the route's time. A test holds this equal to the generic rendering of the fields above.
        return {
            "symbol": leg.symbol,
            "ltp": finite_rounded(leg.ltp, decimals=2),
            "oi": leg.oi,
            "chg_oi": leg.chg_oi,
            "volume": leg.volume,
            "iv": finite_rounded(leg.iv, decimals=2),
            "delta": finite_rounded(leg.delta, decimals=4),
            "gamma": finite_rounded(leg.gamma, decimals=6),
            "theta": finite_rounded(leg.theta, decimals=4),
            "vega": finite_rounded(leg.vega, decimals=4),
        }


_LEG_OUTPUT = ChainLegOutput()


class ChainStrikeOutput(serializers.Serializer):
    strike = FiniteFloatField(decimals=2, allow_null=False)
    ce = ChainLegOutput(allow_null=True)
    pe = ChainLegOutput(allow_null=True)

    def to_representation(self, row: ChainStrike) -> dict:
        return {
            "strike": finite_rounded(row.strike, decimals=2),
            "ce": None if row.ce is None else _LEG_OUTPUT.to_representation(row.ce),
            "pe": None if row.pe is None else _LEG_OUTPUT.to_representation(row.pe),
        }


class OptionChainOutput(serializers.Serializer):
    symbol = serializers.CharField(source="underlying")
    expiry = serializers.DateField()
    expires_at = serializers.DateTimeField(help_text="15:30 IST on expiry day")
    years_to_expiry = FiniteFloatField(decimals=8, help_text="time to expiry used for IV and Greeks, 365-day years")
    spot = FiniteFloatField(decimals=2)
    spot_source = serializers.ChoiceField(
        choices=["index", "future", "parity"],
        allow_null=True,
        help_text="index: the underlying's quote; future: the nearest future discounted to spot; "
        "parity: put-call parity at the strike where call and put prices are closest",
    )
    atm_strike = FiniteFloatField(decimals=2, help_text="the strike nearest spot")
    pcr = FiniteFloatField(decimals=4, help_text="total put OI / total call OI; null when call OI is 0")
    max_pain = FiniteFloatField(decimals=2, help_text="the strike at which option writers pay out the least")
    risk_free_rate = PercentField(decimals=4, help_text="annual, percent")
    strikes = ChainStrikeOutput(many=True)
