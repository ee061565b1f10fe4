"""The operator console's reads (admins only): users with their broker accounts and plan, payments with their
totals, the audit log."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet, Sum

from accounts.models import AuditEvent, User
from algoterm.api.errors import PermissionDenied, ValidationFailed
from billing.models import Payment, PaymentStatus, Plan
from billing.selectors import entitlements_for, subscription_current
from brokers.models import BrokerAccount


def _require_admin(user: User) -> None:
    if not user.is_admin:
        raise PermissionDenied("Only administrators can do this.")


def admin_user_list(
    *,
    user: User,
    role: str | None = None,
    is_active: bool | None = None,
    search: str | None = None,
    broker: str | None = None,
) -> QuerySet[User]:
    """Every user, newest first, with their live broker accounts prefetched. `broker`: users holding a live
    (not deleted) account at that broker; `search`: part of the email or the name."""
    _require_admin(user)
    users = User.objects.all()
    if role:
        users = users.filter(role=role)
    if is_active is not None:
        users = users.filter(is_active=is_active)
    if search:
        users = users.filter(Q(email__icontains=search) | Q(name__icontains=search))
    if broker:
        users = users.filter(
            Exists(BrokerAccount.objects.filter(owner=OuterRef("pk"), broker=broker, deleted_at__isnull=True))
        )
    live_accounts = BrokerAccount.objects.filter(deleted_at__isnull=True).order_by("created_at", "id")
    return users.prefetch_related(
        Prefetch("broker_accounts", queryset=live_accounts, to_attr="live_broker_accounts")
    ).order_by("-date_joined", "-id")


def admin_user_plan(*, user: User, of: User) -> dict:
    """What `of` is entitled to and why: the current subscription's plan, else the entitlements' basis
    (`trial` for never subscribed, `lapsed`, `operator` for admins)."""
    _require_admin(user)
    current = subscription_current(user=of)
    if current is not None:
        return {
            "code": current.plan.code,
            "name": current.plan.name,
            "basis": "trial" if current.plan.is_trial else "subscription",
            "subscription_id": current.pk,
            "subscription_status": current.status,
            "current_end": current.current_end,
        }
    entitlements = entitlements_for(user=of)
    return {
        "code": entitlements.plan,
        "name": "",
        "basis": entitlements.basis,
        "subscription_id": None,
        "subscription_status": None,
        "current_end": None,
    }


def admin_payment_list(
    *,
    user: User,
    status: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    plan: str | None = None,
    user_id: str | None = None,
) -> QuerySet:
    """Every payment, newest first; `start`/`end` bound Razorpay's payment time (inclusive), `plan` is a code."""
    _require_admin(user)
    if plan and not Plan.objects.filter(code=plan).exists():
        raise ValidationFailed(errors={"plan": [f"No plan {plan!r}."]})
    payments = Payment.objects.select_related("user", "subscription__plan")
    if status:
        payments = payments.filter(status=status)
    if start:
        payments = payments.filter(paid_at__gte=start)
    if end:
        payments = payments.filter(paid_at__lte=end)
    if plan:
        payments = payments.filter(subscription__plan__code=plan)
    if user_id:
        payments = payments.filter(user_id=user_id)
    return payments.order_by("-paid_at", "-id")


def admin_payment_totals(*, user: User, payments: QuerySet) -> dict:
    """Over the whole filtered list, not one page: money captured (paise-exact; rupees derived from paise),
    and the counts. Amounts are INR, the only currency the platform bills in."""
    _require_admin(user)
    totals = payments.order_by().aggregate(
        count=Count("id"),
        captured_count=Count("id", filter=Q(status=PaymentStatus.CAPTURED)),
        failed_count=Count("id", filter=Q(status=PaymentStatus.FAILED)),
        refunded_count=Count("id", filter=Q(status=PaymentStatus.REFUNDED)),
        captured_amount_paise=Sum("amount_paise", filter=Q(status=PaymentStatus.CAPTURED), default=0),
    )
    totals["captured_amount"] = (Decimal(totals["captured_amount_paise"]) / 100).quantize(Decimal("0.01"))
    return totals


def admin_audit_list(
    *,
    user: User,
    kinds: list[str] | None = None,
    action_prefix: str | None = None,
    actor_id: str | None = None,
    target_id: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> QuerySet[AuditEvent]:
    """The audit log, newest first."""
    _require_admin(user)
    events = AuditEvent.objects.select_related("actor")
    if kinds:
        events = events.filter(kind__in=kinds)
    if action_prefix:
        events = events.filter(action__startswith=action_prefix)
    if actor_id:
        events = events.filter(actor_id=actor_id)
    if target_id:
        events = events.filter(target_id=target_id)
    if start:
        events = events.filter(occurred_at__gte=start)
    if end:
        events = events.filter(occurred_at__lte=end)
    return events.order_by("-occurred_at", "-id")
