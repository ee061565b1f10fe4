"""Risk management: pre-trade checks, the MTM monitor, breaches and square-off, kill switches.

The sweep evaluates every user with positions today in one set-based pass (two queries, one quote fetch, numpy
sums); a breach is handled once per user and day under the state row's lock, and a square-off a dead worker left
half-done is resumed by the next sweep.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from django.db import transaction
from django.utils import timezone

from accounts.models import Notification, User
from accounts.services import audit_record, notification_create
from algoterm import realtime
from algoterm.api.errors import AppError, RiskRejected, ValidationFailed
from brokers.adapters.base import MARGIN_RATE, BrokerError, Product
from brokers.models import BrokerAccount
from rms.models import (
    MONEY_FIELDS,
    MTM_RULES,
    CeilingFields,
    PlatformRiskCeiling,
    RiskProfile,
    RmsEvent,
    RmsState,
    TradingState,
    UserRiskCeiling,
    default_limits,
)

logger = logging.getLogger(__name__)
IST = ZoneInfo("Asia/Kolkata")
PAISE = Decimal("0.01")


class Reason:
    PLATFORM_HALTED = "PLATFORM_HALTED"  # an operator stopped trading platform-wide (algoterm.system)
    TRADING_HALTED = "TRADING_HALTED"
    OUTSIDE_TRADING_WINDOW = "OUTSIDE_TRADING_WINDOW"
    MAX_LOTS_EXCEEDED = "MAX_LOTS_EXCEEDED"
    MAX_ORDER_VALUE_EXCEEDED = "MAX_ORDER_VALUE_EXCEEDED"
    MAX_OPEN_POSITIONS = "MAX_OPEN_POSITIONS"
    MAX_ORDERS_PER_DAY = "MAX_ORDERS_PER_DAY"
    DAILY_LOSS_LIMIT_HIT = "DAILY_LOSS_LIMIT_HIT"
    REDUCE_ONLY = "REDUCE_ONLY"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    PRODUCT_NOT_ALLOWED = "PRODUCT_NOT_ALLOWED"
    SEGMENT_NOT_ALLOWED = "SEGMENT_NOT_ALLOWED"
    USER_DEACTIVATED = "USER_DEACTIVATED"  # the owner's account was deactivated
    ROLE_CANNOT_TRADE = "ROLE_CANNOT_TRADE"  # the owner's role is view-only
    EXIT_EXCEEDS_POSITION = "EXIT_EXCEEDS_POSITION"  # an exit grown past the position it closes would open another
    # breaches
    DAILY_PROFIT_TARGET_HIT = "DAILY_PROFIT_TARGET_HIT"
    PROFIT_LOCK_HIT = "PROFIT_LOCK_HIT"
    AUTO_SQUARE_OFF = "AUTO_SQUARE_OFF"
    OPERATOR_HALT = "OPERATOR_HALT"


# What each breach leaves the user able to do for the rest of the day.
STATE_AFTER = {
    Reason.DAILY_LOSS_LIMIT_HIT: TradingState.HALTED,
    Reason.DAILY_PROFIT_TARGET_HIT: TradingState.REDUCING,
    Reason.PROFIT_LOCK_HIT: TradingState.REDUCING,
    Reason.OPERATOR_HALT: TradingState.HALTED,
}
SEVERITY = {TradingState.NORMAL: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}
# Longer than a square-off takes; a worker that dies holding the claim delays the resumption this long at most.
SQUARE_OFF_CLAIM_SECONDS = 120


def trading_day(at: datetime | None = None) -> date:
    return timezone.localtime(at or timezone.now(), IST).date()


# --- profiles ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """A user's effective limits for one account: the account's overrides over the user's profile, bounded by the
    operator's ceilings (the platform's and the user's own)."""

    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


PROFILE_FIELDS = (
    *MONEY_FIELDS,
    "max_lots_per_order",
    "max_open_positions",
    "max_orders_per_day",
    "allowed_products",
    "allowed_segments",
    "trading_window_start",
    "trading_window_end",
    "auto_square_off_time",
    "kill_switch",
)
# Lower (for a time: earlier) is tighter; empty sets no limit.
CAP_FIELDS = (
    "max_daily_loss",
    "max_lots_per_order",
    "max_order_value",
    "max_open_positions",
    "max_orders_per_day",
    "auto_square_off_time",
)
LIST_FIELDS = ("allowed_products", "allowed_segments")  # fewer is tighter; empty allows all
WINDOW_FIELDS = ("trading_window_start", "trading_window_end")  # narrower is tighter; empty is no window
CEILING_FIELDS = (*CAP_FIELDS, *LIST_FIELDS, *WINDOW_FIELDS, "kill_switch")
# The settings that change together: a unit that loosens mid-session waits for the next trading day as a whole, so
# what is in force and what waits are each consistent. The profit rules only ever take profit early: no waiting.
CHANGE_UNITS: tuple[tuple[str, ...], ...] = (
    ("max_daily_loss",),
    ("max_lots_per_order",),
    ("max_order_value",),
    ("max_open_positions",),
    ("max_orders_per_day",),
    ("allowed_products",),
    ("allowed_segments",),
    ("trading_window_start", "trading_window_end", "auto_square_off_time"),
    ("kill_switch",),
)


def profile_get_or_create(*, user: User) -> RiskProfile:
    profile = RiskProfile.objects.filter(user=user, account__isnull=True).first()
    if profile is None:
        profile, _ = RiskProfile.objects.get_or_create(user=user, account=None, defaults=default_limits())
    return profile


# --- ceilings ----------------------------------------------------------------------------------------------------


def platform_ceiling_get() -> PlatformRiskCeiling:
    ceiling = PlatformRiskCeiling.objects.first()
    if ceiling is None:
        ceiling, _ = PlatformRiskCeiling.objects.get_or_create(pk=1)
    return ceiling


