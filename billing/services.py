"""Every write of billing: subscriptions started, verified and cancelled through Razorpay's SDK, Razorpay's webhooks
applied once and in order, plans synced to Razorpay, and the entitlement gates other apps call."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import razorpay
import requests
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import Notification, User
from accounts.selectors import user_row_lock
from accounts.services import audit_record, notification_create
from algoterm.api.errors import AppError, ErrorCode, InvalidState, NotFound, ValidationFailed
from algoterm.counters import BILLING_WEBHOOK_REFUSED, counter_add
from algoterm.locking import row_locked, rows_locked

from . import selectors
from .models import (
    ENTITLED_STATUSES,
    FINAL_STATUSES,
    Payment,
    PaymentStatus,
    Plan,
    Subscription,
    SubscriptionStatus,
    WebhookEvent,
    WebhookOutcome,
)

logger = logging.getLogger(__name__)

# How far along a subscription is: within one second of Razorpay's clock, an event never moves it backwards.
_STATUS_RANK = {
    SubscriptionStatus.CREATED: 0,
    SubscriptionStatus.AUTHENTICATED: 1,
    SubscriptionStatus.ACTIVE: 2,
    SubscriptionStatus.PENDING: 3,
    SubscriptionStatus.PAUSED: 3,
    SubscriptionStatus.HALTED: 4,
    SubscriptionStatus.CANCELLED: 5,
    SubscriptionStatus.COMPLETED: 5,
    SubscriptionStatus.EXPIRED: 5,
}
HANDLED_EVENTS = frozenset(
    {
        "subscription.authenticated",
        "subscription.activated",
        "subscription.charged",
        "subscription.pending",
        "subscription.halted",
        "subscription.cancelled",
        "subscription.completed",
        "subscription.paused",
        "subscription.resumed",
        "subscription.updated",
        "payment.failed",
        "payment.captured",
    }
)


class PaymentProviderError(AppError):
    code = ErrorCode.SERVICE_UNAVAILABLE

    def __init__(self, detail: str = "The payment provider is unavailable; retry later.") -> None:
        super().__init__(detail)


class PlanRequired(AppError):
    code = ErrorCode.PLAN_REQUIRED


class _TimeoutSession(requests.Session):
    """The SDK sets no timeout of its own; a hung provider must not hold a request (and its row locks) forever."""

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", settings.RAZORPAY_TIMEOUT_SECONDS)
        return super().request(*args, **kwargs)


def razorpay_client() -> razorpay.Client:
    client = razorpay.Client(
        session=_TimeoutSession(),
        auth=(settings.RAZORPAY_KEY_ID, settings.RAZORPAY_KEY_SECRET),
        base_url=settings.RAZORPAY_BASE_URL,
    )
    client.set_app_details({"title": "AlgoTerm", "version": "1"})
    return client


def _provider_call(action, *args, **kwargs) -> Any:
    """One SDK call; whatever goes wrong there is the provider's trouble, told to the user as a 503."""
    try:
        return action(*args, **kwargs)
    except razorpay.errors.BadRequestError as error:
        logger.warning("razorpay refused a request: %s", error)
        raise PaymentProviderError("The payment provider refused the request; contact support.") from None
    except (razorpay.errors.ServerError, razorpay.errors.GatewayError, requests.RequestException, ValueError) as error:
        logger.warning("razorpay unavailable: %s", error)
        raise PaymentProviderError() from None


def _moment(epoch: Any) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(epoch), tz=UTC) if epoch else None
    except (TypeError, ValueError, OverflowError, OSError):  # not an epoch: no time rather than a 500
        return None


def _forget_entitlements(user_id: str) -> None:
    # Now, for this transaction's own reads; and again after commit, in case another request cached the old
    # state in between.
    selectors.entitlements_forget(user_id=user_id)
    transaction.on_commit(lambda: selectors.entitlements_forget(user_id=user_id))


