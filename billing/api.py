"""Billing routes: plans (public), start, verify, history, cancel, and Razorpay's webhook."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.parsers import RawBodyParser
from algoterm.api.serializers import ErrorSerializer
from algoterm.api.throttles import BillingWebhookRateThrottle
from algoterm.api.views import ListApi

from . import selectors, services
from .serializers import (
    CurrentSubscriptionOutput,
    PlanOutput,
    SubscriptionOutput,
    SubscriptionStartInput,
    SubscriptionStartOutput,
    VerifyInput,
    WebhookOutput,
)

TAGS = ["billing"]
PROVIDER_DOWN = OpenApiResponse(ErrorSerializer, description="SERVICE_UNAVAILABLE: Razorpay did not answer")


@extend_schema_view(
    get=extend_schema(tags=TAGS, responses={200: PlanOutput(many=True)}, summary="The plans (public)", auth=[])
)
class PlanListApi(ListApi):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    output_serializer_class = PlanOutput

    def list_selector(self, *, user, filters):
        return selectors.plan_list()


class SubscriptionStartApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        request=SubscriptionStartInput,
        responses={
            201: SubscriptionStartOutput,
            404: OpenApiResponse(ErrorSerializer, description="no such plan"),
            409: OpenApiResponse(ErrorSerializer, description="INVALID_STATE: trial taken, or already subscribed"),
            503: PROVIDER_DOWN,
        },
        summary="Start the trial, or a paid plan's Razorpay subscription",
        description="The trial (once per user) is active at once. A paid plan answers with `checkout`: open "
        "Razorpay Checkout with it; its success handler's three fields go to POST /api/subscriptions/verify. Asked "
        "again before paying, the same checkout comes back.",
    )
    def post(self, request: Request) -> Response:
        data = SubscriptionStartInput(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.subscription_start(user=request.user, plan_code=data.validated_data["plan"])
        body = SubscriptionStartOutput({"subscription": result.subscription, "checkout": result.checkout}).data
        return Response(body, status=status.HTTP_201_CREATED)


class SubscriptionVerifyApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        request=VerifyInput,
        responses={
            200: CurrentSubscriptionOutput,
            400: OpenApiResponse(ErrorSerializer, description="the signature does not match"),
            404: OpenApiResponse(ErrorSerializer, description="not your subscription"),
            503: PROVIDER_DOWN,
        },
        summary="Verify Checkout's payment signature",
        description="HMAC-SHA256 of `payment_id|subscription_id` with the key secret; the subscription's state is "
        "then read from Razorpay.",
    )
    def post(self, request: Request) -> Response:
        data = VerifyInput(data=request.data)
        data.is_valid(raise_exception=True)
        subscription = services.subscription_verify(
            user=request.user,
            payment_id=data.validated_data["razorpay_payment_id"],
            subscription_id=data.validated_data["razorpay_subscription_id"],
            signature=data.validated_data["razorpay_signature"],
        )
        return Response(CurrentSubscriptionOutput(subscription).data)


@extend_schema_view(
    get=extend_schema(
        tags=TAGS,
        responses={200: SubscriptionOutput(many=True)},
        summary="Your subscriptions with their payments, newest first",
    )
)
class SubscriptionHistoryApi(ListApi):
    permission_classes = [IsAuthenticated]
    output_serializer_class = SubscriptionOutput

    def list_selector(self, *, user, filters):
        return selectors.subscription_list(user=user)


class SubscriptionCancelApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=TAGS,
        request=None,
        responses={
            200: CurrentSubscriptionOutput,
            409: OpenApiResponse(ErrorSerializer, description="nothing to cancel, or already cancelling"),
            503: PROVIDER_DOWN,
        },
        summary="Cancel: a paid plan at the end of the cycle already paid, the trial now",
    )
    def post(self, request: Request) -> Response:
        return Response(CurrentSubscriptionOutput(services.subscription_cancel(user=request.user)).data)


class BillingWebhookApi(APIView):
    """Called by Razorpay, not a user: the signature over the raw body authenticates it."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    parser_classes = [RawBodyParser]
    throttle_classes = [BillingWebhookRateThrottle]

    @extend_schema(
        tags=TAGS,
        auth=[],
        request={"application/json": OpenApiTypes.OBJECT},
        parameters=[
            OpenApiParameter("X-Razorpay-Signature", str, OpenApiParameter.HEADER, required=True),
            OpenApiParameter("X-Razorpay-Event-Id", str, OpenApiParameter.HEADER),
        ],
        responses={
            200: WebhookOutput,
            400: OpenApiResponse(ErrorSerializer, description="the signature does not match; nothing changed"),
        },
        summary="Razorpay webhook",
        description="HMAC-SHA256 of the raw body with the webhook secret. Each event id is processed once (a "
        "repeat answers 200 with the first outcome); an event older than the subscription's newest applied one "
        "records its payment but does not move the state back (`stale`).",
    )
    def post(self, request: Request) -> Response:
        event = services.webhook_receive(
            body=request.data if isinstance(request.data, bytes) else b"",
            signature=request.headers.get("X-Razorpay-Signature", ""),
            event_id=request.headers.get("X-Razorpay-Event-Id", ""),
        )
        return Response({"event_id": event.event_id, "outcome": event.outcome})
