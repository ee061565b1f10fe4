"""A user's risk limits: the profile and its account overrides, the operator's ceilings that bound them, the
effective limits in force (pending loosenings applied once their day has come), and changing them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet, TextField, Value
from django.db.models.functions import Cast
from django.utils import timezone

from accounts.models import User
from accounts.services import audit_record
from algoterm.api.errors import ValidationFailed
from algoterm.locking import row_locked
from brokers.models import BrokerAccount
from marketdata.calendar import next_trading_day, session_bounds
from orders.selectors import orders_placed_on
from rms.models import (
    MONEY_FIELDS,
    MTM_RULES,
    CeilingFields,
    PlatformRiskCeiling,
    RiskProfile,
    RmsEvent,
    UserRiskCeiling,
    default_limits,
)
from rms.services.common import trading_day

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


def _ceiling_values(row: CeilingFields | dict[str, Any] | None) -> dict[str, Any]:
    if row is None:
        return {
            name: ([] if name in LIST_FIELDS else False if name == "kill_switch" else None) for name in CEILING_FIELDS
        }
    if isinstance(row, dict):
        return {name: row[name] for name in CEILING_FIELDS}
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
    # Both rows in one statement: this runs on every order's risk check.
    columns = (*CEILING_FIELDS, "note")
    platform_rows = PlatformRiskCeiling.objects.order_by().values(*columns, layer=Value(0))  # one row by design
    user_rows = UserRiskCeiling.objects.filter(user=user).order_by().values(*columns, layer=Value(1))
    rows: list[dict[str, Any] | None] = [None, None]
    for row in platform_rows.union(user_rows, all=True):
        layer = row.pop("layer")
        rows[layer] = rows[layer] or row
    combined = _bound(*(_ceiling_values(row) for row in rows))
    return {
        **{name: combined[name] for name in CEILING_FIELDS},
        "notes": [row["note"] for row in rows if row and row["note"]],
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
    row = row_locked(PlatformRiskCeiling.objects.all(), pk=platform_ceiling_get().pk)
    return _ceiling_update(actor=actor, row=row, data=data, scope="platform", target=None)


@transaction.atomic
def user_ceiling_update(*, actor: User, user: User, data: dict[str, Any]) -> UserRiskCeiling:
    """An operator sets one user's ceiling, inside the platform's (the tightest of both applies)."""
    UserRiskCeiling.objects.get_or_create(user=user)
    row = row_locked(UserRiskCeiling.objects.all(), user=user)
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
    now = now or timezone.now()
    bounds = session_bounds(trading_day(now))
    if bounds is not None and now >= bounds.pre_open_start:
        return True
    return orders_placed_on(user=user, day=trading_day(now)) > 0


def _next_trading_day(now: datetime) -> date:
    return next_trading_day(trading_day(now))


def _pending_apply(*, profile: RiskProfile, day: date) -> RiskProfile:
    """Put the profile's pending changes in force once their day has come (locked; audited)."""
    with transaction.atomic():
        profile = row_locked(RiskProfile.objects.all(), pk=profile.pk)
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
    # The profile and the account's override in one statement: this runs on every order's risk check.
    scope = Q(account__isnull=True) if account is None else Q(account__isnull=True) | Q(account=account)
    profiles = {profile.account_id: profile for profile in RiskProfile.objects.filter(scope, user=user)}
    base = _in_force(profiles.get(None) or profile_get_or_create(user=user), day=day)
    override = None if account is None else _in_force(profiles.get(account.pk), day=day)
    ceilings = ceilings_for(user=user)
    values = _bound(_own_values(base, override), ceilings)
    return Limits({name: values[name] for name in PROFILE_FIELDS})


def limits_by_user(
    *, user_ids: list[str], day: date, among: list[str] | QuerySet | None = None
) -> dict[str, dict[str, Any]]:
    """`limits_for` (profile level) of many users at once, for the sweep: a few queries, whatever their number.
    `among` selects the same users in SQL (a subquery of their ids) where a list of thousands of ids would cost
    more than the rows."""
    scope = user_ids if among is None else among
    # The list settings come as their JSON text: decoded once per distinct value, not once per user.
    columns = [Cast(name, TextField()) if name in LIST_FIELDS else name for name in PROFILE_FIELDS]
    profiles: dict[str, tuple] = {}
    rows = RiskProfile.objects.filter(account__isnull=True, user_id__in=scope).values_list(
        "pk", "user_id", "pending_from", *columns
    )
    for pk, user_id, pending_from, *values in rows:
        if pending_from is not None and pending_from <= day:
            profile = _in_force(RiskProfile.objects.get(pk=pk), day=day)
            values = [_as_text(name, getattr(profile, name)) for name in PROFILE_FIELDS]
        profiles[user_id] = tuple(values)
    personal = {row.user_id: _ceiling_values(row) for row in UserRiskCeiling.objects.filter(user_id__in=scope)}
    platform = _ceiling_values(PlatformRiskCeiling.objects.first())
    defaults = default_limits()
    default_values = tuple(
        _as_text(name, defaults.get(name, [] if name in LIST_FIELDS else False if name == "kill_switch" else None))
        for name in PROFILE_FIELDS
    )
    empty = _ceiling_values(None)
    # Most users share their settings (the defaults, a few common profiles): each combination is bounded once.
    bounded: dict[tuple, dict[str, Any]] = {}
    result = {}
    for user_id in user_ids:
        values = profiles.get(user_id, default_values)
        ceiling = personal.get(user_id)
        key = (values, user_id if ceiling is not None else None)
        limits = bounded.get(key)
        if limits is None:
            own = {
                name: (json.loads(value) if value is not None else []) if name in LIST_FIELDS else value
                for name, value in zip(PROFILE_FIELDS, values, strict=True)
            }
            limits = bounded[key] = _bound(own, platform, ceiling or empty)
        result[user_id] = {"user_id": user_id, **limits}
    return result


def _as_text(name: str, value: Any) -> Any:
    return json.dumps(value) if name in LIST_FIELDS and value is not None else value


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
    profile = row_locked(RiskProfile.objects.all(), pk=_in_force(profile, day=day).pk)
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
