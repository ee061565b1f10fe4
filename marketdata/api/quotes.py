"""Last prices, quotes and candles: parse, call one selector, render."""

from __future__ import annotations

from datetime import date, datetime, timedelta

from django.urls import path
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.errors import ValidationFailed
from algoterm.api.serializers import InputSerializer
from marketdata import selectors
from marketdata.candles import INTERVALS, IST, ist_day_start

DEFAULT_LOOKBACK = {
    "1m": timedelta(days=1),
    "3m": timedelta(days=5),
    "5m": timedelta(days=5),
    "15m": timedelta(days=15),
    "30m": timedelta(days=15),
    "1h": timedelta(days=30),
    "1d": timedelta(days=365),
}


# --- shapes ------------------------------------------------------------------------------------------------------


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


# --- views -------------------------------------------------------------------------------------------------------


class LtpApi(APIView):
    @extend_schema(
        tags=["market data"],
        responses={200: LtpOutput},
        summary="Last traded price of one symbol",
        description="URL-encode the symbol: `/api/ltp/NSE%3ANIFTY%2050`. 404 for an unknown symbol, 503 for a listed "
        "one no feed has quoted yet.",
    )
    def get(self, request: Request, symbol: str) -> Response:
        quote = selectors.ltp_get(user=request.user, symbol=selectors.symbol_normalize(symbol))
        return Response(LtpOutput({"symbol": quote.symbol, "ltp": quote.last_price, "timestamp": quote.timestamp}).data)


class QuotesApi(APIView):
    @extend_schema(
        tags=["market data"],
        parameters=[QuotesQuery],
        responses={200: QuotesOutput},
        summary="Full quotes of several symbols",
    )
    def get(self, request: Request) -> Response:
        query = QuotesQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        quotes, missing = selectors.quotes_list(user=request.user, symbols=query.validated_data["symbols"])
        body = {
            "quotes": {symbol: selectors.quote_render(quote) for symbol, quote in quotes.items()},
            "missing": missing,
        }
        return Response(QuotesOutput(body).data)


class CandlesApi(APIView):
    @extend_schema(
        tags=["market data"],
        parameters=[
            CandlesQuery,
            OpenApiParameter("from", OpenApiTypes.STR, description="date or ISO datetime, inclusive"),
            OpenApiParameter("to", OpenApiTypes.STR, description="date (whole day) or ISO datetime, exclusive"),
        ],
        responses={200: CandlesOutput},
        summary="OHLCV candles",
        description="1m candles are stored; 3m to 1h are grouped in IST from 09:15, 1d per IST day. The span is capped "
        "per interval (1m: 60 days ... 1d: 2000 days).",
    )
    def get(self, request: Request) -> Response:
        query = CandlesQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        candles = selectors.candles_list(user=request.user, **query.validated_data)
        data = query.validated_data
        return Response(
            CandlesOutput({"symbol": data["symbol"], "interval": data["interval"], "candles": candles}).data
        )


urlpatterns = [
    path("ltp/<path:symbol>", LtpApi.as_view(), name="ltp"),
    path("quotes", QuotesApi.as_view(), name="quotes"),
    path("candles", CandlesApi.as_view(), name="candles"),
]
