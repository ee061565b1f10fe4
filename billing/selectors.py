"""Reads of billing: plans, a user's subscriptions and payments, and what the user's plan entitles them to."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from datetime import date, datetime, tzinfo
from decimal import Decimal

from django.core.cache import cache
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import Role, User
from algoterm.api.errors import NotFound
from algoterm.outages import REDIS_ERRORS, OutageNotice

from .models import ENTITLED_STATUSES, Payment, PaymentStatus, Plan, Subscription

ENTITLEMENTS_CACHE_SECONDS = 60
_cache_outage = OutageNotice("Redis for cached entitlements (reading PostgreSQL)")


def plan_list() -> QuerySet[Plan]:
    return Plan.objects.filter(is_active=True)


def plan_get(*, code: str) -> Plan:
    plan = Plan.objects.filter(code=code, is_active=True).first()
    if plan is None:
        raise NotFound(f"No plan {code!r}.")
    return plan


def trial_plan() -> Plan | None:
    return Plan.objects.filter(is_trial=True).first()


def subscription_current(*, user: User) -> Subscription | None:
    """The subscription that entitles the user now: a paid one before a trial, the newest first."""
    now = timezone.now()
    live = (
        Subscription.objects.filter(user=user, status__in=ENTITLED_STATUSES)
        .filter(Q(plan__is_trial=False) | Q(current_end__gt=now))
        .select_related("plan")
        .order_by("plan__is_trial", "-created_at")
    )
    return live.first()


def subscription_list(*, user: User) -> QuerySet[Subscription]:
    return Subscription.objects.filter(user=user).select_related("plan").prefetch_related("payments")


def subscription_get(*, user: User, subscription_id: str) -> Subscription:
    subscription = Subscription.objects.filter(user=user, pk=subscription_id).select_related("plan").first()
    if subscription is None:
        raise NotFound()
    return subscription


def payment_list(*, user: User) -> QuerySet[Payment]:
    return Payment.objects.filter(user=user).select_related("subscription__plan")


@dataclass(frozen=True)
class Entitlements:
    """What the user may do now, and why: `basis` is `subscription`, `trial` (never subscribed: the trial's
    limits), `lapsed` (every subscription ended: no live trading, no running strategies) or `operator`."""

    plan: str
    basis: str
    max_broker_accounts: int | None
    max_running_strategies: int | None
    max_active_backtests: int | None
    live_trading: bool
    api_requests_per_minute: int | None
    websocket_symbols: int | None

    def as_dict(self) -> dict:
        return asdict(self)


UNLIMITED = Entitlements(
    plan="",
    basis="operator",
    max_broker_accounts=None,
    max_running_strategies=None,
    max_active_backtests=None,
    live_trading=True,
    api_requests_per_minute=None,
    websocket_symbols=None,
)


def _of_plan(plan: Plan, *, basis: str) -> Entitlements:
    return Entitlements(
        plan=plan.code,
        basis=basis,
        max_broker_accounts=plan.max_broker_accounts,
        max_running_strategies=plan.max_running_strategies,
        max_active_backtests=plan.max_active_backtests,
        live_trading=plan.live_trading,
        api_requests_per_minute=plan.api_requests_per_minute,
        websocket_symbols=plan.websocket_symbols,
    )


PLANS_VERSION_KEY = "billing:plans-version"


def _cache_key(user_id: str) -> str:
    # The plans' version is part of the key: editing a plan retires every cached entitlement at once.
    # v2: entries cached before a field was added would not build an Entitlements.
    return f"billing:entitlements:v2:{cache.get(PLANS_VERSION_KEY, 0)}:{user_id}"


def plans_changed() -> None:
    cache.set(PLANS_VERSION_KEY, cache.get(PLANS_VERSION_KEY, 0) + 1, timeout=None)


def entitlements_forget(*, user_id: str) -> None:
    cache.delete(_cache_key(user_id))


def entitlements_for(*, user: User) -> Entitlements:
    """Cached for a minute (and forgotten whenever the user's subscription changes): every request reads it."""
    if user.role == Role.ADMIN:
        return UNLIMITED
    try:
        key = _cache_key(user.pk)
        cached = cache.get(key)
    except REDIS_ERRORS as error:
        # The cache only copies PostgreSQL: while Redis is down every request computes it (a few indexed reads).
        _cache_outage.failed(error)
        return _entitlements_compute(user)
    _cache_outage.succeeded()
    if cached is not None:
        return Entitlements(**cached)
    entitlements = _entitlements_compute(user)
    with contextlib.suppress(*REDIS_ERRORS):  # went down since the read: the next request computes it again
        cache.set(key, entitlements.as_dict(), ENTITLEMENTS_CACHE_SECONDS)
    return entitlements


def _entitlements_compute(user: User) -> Entitlements:
    current = subscription_current(user=user)
    if current is not None:
        return _of_plan(current.plan, basis="trial" if current.plan.is_trial else "subscription")
    trial = trial_plan()
    if trial is None:
        return UNLIMITED
    if not Subscription.objects.filter(user=user).exclude(status="created").exists():
        return _of_plan(trial, basis="trial")
    lapsed = _of_plan(trial, basis="lapsed")
    return Entitlements(**{**lapsed.as_dict(), "live_trading": False, "max_running_strategies": 0, "plan": ""})


# --- platform-wide, for the operator console (every user's payments) -------------------------------------------------


def plan_exists(*, code: str) -> bool:
    """Whether a plan has this code, active or not."""
    return Plan.objects.filter(code=code).exists()


def payment_platform_list(
    *,
    status: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    plan: str | None = None,
    user_id: str | None = None,
) -> QuerySet[Payment]:
    """Every user's payments, newest first, with payer and plan; `start`/`end` bound Razorpay's payment time
    (inclusive), `plan` is a plan code."""
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


def payment_totals(*, payments: QuerySet[Payment]) -> dict:
    """Over the whole of `payments`, not one page: money captured (paise-exact; rupees derived from paise), and
    the counts. Amounts are INR, the only currency the platform bills in."""
    totals = payments.order_by().aggregate(
        count=Count("id"),
        captured_count=Count("id", filter=Q(status=PaymentStatus.CAPTURED)),
        failed_count=Count("id", filter=Q(status=PaymentStatus.FAILED)),
        refunded_count=Count("id", filter=Q(status=PaymentStatus.REFUNDED)),
        captured_amount_paise=Sum("amount_paise", filter=Q(status=PaymentStatus.CAPTURED), default=0),
    )
    totals["captured_amount"] = (Decimal(totals["captured_amount_paise"]) / 100).quantize(Decimal("0.01"))
    return totals


def payment_platform_captured(*, start: datetime, end: datetime, tz: tzinfo) -> dict:
    """Money captured in [start, end), every user's: `paise` (None when nothing was), `payments` (their count)
    and `by_day`, paise per day of `tz`."""
    captured = Payment.objects.filter(status=PaymentStatus.CAPTURED, paid_at__gte=start, paid_at__lt=end).order_by()
    totals = captured.aggregate(paise=Sum("amount_paise"), payments=Count("pk"))
    by_day: dict[date, int] = {
        row["day"]: row["paise"]
        for row in captured.annotate(day=TruncDate("paid_at", tzinfo=tz))
        .values("day")
        .annotate(paise=Sum("amount_paise"))
    }
    return {**totals, "by_day": by_day}
