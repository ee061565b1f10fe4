"""The operator console's routes (role admin): users, payments with totals, the audit log, deactivation.

`GET /api/admin/payments` answers the standard page plus a `totals` object computed over every payment the
filters select (not only the page's): the one documented extension of the list shape.
"""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.models import AuditEvent, Role, User
from algoterm.api.pagination import PagePagination, paginate
from algoterm.api.permissions import IsAdmin
from algoterm.api.serializers import ErrorSerializer, InputSerializer
from algoterm.console import selectors as console_selectors
from billing.models import Payment, PaymentStatus, SubscriptionStatus
from brokers.models import Broker, BrokerAccount

MONEY = {"max_digits": 14, "decimal_places": 2, "coerce_to_string": False}
_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# The words for the audit kinds (orders, RMS...) next to the kinds themselves.
KIND_ALIASES = {
    **{kind: kind for kind in AuditEvent.Kind.values},
    **{f"{kind}s": kind for kind in AuditEvent.Kind.values},
    "strategies": AuditEvent.Kind.STRATEGY,
    "payments": AuditEvent.Kind.BILLING,
}


# --- input --------------------------------------------------------------------------------------------------------


@extend_schema_field(OpenApiTypes.STR)
class TimeBoundField(serializers.Field):
    """ISO 8601 time, or a date (YYYY-MM-DD) meaning that whole day in Asia/Kolkata: a `from` date starts at its
    midnight, a `to` date ends at its last instant. A time without offset is read as Asia/Kolkata."""

    default_error_messages = {"invalid": "Give an ISO 8601 time or a date YYYY-MM-DD."}

    def __init__(self, *, day_end: bool, **kwargs) -> None:
        self.day_end = day_end
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> datetime:
        if not isinstance(data, str):
            self.fail("invalid")
        zone = ZoneInfo(settings.MARKET_TIMEZONE)
        try:
            if _DATE_ONLY.match(data):
                day = parse_date(data)
                start = datetime.combine(day, time.min, tzinfo=zone)
                return start + timedelta(days=1, microseconds=-1) if self.day_end else start
            moment = parse_datetime(data)
        except (TypeError, ValueError):
            self.fail("invalid")
        if moment is None:
            self.fail("invalid")
        return moment if timezone.is_aware(moment) else moment.replace(tzinfo=zone)

    def to_representation(self, value):
        return value.isoformat()


class _PagedQuery(InputSerializer):
    page = serializers.IntegerField(required=False)
    page_size = serializers.IntegerField(required=False)


