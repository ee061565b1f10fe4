"""Order, trade, position and portfolio routes."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.idempotency import IDEMPOTENCY_PARAMETER, idempotent
from algoterm.api.permissions import IsTrader
from algoterm.api.serializers import rendered
from algoterm.api.views import ListApi
from brokers.protocol import OrderRejected
from orders import selectors, services
from orders.models import OrderStatus
from orders.serializers import (
    BulkInput,
    BulkOutput,
    OrderDetailOutput,
    OrderInput,
    OrderListQuery,
    OrderModifyInput,
    OrderOutput,
    PortfolioOutput,
    PositionListQuery,
    PositionsOutput,
    SquareOffInput,
    SquareOffOutput,
    TradeListQuery,
    TradeOutput,
    positions_render,
)


@extend_schema_view(
    get=extend_schema(
        tags=["orders"],
        responses={200: OrderOutput(many=True)},
        summary="Your orders, newest first",
    )
)
class OrderListCreateApi(ListApi):
    filter_serializer_class = OrderListQuery
    output_serializer_class = OrderOutput

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), IsTrader()]
        return [IsAuthenticated()]

    def list_selector(self, *, user, filters):
        return selectors.order_list(
            user=user,
            statuses=sorted(filters.get("status") or []),
            account_id=filters.get("account_id"),
            symbol=filters.get("symbol"),
            side=filters.get("side"),
            source=filters.get("source"),
            tag=filters.get("tag"),
            open_only=filters.get("open"),
            start=filters.get("from"),
            end=filters.get("to"),
        )

    @extend_schema(
        tags=["orders"],
        request=OrderInput,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: OrderDetailOutput},
        summary="Place an order",
        description="Validated (lot size, tick size, price rules, the instrument trades, the account is yours and "
        "connected), checked by the risk engine, paced, and sent to the broker within the request with our order "
        "id as its tag. 201 with the order as the broker left it (a market order on paper is FILLED). 422 "
        "ORDER_REJECTED when the broker refuses (the rejected order stays in your history, `order_id` names it). "
        "When the broker's answer is lost the order is UNKNOWN and reconciliation settles it from the broker's "
        "order book: it is never sent twice. `target` and `stop_loss` place exit legs once the entry fills; the "
        "first to fill cancels the other.",
    )
    def post(self, request: Request) -> Response:
        def act() -> Response:
            data = OrderInput(data=request.data)
            data.is_valid(raise_exception=True)
            order = services.order_place(user=request.user, spec=data.to_spec())
            return placed(order)

        def placed(order) -> Response:
            if order.status == OrderStatus.REJECTED:
                raise OrderRejected(order.status_message or None, extra={"order_id": order.pk})
            order = selectors.order_detail_complete(user=request.user, order=order)
            return Response(rendered(OrderDetailOutput, order), status=status.HTTP_201_CREATED)

        return idempotent(request, scope="orders.place", act=act, recover=lambda orders: placed(orders[0]))


class OrderDetailApi(APIView):
    def get_permissions(self):
        if self.request.method in ("PATCH", "DELETE"):
            return [IsAuthenticated(), IsTrader()]
        return [IsAuthenticated()]

    @extend_schema(tags=["orders"], responses={200: OrderDetailOutput}, summary="One order with its events")
    def get(self, request: Request, order_id: str) -> Response:
        order = selectors.order_get(user=request.user, order_id=order_id, with_events=True)
        return Response(rendered(OrderDetailOutput, order))

    @extend_schema(
        tags=["orders"],
        request=OrderModifyInput,
        responses={200: OrderDetailOutput},
        summary="Modify a working order",
        description="Quantity, price, trigger price or order type of an OPEN or PARTIALLY_FILLED order; 409 "
        "INVALID_STATE otherwise.",
    )
    def patch(self, request: Request, order_id: str) -> Response:
        order = selectors.order_get(user=request.user, order_id=order_id)
        data = OrderModifyInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.order_modify(user=request.user, order=order, **data.validated_data)
        return Response(
            rendered(OrderDetailOutput, selectors.order_get(user=request.user, order_id=order_id, with_events=True))
        )

    @extend_schema(
        tags=["orders"],
        responses={200: OrderDetailOutput},
        summary="Cancel an order",
        description="409 INVALID_STATE when it is already filled, cancelled, rejected or expired.",
    )
    def delete(self, request: Request, order_id: str) -> Response:
        order = selectors.order_get(user=request.user, order_id=order_id)
        services.order_cancel(user=request.user, order=order)
        return Response(
            rendered(OrderDetailOutput, selectors.order_get(user=request.user, order_id=order_id, with_events=True))
        )


class OrderBulkApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=["orders"],
        request=BulkInput,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={201: BulkOutput},
        summary="Place a multi-leg order",
        description="Every leg is validated before any is sent (400 names `legs.N.field`); buy legs go before sell "
        "legs, for margin. One result per leg, in the order given. With `all_or_none`, a failed leg cancels the legs "
        "already placed and the rest are not sent (`rolled_back`); a leg that filled before the failure cannot be "
        "cancelled, stays `placed` and makes the outcome `partial`.",
    )
    def post(self, request: Request) -> Response:
        data = BulkInput(data=request.data)

        def act() -> Response:
            data.is_valid(raise_exception=True)
            specs = [services.OrderSpec(**leg) for leg in data.validated_data["legs"]]
            result = services.orders_place_bulk(
                user=request.user, specs=specs, all_or_none=data.validated_data["all_or_none"]
            )
            return Response(BulkOutput(result).data, status=status.HTTP_201_CREATED)

        def recover(orders) -> Response:
            data.is_valid(raise_exception=True)
            result = services.bulk_result_from_orders(
                specs=[services.OrderSpec(**leg) for leg in data.validated_data["legs"]],
                orders=orders,
                all_or_none=data.validated_data["all_or_none"],
            )
            return Response(BulkOutput(result).data, status=status.HTTP_201_CREATED)

        return idempotent(request, scope="orders.bulk", act=act, recover=recover)


@extend_schema_view(
    get=extend_schema(
        tags=["orders"],
        responses={200: TradeOutput(many=True)},
        summary="Your fills, newest first",
    )
)
class TradeListApi(ListApi):
    filter_serializer_class = TradeListQuery
    output_serializer_class = TradeOutput

    def list_selector(self, *, user, filters):
        return selectors.trade_list(
            user=user,
            account_id=filters.get("account_id"),
            symbol=filters.get("symbol"),
            order_id=filters.get("order_id"),
            start=filters.get("from"),
            end=filters.get("to"),
        )


class PositionListApi(APIView):
    @extend_schema(
        tags=["positions"],
        parameters=[OpenApiParameter("account_id", str), OpenApiParameter("open", bool)],
        responses={200: PositionsOutput},
        summary="Positions per account and consolidated, with LTP and PnL",
        description="Not paginated: one row per account, instrument and product, plus the same grouped across "
        "accounts, plus totals (realized, unrealized, day PnL).",
    )
    def get(self, request: Request) -> Response:
        query = PositionListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        book = selectors.position_book(
            user=request.user,
            account_id=query.validated_data.get("account_id"),
            open_only=query.validated_data.get("open", False),
        )
        body = {
            "items": positions_render(positions=book.positions, quotes=book.quotes),
            "consolidated": book.consolidated,
            "totals": book.totals,
        }
        return Response(body)


class SquareOffApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=["positions"],
        request=SquareOffInput,
        parameters=[IDEMPOTENCY_PARAMETER],
        responses={200: SquareOffOutput},
        summary="Square off positions",
        description="All positions, or one account's, or one symbol's: pending orders in scope are cancelled first, "
        "then each open position is closed with a market order. Calling it again places only what is not already "
        "being closed.",
    )
    def post(self, request: Request) -> Response:
        def act() -> Response:
            data = SquareOffInput(data=request.data)
            data.is_valid(raise_exception=True)
            result = services.positions_square_off(user=request.user, **data.validated_data)
            return Response(
                SquareOffOutput({"cancelled": result.cancelled, "placed": result.placed, "failed": result.failed}).data
            )

        return idempotent(request, scope="positions.squareoff", act=act)


class PortfolioApi(APIView):
    @extend_schema(
        tags=["positions"],
        responses={200: PortfolioOutput},
        summary="Holdings, positions, and realized, unrealized and day PnL",
    )
    def get(self, request: Request) -> Response:
        portfolio = selectors.portfolio_get(user=request.user)
        body = dict(portfolio)
        body["positions"] = positions_render(positions=portfolio["positions"], quotes=portfolio["quotes"])
        body.pop("quotes")
        return Response(body)
