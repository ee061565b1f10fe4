"""Strategy routes: define, start (backtest, paper, live), stop, runs, backtests, webhooks and signals."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.errors import AppError, ErrorCode, NotFound
from algoterm.api.parsers import RawBodyParser
from algoterm.api.permissions import IsTrader
from algoterm.api.serializers import ErrorSerializer
from algoterm.api.throttles import StrategyWebhookRateThrottle
from algoterm.api.views import ListApi

from . import selectors, services
from .models import SignalStatus
from .serializers import (
    BacktestOutput,
    BacktestSummaryOutput,
    RunOutput,
    SignalListQuery,
    SignalOutput,
    StartInput,
    StartOutput,
    StopInput,
    StrategyCreatedOutput,
    StrategyDetailOutput,
    StrategyInputSerializer,
    StrategyListQuery,
    StrategyOutput,
    WebhookSecretOutput,
)

TAGS = ["strategies"]
NOT_YOURS = OpenApiResponse(ErrorSerializer, description="NOT_FOUND: no such strategy of yours.")
RUNNING = OpenApiResponse(ErrorSerializer, description="INVALID_STATE: stop the strategy first.")


class _TraderWrites(APIView):
    def get_permissions(self):
        if self.request.method in ("POST", "PATCH", "DELETE"):
            return [IsAuthenticated(), IsTrader()]
        return [IsAuthenticated()]


@extend_schema_view(
    get=extend_schema(
        tags=TAGS,
        responses={200: StrategyOutput(many=True)},
        summary="Your strategies, newest first",
    )
)
class StrategyListCreateApi(_TraderWrites, ListApi):
    filter_serializer_class = StrategyListQuery
    output_serializer_class = StrategyOutput

    def list_selector(self, *, user, filters):
        return selectors.strategy_list(user=user, status=filters.get("status"), kind=filters.get("kind"))

    @extend_schema(
        tags=TAGS,
        request=StrategyInputSerializer,
        responses={201: StrategyCreatedOutput, 404: OpenApiResponse(ErrorSerializer, description="an account_id")},
        summary="Define a strategy (as a draft)",
        description="Kinds: `time_based` (entry_time and exit_time, legs), `webhook` (TradingView/ChartInk "
        "signals; exit_time squares off), `rule` (entry_rule/exit_rule over rule_symbol's candles, legs). "
        "Each leg: underlying, instrument OPT|FUT|EQ, option_type, side, lots, expiry current_week|next_week|"
        "current_month|next_month|fixed (expiry_date), strike atm (strike_offset: +/- steps)|closest_premium "
        "(premium)|fixed (strike_price), stop_loss and target in points or percent of the entry price. The "
        "response carries `webhook_secret` this once; it is stored encrypted and never shown again (rotate it "
        "with POST .../webhook/rotate).",
    )
    def post(self, request: Request) -> Response:
        data = StrategyInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        strategy, secret = services.strategy_create(user=request.user, data=data.to_input())
        strategy = selectors.strategy_get(user=request.user, strategy_id=strategy.pk)
        strategy.webhook_secret = secret
        return Response(StrategyCreatedOutput(strategy).data, status=status.HTTP_201_CREATED)


class StrategyDetailApi(_TraderWrites):
    @extend_schema(
        tags=TAGS,
        responses={200: StrategyDetailOutput, 404: NOT_YOURS},
        summary="A strategy with its status, current run and live PnL",
    )
    def get(self, request: Request, strategy_id: str) -> Response:
        detail = selectors.strategy_detail(user=request.user, strategy_id=strategy_id)
        return Response(StrategyDetailOutput(detail).data)

    @extend_schema(
        tags=TAGS,
        request=StrategyInputSerializer(partial=True),
        responses={200: StrategyOutput, 404: NOT_YOURS, 409: RUNNING},
        summary="Change a strategy that is not running",
        description="Only the fields sent change; `legs` and `accounts`, when sent, replace the lists.",
    )
    def patch(self, request: Request, strategy_id: str) -> Response:
        data = StrategyInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        services.strategy_update(user=request.user, strategy_id=strategy_id, data=data.to_input())
        return Response(StrategyOutput(selectors.strategy_get(user=request.user, strategy_id=strategy_id)).data)

    @extend_schema(tags=TAGS, responses={204: None, 404: NOT_YOURS, 409: RUNNING}, summary="Delete a strategy")
    def delete(self, request: Request, strategy_id: str) -> Response:
        services.strategy_delete(user=request.user, strategy_id=strategy_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class StrategyStartApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=TAGS,
        request=StartInput,
        responses={
            201: StartOutput,
            202: StartOutput,
            404: NOT_YOURS,
            409: OpenApiResponse(
                ErrorSerializer,
                description="INVALID_STATE: already running, no account, paper mode without a paper account, live "
                "with a paper account; BROKER_SESSION_EXPIRED: a live account needs a login.",
            ),
            429: OpenApiResponse(
                ErrorSerializer,
                description="BACKTEST_LIMIT_REACHED: your plan's backtests (queued or running) are all in use; "
                "`limit` says how many, Retry-After when to ask again.",
            ),
        },
        summary="Start a strategy: backtest, paper or live",
        description="`backtest` (start, end, capital, volatility) queues a backtest over stored candles and answers "
        "202 with it; poll GET .../backtests/{id} for progress and results. `paper` runs live against your paper "
        "account and the feed; `live` trades in the strategy's accounts, which must be connected. From then on the "
        "minute dispatcher fires it at its entry and exit times (IST, the strategy's weekdays; exchange holidays are "
        "skipped).",
    )
    def post(self, request: Request, strategy_id: str) -> Response:
        data = StartInput(data=request.data)
        data.is_valid(raise_exception=True)
        mode = data.validated_data["mode"]
        if mode == "backtest":
            backtest = services.backtest_start(user=request.user, strategy_id=strategy_id, data=data.backtest_input())
            body = StartOutput({"mode": mode, "backtest": backtest}).data
            return Response(body, status=status.HTTP_202_ACCEPTED)
        run = services.strategy_start(user=request.user, strategy_id=strategy_id, mode=mode)
        return Response(StartOutput({"mode": mode, "run": run}).data, status=status.HTTP_201_CREATED)


class StrategyStopApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=TAGS,
        request=StopInput,
        responses={200: RunOutput, 404: NOT_YOURS, 409: OpenApiResponse(ErrorSerializer, description="not running")},
        summary="Stop a strategy, optionally exiting its positions",
        description="Ends the run: nothing fires for it any more. With `exit_positions` the strategy's working "
        "orders are cancelled and its own positions squared off (never your other positions).",
    )
    def post(self, request: Request, strategy_id: str) -> Response:
        data = StopInput(data=request.data)
        data.is_valid(raise_exception=True)
        run = services.strategy_stop(
            user=request.user, strategy_id=strategy_id, exit_positions=data.validated_data["exit_positions"]
        )
        return Response(RunOutput(run).data)


@extend_schema_view(
    get=extend_schema(
        tags=TAGS, responses={200: RunOutput(many=True), 404: NOT_YOURS}, summary="A strategy's runs, newest first"
    )
)
class StrategyRunListApi(ListApi):
    permission_classes = [IsAuthenticated]
    output_serializer_class = RunOutput

    def list_selector(self, *, user, filters):
        return selectors.run_list(user=user, strategy_id=self.kwargs["strategy_id"])


@extend_schema_view(
    get=extend_schema(
        tags=TAGS,
        responses={200: BacktestSummaryOutput(many=True), 404: NOT_YOURS},
        summary="A strategy's backtests, newest first (without their results)",
    )
)
class BacktestListApi(ListApi):
    permission_classes = [IsAuthenticated]
    output_serializer_class = BacktestSummaryOutput

    def list_selector(self, *, user, filters):
        return selectors.backtest_list(user=user, strategy_id=self.kwargs["strategy_id"])


class BacktestDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        responses={200: BacktestOutput, 404: OpenApiResponse(ErrorSerializer, description="no such backtest")},
        summary="A backtest: progress, then trades, equity curve and metrics",
    )
    def get(self, request: Request, strategy_id: str, backtest_id: str) -> Response:
        backtest = selectors.backtest_get(user=request.user, strategy_id=strategy_id, backtest_id=backtest_id)
        return Response(BacktestOutput(backtest).data)


class BacktestChartApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            404: OpenApiResponse(ErrorSerializer, description="no such backtest, or it has no chart yet"),
        },
        summary="A finished backtest's equity chart (PNG)",
    )
    def get(self, request: Request, strategy_id: str, backtest_id: str) -> HttpResponse:
        backtest = selectors.backtest_get(user=request.user, strategy_id=strategy_id, backtest_id=backtest_id)
        if not backtest.chart_png:
            raise NotFound("This backtest has no chart (yet).")
        response = HttpResponse(bytes(backtest.chart_png), content_type="image/png")
        response["Cache-Control"] = "private, max-age=3600"
        return response


class WebhookSecretRotateApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=TAGS,
        request=None,
        responses={200: WebhookSecretOutput, 404: NOT_YOURS},
        summary="Replace the strategy's webhook secret",
    )
    def post(self, request: Request, strategy_id: str) -> Response:
        secret = services.strategy_webhook_secret_rotate(user=request.user, strategy_id=strategy_id)
        return Response({"webhook_secret": secret, "webhook_url": f"/api/strategies/{strategy_id}/webhook"})


class StrategyWebhookApi(APIView):
    """Called by TradingView or ChartInk, not a user: no JWT; the strategy's own secret authenticates it."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [RawBodyParser]
    throttle_classes = [StrategyWebhookRateThrottle]

    @extend_schema(
        tags=TAGS,
        request={"application/json": OpenApiTypes.OBJECT, "text/plain": OpenApiTypes.STR},
        parameters=[
            OpenApiParameter("X-Webhook-Secret", str, OpenApiParameter.HEADER, required=False),
            OpenApiParameter("secret", str, description="ChartInk cannot send headers: the secret in the URL"),
            OpenApiParameter("action", str, enum=list(services.WEBHOOK_ACTIONS), description="ChartInk's action"),
            OpenApiParameter("quantity", int, description="ChartInk's quantity per stock"),
        ],
        responses={
            202: SignalOutput,
            400: OpenApiResponse(ErrorSerializer, description="VALIDATION_ERROR: bad payload or stale timestamp"),
            401: OpenApiResponse(ErrorSerializer, description="AUTH_INVALID: wrong or rotated secret (recorded)"),
            404: OpenApiResponse(ErrorSerializer, description="no such strategy"),
            409: OpenApiResponse(
                ErrorSerializer, description="CONFLICT: a replay (recorded, not acted on); INVALID_STATE: not running"
            ),
            422: OpenApiResponse(ErrorSerializer, description="every order was refused (signal recorded)"),
        },
        summary="TradingView / ChartInk webhook",
        description='TradingView alert message: `{"secret": "...", "action": "BUY|SELL|SHORT|COVER|EXIT", '
        '"symbol": "NSE:INFY", "quantity": 10, "id": "{{timenow}}", "timestamp": "{{timenow}}"}`. '
        "ChartInk: its scan JSON (stocks, trigger_prices, triggered_at, scan_name) with `?secret=...&action=BUY"
        "&quantity=10` in the URL. BUY/SHORT open or add, SELL/COVER close the strategy's own long/short (never "
        "more), EXIT closes the strategy's positions in the symbol (or all). The same alert (same `id`, or the "
        "same body) is acted on once; a timestamp more than 5 minutes old is refused; `quantity` is at most "
        "100000 units (a derivative's freeze quantity when lower). Every call is recorded as a signal with its "
        "outcome (GET /api/signals), except that refused calls beyond the first 50 of a strategy's day are only "
        "counted (`webhook_rejections_today` on the strategy). Bodies over 64 KB answer 413; calls are throttled "
        "per client IP (429).",
    )
    def post(self, request: Request, strategy_id: str) -> Response:
        call = services.WebhookCall(
            strategy_id=strategy_id,
            body=request.data if isinstance(request.data, bytes) else b"",
            secret=request.headers.get("X-Webhook-Secret", "") or request.query_params.get("secret", ""),
            query_action=request.query_params.get("action", ""),
            query_quantity=request.query_params.get("quantity", ""),
            remote_addr=request.META.get("REMOTE_ADDR"),
        )
        signal = services.signal_receive(call=call)
        if signal.status != SignalStatus.ACCEPTED:
            raise AppError(
                signal.detail or "The signal placed no order.",
                code=ErrorCode.ORDER_REJECTED,
                extra={"signal_id": signal.pk, "reason": signal.reason},
            )
        return Response(SignalOutput(signal).data, status=status.HTTP_202_ACCEPTED)


@extend_schema_view(
    get=extend_schema(
        tags=TAGS,
        responses={200: SignalOutput(many=True)},
        summary="Your strategies' signals (webhook calls and rule triggers), newest first",
    )
)
class SignalListApi(ListApi):
    permission_classes = [IsAuthenticated]
    filter_serializer_class = SignalListQuery
    output_serializer_class = SignalOutput

    def list_selector(self, *, user, filters):
        return selectors.signal_list(user=user, strategy_id=filters.get("strategy_id"), status=filters.get("status"))


class SignalDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS, responses={200: SignalOutput, 404: OpenApiResponse(ErrorSerializer)}, summary="One signal"
    )
    def get(self, request: Request, signal_id: str) -> Response:
        return Response(SignalOutput(selectors.signal_get(user=request.user, signal_id=signal_id)).data)