class _WindowQuery(_PagedQuery):
    to = TimeBoundField(day_end=True, required=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["from"] = TimeBoundField(day_end=False, required=False)  # `from` is a Python keyword

    def validate(self, attrs: dict) -> dict:
        if attrs.get("from") and attrs.get("to") and attrs["from"] > attrs["to"]:
            raise serializers.ValidationError({"from": ["Must not be after `to`."]})
        return attrs


class AdminUserListQuery(_PagedQuery):
    role = serializers.ChoiceField(choices=Role.choices, required=False)
    # allow_null: a query string is form input, where DRF would read a missing boolean as False.
    is_active = serializers.BooleanField(required=False, allow_null=True, default=None)
    search = serializers.CharField(required=False, max_length=100)
    broker = serializers.ChoiceField(choices=Broker.choices, required=False)


class AdminPaymentListQuery(_WindowQuery):
    status = serializers.ChoiceField(choices=PaymentStatus.choices, required=False)
    plan = serializers.SlugField(required=False, max_length=20)
    user_id = serializers.CharField(required=False, max_length=40)


class AdminAuditListQuery(_WindowQuery):
    kind = serializers.CharField(required=False, max_length=200)
    action = serializers.CharField(required=False, max_length=64)
    actor_id = serializers.CharField(required=False, max_length=40)
    target_id = serializers.CharField(required=False, max_length=64)

    def validate_kind(self, value: str) -> list[str]:
        words = [word.strip().lower() for word in value.split(",") if word.strip()]
        unknown = [word for word in words if word not in KIND_ALIASES]
        if unknown or not words:
            raise serializers.ValidationError(
                f"Unknown kind {', '.join(unknown) or value!r}; one or more (comma-separated) of "
                f"{', '.join(AuditEvent.Kind.values)} (plurals such as `orders` work too)."
            )
        return sorted({KIND_ALIASES[word] for word in words})


class DeactivateInput(InputSerializer):
    reason = serializers.CharField(max_length=300, help_text="why; kept in the audit log")


# --- output -------------------------------------------------------------------------------------------------------


class AdminBrokerAccountOutput(serializers.ModelSerializer):
    class Meta:
        model = BrokerAccount
        fields = ["id", "broker", "label", "status"]
        read_only_fields = fields


class AdminPlanOutput(serializers.Serializer):
    code = serializers.CharField(help_text="the plan's code; empty when nothing entitles the user (lapsed)")
    name = serializers.CharField()
    basis = serializers.ChoiceField(
        choices=["subscription", "trial", "lapsed", "operator"],
        help_text="subscription or trial: a live subscription; trial: never subscribed, so the trial's limits; "
        "lapsed: every subscription ended; operator: admins, unlimited",
    )
    subscription_id = serializers.CharField(allow_null=True)
    subscription_status = serializers.ChoiceField(choices=SubscriptionStatus.choices, allow_null=True)
    current_end = serializers.DateTimeField(allow_null=True)


class AdminUserOutput(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=["active", "deactivated"], read_only=True)
    broker_accounts = AdminBrokerAccountOutput(
        source="live_broker_accounts", many=True, read_only=True, help_text="the user's accounts not deleted"
    )
    plan = serializers.SerializerMethodField()

    class Meta:
        model = User
        fields = [
            "id",
            "email",
            "name",
            "phone",
            "role",
            "status",
            "is_active",
            "date_joined",
            "last_login",
            "deactivated_at",
            "broker_accounts",
            "plan",
        ]
        read_only_fields = fields

    @extend_schema_field(AdminPlanOutput)
    def get_plan(self, user: User) -> dict:
        plan = console_selectors.admin_user_plan(user=self.context["request"].user, of=user)
        return AdminPlanOutput(plan).data


class AdminPaymentOutput(serializers.ModelSerializer):
    user_id = serializers.CharField()
    user_email = serializers.EmailField(source="user.email")
    subscription_id = serializers.CharField()
    plan = serializers.CharField(source="subscription.plan.code")
    amount = serializers.SerializerMethodField(help_text="rupees")

    class Meta:
        model = Payment
        fields = [
            "id",
            "user_id",
            "user_email",
            "subscription_id",
            "plan",
            "razorpay_payment_id",
            "amount_paise",
            "amount",
            "currency",
            "status",
            "method",
            "error_description",
            "paid_at",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.DecimalField(**MONEY))
    def get_amount(self, payment: Payment) -> Decimal:
        return (Decimal(payment.amount_paise) / 100).quantize(Decimal("0.01"))


class PaymentTotalsOutput(serializers.Serializer):
    count = serializers.IntegerField(help_text="payments the filters select")
    captured_count = serializers.IntegerField()
    failed_count = serializers.IntegerField()
    refunded_count = serializers.IntegerField()
    captured_amount_paise = serializers.IntegerField()
    captured_amount = serializers.DecimalField(**MONEY, help_text="rupees")


class AdminPaymentPageOutput(serializers.Serializer):
    items = AdminPaymentOutput(many=True)
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    total = serializers.IntegerField()
    total_pages = serializers.IntegerField()
    totals = PaymentTotalsOutput(help_text="over every payment the filters select, not only this page")


class AuditEventOutput(serializers.ModelSerializer):
    actor_id = serializers.CharField(allow_null=True)
    details = serializers.DictField(read_only=True)
    actor_email = serializers.EmailField(source="actor.email", allow_null=True, default=None)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "occurred_at",
            "kind",
            "action",
            "actor_id",
            "actor_email",
            "target_type",
            "target_id",
            "ip",
            "request_id",
            "details",
        ]
        read_only_fields = fields


# --- views --------------------------------------------------------------------------------------------------------

