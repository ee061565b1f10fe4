"""Platform-wide control for operators: the trading mode (live or paper), the platform kill switch, the system
status, and the operators' own alerts (a missing NSE holiday list).

The state itself and its cache live on the ground floor (`algoterm.system`), where every order reads it; the
changes are made here, each with its audit row and the other admins' notification.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from accounts.models import Notification, User
from accounts.selectors import audit_event_exists, user_platform_admins
from accounts.services import audit_record, notification_create
from algoterm.api.errors import InvalidState, ValidationFailed
from algoterm.health import platform_health
from algoterm.models import PlatformMode, PlatformState
from algoterm.realtime import ops_publish
from algoterm.system import platform_state, platform_state_forget, platform_state_lock
from brokers.selectors import sim_order_paper_tags
from marketdata import calendar as market_calendar
from orders.selectors import order_platform_live_of_real_accounts

HALT_REASON_MAX_LENGTH = 300
# How many order ids a refused mode switch names (the count is always complete).
ORDERS_NAMED = 10
HOLIDAYS_MISSING = "system.holidays_missing"
_HOLIDAYS_ALERT_LOCK_SECONDS = 60


# --- selectors ---------------------------------------------------------------------------------------------------


def _real_account_live_orders() -> tuple[list[str], list[str]]:
    """Live orders of real (non-paper) broker accounts: (those at their real brokers, those on the paper exchange).

    An order is on the paper exchange when the exchange's paper venue holds its tag (platform paper mode sent it
    there); anything else of a real account went to, or may have reached, its real broker."""
    live = order_platform_live_of_real_accounts()
    tags = {order.broker_tag: order.pk for order in live}
    on_paper = sim_order_paper_tags(tags=list(tags))
    at_brokers = [order.pk for order in live if order.broker_tag not in on_paper]
    paper_routed = [order.pk for order in live if order.broker_tag in on_paper]
    return at_brokers, paper_routed


def _named(order_ids: list[str]) -> str:
    shown = ", ".join(order_ids[:ORDERS_NAMED])
    return shown + (f" and {len(order_ids) - ORDERS_NAMED} more" if len(order_ids) > ORDERS_NAMED else "")


def state_summary(state: PlatformState) -> dict[str, Any]:
    return {
        "mode": state.mode,
        "trading_halted": state.trading_halted,
        "halt_reason": state.halt_reason,
        "changed_by": state.changed_by_id,
        "changed_at": state.changed_at,
    }


def system_status() -> dict[str, Any]:
    """What operators see: the mode, the kill switch, who changed them last, the live orders a mode switch would
    strand, and the health of each platform component."""
    at_brokers, paper_routed = _real_account_live_orders()
    return {
        **state_summary(platform_state()),
        "live_orders_at_brokers": len(at_brokers),
        "paper_routed_live_orders": len(paper_routed),
        "components": {name: asdict(component) for name, component in platform_health().items()},
    }


# --- services ----------------------------------------------------------------------------------------------------


def admins_notify(
    *, actor: User | None, title: str, body: str, level: str, data: dict[str, Any], kind: str = "system.control"
) -> None:
    """The operators hear of a platform change: all but the actor who made it, or all of them when no one did."""
    for admin in user_platform_admins(exclude=actor):
        notification_create(user=admin, kind=kind, title=title, body=body, level=level, data=data)


def system_event_publish(
    *, event: str, actor: User | None, details: dict[str, Any], state: PlatformState | None = None
) -> None:
    """Tell the operators on /ws/ops (`system` topic) after commit: what happened, who did it, and the platform's
    state now (`state` when the caller just changed it, so nothing uncommitted is read into the cache)."""
    ops_publish(
        topic="system",
        message_type="system_event",
        payload={
            "event": event,
            "actor": actor.pk if actor is not None else None,
            "actor_email": actor.email if actor is not None else None,
            "at": timezone.now(),
            **state_summary(state or platform_state()),
            **details,
        },
    )


def _save(state: PlatformState, *, actor: User) -> PlatformState:
    state.changed_by = actor
    state.changed_at = timezone.now()
    state.save()
    platform_state_forget()
    return state


@transaction.atomic
def trading_stop(*, actor: User, reason: str) -> PlatformState:
    """The platform kill switch: every new order that does not reduce a position is refused (PLATFORM_HALTED),
    whichever path it comes by; exits, protective legs and the RMS's own orders still go out. Pending orders are
    left working. Stopping a halted platform changes nothing."""
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed("Say why trading is stopped.", errors={"reason": ["This field may not be blank."]})
    if len(reason) > HALT_REASON_MAX_LENGTH:
        raise ValidationFailed(errors={"reason": [f"At most {HALT_REASON_MAX_LENGTH} characters."]})
    state = platform_state_lock()
    if state.trading_halted:
        return state
    state.trading_halted, state.halt_reason = True, reason
    _save(state, actor=actor)
    audit_record(action="system.trading_stop", actor=actor, target=state, details={"reason": reason})
    system_event_publish(event="trading_stopped", actor=actor, state=state, details={"reason": reason})
    admins_notify(
        actor=actor,
        title="Trading stopped platform-wide",
        body=f"{actor.email} stopped trading: {reason}. Only exits go out until trading is started again.",
        level=Notification.Level.WARNING,
        data={"trading_halted": True, "reason": reason},
    )
    return state


@transaction.atomic
def trading_start(*, actor: User) -> PlatformState:
    """Lift the platform kill switch. Starting a running platform changes nothing."""
    state = platform_state_lock()
    if not state.trading_halted:
        return state
    previous_reason = state.halt_reason
    state.trading_halted, state.halt_reason = False, ""
    _save(state, actor=actor)
    audit_record(action="system.trading_start", actor=actor, target=state, details={"halted_for": previous_reason})
    system_event_publish(event="trading_started", actor=actor, state=state, details={"halted_for": previous_reason})
    admins_notify(
        actor=actor,
        title="Trading started platform-wide",
        body=f"{actor.email} started trading again.",
        level=Notification.Level.INFO,
        data={"trading_halted": False},
    )
    return state


@transaction.atomic
def platform_mode_set(*, actor: User, mode: str, force: bool = False) -> PlatformState:
    """Switch the platform between live and paper. In paper mode every real account's orders, positions and
    reconciliation go to the paper broker (its own funded account on the simulated exchange).

    A switch that would strand live orders is refused (409 INVALID_STATE) unless `force`: to paper while orders of
    real accounts are still live at their brokers, to live while orders of real accounts are still open on the paper
    exchange. Setting the current mode changes nothing."""
    if mode not in PlatformMode.values:
        raise ValidationFailed(errors={"mode": [f'"{mode}" is not a valid choice.']})
    state = platform_state_lock()
    if state.mode == mode:
        return state
    at_brokers, paper_routed = _real_account_live_orders()
    if mode == PlatformMode.PAPER and at_brokers and not force:
        raise InvalidState(
            f"{len(at_brokers)} orders of real broker accounts are still live at their brokers ({_named(at_brokers)}). "
            "In paper mode those accounts' orders, cancels and reconciliation go to the paper broker, so these "
            "orders could no longer be cancelled, modified or tracked here until live mode returns (any still "
            "unconfirmed would be rejected as missing). Cancel them or let them complete first, or switch with "
            "force=true.",
            extra={"order_ids": at_brokers},
        )
    if mode == PlatformMode.LIVE and paper_routed and not force:
        raise InvalidState(
            f"{len(paper_routed)} orders of real broker accounts are still open on the paper exchange "
            f"({_named(paper_routed)}). In live mode those accounts go to their real brokers again, which never saw "
            "these orders: they could no longer be cancelled or filled here. Cancel them or let them fill first, "
            "or switch with force=true.",
            extra={"order_ids": paper_routed},
        )
    previous = state.mode
    state.mode = mode
    _save(state, actor=actor)
    stranded = at_brokers if mode == PlatformMode.PAPER else paper_routed
    audit_record(
        action="system.mode_set",
        actor=actor,
        target=state,
        details={"from": previous, "to": mode, "forced": bool(force and stranded), "stranded_orders": stranded},
    )
    system_event_publish(
        event="mode_changed",
        actor=actor,
        state=state,
        details={"from": previous, "to": mode, "forced": bool(force and stranded), "stranded_orders": stranded},
    )
    admins_notify(
        actor=actor,
        title=f"Platform switched to {mode} mode",
        body=f"{actor.email} switched the platform from {previous} to {mode}."
        + (" Every order now goes to the paper broker." if mode == PlatformMode.PAPER else ""),
        level=Notification.Level.WARNING,
        data={"mode": mode, "previous": previous, "stranded_orders": len(stranded)},
    )
    return state


def holiday_lists_alert(*, now: datetime | None = None) -> list[int]:
    """Tell every admin, once per year, that a year the market calendar needs has no NSE holiday list (the years
    `health.check_holidays` warns about): one warning notification each and one audit event `system.holidays_missing`
    per year, which is also the record that it was sent. Answers the years alerted by this call."""
    today = timezone.localdate(now or timezone.now(), timezone=market_calendar.IST)
    alerted = []
    for year in market_calendar.holiday_years_missing(today=today):
        # A task delivered twice at once must still alert once: only the run that takes the key goes on.
        lock = f"system:holidays_alert:{year}"
        if not cache.add(lock, today.isoformat(), timeout=_HOLIDAYS_ALERT_LOCK_SECONDS):
            continue
        try:
            with transaction.atomic():
                if audit_event_exists(action=HOLIDAYS_MISSING, target_id=str(year)):
                    continue
                audit_record(
                    action=HOLIDAYS_MISSING,
                    target_type="holidays",
                    target_id=str(year),
                    details={"year": year, "noticed_on": today.isoformat()},
                )
                admins_notify(
                    actor=None,
                    kind=HOLIDAYS_MISSING,
                    title=f"No NSE trading holidays for {year}",
                    body=f"The market calendar has no holiday list for {year}, so it takes every weekday of {year} "
                    "for a trading day: strategies would fire and risk sweeps run on exchange holidays. Add NSE's "
                    f"list for {year} (its circular comes out around mid-December) to the holidays configuration "
                    "section: PUT /api/config/holidays.",
                    level=Notification.Level.WARNING,
                    data={"year": year},
                )
            alerted.append(year)
        finally:
            cache.delete(lock)
    return alerted