def _ceiling_values(row: CeilingFields | None) -> dict[str, Any]:
    if row is None:
        return {
            name: ([] if name in LIST_FIELDS else False if name == "kill_switch" else None) for name in CEILING_FIELDS
        }
    return {name: getattr(row, name) for name in CEILING_FIELDS}


def _tightest(name: str, values: list[Any]) -> Any:
    """The tightest of several settings of one limit (empty ones set no bound)."""
    if name == "kill_switch":
        return any(values)
    if name in CAP_FIELDS:
        present = [value for value in values if value is not None]
        return min(present) if present else None
    if name in LIST_FIELDS:
        lists = [list(value) for value in values if value]
        if not lists:
            return []
        kept = set(lists[0]).intersection(*lists[1:])
        return [value for value in lists[0] if value in kept]
    raise ValueError(name)


def _window(values: dict[str, Any]) -> tuple[time, time] | None:
    start, end = values.get("trading_window_start"), values.get("trading_window_end")
    return (start, end) if start is not None and end is not None else None


def _bound(own: dict[str, Any], *ceilings: dict[str, Any]) -> dict[str, Any]:
    """`own` (the user's limits) bounded by every ceiling, field by field."""
    bounded = dict(own)
    layers = [own, *ceilings]
    for name in (*CAP_FIELDS, *LIST_FIELDS, "kill_switch"):
        bounded[name] = _tightest(name, [layer.get(name) for layer in layers])
    windows = [window for window in (_window(layer) for layer in layers) if window is not None]
    if windows:
        bounded["trading_window_start"] = max(start for start, _ in windows)
        bounded["trading_window_end"] = min(end for _, end in windows)
    for name in LIST_FIELDS:
        # Bounds that share no product (or segment) leave nothing to trade: that is a stop, said as one.
        if not bounded[name] and any(layer.get(name) for layer in layers):
            bounded["kill_switch"] = True
    return bounded


def ceilings_for(*, user: User) -> dict[str, Any]:
    """The ceilings on the user's limits: the platform's and the user's own, combined (the tightest of both), with
    the operators' notes on why."""
    rows = [PlatformRiskCeiling.objects.first(), UserRiskCeiling.objects.filter(user=user).first()]
    combined = _bound(*(_ceiling_values(row) for row in rows))
    return {
        **{name: combined[name] for name in CEILING_FIELDS},
        "notes": [row.note for row in rows if row and row.note],
    }


def _ceiling_field_errors(
    *, data: dict[str, Any], previous: dict[str, Any], desired: dict[str, Any], ceilings: dict[str, Any]
) -> dict[str, list[str]]:
    """A user's changes beyond a ceiling, by field. A value left as it was is not refused (a client that sends its
    whole form must not be blocked by a ceiling lowered since), and empty means "no limit of my own": the ceiling
    then applies."""
    errors: dict[str, list[str]] = {}
    changed = {name for name in data if name in CEILING_FIELDS and data[name] != previous.get(name)}
    for name in changed & set(CAP_FIELDS):
        value, ceiling = data[name], ceilings[name]
        if value is not None and ceiling is not None and value > ceiling:
            shown = f"at the latest {ceiling:%H:%M}" if isinstance(ceiling, time) else f"at most {ceiling}"
            errors[name] = [f"Must be {shown}, the ceiling your operator set."]
    for name in changed & set(LIST_FIELDS):
        beyond = sorted(set(data[name] or ()) - set(ceilings[name])) if ceilings[name] else []
        if beyond:
            errors[name] = [f"{', '.join(beyond)} not allowed: your operator allows only {', '.join(ceilings[name])}."]
    ceiling_window, window = _window(ceilings), _window(desired)
    if ceiling_window and window and changed & set(WINDOW_FIELDS):
        start, end = ceiling_window
        if window[0] < start and "trading_window_start" in changed:
            errors["trading_window_start"] = [f"At the earliest {start:%H:%M}: the window your operator set."]
        if window[1] > end and "trading_window_end" in changed:
            errors["trading_window_end"] = [f"At the latest {end:%H:%M}: the window your operator set."]
    if "kill_switch" in changed and ceilings["kill_switch"] and not data["kill_switch"]:
        errors["kill_switch"] = ["Your operator has stopped trading for your account; only they can lift it."]
    return errors


def ceiling_validate(values: dict[str, Any]) -> dict[str, list[str]]:
    """Field errors of an inconsistent ceiling (the values as they would be saved)."""
    errors = profile_validate({name: value for name, value in values.items() if name in PROFILE_FIELDS})
    errors.pop("auto_square_off_time", None)  # the latest square-off time need not fall inside a window
    return errors


def _ceiling_update(*, actor: User, row: CeilingFields, data: dict[str, Any], scope: str, target: User | None):
    """Store a ceiling's changed fields, audited; the effective limits follow at once (they are computed on read)."""
    unknown = set(data) - {*CEILING_FIELDS, "note"}
    if unknown:
        raise ValidationFailed("Unknown ceiling fields.", errors={name: ["Unknown field."] for name in unknown})
    errors = ceiling_validate({name: getattr(row, name) for name in CEILING_FIELDS} | data)
    if errors:
        raise ValidationFailed("These ceilings are inconsistent.", errors=errors)
    before = {name: getattr(row, name) for name in data}
    for name, value in data.items():
        setattr(row, name, value)
    row.updated_by, row.updated_at = actor, timezone.now()
    row.save()
    changed = {
        name: {"from": _jsonable(before[name]), "to": _jsonable(data[name])}
        for name in data
        if before[name] != data[name]
    }
    if changed:
        audit_record(
            action="rms.ceiling",
            actor=actor,
            target=target,
            target_type="user" if target is not None else "rms_ceiling",
            target_id=str(target.pk) if target is not None else scope,
            details={"scope": scope, "changes": changed},
        )
    return row


