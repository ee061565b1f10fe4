"""Broker account routes: connect, OAuth callback, list, disconnect, re-login, funds."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm.api.errors import NotFound
from algoterm.api.permissions import IsTrader
from algoterm.api.views import ListApi
from brokers import selectors, services
from brokers.models import Broker
from brokers.serializers import (
    AccountListQuery,
    BrokerAccountOutput,
    ConnectInput,
    ConnectOutput,
    FundsOutput,
    ReloginInput,
    SessionRenewalInput,
)


def _connect_body(result: services.ConnectResult) -> dict:
    return ConnectOutput({"account": result.account, "login_url": result.login_url}).data


class BrokerConnectApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=["brokers"],
        request=ConnectInput,
        responses={201: ConnectOutput},
        summary="Connect a broker account",
        description="Paper connects at once. Zerodha and Fyers answer with `login_url`: open it, log in, and the "
        "broker redirects to `/api/brokers/callback/{broker}`. Dhan checks the access token first.",
    )
    def post(self, request: Request) -> Response:
        data = ConnectInput(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.broker_account_connect(user=request.user, **data.validated_data)
        return Response(_connect_body(result), status=status.HTTP_201_CREATED)


class BrokerCallbackApi(APIView):
    """Reached by the user's browser from the broker's login page, so it carries no JWT: the signed `state`
    (valid for minutes, bound to the account and its owner) says whose login this is."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        tags=["brokers"],
        parameters=[
            OpenApiParameter("state", str, required=True),
            OpenApiParameter("request_token", str, description="Zerodha"),
            OpenApiParameter("auth_code", str, description="Fyers"),
        ],
        responses={200: BrokerAccountOutput},
        summary="Finish a broker login (broker redirect)",
    )
    def get(self, request: Request, broker: str) -> Response:
        if broker not in (Broker.ZERODHA, Broker.FYERS):
            raise NotFound()
        params = {key: request.query_params.get(key) for key in request.query_params}
        account = services.broker_login_complete(broker=broker, params=params)
        return Response(BrokerAccountOutput(account).data)


@extend_schema_view(
    get=extend_schema(
        tags=["brokers"],
        responses={200: BrokerAccountOutput(many=True)},
        summary="Your broker accounts",
    )
)
class BrokerAccountListApi(ListApi):
    filter_serializer_class = AccountListQuery
    output_serializer_class = BrokerAccountOutput

    def list_selector(self, *, user, filters):
        return selectors.broker_account_list(user=user, broker=filters.get("broker"), status=filters.get("status"))


class BrokerAccountDetailApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(tags=["brokers"], responses={204: None}, summary="Disconnect (logs out, wipes secrets)")
    def delete(self, request: Request, account_id: str) -> Response:
        account = selectors.broker_account_get(user=request.user, account_id=account_id)
        services.broker_account_disconnect(user=request.user, account=account)
        return Response(status=status.HTTP_204_NO_CONTENT)


class BrokerAccountRefreshApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=["brokers"],
        request=ReloginInput,
        responses={200: ConnectOutput},
        summary="Log in again (daily)",
        description="OAuth brokers answer with a new `login_url`; Dhan takes a new access token; paper reconnects.",
    )
    def post(self, request: Request, account_id: str) -> Response:
        account = selectors.broker_account_get(user=request.user, account_id=account_id)
        data = ReloginInput(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.broker_account_refresh(
            user=request.user, account=account, credentials=data.validated_data.get("credentials") or None
        )
        return Response(_connect_body(result))


class BrokerSessionRenewalApi(APIView):
    permission_classes = [IsAuthenticated, IsTrader]

    @extend_schema(
        tags=["brokers"],
        request=SessionRenewalInput,
        responses={200: BrokerAccountOutput},
        summary="Renew my broker session without the daily login",
        description="Consent (or withdraw it) to the platform renewing this account's session in the last 45 minutes "
        "before the daily cut-off: Fyers with its refresh token and your PIN (send `pin`; kept encrypted), Dhan with "
        "its token renewal. Zerodha and paper cannot (400). If the broker refuses a renewal, you get a notification "
        "to log in by hand.",
    )
    def post(self, request: Request, account_id: str) -> Response:
        account = selectors.broker_account_get(user=request.user, account_id=account_id)
        data = SessionRenewalInput(data=request.data)
        data.is_valid(raise_exception=True)
        account = services.broker_session_renewal_set(
            user=request.user,
            account=account,
            enabled=data.validated_data["enabled"],
            pin=data.validated_data.get("pin") or "",
        )
        return Response(BrokerAccountOutput(account).data)


class BrokerFundsApi(APIView):
    @extend_schema(tags=["brokers"], responses={200: FundsOutput}, summary="Funds and margin, live from the broker")
    def get(self, request: Request, account_id: str) -> Response:
        funds = selectors.broker_account_funds(user=request.user, account_id=account_id)
        return Response(FundsOutput(asdict(funds)).data)
