"""The operator console's routes (role admin): users, payments with totals, the audit log, deactivation.

`GET /api/admin/payments` answers the standard page plus a `totals` object computed over every payment the
filters select (not only the page's): the one documented extension of the list shape.
"""

from __future__ import annotations

from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from algoterm.api.permissions import IsAdmin
from algoterm.api.serializers import ErrorSerializer
from algoterm.api.views import ListApi
from algoterm.console import selectors as console_selectors
from algoterm.console.serializers import (
    AdminAuditListQuery,
    AdminPaymentListQuery,
    AdminPaymentOutput,
    AdminPaymentPageOutput,
    AdminUserListQuery,
    AdminUserOutput,
    AuditEventOutput,
    DeactivateInput,
    PaymentTotalsOutput,
)

# --- views --------------------------------------------------------------------------------------------------------


class _AdminView(APIView):
    permission_classes = [IsAuthenticated, IsAdmin]


@extend_schema_view(
    get=extend_schema(
        tags=["admin"],
        responses={200: AdminUserOutput(many=True)},
        summary="Every user, newest first, with broker accounts and plan",
    )
)
class AdminUserListApi(_AdminView, ListApi):
    filter_serializer_class = AdminUserListQuery
    output_serializer_class = AdminUserOutput

    def list_selector(self, *, user, filters):
        return console_selectors.admin_user_list(
            user=user,
            role=filters.get("role"),
            is_active=filters.get("is_active"),
            search=filters.get("search"),
            broker=filters.get("broker"),
        )


@extend_schema_view(
    get=extend_schema(
        tags=["admin"],
        responses={
            200: AdminPaymentPageOutput,
            400: OpenApiResponse(ErrorSerializer, description="Invalid filters: VALIDATION_ERROR."),
        },
        summary="Every payment, newest first, with totals",
        description="The standard page plus `totals`: money captured (paise and rupees) and counts over every "
        "payment the filters select, not only this page. `from`/`to` bound Razorpay's payment time.",
    )
)
class AdminPaymentListApi(_AdminView, ListApi):
    filter_serializer_class = AdminPaymentListQuery
    output_serializer_class = AdminPaymentOutput

    def list_selector(self, *, user, filters):
        return console_selectors.admin_payment_list(
            user=user,
            status=filters.get("status"),
            start=filters.get("from"),
            end=filters.get("to"),
            plan=filters.get("plan"),
            user_id=filters.get("user_id"),
        )

    def list_extra(self, *, user, filters, items):
        return {"totals": PaymentTotalsOutput(console_selectors.admin_payment_totals(user=user, payments=items)).data}


@extend_schema_view(
    get=extend_schema(
        tags=["admin"],
        responses={200: AuditEventOutput(many=True)},
        summary="The audit log, newest first",
    )
)
class AdminAuditListApi(_AdminView, ListApi):
    filter_serializer_class = AdminAuditListQuery
    output_serializer_class = AuditEventOutput

    def list_selector(self, *, user, filters):
        return console_selectors.admin_audit_list(
            user=user,
            kinds=filters.get("kind"),
            action_prefix=filters.get("action"),
            actor_id=filters.get("actor_id"),
            target_id=filters.get("target_id"),
            start=filters.get("from"),
            end=filters.get("to"),
        )


class AdminUserDeactivateApi(_AdminView):
    @extend_schema(
        tags=["admin"],
        request=DeactivateInput,
        responses={
            200: AdminUserOutput,
            403: OpenApiResponse(
                ErrorSerializer, description="PERMISSION_DENIED: not an admin, or deactivating yourself"
            ),
            409: OpenApiResponse(ErrorSerializer, description="INVALID_STATE: the user is already deactivated"),
        },
        summary="Deactivate a user",
        description="At once: the user's access tokens stop working, refresh tokens are revoked, live WebSocket "
        "connections close, and login answers 403 ACCOUNT_DEACTIVATED. Audited as `admin.user_deactivate` with "
        "the reason. Deactivating yourself is 403 (as with `PATCH /api/users/{id}`); a user already deactivated "
        "is 409 INVALID_STATE. `PATCH /api/users/{id}` with status `active` reactivates.",
    )
    def post(self, request: Request, user_id: str) -> Response:
        target = selectors.user_get(user=request.user, user_id=user_id)
        data = DeactivateInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.user_deactivate(actor=request.user, user=target, reason=data.validated_data["reason"])
        target = console_selectors.admin_user_get(user=request.user, user_id=target.pk)
        return Response(AdminUserOutput(target, context={"request": request}).data)
