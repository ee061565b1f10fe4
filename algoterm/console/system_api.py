"""System control routes (admin): the platform's status, its mode, and the platform kill switch."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.permissions import IsAdmin
from algoterm.api.serializers import ErrorSerializer, InputSerializer
from algoterm.console import system
from algoterm.models import PlatformMode
from algoterm.views import ComponentOutput

TAGS = ["system"]


class PlatformStateOutput(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=PlatformMode.values, help_text="paper: every order goes to the paper broker, whatever its account"
    )
    trading_halted = serializers.BooleanField(help_text="the platform kill switch: only exits go out")
    halt_reason = serializers.CharField()
    changed_by = serializers.CharField(allow_null=True, help_text="the admin (usr_ id) who changed it last")
    changed_at = serializers.DateTimeField()


class SystemStatusOutput(PlatformStateOutput):
    live_orders_at_brokers = serializers.IntegerField(
        help_text="live orders of real broker accounts at their brokers (a switch to paper strands them)"
    )
    paper_routed_live_orders = serializers.IntegerField(
        help_text="live orders of real broker accounts on the paper exchange (a switch to live strands them)"
    )
    components = serializers.DictField(child=type(ComponentOutput)())  # GET /api/health's component schema


class PlatformModeInput(InputSerializer):
    mode = serializers.ChoiceField(choices=PlatformMode.values)
    force = serializers.BooleanField(default=False, help_text="switch even though live orders would be stranded")


class TradingStopInput(InputSerializer):
    reason = serializers.CharField(max_length=system.HALT_REASON_MAX_LENGTH, help_text="shown with every refusal")


class TradingStartInput(InputSerializer):
    """No fields: the body is `{}` (or empty)."""


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