@transaction.atomic
def platform_ceiling_update(*, actor: User, data: dict[str, Any]) -> PlatformRiskCeiling:
    """An operator sets the platform-wide ceiling on every user's limits."""
    row = PlatformRiskCeiling.objects.select_for_update().get(pk=platform_ceiling_get().pk)
    return _ceiling_update(actor=actor, row=row, data=data, scope="platform", target=None)


@transaction.atomic
def user_ceiling_update(*, actor: User, user: User, data: dict[str, Any]) -> UserRiskCeiling:
    """An operator sets one user's ceiling, inside the platform's (the tightest of both applies)."""
    UserRiskCeiling.objects.get_or_create(user=user)
    row = UserRiskCeiling.objects.select_for_update().get(user=user)
    return _ceiling_update(actor=actor, row=row, data=data, scope="user", target=user)


# --- effective limits and pending changes ------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, time):
        return value.isoformat()
    return value


def _pending_values(profile: RiskProfile) -> dict[str, Any]:
    """The profile's pending changes as model values."""
    return {
        name: RiskProfile._meta.get_field(name).to_python(value)
        for name, value in (profile.pending_changes or {}).items()
        if name in PROFILE_FIELDS
    }


def trading_started(*, user: User, now: datetime | None = None) -> bool:
    """Trading has started for the day once the market's pre-open order entry began on a trading day, or the user
    placed an order today (an after-market order counts)."""
    from marketdata.calendar import session_bounds
    from orders.selectors import orders_placed_on

    now = now or timezone.now()
    bounds = session_bounds(trading_day(now))
    if bounds is not None and now >= bounds.pre_open_start:
        return True
    return orders_placed_on(user=user, day=trading_day(now)) > 0


def _next_trading_day(now: datetime) -> date:
    from marketdata.calendar import next_trading_day

    return next_trading_day(trading_day(now))


def _pending_apply(*, profile: RiskProfile, day: date) -> RiskProfile:
    """Put the profile's pending changes in force once their day has come (locked; audited)."""
    with transaction.atomic():
        profile = RiskProfile.objects.select_for_update().get(pk=profile.pk)
        if profile.pending_from is None or profile.pending_from > day:
            return profile
        applied = _pending_values(profile)
        for name, value in applied.items():
            setattr(profile, name, value)
        profile.pending_changes, profile.pending_from = {}, None
        profile.updated_at = timezone.now()
        profile.save()
        details = {"account_id": profile.account_id, "applied": {k: _jsonable(v) for k, v in applied.items()}}
        RmsEvent.objects.create(user_id=profile.user_id, kind=RmsEvent.Kind.CONFIG, details=details)
        audit_record(
            action="rms.config.pending_applied",
            actor=None,
            target_type="user",
            target_id=profile.user_id,
            details=details,
        )
    return profile


def _in_force(profile: RiskProfile | None, *, day: date) -> RiskProfile | None:
    if profile is not None and profile.pending_from is not None and profile.pending_from <= day:
        return _pending_apply(profile=profile, day=day)
    return profile


def profiles_in_force(*, user: User, now: datetime | None = None) -> tuple[RiskProfile, list[RiskProfile]]:
    """The user's profile and their live accounts' overrides, pending changes whose day has come applied."""
    day = trading_day(now)
    base = _in_force(profile_get_or_create(user=user), day=day)
    overrides = (
        RiskProfile.objects.filter(user=user, account__isnull=False, account__deleted_at__isnull=True)
        .select_related("account")
        .order_by("account__created_at", "account_id")
    )
    return base, [_in_force(override, day=day) for override in overrides]


def pending_view(profile: RiskProfile) -> dict[str, Any] | None:
    """What waits for the next trading day on this profile, said for the user."""
    if not profile.pending_from:
        return None
    return {
        "changes": _pending_values(profile),
        "effective_from": profile.pending_from,
        "message": "Trading has started today, so these changes that loosen your limits take effect on "
        f"{profile.pending_from:%Y-%m-%d}, the next trading day. Tightening takes effect at once.",
    }


def _own_values(base: RiskProfile, override: RiskProfile | None) -> dict[str, Any]:
    """The user's own limits for one account: the account's overrides over the profile."""
    values = {name: getattr(base, name) for name in PROFILE_FIELDS}
    if override is not None:
        for name in PROFILE_FIELDS:
            value = getattr(override, name)
            if name == "kill_switch":
                values[name] = values[name] or value
            elif name not in MTM_RULES and value not in (None, []):
                values[name] = value
    return values


def limits_for(*, user: User, account: BrokerAccount | None = None, now: datetime | None = None) -> Limits:
    """The limits in force now: the user's own (pending changes whose day has come applied first) bounded by the
    operator's ceilings."""
    day = trading_day(now)
    base = _in_force(profile_get_or_create(user=user), day=day)
    override = None
    if account is not None:
        override = _in_force(RiskProfile.objects.filter(user=user, account=account).first(), day=day)
    ceilings = ceilings_for(user=user)
    values = _bound(_own_values(base, override), ceilings)
    return Limits({name: values[name] for name in PROFILE_FIELDS})


def limits_by_user(*, user_ids: list[str], day: date) -> dict[str, dict[str, Any]]:
    """`limits_for` (profile level) of many users at once, for the sweep: a few queries, whatever their number."""
    profiles = {
        profile.user_id: profile for profile in RiskProfile.objects.filter(account__isnull=True, user_id__in=user_ids)
    }
    personal = {row.user_id: _ceiling_values(row) for row in UserRiskCeiling.objects.filter(user_id__in=user_ids)}
    platform = _ceiling_values(PlatformRiskCeiling.objects.first())
    defaults = default_limits()
    empty = _ceiling_values(None)
    result = {}
    for user_id in user_ids:
        profile = _in_force(profiles.get(user_id), day=day)
        own = (
            {name: getattr(profile, name) for name in PROFILE_FIELDS}
            if profile is not None
            else {
                name: defaults.get(name, [] if name in LIST_FIELDS else False if name == "kill_switch" else None)
                for name in PROFILE_FIELDS
            }
        )
        result[user_id] = {"user_id": user_id, **_bound(own, platform, personal.get(user_id, empty))}
    return result