# --- entitlement gates -------------------------------------------------------------------------------------------


def require_live_trading(*, user: User) -> None:
    if not selectors.entitlements_for(user=user).live_trading:
        raise PlanRequired("Live trading needs an active plan; subscribe (or renew) to trade with a broker.")


def require_broker_account_slot(*, user: User, current: int) -> None:
    limit = selectors.entitlements_for(user=user).max_broker_accounts
    if limit is not None and current >= limit:
        raise PlanRequired(f"Your plan allows {limit} broker account(s); remove one or upgrade.")


def require_running_strategy_slot(*, user: User, running: int) -> None:
    limit = selectors.entitlements_for(user=user).max_running_strategies
    if limit is not None and running >= limit:
        noun = "strategy" if limit == 1 else "strategies"
        raise PlanRequired(f"Your plan allows {limit} running {noun}; stop one or upgrade.")


def require_backtest_slot(*, user: User, active: int) -> None:
    """`active`: the user's backtests queued or running, counted under a lock on the user's row."""
    limit = selectors.entitlements_for(user=user).max_active_backtests
    if limit is not None and active >= limit:
        retry_after = settings.BACKTEST_LIMIT_RETRY_AFTER_SECONDS
        noun = "backtest" if limit == 1 else "backtests"
        raise AppError(
            f"Your plan allows {limit} {noun} queued or running at once; retry when one finishes, or upgrade.",
            code=ErrorCode.BACKTEST_LIMIT_REACHED,
            extra={"limit": limit, "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )


# --- subscribing -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartResult:
    subscription: Subscription
    checkout: dict[str, Any] | None  # what the app's Razorpay Checkout needs; None for the trial


def subscription_start(*, user: User, plan_code: str) -> StartResult:
    """The trial starts at once (once per user); a paid plan creates a Razorpay subscription the app then opens
    Checkout for (asked again before paying, the same checkout is returned). 409 while the user already has a live
    paid subscription."""
    plan = selectors.plan_get(code=plan_code)
    with transaction.atomic():
        user_row_lock(user=user)  # one start at a time per user
        if plan.is_trial:
            return StartResult(subscription=_trial_start(user=user, plan=plan), checkout=None)
        if Subscription.objects.filter(
            user=user,
            plan__is_trial=False,
            status__in=ENTITLED_STATUSES | {SubscriptionStatus.HALTED, SubscriptionStatus.PAUSED},
        ).exists():
            raise InvalidState("You already have a subscription; cancel it before starting another.")
        if not plan.razorpay_plan_id:
            raise PaymentProviderError("This plan is not set up with the payment provider yet.")
        unpaid = (
            Subscription.objects.filter(user=user, plan=plan, status=SubscriptionStatus.CREATED)
            .exclude(razorpay_subscription_id=None)
            .first()
        )
        if unpaid is not None:
            return StartResult(subscription=unpaid, checkout=_checkout(user=user, subscription=unpaid))
        remote = _provider_call(
            razorpay_client().subscription.create,
            {
                "plan_id": plan.razorpay_plan_id,
                "total_count": plan.total_count,
                "quantity": 1,
                "customer_notify": 1,
                "notes": {"user_id": user.pk, "plan": plan.code},
            },
        )
        local = Subscription.objects.create(
            user=user,
            plan=plan,
            razorpay_subscription_id=remote["id"],
            status=remote.get("status") or SubscriptionStatus.CREATED,
            short_url=remote.get("short_url") or "",
        )
        audit_record(action="billing.subscription_start", actor=user, target=local, details={"plan": plan.code})
    return StartResult(subscription=local, checkout=_checkout(user=user, subscription=local))


def _checkout(*, user: User, subscription: Subscription) -> dict[str, Any]:
    """The options Razorpay Checkout opens with on the app."""
    return {
        "key": settings.RAZORPAY_KEY_ID,
        "subscription_id": subscription.razorpay_subscription_id,
        "name": "AlgoTerm",
        "description": subscription.plan.name,
        "prefill": {"name": user.name, "email": user.email, "contact": user.phone},
        "notes": {"subscription_id": subscription.pk},
    }


def _trial_start(*, user: User, plan: Plan) -> Subscription:
    if Subscription.objects.filter(user=user, plan__is_trial=True).exists():
        raise InvalidState("The trial can be taken once.")
    now = timezone.now()
    subscription = Subscription.objects.create(
        user=user,
        plan=plan,
        status=SubscriptionStatus.ACTIVE,
        current_start=now,
        current_end=now + timedelta(days=plan.trial_days),
    )
    audit_record(action="billing.trial_start", actor=user, target=subscription, details={"days": plan.trial_days})
    _forget_entitlements(user.pk)
    return subscription


def subscription_verify(*, user: User, payment_id: str, subscription_id: str, signature: str) -> Subscription:
    """Checkout's success handler: the signature proves the payment; the subscription's state then comes from
    Razorpay itself (webhooks will say the same, in whatever order they arrive)."""
    subscription = Subscription.objects.filter(user=user, razorpay_subscription_id=subscription_id).first()
    if subscription is None:
        raise NotFound("No such subscription of yours.")
    client = razorpay_client()
    try:
        client.utility.verify_subscription_payment_signature(
            {
                "razorpay_payment_id": payment_id,
                "razorpay_subscription_id": subscription_id,
                "razorpay_signature": signature,
            }
        )
    except razorpay.errors.SignatureVerificationError:
        raise ValidationFailed(
            "The payment signature does not match.", errors={"razorpay_signature": ["Does not match the payment."]}
        ) from None
    remote = _provider_call(client.subscription.fetch, subscription_id)
    with transaction.atomic():
        locked = row_locked(Subscription.objects, pk=subscription.pk)
        _mirror(locked, remote, at=None)
        audit_record(action="billing.subscription_verify", actor=user, target=locked, details={"payment": payment_id})
    return locked


def subscription_cancel(*, user: User) -> Subscription:
    """Cancel the current subscription: a paid one at the end of the cycle already paid for, a trial now; a halted
    one (no cycle left to wait out) now, so that another plan can be started."""
    current = selectors.subscription_current(user=user)
    if current is None:
        halted = (
            Subscription.objects.filter(user=user, plan__is_trial=False, status=SubscriptionStatus.HALTED)
            .order_by("-created_at")
            .first()
        )
        if halted is None:
            raise InvalidState("You have no subscription to cancel.")
        remote = _provider_call(
            razorpay_client().subscription.cancel, halted.razorpay_subscription_id, {"cancel_at_cycle_end": 0}
        )
        with transaction.atomic():
            locked = row_locked(Subscription.objects.select_related("plan", "user"), pk=halted.pk)
            _mirror(locked, remote, at=None)
            audit_record(action="billing.subscription_cancel", actor=user, target=locked, details={"halted": True})
        return locked
    if current.plan.is_trial:
        with transaction.atomic():
            current.status = SubscriptionStatus.CANCELLED
            current.ended_at = timezone.now()
            current.save(update_fields=["status", "ended_at", "updated_at"])
            audit_record(action="billing.subscription_cancel", actor=user, target=current, details={"trial": True})
            _forget_entitlements(user.pk)
        return current
    if current.cancel_at_cycle_end:
        raise InvalidState("The subscription is already set to end with this cycle.")
    remote = _provider_call(
        razorpay_client().subscription.cancel, current.razorpay_subscription_id, {"cancel_at_cycle_end": 1}
    )
    with transaction.atomic():
        locked = row_locked(Subscription.objects, pk=current.pk)
        locked.cancel_at_cycle_end = True
        _mirror(locked, remote, at=None)
        audit_record(action="billing.subscription_cancel", actor=user, target=locked, details={"at_cycle_end": True})
    return locked


# --- mirroring Razorpay's state ------------------------------------------------------------------------------------


def _mirror(subscription: Subscription, remote: dict[str, Any], *, at: datetime | None) -> bool:
    """Copy Razorpay's view of the subscription onto ours, unless it is older than what we already applied.
    `at` is the event's time (None for a fresh fetch, which is always current). Returns whether it applied."""
    status = remote.get("status") or subscription.status
    if at is not None and subscription.last_event_at is not None:
        if at < subscription.last_event_at:
            return False
        if at == subscription.last_event_at and _STATUS_RANK.get(status, 0) < _STATUS_RANK.get(subscription.status, 0):
            return False
    previous = subscription.status
    subscription.status = status
    for name in ("current_start", "current_end", "ended_at"):
        moment = _moment(remote.get(name))
        if moment is not None:
            setattr(subscription, name, moment)
    subscription.paid_count = max(subscription.paid_count, int(remote.get("paid_count") or 0))
    subscription.razorpay_customer_id = remote.get("customer_id") or subscription.razorpay_customer_id
    if status in FINAL_STATUSES and subscription.ended_at is None:
        subscription.ended_at = at or timezone.now()
    if at is not None:
        subscription.last_event_at = at
    subscription.updated_at = timezone.now()
    subscription.save()
    if previous != status:
        _forget_entitlements(subscription.user_id)
        _notify_status(subscription, previous=previous)
    return True


_STATUS_NOTICES = {
    SubscriptionStatus.ACTIVE: ("Your {plan} plan is active", Notification.Level.INFO, ""),
    SubscriptionStatus.PENDING: (
        "A payment for your {plan} plan failed",
        Notification.Level.WARNING,
        "Razorpay will retry the card; your plan stays active meanwhile.",
    ),
    SubscriptionStatus.HALTED: (
        "Your {plan} plan is halted",
        Notification.Level.ERROR,
        "Payments kept failing. Live trading is off until you update your payment method.",
    ),
    SubscriptionStatus.CANCELLED: ("Your {plan} plan is cancelled", Notification.Level.INFO, ""),
    SubscriptionStatus.COMPLETED: ("Your {plan} plan has completed its cycles", Notification.Level.INFO, ""),
}


def _notify_status(subscription: Subscription, *, previous: str) -> None:
    notice = _STATUS_NOTICES.get(subscription.status)
    if notice is None:
        return
    title, level, body = notice
    notification_create(
        user=subscription.user,
        kind="billing",
        title=title.format(plan=subscription.plan.name),
        body=body,
        level=level,
        data={"subscription_id": subscription.pk, "status": subscription.status, "previous": previous},
    )


def _payment_record(*, subscription: Subscription, entity: dict[str, Any]) -> Payment:
    """Recorded by Razorpay's payment id, so a repeated or late event updates the same row."""
    status = entity.get("status") or PaymentStatus.CAPTURED
    payment, created = Payment.objects.get_or_create(
        razorpay_payment_id=entity["id"],
        defaults={
            "user_id": subscription.user_id,
            "subscription": subscription,
            "amount_paise": int(entity.get("amount") or 0),
            "currency": entity.get("currency") or "INR",
            "status": status,
            "method": entity.get("method") or "",
            "error_description": (entity.get("error_description") or "")[:300],
            "paid_at": _moment(entity.get("created_at")) or timezone.now(),
        },
    )
    # A capture is final: a late "failed" for the same payment never overwrites it.
    if not created and payment.status != PaymentStatus.CAPTURED and status == PaymentStatus.CAPTURED:
        payment.status = status
        payment.save(update_fields=["status"])
    if created and status == PaymentStatus.FAILED:
        notification_create(
            user=subscription.user,
            kind="billing",
            title=f"A payment of ₹{payment.amount_paise / 100:,.2f} failed",
            body=payment.error_description,
            level=Notification.Level.WARNING,
            data={"payment_id": payment.pk, "subscription_id": subscription.pk},
        )
    return payment


# --- webhooks ----------------------------------------------------------------------------------------------------


def webhook_receive(*, body: bytes, signature: str, event_id: str) -> WebhookEvent:
    """Verify the signature on the raw body, then apply the event once: a repeat (same event id) is answered with
    the first outcome and changes nothing; an event older than what a subscription shows updates no state."""
    try:
        text = body.decode("utf-8")
        razorpay_client().utility.verify_webhook_signature(text, signature, settings.RAZORPAY_WEBHOOK_SECRET)
    except (razorpay.errors.SignatureVerificationError, UnicodeDecodeError, ValueError, TypeError):
        counter_add(name=BILLING_WEBHOOK_REFUSED)  # many of these: the webhook secret is wrong, payments go unseen
        raise ValidationFailed(
            "The webhook signature does not match its body.", errors={"signature": ["Does not match the body."]}
        ) from None
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        # Signed, so Razorpay's: say what is wrong with it rather than blame the signature.
        raise ValidationFailed("The webhook body is not a JSON object.", errors={"body": ["Not a JSON object."]})
    if not event_id or len(event_id) > 64:  # kept as sent when it fits the column, else by its digest
        event_id = hashlib.sha256((event_id or "").encode() + body).hexdigest()
    event_name = str(payload.get("event") or "")
    try:
        with transaction.atomic():
            event = WebhookEvent.objects.create(
                event_id=event_id,
                event=event_name[:40],
                payload=payload,
                outcome=WebhookOutcome.IGNORED,
                event_created_at=_moment(payload.get("created_at")),
            )
            outcome, detail = _webhook_apply(payload)
            event.outcome, event.detail = outcome, detail[:300]
            event.save(update_fields=["outcome", "detail"])
    except IntegrityError:
        return WebhookEvent.objects.get(event_id=event_id)
    return event


def _entity(payload: dict[str, Any], name: str) -> dict[str, Any] | None:
    entities = payload.get("payload")
    wrapper = entities.get(name) if isinstance(entities, dict) else None
    entity = wrapper.get("entity") if isinstance(wrapper, dict) else None
    return entity if isinstance(entity, dict) and isinstance(entity.get("id"), str) and entity["id"] else None


def _subscription_of_event(*, remote: dict | None, payment: dict | None) -> Subscription | None:
    """The event's subscription, locked: named by the event, else (a payment event alone, as `payment.failed`
    comes) the payer's newest subscription that is not over."""
    subscriptions = Subscription.objects.select_related("plan", "user")
    razorpay_id = (remote or {}).get("id") or (payment or {}).get("subscription_id")
    if razorpay_id:
        return rows_locked(subscriptions.filter(razorpay_subscription_id=razorpay_id)).first()
    customer_id = (payment or {}).get("customer_id")
    if not customer_id:
        return None
    not_over = subscriptions.filter(razorpay_customer_id=customer_id).exclude(status__in=FINAL_STATUSES)
    newest = not_over.order_by("-created_at").values_list("pk", flat=True).first()
    # Locked with the filter again: one that ended while we waited for its lock is not over any more.
    return rows_locked(not_over.filter(pk=newest)).first() if newest is not None else None


def _webhook_apply(payload: dict[str, Any]) -> tuple[str, str]:
    event_name = str(payload.get("event") or "")
    if event_name not in HANDLED_EVENTS:
        return WebhookOutcome.IGNORED, f"{event_name} is not acted on"
    remote = _entity(payload, "subscription")
    payment = _entity(payload, "payment")
    subscription = _subscription_of_event(remote=remote, payment=payment)
    if subscription is None:
        named = (remote or {}).get("id") or (payment or {}).get("id") or "(none named)"
        return WebhookOutcome.IGNORED, f"no subscription of ours for {named}"
    if payment is not None:
        _payment_record(subscription=subscription, entity=payment)
    applied = True
    if remote is not None:
        applied = _mirror(subscription, remote, at=_moment(payload.get("created_at")))
    audit_record(
        action=f"billing.{event_name.replace('.', '_')}",
        actor=None,
        target=subscription,
        details={"status": subscription.status, "applied": applied, "payment": (payment or {}).get("id")},
    )
    if not applied:
        return WebhookOutcome.STALE, f"older than the subscription's last event; now {subscription.status}"
    return WebhookOutcome.APPLIED, f"{subscription.pk} is {subscription.status}"


# --- housekeeping ------------------------------------------------------------------------------------------------


def trials_expire(*, now: datetime | None = None) -> int:
    """Trials past their end become `expired` (their access already ended at `current_end`)."""
    now = now or timezone.now()
    ended = list(
        Subscription.objects.filter(
            plan__is_trial=True, status=SubscriptionStatus.ACTIVE, current_end__lte=now
        ).values_list("pk", "user_id")
    )
    for subscription_id, user_id in ended:
        with transaction.atomic():
            subscription = row_locked(Subscription.objects.select_related("plan", "user"), pk=subscription_id)
            if subscription.status != SubscriptionStatus.ACTIVE:
                continue
            subscription.status = SubscriptionStatus.EXPIRED
            subscription.ended_at = subscription.current_end
            subscription.save(update_fields=["status", "ended_at", "updated_at"])
            audit_record(action="billing.trial_expire", actor=None, target=subscription)
            notification_create(
                user=subscription.user,
                kind="billing",
                title="Your trial has ended",
                body="Subscribe to keep trading live and running strategies.",
                level=Notification.Level.WARNING,
                data={"subscription_id": subscription.pk},
            )
            _forget_entitlements(user_id)
    return len(ended)


# --- plans at Razorpay ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanSync:
    code: str
    razorpay_plan_id: str
    action: str  # created, found, kept


def plans_sync(*, progress=None) -> list[PlanSync]:
    """Every active paid plan gets a Razorpay plan, once: a plan already linked is kept, one Razorpay already has
    (found by our code in its notes, same price and period) is linked, otherwise it is created."""
    client = razorpay_client()
    remote_plans = _provider_call(client.plan.all, {"count": 100}).get("items", [])
    results = []
    for plan in Plan.objects.filter(is_active=True, is_trial=False):
        # Razorpay's plans cannot change: a linked plan whose price or period was changed here needs a new one.
        if plan.razorpay_plan_id and any(
            item["id"] == plan.razorpay_plan_id and _same_plan(item, plan) for item in remote_plans
        ):
            results.append(PlanSync(plan.code, plan.razorpay_plan_id, "kept"))
        else:
            match = next((item for item in remote_plans if _same_plan(item, plan)), None)
            if match is None:
                match = _provider_call(
                    client.plan.create,
                    {
                        "period": plan.period,
                        "interval": plan.interval,
                        "item": {
                            "name": plan.name,
                            "amount": plan.price_paise,
                            "currency": "INR",
                            "description": plan.description or plan.name,
                        },
                        "notes": {"algoterm_plan": plan.code},
                    },
                )
                action = "created"
            else:
                action = "found"
            plan.razorpay_plan_id = match["id"]
            plan.save(update_fields=["razorpay_plan_id"])
            audit_record(action="billing.plan_sync", actor=None, target=plan, details={"razorpay": match["id"]})
            results.append(PlanSync(plan.code, match["id"], action))
        if progress is not None:
            progress(plan.code)
    return results


def _same_plan(item: dict[str, Any], plan: Plan) -> bool:
    return (
        (item.get("notes") or {}).get("algoterm_plan") == plan.code
        and int((item.get("item") or {}).get("amount") or 0) == plan.price_paise
        and item.get("period") == plan.period
        and int(item.get("interval") or 0) == plan.interval
    )
