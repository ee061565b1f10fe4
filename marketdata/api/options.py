"""The option chain route: parse, call the chain selector, render (every NaN or infinity as null)."""

from __future__ import annotations

import math

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.serializers import InputSerializer
from marketdata.chain import ChainLeg, ChainStrike, option_chain


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


class OptionChainApi(APIView):
    @extend_schema(
        tags=["market data"],
        parameters=[OptionChainQuery],
        responses={200: OptionChainOutput},
        summary="Option chain of an underlying for one expiry",
        description="Per strike, the call and the put with LTP, OI, OI change, volume, implied volatility "
        "(percent) and Greeks (delta; gamma per rupee; theta per calendar day; vega per volatility point), "
        "computed by Black-Scholes from the LTP, spot and time to 15:30 IST on expiry day. Values that cannot "
        "be computed (no quote, price below intrinsic value, expired) are null. 404 for an underlying without "
        "options or an expiry without contracts (the message lists the available expiries).",
    )
    def get(self, request: Request) -> Response:
        query = OptionChainQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        chain = option_chain(
            user=request.user, underlying=query.validated_data["symbol"], expiry=query.validated_data["expiry"]
        )
        return Response(OptionChainOutput(chain).data)


urlpatterns = [path("option-chain", OptionChainApi.as_view(), name="option-chain")]
