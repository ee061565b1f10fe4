"""Risk management routes: your limits, today's risk state, and the RMS square-off."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from algoterm.api.permissions import IsTrader
from algoterm.api.serializers import ErrorSerializer
from orders.serializers import SquareOffOutput  # the RMS square-off answers with the orders it cancelled and placed
from rms import selectors, services
from rms.serializers import RiskConfigInput, RiskConfigOutput, RmsSquareOffInput, RmsStatusOutput

NOT_YOUR_ACCOUNT = OpenApiResponse(ErrorSerializer, description="NOT_FOUND: `account_id` is not one of your accounts.")


class RiskConfigApi(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), IsTrader()]
        return [IsAuthenticated()]

    @extend_schema(
        tags=["rms"],
        responses={200: RiskConfigOutput},
        summary="Your risk limits and your accounts' overrides",
        description="The profile starts with the platform's defaults. An override's empty fields inherit the "
        "profile; the MTM rules (loss, target, profit lock, trailing) watch your MTM across all accounts. "
        "`effective` is what the risk engine applies now: your settings bounded by the operator's `ceilings`; "
        "`pending` is what waits for the next trading day.",
    )
    def get(self, request: Request) -> Response:
        return Response(RiskConfigOutput(selectors.risk_config(user=request.user)).data)

    @extend_schema(
        tags=["rms"],
        request=RiskConfigInput,
        responses={200: RiskConfigOutput, 404: NOT_YOUR_ACCOUNT},
        summary="Change your risk limits, or one account's overrides",
        description="Only the fields sent change; null turns a rule off (on an override: inherits the profile). "
        "Limits an operator set (`ceilings`) bound yours: a change beyond one is refused with 400 "
        "VALIDATION_ERROR naming the field and the ceiling (null, no limit of your own, is accepted: the ceiling then "
        "applies), and an operator's kill switch cannot be switched off. Tightening takes effect at once. Once "
        "trading has started today (pre-open began on a trading day, or you placed an order today), a change that "
        "loosens a limit (higher, a wider window, more products or segments, the kill switch off) waits for the next "
        "trading day: the answer shows it under `pending` with `effective_from`, and `effective` keeps today's "
        "limits. "
        "Inconsistent settings are refused with 400 naming the fields: a profit lock needs both fields and locks "
        "less than the MTM that triggers it, trailing needs a profit lock, the window's end follows its start, the "
        "auto square-off falls inside the window, money limits are positive. With `account_id` the account's "
        "overrides change (404 when it is not yours).",
    )
    def post(self, request: Request) -> Response:
        data = RiskConfigInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        account_id = values.pop("account_id", None)
        account = selectors.broker_account_get(user=request.user, account_id=account_id) if account_id else None
        services.profile_update(actor=request.user, user=request.user, data=values, account=account)
        return Response(RiskConfigOutput(selectors.risk_config(user=request.user)).data)


class RmsStatusApi(APIView):
    @extend_schema(
        tags=["rms"],
        responses={200: RmsStatusOutput},
        summary="Today's risk state, MTM against your limits, funds and exposure",
        description="Funds are read live from each connected broker account; a broker that cannot answer is named "
        "in the account's `funds_error` instead of failing the request. Exposure is your open positions at their "
        "last price, per underlying.",
    )
    def get(self, request: Request) -> Response:
        return Response(RmsStatusOutput(selectors.rms_status(user=request.user)).data)


class RmsSquareOffApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=["rms"],
        request=RmsSquareOffInput,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={
            200: SquareOffOutput,
            404: NOT_YOUR_ACCOUNT,
            409: OpenApiResponse(
                ErrorSerializer, description="IDEMPOTENCY_KEY_REUSED: the key came with another body before."
            ),
        },
        summary="Square off everything now, as the RMS",
        description="Pending orders are cancelled, then every open position (or one account's) is closed with a "
        "market order placed by the RMS (source `rms`), which no risk rule refuses. Recorded as an RMS event.",
    )
    def post(self, request: Request) -> Response:
        def act() -> Response:
            data = RmsSquareOffInput(data=request.data)
            data.is_valid(raise_exception=True)
            result = services.user_square_off(
                actor=request.user, user=request.user, account_id=data.validated_data.get("account_id")
            )
            return Response(
                SquareOffOutput({"cancelled": result.cancelled, "placed": result.placed, "failed": result.failed}).data
            )

        return idempotent(request, scope="rms.squareoff", act=act)
