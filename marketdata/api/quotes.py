"""Last prices, quotes and candles: parse, call one selector, render."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketdata import selectors
from marketdata.serializers import CandlesOutput, CandlesQuery, LtpOutput, QuotesOutput, QuotesQuery

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
