"""The operator console's reads (admins only): users with their broker accounts and plan, payments with their
totals, the audit log."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet

from accounts.models import AuditEvent, User
from accounts.selectors import audit_event_platform_list, user_platform_list
from algoterm.api.errors import PermissionDenied, ValidationFailed
from billing.models import Payment
from billing.selectors import (
    entitlements_for,
    payment_platform_list,
    payment_totals,
    plan_exists,
    subscription_current,
)
from brokers.selectors import broker_account_live_prefetch


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
    users = user_platform_list(role=role, is_active=is_active, search=search)
    return broker_account_live_prefetch(users=users, broker=broker)


def admin_user_get(*, user: User, user_id: str) -> User:
    """One user as `admin_user_list` gives them (live broker accounts prefetched)."""
    return admin_user_list(user=user).get(pk=user_id)


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
) -> QuerySet[Payment]:
    """Every payment, newest first; `start`/`end` bound Razorpay's payment time (inclusive), `plan` is a code."""
    _require_admin(user)
    if plan and not plan_exists(code=plan):
        raise ValidationFailed(errors={"plan": [f"No plan {plan!r}."]})
    return payment_platform_list(status=status, start=start, end=end, plan=plan, user_id=user_id)


def admin_payment_totals(*, user: User, payments: QuerySet[Payment]) -> dict:
    """Over the whole filtered list, not one page: money captured (paise-exact; rupees derived from paise),
    and the counts. Amounts are INR, the only currency the platform bills in."""
    _require_admin(user)
    return payment_totals(payments=payments)


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
    return audit_event_platform_list(
        kinds=kinds,
        action_prefix=action_prefix,
        actor_id=actor_id,
        target_id=target_id,
        start=start,
        end=end,
    )