_WINDOW = [
    OpenApiParameter("from", str, description="ISO 8601 time, or a date (that day's start, IST); inclusive"),
    OpenApiParameter("to", str, description="ISO 8601 time, or a date (that day's end, IST); inclusive"),
]


class _AdminView(APIView):
    permission_classes = [IsAuthenticated, IsAdmin]


class AdminUserListApi(_AdminView):
    pagination_class = PagePagination

    @extend_schema(
        tags=["admin"],
        parameters=[
            OpenApiParameter("role", str, enum=Role.values),
            OpenApiParameter("is_active", bool),
            OpenApiParameter("search", str, description="part of the email or the name"),
            OpenApiParameter("broker", str, enum=Broker.values, description="users with a live account there"),
        ],
        responses={200: AdminUserOutput(many=True)},
        summary="Every user, newest first, with broker accounts and plan",
    )
    def get(self, request: Request) -> Response:
        query = AdminUserListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        users = console_selectors.admin_user_list(
            user=request.user,
            role=data.get("role"),
            is_active=data.get("is_active"),
            search=data.get("search"),
            broker=data.get("broker"),
        )
        return paginate(request=request, queryset=users, serializer_class=AdminUserOutput, view=self)


class AdminPaymentListApi(_AdminView):
    @extend_schema(
        tags=["admin"],
        parameters=[
            OpenApiParameter("status", str, enum=PaymentStatus.values),
            OpenApiParameter("plan", str, description="a plan code, e.g. monthly"),
            OpenApiParameter("user_id", str),
            *_WINDOW,
            OpenApiParameter("page", int),
            OpenApiParameter("page_size", int, description="at most 100"),
        ],
        responses={
            200: AdminPaymentPageOutput,
            400: OpenApiResponse(ErrorSerializer, description="Invalid filters: VALIDATION_ERROR."),
        },
        summary="Every payment, newest first, with totals",
        description="The standard page plus `totals`: money captured (paise and rupees) and counts over every "
        "payment the filters select, not only this page. `from`/`to` bound Razorpay's payment time.",
    )
    def get(self, request: Request) -> Response:
        query = AdminPaymentListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        payments = console_selectors.admin_payment_list(
            user=request.user,
            status=data.get("status"),
            start=data.get("from"),
            end=data.get("to"),
            plan=data.get("plan"),
            user_id=data.get("user_id"),
        )
        paginator = PagePagination()
        page = paginator.paginate_queryset(payments, request, view=self)
        response = paginator.get_paginated_response(AdminPaymentOutput(page, many=True).data)
        totals = console_selectors.admin_payment_totals(user=request.user, payments=payments)
        response.data["totals"] = PaymentTotalsOutput(totals).data
        return response


class AdminAuditListApi(_AdminView):
    pagination_class = PagePagination

    @extend_schema(
        tags=["admin"],
        parameters=[
            OpenApiParameter(
                "kind",
                str,
                description="one or more, comma-separated: " + ", ".join(AuditEvent.Kind.values) + " (plurals "
                "such as `orders` accepted)",
            ),
            OpenApiParameter("action", str, description="action prefix, e.g. `auth.login` or `admin.`"),
            OpenApiParameter("actor_id", str, description="who acted (usr_ id)"),
            OpenApiParameter("target_id", str, description="what was acted on"),
            *_WINDOW,
        ],
        responses={200: AuditEventOutput(many=True)},
        summary="The audit log, newest first",
    )
    def get(self, request: Request) -> Response:
        query = AdminAuditListQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        data = query.validated_data
        events = console_selectors.admin_audit_list(
            user=request.user,
            kinds=data.get("kind"),
            action_prefix=data.get("action"),
            actor_id=data.get("actor_id"),
            target_id=data.get("target_id"),
            start=data.get("from"),
            end=data.get("to"),
        )
        return paginate(request=request, queryset=events, serializer_class=AuditEventOutput, view=self)


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
        target = console_selectors.admin_user_list(user=request.user).get(pk=target.pk)
        return Response(AdminUserOutput(target, context={"request": request}).data)
