"""The broker postback route: order updates a broker pushes to us."""

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


class BrokerPostbackApi(APIView):
    """Called by the broker, not a user, so it carries no JWT: the body's checksum, made with the account's API
    secret, is what authenticates it."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [BrokerPostbackRateThrottle]

    @extend_schema(
        tags=["orders"],
        parameters=[OpenApiParameter("broker", str, OpenApiParameter.PATH, enum=[Broker.ZERODHA.value])],
        request=OpenApiTypes.OBJECT,
        responses={200: PostbackOutput},
        summary="Signed broker order update (postback)",
        description="Zerodha only (other brokers: 404). The body is Kite's postback JSON: the order's fields "
        "(order_id, status, filled_quantity, average_price, tag, order_timestamp...) and `checksum` = "
        "sha256(order_id + order_timestamp + api_secret) hex. A wrong checksum is 400 with `errors.checksum` and "
        "changes nothing. An order we do not know is `ignored`. Otherwise `applied`: the postback is taken as a "
        "signal only, and the order is read again from Kite's own order book (and trade book); its terms and fills "
        "come from there, never from the body. Postbacks for one order while a read is queued share that read.",
    )
    def post(self, request: Request, broker: str) -> Response:
        if broker != Broker.ZERODHA:
            raise NotFound(f"No postbacks for broker {broker!r}.")
        if not isinstance(request.data, dict):
            raise ValidationFailed("The postback must be a JSON object.", errors={"payload": ["Not a JSON object."]})
        return Response({"status": postbacks.kite_postback_apply(payload=request.data)})
