"""The option chain route: parse, call the chain selector, render (every NaN or infinity as null)."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from marketdata.chain import option_chain
from marketdata.serializers import OptionChainOutput, OptionChainQuery


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
