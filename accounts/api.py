"""Auth, user and notification routes: parse, call one service or selector, render."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.serializers import (
    LoginInput,
    MarkedReadOutput,
    MeOutput,
    NotificationListQuery,
    NotificationOutput,
    RefreshInput,
    RegisterInput,
    SessionOutput,
    TokenPairOutput,
    UserOutput,
    UserUpdateInput,
)
from algoterm.api.throttles import LoginRateThrottle, RefreshRateThrottle, RegisterRateThrottle
from algoterm.api.views import ListApi


def _session_body(user, tokens) -> dict:
    return SessionOutput({"token_type": "Bearer", **asdict(tokens), "user": user}).data


class RegisterApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [RegisterRateThrottle]

    @extend_schema(tags=["auth"], request=RegisterInput, responses={201: SessionOutput}, summary="Create an account")
    def post(self, request: Request) -> Response:
        data = RegisterInput(data=request.data)
        data.is_valid(raise_exception=True)
        user, tokens = services.user_register(**data.validated_data)
        return Response(_session_body(user, tokens), status=status.HTTP_201_CREATED)


class LoginApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginRateThrottle]

    @extend_schema(
        tags=["auth"],
        request=LoginInput,
        responses={200: SessionOutput},
        summary="Log in with email and password",
        description="5 failed attempts in 15 minutes for one email from one IP, or 20 from one IP over all emails, "
        "answer 429 RATE_LIMITED with Retry-After; failures elsewhere never lock the account's owner out.",
    )
    def post(self, request: Request) -> Response:
        data = LoginInput(data=request.data)
        data.is_valid(raise_exception=True)
        user, tokens = services.auth_login(**data.validated_data)
        return Response(_session_body(user, tokens))


class RefreshApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes = [RefreshRateThrottle]

    @extend_schema(
        tags=["auth"],
        request=RefreshInput,
        responses={200: TokenPairOutput},
        summary="Exchange a refresh token for a new pair",
        description="The refresh token is rotated: the one sent is spent and refused from then on. Presenting a "
        "spent one again ends every session of the account (all refresh and access tokens, live sockets) and "
        "notifies the user (`account.sessions_revoked`): log in again with the password.",
    )
    def post(self, request: Request) -> Response:
        data = RefreshInput(data=request.data)
        data.is_valid(raise_exception=True)
        tokens = services.auth_refresh(refresh=data.validated_data["refresh"])
        return Response(TokenPairOutput({"token_type": "Bearer", **asdict(tokens)}).data)


class LogoutApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        tags=["auth"],
        request=RefreshInput,
        responses={204: None},
        summary="End this session",
        description="Revokes the refresh token sent and the access token used for this call.",
    )
    def post(self, request: Request) -> Response:
        data = RefreshInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.auth_logout(user=request.user, refresh=data.validated_data["refresh"], access=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeApi(APIView):
    @extend_schema(tags=["users"], responses={200: MeOutput}, summary="The caller's profile")
    def get(self, request: Request) -> Response:
        return Response(MeOutput(selectors.user_profile(user=request.user)).data)


class UserDetailApi(APIView):
    @extend_schema(
        tags=["users"],
        request=UserUpdateInput,
        responses={200: UserOutput},
        summary="Update a user",
        description="Yourself: name and phone. Admins: role and status of other users.",
    )
    def patch(self, request: Request, user_id: str) -> Response:
        user = selectors.user_get(user=request.user, user_id=user_id)
        data = UserUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        user = services.user_update(actor=request.user, user=user, data=data.validated_data)
        return Response(UserOutput(user).data)


@extend_schema_view(
    get=extend_schema(
        tags=["notifications"],
        responses={200: NotificationOutput(many=True)},
        summary="The caller's notifications, newest first",
    )
)
class NotificationListApi(ListApi):
    filter_serializer_class = NotificationListQuery
    output_serializer_class = NotificationOutput

    def list_selector(self, *, user, filters):
        return selectors.notification_list(user=user, unread=filters.get("unread"), kind=filters.get("kind"))


class NotificationReadApi(APIView):
    @extend_schema(tags=["notifications"], request=None, responses={200: NotificationOutput}, summary="Mark read")
    def post(self, request: Request, notification_id: str) -> Response:
        notification = selectors.notification_get(user=request.user, notification_id=notification_id)
        notification = services.notification_mark_read(notification=notification)
        return Response(NotificationOutput(notification).data)


class NotificationReadAllApi(APIView):
    @extend_schema(tags=["notifications"], request=None, responses={200: MarkedReadOutput}, summary="Mark all read")
    def post(self, request: Request) -> Response:
        count = services.notification_mark_all_read(user=request.user)
        return Response(MarkedReadOutput({"marked_read": count}).data)
