"""The broker postback route: order updates a broker pushes to us (Zerodha, Dhan)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.errors import NotFound, ValidationFailed
from algoterm.api.throttles import BrokerPostbackRateThrottle
from brokers.models import Broker
from orders import postbacks

PostbackOutput = inline_serializer(
    "BrokerPostbackResult", fields={"status": serializers.ChoiceField(choices=["applied", "ignored"])}
)


POSTBACK_BROKERS = (Broker.ZERODHA, Broker.DHAN)


class BrokerPostbackApi(APIView):
    """Called by the broker, not a user, so it carries no JWT. Kite's body carries a checksum made with the account's
    API secret; Dhan's carries nothing that authenticates it, so it can only ever make us read an order from Dhan."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [BrokerPostbackRateThrottle]

    @extend_schema(
        tags=["orders"],
        parameters=[
            OpenApiParameter("broker", str, OpenApiParameter.PATH, enum=[broker.value for broker in POSTBACK_BROKERS])
        ],
        request=OpenApiTypes.OBJECT,
        responses={200: PostbackOutput},
        summary="Broker order update (postback)",
        description="Zerodha and Dhan (other brokers: 404; Fyers offers order updates on its order socket, which "
        "`run_order_streams` follows). Either way the postback is taken as a signal only: the order it names is read "
        "again from the broker's own order book (and trade book), and its terms and fills come from there, never "
        "from the body. Postbacks for one order while a read is queued share that read. An order we do not know is "
        "`ignored`; otherwise `applied`.\n\n"
        "**zerodha**: Kite's postback JSON, the order's fields (order_id, status, filled_quantity, average_price, "
        "tag, order_timestamp...) and `checksum` = sha256(order_id + order_timestamp + api_secret) hex. A wrong "
        "checksum is 400 with `errors.checksum` and changes nothing.\n\n"
        "**dhan**: Dhan's postback JSON (dhanClientId, orderId, correlationId, orderStatus, filledQty...), which "
        "Dhan does not sign. The order is looked up only among the orders of the connected Dhan accounts whose "
        "client id is `dhanClientId`, by `correlationId` (the tag we sent) else `orderId`. A body without "
        "`dhanClientId` or `orderId` is 400.",
    )
    def post(self, request: Request, broker: str) -> Response:
        if broker not in POSTBACK_BROKERS:
            raise NotFound(f"No postbacks for broker {broker!r}.")
        if not isinstance(request.data, dict):
            raise ValidationFailed("The postback must be a JSON object.", errors={"payload": ["Not a JSON object."]})
        if broker == Broker.DHAN:
            return Response({"status": postbacks.dhan_postback_apply(payload=request.data)})
        return Response({"status": postbacks.kite_postback_apply(payload=request.data)})
