"""Input and output shapes of the operator console's APIs: the admin API (users, payments, the audit log), the
runtime configuration and the system control routes."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import AuditEvent, Role, User
from algoterm.api.serializers import InputSerializer
from algoterm.console import selectors as console_selectors
from algoterm.console.system import HALT_REASON_MAX_LENGTH
from algoterm.models import PlatformMode
from algoterm.views import ComponentOutput
from billing.models import Payment, PaymentStatus, SubscriptionStatus
from brokers.models import Broker, BrokerAccount

# --- the admin API ----------------------------------------------------------------------------------------------------

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
    page_size = serializers.IntegerField(required=False, help_text="at most 100")


class _WindowQuery(_PagedQuery):
    to = TimeBoundField(
        day_end=True, required=False, help_text="ISO 8601 time, or a date (that day's end, IST); inclusive"
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["from"] = TimeBoundField(  # `from` is a Python keyword
            day_end=False, required=False, help_text="ISO 8601 time, or a date (that day's start, IST); inclusive"
        )

    def validate(self, attrs: dict) -> dict:
        if attrs.get("from") and attrs.get("to") and attrs["from"] > attrs["to"]:
            raise serializers.ValidationError({"from": ["Must not be after `to`."]})
        return attrs


class AdminUserListQuery(_PagedQuery):
    role = serializers.ChoiceField(choices=Role.choices, required=False)
    # allow_null: a query string is form input, where DRF would read a missing boolean as False.
    is_active = serializers.BooleanField(required=False, allow_null=True, default=None)
    search = serializers.CharField(required=False, max_length=100, help_text="part of the email or the name")
    broker = serializers.ChoiceField(
        choices=Broker.choices, required=False, help_text="users with a live account there"
    )


class AdminPaymentListQuery(_WindowQuery):
    status = serializers.ChoiceField(choices=PaymentStatus.choices, required=False)
    plan = serializers.SlugField(required=False, max_length=20, help_text="a plan code, e.g. monthly")
    user_id = serializers.CharField(required=False, max_length=40)


class AdminAuditListQuery(_WindowQuery):
    kind = serializers.CharField(
        required=False,
        max_length=200,
        help_text=f"one or more, comma-separated: {', '.join(AuditEvent.Kind.values)} (plurals such as `orders` "
        "accepted)",
    )
    action = serializers.CharField(
        required=False, max_length=64, help_text="action prefix, e.g. `auth.login` or `admin.`"
    )
    actor_id = serializers.CharField(required=False, max_length=40, help_text="who acted (usr_ id)")
    target_id = serializers.CharField(required=False, max_length=64, help_text="what was acted on")

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


# --- configuration ----------------------------------------------------------------------------------------------------

# --- inputs ---------------------------------------------------------------------------------------------------------


class ConfigPutInput(InputSerializer):
    """A section's new data, whole, and optionally the version it was based on."""

    data = serializers.DictField(help_text="The whole section; every field is required, unknown fields are refused.")
    expected_version = serializers.IntegerField(
        min_value=0,
        required=False,
        allow_null=True,
        help_text="The version you read (0: never stored); a section changed since answers 409 CONFLICT.",
    )


class ConfigImportInput(InputSerializer):
    """An exported document to apply; `dry_run` only reports what would change."""

    document = serializers.DictField(help_text="A document as POST /api/config/export answers.")
    dry_run = serializers.BooleanField(default=False, help_text="Validate and report what would change; change none.")


# --- outputs --------------------------------------------------------------------------------------------------------


class ConfigSectionOutput(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    data = serializers.DictField()
    version = serializers.IntegerField(help_text="grows with each change; 0 while the built-in default applies")
    stored = serializers.BooleanField(help_text="false: never changed, the built-in default applies")
    updated_by = serializers.CharField(allow_null=True, help_text="user id of the last change")
    updated_at = serializers.DateTimeField(allow_null=True)


class ConfigListOutput(serializers.Serializer):
    sections = ConfigSectionOutput(many=True)


class ConfigDocumentOutput(serializers.Serializer):
    version = serializers.IntegerField(help_text="the document format, 1")
    exported_at = serializers.DateTimeField()
    sections = serializers.DictField(child=serializers.DictField(), help_text="each section's data, by name")


class ConfigImportOutput(serializers.Serializer):
    dry_run = serializers.BooleanField()
    changed = serializers.ListField(child=serializers.CharField(), help_text="sections stored (or, dry, to be)")
    unchanged = serializers.ListField(child=serializers.CharField(), help_text="sections already as the document")
    changes = serializers.DictField(child=serializers.DictField(), help_text="what changed, by section")


# --- system control ---------------------------------------------------------------------------------------------------


class PlatformStateOutput(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=PlatformMode.values, help_text="paper: every order goes to the paper broker, whatever its account"
    )
    trading_halted = serializers.BooleanField(help_text="the platform kill switch: only exits go out")
    halt_reason = serializers.CharField()
    changed_by = serializers.CharField(allow_null=True, help_text="the admin (usr_ id) who changed it last")
    changed_at = serializers.DateTimeField()


class SystemStatusOutput(PlatformStateOutput):
    live_orders_at_brokers = serializers.IntegerField(
        help_text="live orders of real broker accounts at their brokers (a switch to paper strands them)"
    )
    paper_routed_live_orders = serializers.IntegerField(
        help_text="live orders of real broker accounts on the paper exchange (a switch to live strands them)"
    )
    components = serializers.DictField(child=type(ComponentOutput)())  # GET /api/health's component schema


class PlatformModeInput(InputSerializer):
    mode = serializers.ChoiceField(choices=PlatformMode.values)
    force = serializers.BooleanField(default=False, help_text="switch even though live orders would be stranded")


class TradingStopInput(InputSerializer):
    reason = serializers.CharField(max_length=HALT_REASON_MAX_LENGTH, help_text="shown with every refusal")


class TradingStartInput(InputSerializer):
    """No fields: the body is `{}` (or empty)."""