def _looser(unit: tuple[str, ...], before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether `after` allows more than `before` in any of the unit's settings."""
    for name in unit:
        old, new = before.get(name), after.get(name)
        if name == "kill_switch" and old and not new:
            return True
        if name in CAP_FIELDS and old is not None and (new is None or new > old):
            return True
        if name in LIST_FIELDS and old and (not new or set(new) - set(old)):
            return True
    if WINDOW_FIELDS[0] in unit:
        old_window, new_window = _window(before), _window(after)
        if old_window and (new_window is None or new_window[0] < old_window[0] or new_window[1] > old_window[1]):
            return True
    return False


def profile_validate(data: dict[str, Any]) -> dict[str, list[str]]:
    """Field errors of an inconsistent profile (the values as they would be saved)."""
    errors: dict[str, list[str]] = {}

    def add(name: str, message: str) -> None:
        errors.setdefault(name, []).append(message)

    for name in (*MONEY_FIELDS, "max_lots_per_order", "max_open_positions", "max_orders_per_day"):
        value = data.get(name)
        if value is not None and value <= 0:
            add(name, "Must be positive; leave it empty to turn the rule off.")
    lock_at, lock_amount = data.get("profit_lock_at"), data.get("profit_lock_amount")
    if (lock_at is None) != (lock_amount is None):
        add("profit_lock_amount" if lock_amount is None else "profit_lock_at", "Profit lock needs both fields.")
    if lock_at is not None and lock_amount is not None and lock_amount >= lock_at:
        add("profit_lock_amount", "The locked profit must be less than the MTM that locks it.")
    every, step = data.get("trailing_profit_every"), data.get("trailing_profit_step")
    if (every is None) != (step is None):
        add("trailing_profit_step" if step is None else "trailing_profit_every", "Trailing profit needs both fields.")
    if every is not None and lock_at is None:
        add("trailing_profit_every", "Trailing profit raises a profit lock; set profit_lock_at first.")
    if every is not None and step is not None and step > every:
        add("trailing_profit_step", "The lock cannot rise by more than the MTM gained.")
    target = data.get("daily_profit_target")
    if target is not None and lock_at is not None and lock_at >= target:
        add("profit_lock_at", "The profit lock must start below the daily profit target.")
    start, end = data.get("trading_window_start"), data.get("trading_window_end")
    if (start is None) != (end is None):
        add("trading_window_end" if end is None else "trading_window_start", "A trading window needs both ends.")
    if start is not None and end is not None and start >= end:
        add("trading_window_end", "Must be after the start.")
    square_off = data.get("auto_square_off_time")
    if square_off is not None and start is not None and end is not None and not start < square_off <= end:
        add("auto_square_off_time", "Must fall inside the trading window.")
    for name, allowed in (("allowed_products", {"MIS", "CNC", "NRML"}), ("allowed_segments", None)):
        values = data.get(name) or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            add(name, "Must be a list of names.")
        elif allowed is not None and set(values) - allowed:
            add(name, f"Unknown: {', '.join(sorted(set(values) - allowed))}.")
    return errors


@transaction.atomic
def profile_update(
    *,
    actor: User,
    user: User,
    data: dict[str, Any],
    account: BrokerAccount | None = None,
    now: datetime | None = None,
) -> RiskProfile:
    """Change the user's limits (or one account's overrides); inconsistent settings are refused field by field.

    A user's change beyond an operator's ceiling is refused (400 naming the field and the ceiling). Once trading
    has started for the day, a user's loosening (a higher limit, a wider window, more products, the kill switch
    off) is kept as pending and takes effect on the next trading day; tightening applies at once. An operator's
    edit applies at once."""
    now = now or timezone.now()
    day = trading_day(now)
    base = _in_force(profile_get_or_create(user=user), day=day)
    profile = base
    user_wide = [name for name in MTM_RULES if data.get(name) is not None]
    if account is not None and user_wide:
        raise ValidationFailed(
            "MTM rules watch all your accounts together; set them on your profile, not on one account.",
            errors={name: ["Set this on your profile (without account_id)."] for name in user_wide},
        )
    if account is not None:
        profile, _ = RiskProfile.objects.get_or_create(user=user, account=account)
    profile = RiskProfile.objects.select_for_update().get(pk=_in_force(profile, day=day).pk)
    stored = {name: getattr(profile, name) for name in PROFILE_FIELDS}
    pending = _pending_values(profile)
    previous = stored | pending
    desired = previous | data
    merged = desired
    if account is not None:  # an override is judged with what it inherits
        merged = {name: (value if value not in (None, []) else getattr(base, name)) for name, value in desired.items()}
    errors = profile_validate(merged)
    by_user = actor.pk == user.pk
    if by_user:
        ceilings = ceilings_for(user=user)
        for name, problems in _ceiling_field_errors(
            data=data, previous=previous, desired=merged, ceilings=ceilings
        ).items():
            errors.setdefault(name, []).extend(problems)
    if errors:
        raise ValidationFailed("These risk settings are inconsistent or beyond your ceilings.", errors=errors)

    wait = by_user and trading_started(user=user, now=now)

    def resolve(values: dict[str, Any]) -> dict[str, Any]:
        """What the values mean in force: an override's empty fields are the profile's."""
        if account is None:
            return values
        return {name: (value if value not in (None, []) else getattr(base, name)) for name, value in values.items()}

    in_force, waiting = dict(stored), dict(pending)
    touched_units = [unit for unit in CHANGE_UNITS if set(unit) & set(data)]
    for unit in touched_units:
        target = {name: desired[name] for name in unit}
        for name in unit:
            waiting.pop(name, None)
        if wait and _looser(unit, resolve(stored), resolve(stored | target)):
            waiting.update(target)
        else:
            in_force.update(target)
    for name in set(data) - {name for unit in CHANGE_UNITS for name in unit}:
        in_force[name] = data[name]
        waiting.pop(name, None)

    for name, value in in_force.items():
        setattr(profile, name, value)
    profile.pending_changes = {name: _jsonable(value) for name, value in waiting.items()}
    if not waiting:
        profile.pending_from = None
    elif waiting != pending or profile.pending_from is None:
        profile.pending_from = _next_trading_day(now)
    profile.updated_at = timezone.now()
    profile.save()
    changed = {name: str(in_force[name]) for name in PROFILE_FIELDS if stored[name] != in_force[name]}
    if changed or waiting != pending:
        details = {**changed}
        if waiting != pending:
            details["pending"] = {name: _jsonable(value) for name, value in waiting.items()}
            details["pending_from"] = profile.pending_from and profile.pending_from.isoformat()
        RmsEvent.objects.create(user=user, kind=RmsEvent.Kind.CONFIG, actor=actor, details=details)
        audit_record(
            action="rms.config", actor=actor, target=user, details={"account_id": account and account.pk, **details}
        )
    return profile


# --- state -------------------------------------------------------------------------------------------------------


def state_today(*, user_id: str, day: date | None = None, lock: bool = False) -> RmsState:
    day = day or trading_day()
    state, _ = RmsState.objects.get_or_create(user_id=user_id, trading_day=day)
    if lock:
        state = RmsState.objects.select_for_update().get(pk=state.pk)
    return state


# --- pre-trade ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderIntent:
    """What the pre-trade check sees of an order about to be placed, or of a working order as a modification
    would leave it (`new_order` False: it is not another order of the day, and it needs margin only for
    `margin_value`, what the modification adds)."""

    account: BrokerAccount
    symbol: str
    side: str
    quantity: int
    lot_size: int
    order_type: str
    product: str
    reference_price: Decimal
    reduces_position: bool
    source: str
    new_order: bool = True
    margin_value: Decimal | None = None


def _refuse(reason: str, detail: str) -> None:
    raise RiskRejected(detail, reason=reason)


def _check_may_trade(user: User) -> None:
    """The owner as stored now, not as a caller loaded them: a strategy or webhook may act for a user deactivated
    or demoted a moment ago."""
    current = User.objects.filter(pk=user.pk).values("is_active", "role").first() or {"is_active": False}
    if not current["is_active"]:
        _refuse(Reason.USER_DEACTIVATED, "The account is deactivated; new orders are refused. Exits still go out.")
    if not User(role=current["role"]).can_trade:
        _refuse(Reason.ROLE_CANNOT_TRADE, "The account is view-only; new orders are refused. Exits still go out.")


def _check_not_halted(*, limits: Limits, state: RmsState | None) -> None:
    from algoterm.system import platform_state

    platform = platform_state()
    if platform.trading_halted:
        _refuse(
            Reason.PLATFORM_HALTED,
            f"Trading is stopped platform-wide ({platform.halt_reason}); new orders are refused and working orders "
            "cannot grow. Exits are still allowed.",
        )
    if limits.kill_switch or (state is not None and state.status == TradingState.HALTED):
        why = "your kill switch is on" if limits.kill_switch else f"trading is halted today ({state.reason})"
        _refuse(
            Reason.TRADING_HALTED,
            f"New orders are refused and working orders cannot grow: {why}. Exits are still allowed.",
        )


def check_order(*, user: User, intent: OrderIntent, now: datetime | None = None) -> None:
    """The risk gate: raise `RiskRejected` (422 RISK_REJECTED with `reason`) when the order, as it will stand,
    breaks a rule. Every path that adds exposure comes here: placing (API, bulk, strategies, webhooks, re-entries)
    and modifications that grow an order.

    Exits (orders that only reduce a position) pass every rule but the exchange's own: a risk engine must never
    stand between a trader and closing a position, whoever the owner is now. Growing a working exit is still
    growth: the kill switch and a halt refuse it. The RMS's own orders always pass.
    """
    if intent.source == "rms":
        return
    if intent.reduces_position and intent.new_order:
        return
    now = now or timezone.now()
    limits = limits_for(user=user, account=intent.account)
    state = RmsState.objects.filter(user=user, trading_day=trading_day(now)).first()
    status = state.status if state else TradingState.NORMAL
    if intent.reduces_position:
        _check_not_halted(limits=limits, state=state)
        return
    _check_may_trade(user)
    _check_not_halted(limits=limits, state=state)
    if status == TradingState.REDUCING:
        _refuse(Reason.REDUCE_ONLY, f"Only exits are allowed for the rest of the day ({state.reason}).")
    local = timezone.localtime(now, IST).time()
    if limits.trading_window_start and not limits.trading_window_start <= local <= limits.trading_window_end:
        _refuse(
            Reason.OUTSIDE_TRADING_WINDOW,
            f"Your trading window is {limits.trading_window_start:%H:%M}-{limits.trading_window_end:%H:%M} IST.",
        )
    if intent.product == "MIS" and limits.auto_square_off_time and local >= limits.auto_square_off_time:
        _refuse(
            Reason.OUTSIDE_TRADING_WINDOW,
            f"Intraday positions are squared off at {limits.auto_square_off_time:%H:%M} IST; no new MIS orders now.",
        )
    if limits.allowed_products and intent.product not in limits.allowed_products:
        _refuse(Reason.PRODUCT_NOT_ALLOWED, f"{intent.product} is not among your allowed products.")
    exchange = intent.symbol.split(":", 1)[0]
    if limits.allowed_segments and exchange not in limits.allowed_segments:
        _refuse(Reason.SEGMENT_NOT_ALLOWED, f"{exchange} is not among your allowed segments.")
    lots = intent.quantity // max(intent.lot_size, 1)
    if limits.max_lots_per_order and lots > limits.max_lots_per_order:
        _refuse(Reason.MAX_LOTS_EXCEEDED, f"{lots} lots is more than your {limits.max_lots_per_order} per order.")
    value = (intent.reference_price * intent.quantity).quantize(PAISE)
    if limits.max_order_value and value > limits.max_order_value:
        _refuse(Reason.MAX_ORDER_VALUE_EXCEEDED, f"Order value {value} is over your limit {limits.max_order_value}.")
    from orders.selectors import open_position_symbols, orders_placed_on

    if limits.max_orders_per_day and intent.new_order:
        placed = orders_placed_on(user=user, day=trading_day(now))
        if placed >= limits.max_orders_per_day:
            _refuse(Reason.MAX_ORDERS_PER_DAY, f"You have placed {placed} orders today, your daily limit.")
    if limits.max_open_positions:
        open_symbols = open_position_symbols(user=user)
        if (intent.symbol, intent.product) not in open_symbols and len(open_symbols) >= limits.max_open_positions:
            _refuse(Reason.MAX_OPEN_POSITIONS, f"You already hold {len(open_symbols)} positions, your limit.")
    if limits.max_daily_loss:
        mtm = user_mtm(user=user, day=trading_day(now)) - (state.mtm_baseline if state else Decimal("0"))
        if mtm <= -limits.max_daily_loss:
            _refuse(Reason.DAILY_LOSS_LIMIT_HIT, f"Today's MTM {mtm} has reached your loss limit.")
    _check_funds(intent, value if intent.margin_value is None else intent.margin_value)


def _check_funds(intent: OrderIntent, value: Decimal) -> None:
    from django.conf import settings

    from brokers.gateway import adapter_for

    if not settings.RMS_FUNDS_CHECK:
        return

    required = (value * MARGIN_RATE[Product(intent.product)]).quantize(PAISE)
    try:
        funds = adapter_for(intent.account).funds()
    except (BrokerError, AppError) as error:
        # The broker checks margin itself; a funds read that fails must not block trading.
        logger.info("funds of %s unavailable for the pre-trade check: %s", intent.account.pk, error.detail)
        return
    if required > funds.available_cash:
        _refuse(Reason.INSUFFICIENT_FUNDS, f"Needs about {required} of margin; {funds.available_cash} is available.")


# --- monitor -----------------------------------------------------------------------------------------------------


@dataclass
class MtmBook:
    """MTM per user (and per account) for the users evaluated, with what it was computed from."""

    user_ids: list[str]
    mtm: np.ndarray  # per user, rupees (float64: a monitor's view; money actions use Decimal)
    account_mtm: dict[str, float] = field(default_factory=dict)
    open_positions: np.ndarray | None = None
    mis_open: np.ndarray | None = None


def mtm_book(*, user_ids: list[str] | None = None, day: date | None = None) -> MtmBook:
    """One set-based computation: every position of the day (open, or closed today) of the users, the latest
    quote of each symbol in one fetch, and per-user sums with numpy.

    Only quotes a feed published count: a symbol without one adds its realized PnL alone, never a price the paper
    exchange would make up (a square-off on an invented price is worse than one sweep's blind spot)."""
    from marketdata.quotes import quotes_get
    from orders.selectors import positions_for_mtm

    rows = positions_for_mtm(user_ids=user_ids, day=day or trading_day())
    if not rows:
        return MtmBook(user_ids=[], mtm=np.zeros(0), open_positions=np.zeros(0), mis_open=np.zeros(0))
    users, accounts, symbols, products, quantity, average, realized = zip(*rows, strict=True)
    quotes = quotes_get(sorted(set(symbols)))
    ltp = np.array([float(quotes[s].last_price) if s in quotes else np.nan for s in symbols])
    quantity_a = np.array(quantity, dtype=np.float64)
    average_a = np.array([float(a) for a in average])
    unrealized = np.where(np.isnan(ltp), 0.0, (ltp - average_a) * quantity_a)
    position_mtm = unrealized + np.array([float(r) for r in realized])
    user_ids_sorted, user_index = np.unique(np.array(users), return_inverse=True)
    mtm = np.bincount(user_index, weights=position_mtm, minlength=len(user_ids_sorted))
    open_positions = np.bincount(user_index, weights=(quantity_a != 0), minlength=len(user_ids_sorted))
    mis = np.array([p == "MIS" for p in products])
    mis_open = np.bincount(user_index, weights=(quantity_a != 0) & mis, minlength=len(user_ids_sorted))
    account_ids, account_index = np.unique(np.array(accounts), return_inverse=True)
    account_sums = np.bincount(account_index, weights=position_mtm, minlength=len(account_ids))
    return MtmBook(
        user_ids=[str(u) for u in user_ids_sorted],
        mtm=np.round(mtm, 2),
        account_mtm={str(a): round(float(v), 2) for a, v in zip(account_ids, account_sums, strict=True)},
        open_positions=open_positions,
        mis_open=mis_open,
    )


def user_mtm(*, user: User, day: date | None = None) -> Decimal:
    book = mtm_book(user_ids=[user.pk], day=day)
    return Decimal(str(book.mtm[0])).quantize(PAISE) if book.user_ids else Decimal("0.00")


def profit_lock_level(*, mtm: Decimal, limits: Limits | dict) -> Decimal | None:
    """The profit locked at this MTM: `profit_lock_amount` once MTM reaches `profit_lock_at`, raised by
    `trailing_profit_step` for every `trailing_profit_every` gained beyond it."""
    get = limits.get if isinstance(limits, dict) else lambda name: getattr(limits, name)
    lock_at, amount = get("profit_lock_at"), get("profit_lock_amount")
    if lock_at is None or amount is None or mtm < lock_at:
        return None
    every, step = get("trailing_profit_every"), get("trailing_profit_step")
    if every and step:
        amount += step * int((mtm - lock_at) // every)
    return amount


@dataclass(frozen=True)
class Breach:
    user_id: str
    reason: str
    mtm: Decimal


@dataclass
class SweepResult:
    evaluated: int = 0
    breaches: list[Breach] = field(default_factory=list)
    locks_raised: int = 0
    resumed: int = 0
    auto_squared_off: int = 0


def sweep(*, user_ids: list[str] | None = None, now: datetime | None = None, act: bool = True) -> SweepResult:
    """Evaluate every user with positions today (or just `user_ids`) in one pass; handle what breached."""
    now = now or timezone.now()
    day = trading_day(now)
    book = mtm_book(user_ids=user_ids, day=day)
    result = SweepResult(evaluated=len(book.user_ids))
    if not book.user_ids:
        return result
    profiles = limits_by_user(user_ids=book.user_ids, day=day)
    states = {
        row["user_id"]: row
        for row in RmsState.objects.filter(trading_day=day, user_id__in=book.user_ids).values(
            "user_id", "status", "locked_profit", "square_off_pending", "auto_square_off_done_at", "mtm_baseline"
        )
    }
    local = timezone.localtime(now, IST).time()
    default_square_off: time | None = default_limits()["auto_square_off_time"]
    for index, user_id in enumerate(book.user_ids):
        profile = profiles.get(user_id, {})
        state = states.get(user_id, {})
        mtm = Decimal(str(book.mtm[index])).quantize(PAISE) - state.get("mtm_baseline", Decimal("0"))
        if state.get("square_off_pending"):
            result.resumed += 1
            if act:
                _guarded(breach_square_off, user_id=user_id, day=day)
            continue
        square_off_at = profile["auto_square_off_time"] if profile else default_square_off
        if (
            square_off_at
            and local >= square_off_at
            and book.mis_open[index] > 0
            and not state.get("auto_square_off_done_at")
        ):
            result.auto_squared_off += 1
            if act:
                _guarded(auto_square_off, user_id=user_id, mtm=mtm, day=day)
        if SEVERITY[state.get("status", TradingState.NORMAL)] >= SEVERITY[TradingState.HALTED]:
            continue
        reason = None
        loss = profile.get("max_daily_loss")
        target = profile.get("daily_profit_target")
        if loss is not None and mtm <= -loss:
            reason = Reason.DAILY_LOSS_LIMIT_HIT
        elif state.get("status") == TradingState.REDUCING:
            continue
        elif target is not None and mtm >= target:
            reason = Reason.DAILY_PROFIT_TARGET_HIT
        else:
            level = profit_lock_level(mtm=mtm, limits=profile) if profile else None
            locked = state.get("locked_profit")
            if level is not None and (locked is None or level > locked):
                result.locks_raised += 1
                if act:
                    _guarded(profit_lock_raise, user_id=user_id, level=level, mtm=mtm, day=day)
                locked = level
            if locked is not None and mtm < locked:
                reason = Reason.PROFIT_LOCK_HIT
        if reason:
            result.breaches.append(Breach(user_id=user_id, reason=reason, mtm=mtm))
            if act:
                _guarded(breach_handle, user_id=user_id, reason=reason, mtm=mtm, day=day)
    return result


def _guarded(action, **kwargs) -> None:
    """One user's trouble (a broker down, their own square-off holding the lock) must not keep the sweep from the
    users after them; what did not finish is still pending, or still breached, for the next sweep."""
    try:
        action(**kwargs)
    except Exception:
        logger.exception("RMS %s for %s failed; the next sweep retries", action.__name__, kwargs.get("user_id"))


@transaction.atomic
def profit_lock_raise(*, user_id: str, level: Decimal, mtm: Decimal, day: date) -> None:
    state = state_today(user_id=user_id, day=day, lock=True)
    if state.locked_profit is not None and state.locked_profit >= level:
        return
    state.locked_profit = level
    state.updated_at = timezone.now()
    state.save()
    RmsEvent.objects.create(user_id=user_id, kind=RmsEvent.Kind.PROFIT_LOCKED, mtm=mtm, details={"locked": str(level)})
    realtime.push_to_user(
        user_id=user_id,
        message_type="rms_alert",
        payload={"kind": "profit_locked", "locked_profit": level, "mtm": mtm},
    )


def breach_handle(
    *, user_id: str, reason: str, mtm: Decimal, day: date | None = None, actor: User | None = None
) -> bool:
    """Record the breach and square the user off, once: the state row's lock makes overlapping sweeps agree on
    one winner; False when this breach (or a stronger one) was already handled today."""
    day = day or trading_day()
    new_status = STATE_AFTER[reason]
    with transaction.atomic():
        state = state_today(user_id=user_id, day=day, lock=True)
        if SEVERITY[state.status] >= SEVERITY[new_status]:
            return False
        state.status, state.reason = new_status, reason
        state.breach_mtm, state.breached_at = mtm, timezone.now()
        state.square_off_pending, state.square_off_done_at = True, None
        state.updated_at = timezone.now()
        state.save()
        event = RmsEvent.objects.create(
            user_id=user_id,
            kind=RmsEvent.Kind.BREACH,
            reason=reason,
            mtm=mtm,
            actor=actor,
            details={"state": new_status},
        )
        audit_record(
            action="rms.breach",
            actor=actor,
            target_type="user",
            target_id=user_id,
            details={"reason": reason, "mtm": str(mtm), "state": new_status},
        )
        user = User.objects.get(pk=user_id)
        notification_create(
            user=user,
            kind="rms_breach",
            title=f"Risk limit hit: {reason.replace('_', ' ').lower()}",
            body=f"MTM {mtm}. Pending orders are being cancelled and positions squared off; "
            f"{'only exits are allowed' if new_status == TradingState.REDUCING else 'trading is halted'} today.",
            level=Notification.Level.WARNING,
            data={"reason": reason, "state": new_status, "event_id": event.pk},
        )
        realtime.push_to_user(
            user_id=user_id,
            message_type="rms_alert",
            payload={"kind": "breach", "reason": reason, "state": new_status, "mtm": mtm, "event_id": event.pk},
        )
    breach_square_off(user_id=user_id, day=day)
    return True


def breach_square_off(*, user_id: str, day: date | None = None) -> None:
    """Cancel and square off everything of a breached user (idempotent), then mark the breach settled.

    One worker at a time: a sweep or tick evaluation that finds it running elsewhere leaves it to that worker, and
    one that arrives after it finished finds nothing pending. A worker that dies leaves the flag set and its claim
    expires, so a later sweep finishes the job."""
    from django.core.cache import cache

    from orders.models import OrderSource
    from orders.services import positions_square_off

    day = day or trading_day()
    claim = f"rms:breach-square-off:{user_id}"
    if not cache.add(claim, True, timeout=SQUARE_OFF_CLAIM_SECONDS):
        return
    try:
        if not RmsState.objects.filter(user_id=user_id, trading_day=day, square_off_pending=True).exists():
            return
        user = User.objects.get(pk=user_id)
        result = positions_square_off(user=user, source=OrderSource.RMS)
        with transaction.atomic():
            state = state_today(user_id=user_id, day=day, lock=True)
            if not result.failed:
                state.square_off_pending = False
                state.square_off_done_at = timezone.now()
                state.save()
            RmsEvent.objects.create(
                user_id=user_id,
                kind=RmsEvent.Kind.SQUARE_OFF,
                reason=state.reason,
                details={
                    "placed": [o.pk for o in result.placed],
                    "cancelled": [o.pk for o in result.cancelled],
                    "failed": result.failed,
                },
            )
    finally:
        cache.delete(claim)


def auto_square_off(*, user_id: str, mtm: Decimal, day: date) -> None:
    """Close the user's intraday (MIS) positions at their auto square-off time, once a day."""
    from orders.models import OrderSource
    from orders.services import positions_square_off

    with transaction.atomic():
        state = state_today(user_id=user_id, day=day, lock=True)
        if state.auto_square_off_done_at is not None:
            return
        state.auto_square_off_done_at = timezone.now()
        state.save()
    try:
        result = positions_square_off(user=User.objects.get(pk=user_id), product="MIS", source=OrderSource.RMS)
    except Exception:  # not run at all (the user's own square-off held the lock): the next sweep tries again
        RmsState.objects.filter(user_id=user_id, trading_day=day).update(auto_square_off_done_at=None)
        raise
    RmsEvent.objects.create(
        user_id=user_id,
        kind=RmsEvent.Kind.AUTO_SQUARE_OFF,
        reason=Reason.AUTO_SQUARE_OFF,
        mtm=mtm,
        details={"placed": [o.pk for o in result.placed], "failed": result.failed},
    )
    realtime.push_to_user(user_id=user_id, message_type="rms_alert", payload={"kind": "auto_square_off", "mtm": mtm})
    if result.failed:
        with transaction.atomic():  # let the next sweep try what failed
            RmsState.objects.filter(user_id=user_id, trading_day=day).update(auto_square_off_done_at=None)


# --- manual controls ---------------------------------------------------------------------------------------------


def user_square_off(*, actor: User, user: User, account_id: str | None = None):
    """The RMS route's manual square-off: everything (or one account), through the order pipeline as `rms`."""
    from orders.models import OrderSource
    from orders.services import positions_square_off

    result = positions_square_off(user=user, account_id=account_id, source=OrderSource.RMS)
    RmsEvent.objects.create(
        user=user,
        kind=RmsEvent.Kind.SQUARE_OFF,
        reason="MANUAL",
        actor=actor,
        details={"account_id": account_id, "placed": [o.pk for o in result.placed], "failed": result.failed},
    )
    return result


def user_halt(*, actor: User, user: User, reason: str = Reason.OPERATOR_HALT) -> bool:
    """An operator halts a user for the day: pending orders cancelled, positions squared off."""
    return breach_handle(user_id=user.pk, reason=reason, mtm=user_mtm(user=user), actor=actor)


@transaction.atomic
def user_resume(*, actor: User, user: User) -> RmsState:
    """An operator resets today's state to NORMAL. The day's MTM rules start afresh from the MTM now (otherwise
    a loss already realized would breach again at the next sweep), and the profit lock with them."""
    state = state_today(user_id=user.pk, lock=True)
    previous = state.status
    state.status, state.reason, state.square_off_pending = TradingState.NORMAL, "", False
    state.mtm_baseline = user_mtm(user=user, day=state.trading_day)
    state.locked_profit = None
    state.updated_at = timezone.now()
    state.save()
    RmsEvent.objects.create(
        user=user,
        kind=RmsEvent.Kind.RESUME,
        actor=actor,
        mtm=state.mtm_baseline,
        details={"from": previous, "mtm_baseline": str(state.mtm_baseline)},
    )
    audit_record(action="rms.resume", actor=actor, target=user, details={"from": previous})
    realtime.push_to_user(user_id=user.pk, message_type="rms_alert", payload={"kind": "resume", "state": "NORMAL"})
    return state


def users_holding(*, symbols: list[str]) -> list[str]:
    """Users with open positions in any of `symbols`: whom a tick on them may breach."""
    from orders.selectors import users_with_open_positions_in

    return users_with_open_positions_in(symbols=symbols)
