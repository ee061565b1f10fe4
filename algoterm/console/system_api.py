"""System control routes (admin): the platform's status, its mode, and the platform kill switch."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.permissions import IsAdmin
from algoterm.api.serializers import ErrorSerializer
from algoterm.console import system
from algoterm.console.serializers import (
    PlatformModeInput,
    PlatformStateOutput,
    SystemStatusOutput,
    TradingStartInput,
    TradingStopInput,
)

TAGS = ["system"]


def _state(state) -> Response:
    return Response(PlatformStateOutput(system.state_summary(state)).data)


class SystemStatusApi(APIView):
    permission_classes = [IsAuthenticated, IsAdmin]

    @extend_schema(
        tags=TAGS,
        responses={200: SystemStatusOutput},
        summary="Platform status: mode, kill switch, components",
        description="The trading mode, whether trading is stopped platform-wide (and why, by whom, when), the live "
        "orders a mode switch would strand, and the health of each component (as GET /api/health).",
    )
    def get(self, request: Request) -> Response:
        return Response(SystemStatusOutput(system.system_status()).data)


class SystemModeApi(APIView):
    permission_classes = [IsAuthenticated, IsAdmin]

    @extend_schema(
        tags=TAGS,
        request=PlatformModeInput,
        responses={
            200: PlatformStateOutput,
            409: OpenApiResponse(
                ErrorSerializer,
                description="INVALID_STATE: live orders would be stranded (`order_ids` names them); retry with "
                "`force` to switch anyway.",
            ),
        },
        summary="Switch the platform between live and paper",
        description="In paper mode every order of every account, real ones included, goes to the paper broker (a "
        "funded paper account per broker account); positions and reconciliation follow. Refused while orders of "
        "real accounts are still live where the switch would stop looking: at their brokers (to paper) or on the "
        "paper exchange (to live), unless `force`. Setting the current mode changes nothing. Audited.",
    )
    def post(self, request: Request) -> Response:
        data = PlatformModeInput(data=request.data)
        data.is_valid(raise_exception=True)
        return _state(system.platform_mode_set(actor=request.user, **data.validated_data))


class SystemStartApi(APIView):
    permission_classes = [IsAuthenticated, IsAdmin]

    @extend_schema(
        tags=TAGS,
        request=TradingStartInput,
        responses={200: PlatformStateOutput},
        summary="Start trading (lift the platform kill switch)",
        description="New orders are accepted again. Starting a running platform changes nothing. Audited.",
    )
    def post(self, request: Request) -> Response:
        TradingStartInput(data=request.data).is_valid(raise_exception=True)
        return _state(system.trading_start(actor=request.user))


class SystemStopApi(APIView):
    permission_classes = [IsAuthenticated, IsAdmin]

    @extend_schema(
        tags=TAGS,
        request=TradingStopInput,
        responses={200: PlatformStateOutput},
        summary="Stop trading platform-wide (the platform kill switch)",
        description="Every new order that does not reduce a position is refused with 422 RISK_REJECTED, reason "
        "PLATFORM_HALTED, on every path: the API, bulk orders, strategy fires and webhooks. Exits (a user's own, "
        "target and stop-loss legs, strategy exits) and the RMS's square-offs still go out; pending orders keep "
        "working. Stopping a stopped platform changes nothing. Audited.",
    )
    def post(self, request: Request) -> Response:
        data = TradingStopInput(data=request.data)
        data.is_valid(raise_exception=True)
        return _state(system.trading_stop(actor=request.user, reason=data.validated_data["reason"]))
